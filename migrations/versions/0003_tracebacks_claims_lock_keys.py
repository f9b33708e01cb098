"""Tracebacks, poison detection and the advisory lock key on each saga row.

- ``error_traceback`` / ``compensation_traceback``: the traceback of the
  failing step and of the first failing compensation (16 KiB at most), for
  ``saga-admin show``.
- ``claims``: executors that took the saga since its last commit of
  progress; a saga whose executors keep dying is parked in dead letter.
- ``lock_key``: the PostgreSQL advisory lock key that claims the saga, so a
  worker leaves out held sagas in SQL instead of filtering a window of rows
  in Python. Filled in here for active sagas.

Revision ID: sagadsl_0003
Revises: sagadsl_0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sagadsl.locks import advisory_key

revision = "sagadsl_0003"
down_revision = "sagadsl_0002"
branch_labels = None
depends_on = None

_ACTIVE = ("pending", "compensating")


def _schema() -> str | None:
    schema = op.get_context().version_table_schema
    return str(schema) if schema else None


def upgrade() -> None:
    schema = _schema()
    # Plain ADD COLUMN, not a batch copy of the table: SQLite's batch mode
    # would rebuild the table and drop the status-count triggers with it.
    for column in (sa.Column("error_traceback", sa.Text(), nullable=True),
                   sa.Column("compensation_traceback", sa.Text(), nullable=True),
                   sa.Column("claims", sa.Integer(), nullable=False, server_default="0"),
                   sa.Column("lock_key", sa.BigInteger(), nullable=True)):
        op.add_column("sagadsl_workflows", column, schema=schema)
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        workflows = sa.table("sagadsl_workflows", sa.column("id", sa.String), sa.column("status", sa.String),
                             sa.column("lock_key", sa.BigInteger), schema=schema)
        ids = bind.execute(sa.select(workflows.c.id).where(workflows.c.status.in_(_ACTIVE))).scalars().all()
        for saga_id in ids:
            key = advisory_key(f"{schema}.{saga_id}" if schema else saga_id)
            bind.execute(sa.update(workflows).where(workflows.c.id == saga_id).values(lock_key=key))


def downgrade() -> None:
    for column in ("lock_key", "claims", "compensation_traceback", "error_traceback"):
        op.drop_column("sagadsl_workflows", column, schema=_schema())
