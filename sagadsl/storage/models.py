"""SQLAlchemy ORM models of the two tables: one row per saga, one row per step.

The Alembic migrations in ``migrations/`` create exactly these tables; a test
compares the two so they cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, ForeignKeyConstraint, Index, Integer, MetaData,
                        String, Table, Text, false, func, text)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = ["Base", "WorkflowRow", "StepRow", "StatusCountRow", "LockRow", "UTCDateTime", "JSONDocument",
           "metadata"]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend.

    PostgreSQL stores ``timestamptz``. SQLite has no time zones, so values are
    stored as naive UTC (which keeps string order equal to time order) and
    given back their UTC zone when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect: Dialect) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: sagadsl stores timezone-aware UTC times")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Optional[datetime], dialect: Dialect) -> Optional[datetime]:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


#: JSON everywhere, JSONB on PostgreSQL.
JSONDocument = JSON().with_variant(JSONB(), "postgresql")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


class Base(DeclarativeBase):
    """Declarative base of sagadsl's tables (its own metadata)."""

    metadata = metadata
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONDocument}


class WorkflowRow(Base):
    """One saga: its status, input, error block and executor claim."""

    __tablename__ = "sagadsl_workflows"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    saga_name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))
    input: Mapped[Optional[Any]] = mapped_column(JSONDocument, nullable=True)
    idempotency_key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    #: Bumped by every write; a write that expects another version was fenced off.
    version: Mapped[int] = mapped_column(Integer, default=0)
    current_step: Mapped[Optional[str]] = mapped_column(String(255))
    error_step: Mapped[Optional[str]] = mapped_column(String(255))
    error: Mapped[Optional[str]] = mapped_column(Text)
    compensation_error: Mapped[Optional[str]] = mapped_column(Text)
    error_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    #: Tracebacks of the failing step and of the first failing compensation (16 KiB at most).
    error_traceback: Mapped[Optional[str]] = mapped_column(Text)
    compensation_traceback: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: Start of the current execution budget: the first claim by an executor
    #: (None while a submitted saga waits), or the last retry.
    started_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    #: Past this time an active saga counts as stuck.
    stuck_after: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    #: Lease-based claim (where advisory locks do not exist): owner and expiry.
    owner: Mapped[Optional[str]] = mapped_column(String(255))
    lease_expires_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    #: Executors that claimed the saga since its last commit of progress (poison detection).
    claims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The PostgreSQL advisory lock key that claims this saga, so that a worker
    #: can leave out held sagas in SQL (the key is a hash SQL cannot compute).
    lock_key: Mapped[Optional[int]] = mapped_column(BigInteger)
    #: Set in the commit of the pivot step's completion: from then on the saga
    #: only goes forward (its later steps are retried, never compensated).
    past_pivot: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: The semantic lock keys the saga holds or waits for, rendered at creation.
    locks: Mapped[Optional[Any]] = mapped_column(JSONDocument, nullable=True)
    #: A submitted saga that no worker takes before this time (None: at once).
    start_after: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    #: Set by ``engine.cancel`` (the reason); the executor's commits return it.
    cancel_reason: Mapped[Optional[str]] = mapped_column(Text)
    #: Set, unless a cancel came first, by the commit just before the pivot
    #: step starts: from then on a cancel is refused.
    pivot_started: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Set by the commit that ends the saga (cleared by a retry): what retention goes by.
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_sagadsl_workflows_status_created_at", "status", "created_at"),
        Index("ix_sagadsl_workflows_saga_name_created_at", "saga_name", "created_at"),
        Index("ix_sagadsl_workflows_created_at", "created_at"),
        # No index holds updated_at (or any column a step commit changes), so
        # that PostgreSQL makes those updates HOT; fillfactor leaves them room.
        {"postgresql_with": {"fillfactor": 80}},
    )


#: The statuses a worker polls for, as SQL literals: a partial index's
#: predicate must be implied by the query's own text, which a bound
#: parameter (in a prepared statement's generic plan) never is.
ACTIVE_STATUS_SQL = "status IN ('pending', 'compensating')"

#: Active sagas by when they became due (their ``start_after``, else their
#: creation), for a worker's poll: read in order, oldest first, so a poll
#: costs the same however many sagas wait. Neither column changes after
#: creation and ``status`` is indexed already, so step commits stay HOT; a
#: saga leaves the index with its terminal commit.
Index("ix_sagadsl_workflows_due", func.coalesce(WorkflowRow.start_after, WorkflowRow.created_at),
      postgresql_where=text(ACTIVE_STATUS_SQL), sqlite_where=text(ACTIVE_STATUS_SQL))


class StepRow(Base):
    """One step of one saga; its row is updated in place, never rewritten as an array."""

    __tablename__ = "sagadsl_steps"

    workflow_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))
    result: Mapped[Optional[Any]] = mapped_column(JSONDocument, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    error: Mapped[Optional[str]] = mapped_column(Text)
    compensation_error: Mapped[Optional[str]] = mapped_column(Text)
    compensated_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())

    __table_args__ = (
        ForeignKeyConstraint(["workflow_id"], ["sagadsl_workflows.id"], ondelete="CASCADE"),
    )


class StatusCountRow(Base):
    """How many sagas are in a status, spread over shard rows.

    Maintained by database triggers on ``sagadsl_workflows`` (see migration
    ``sagadsl_0002``), so ``count`` stays O(1) at any table size and exact
    whatever writes the workflows table.
    """

    __tablename__ = "sagadsl_status_counts"

    status: Mapped[str] = mapped_column(String(32), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class LockRow(Base):
    """One semantic lock key a saga holds or waits for.

    A saga holds its keys from the commit that takes them until its terminal
    commit (``completed``, ``failed``, ``cancelled``); in dead letter it keeps
    them. Waiting sagas queue by ``requested_at`` per key. At most one
    holder per key is enforced by the database: a unique index over the
    held rows.
    """

    __tablename__ = "sagadsl_locks"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    held: Mapped[bool] = mapped_column(Boolean)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        ForeignKeyConstraint(["workflow_id"], ["sagadsl_workflows.id"], ondelete="CASCADE"),
        Index("uq_sagadsl_locks_key_held", "key", unique=True,
              sqlite_where=text("held"), postgresql_where=text("held")),
        Index("ix_sagadsl_locks_workflow_id", "workflow_id"),
    )


workflows: Table = WorkflowRow.__table__  # type: ignore[assignment]
steps: Table = StepRow.__table__  # type: ignore[assignment]
status_counts: Table = StatusCountRow.__table__  # type: ignore[assignment]
locks: Table = LockRow.__table__  # type: ignore[assignment]
