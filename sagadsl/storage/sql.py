"""SQL storage on SQLAlchemy Core: SQLite (embedded default) and PostgreSQL.

One pinned connection per running saga. Writes are Core statements built
from the ORM tables, each commit guarded by the saga row's ``version`` so
an executor that lost its claim cannot overwrite a newer state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from datetime import datetime, timedelta
from typing import Any, Collection, Iterator, Sequence, TypeVar

from sqlalchemy import (BigInteger, Integer, Text, bindparam, case, delete, exists,
                        func, insert, literal, literal_column, null, or_, select, text, true, tuple_, update)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.sql import Executable

from ..errors import (
    InvalidStateError,
    ResourceLockedError,
    RetryCapExceededError,
    SagaLockedError,
    SagaNotFoundError,
    StorageError,
)
from ..limits import MAX_EXECUTION_DURATION, truncate_error
from ..locks import advisory_key, claim_is_free, owner_token
from ..records import ErrorInfo, QueryResult, StepRecord, WorkflowRecord
from ..status import ACTIVE_STATUSES, StepStatus, WorkflowStatus
from ..urls import mask_url
from .base import Change, LockRecord, NewWorkflow, QueryFilter
from .connect import configure_sqlite as _configure_sqlite  # noqa: F401  (moved to connect.py)
from .connect import connect as _connect
from .connect import create_engine as _create_engine
from .connect import read as _read
from .connect import translated as _translated
from .models import locks as locks_table
from .models import status_counts as counts_table
from .models import steps as steps_table
from .models import workflows as wf_table
from .schema import check_schema, migrate, validate_schema_name

__all__ = ["SqlStorage", "SqlSession", "mask_url", "advisory_lock_key"]

logger = logging.getLogger("sagadsl.storage")

#: An executor's lease on a saga row (where advisory locks do not exist). It is
#: renewed by every commit, and no step may run longer than the saga's budget.
LEASE_DURATION = MAX_EXECUTION_DURATION + timedelta(minutes=1)

T = TypeVar("T")


class SqlStorage:
    """Sagas in a SQL database through SQLAlchemy.

    Args:
        url_or_engine: ``sqlite:///path.db``, ``postgresql+psycopg://...`` or an Engine.
        schema: PostgreSQL schema holding the tables (default: the search path).
        auto_migrate: Install/upgrade the tables at start. Default: True for
            SQLite (the embedded default upgrades itself), False elsewhere,
            where a missing or old schema raises ``SchemaOutOfDateError``.
        pool_size: Connections kept open; each running saga pins one.
        reconnect_timeout: Seconds a write keeps retrying after the
            connection to the database is lost, before the executor stops
            and leaves the saga resumable.
    """

    is_production_safe = True
    detects_dead_executors = True

    def __init__(
        self,
        url_or_engine: str | Engine,
        *,
        schema: str | None = None,
        auto_migrate: bool | None = None,
        pool_size: int = 10,
        reconnect_timeout: float = 30.0,
    ) -> None:
        self.schema = validate_schema_name(schema)
        self.reconnect_timeout = reconnect_timeout
        if isinstance(url_or_engine, Engine):
            engine = url_or_engine
        else:
            engine = _create_engine(url_or_engine, pool_size)
        if schema:
            engine = engine.execution_options(schema_translate_map={None: schema})
        self.engine = engine
        self.dialect = engine.dialect.name
        self.advisory = self.dialect == "postgresql"
        self.url = mask_url(engine.url)
        if auto_migrate is None:
            auto_migrate = self.dialect == "sqlite"
        try:
            self._ensure_schema(auto_migrate)
        except BaseException:
            if not isinstance(url_or_engine, Engine):
                engine.dispose()
            raise

    def _ensure_schema(self, auto_migrate: bool) -> None:
        from ..errors import SchemaOutOfDateError

        doing = "checking sagadsl's schema"
        with _connect(self.engine, doing) as conn, _translated(self.engine, doing):
            try:
                check_schema(conn, self.schema)
                return
            except SchemaOutOfDateError:
                if not auto_migrate:
                    raise
        migrate(self.engine, schema=self.schema)

    # -- sessions -----------------------------------------------------------

    def session(self, saga_id: str) -> SqlSession:
        """A session that pins one connection for running ``saga_id``."""
        return SqlSession(self, saga_id)

    # -- reads --------------------------------------------------------------

    def get(self, saga_id: str) -> WorkflowRecord | None:
        return _read(self.engine, f"reading saga {saga_id!r}", lambda conn: _load(conn, saga_id),
                     saga_id=saga_id)

    def query(self, flt: QueryFilter) -> QueryResult:
        conditions = _conditions(flt)
        page = (select(wf_table).where(*conditions)
                .order_by(wf_table.c.created_at.desc(), wf_table.c.id.desc())
                .offset(flt.offset).limit(flt.limit))
        if _only_statuses(flt):
            # The trigger-kept counts answer at any table size.
            total = _counted(flt.statuses)
        else:
            total = select(func.count()).select_from(wf_table).where(*conditions)
        def fetch(conn: Connection) -> tuple[Sequence[Any], int, dict[str, list[Any]]]:
            rows = conn.execute(page).mappings().all()
            count = int(conn.execute(total).scalar_one())
            return rows, count, _steps_for(conn, [r["id"] for r in rows])

        rows, count, step_rows = _read(self.engine, "querying sagas", fetch)
        return QueryResult(workflows=[_record(r, step_rows.get(r["id"], [])) for r in rows], total=count)

    def count(self, statuses: Sequence[WorkflowStatus]) -> int:
        return _read(self.engine, "counting sagas",
                     lambda conn: int(conn.execute(_counted(statuses)).scalar_one()))

    def count_by_status(self) -> dict[WorkflowStatus, int]:
        stmt = (select(counts_table.c.status, func.sum(counts_table.c.n))
                .group_by(counts_table.c.status))
        counts = _read(self.engine, "counting sagas by status",
                       lambda conn: {WorkflowStatus(status): int(n) for status, n in conn.execute(stmt)})
        return {status: counts.get(status, 0) for status in WorkflowStatus}

    def locks(self, keys: Sequence[str] = ()) -> list[LockRecord]:
        c = locks_table.c
        stmt = select(locks_table).order_by(c.key, c.held.desc(), c.requested_at, c.workflow_id)
        if keys:
            stmt = stmt.where(c.key.in_(list(keys)))
        with self.engine.connect() as conn:
            return [LockRecord(r.key, r.workflow_id, bool(r.held), r.requested_at) for r in conn.execute(stmt)]

    def lock_key(self, saga_id: str) -> int:
        """The PostgreSQL advisory lock key that claims ``saga_id`` in this storage."""
        return advisory_lock_key(saga_id, self.schema)

    def recoverable(self, now: datetime, limit: int, exclude: Collection[str] = ()) -> list[str]:
        active = wf_table.c.status.in_([s.value for s in ACTIVE_STATUSES])
        if self.advisory:
            # Held claims are left out in SQL, so however many older sagas
            # live executors hold, the page holds sagas a worker can take.
            stmt = (select(wf_table.c.id)
                    .where(active, or_(wf_table.c.lock_key.is_(None),
                                       wf_table.c.lock_key.not_in(select(_HELD_ADVISORY_KEYS.c.key))))
                    .order_by(wf_table.c.updated_at).limit(limit))
            if exclude:
                stmt = stmt.where(wf_table.c.id.not_in(list(exclude)))
            with self.engine.connect() as conn:
                return list(conn.execute(stmt).scalars())
        # A lease's owner on this host is checked for liveness in Python, so
        # page through the active sagas until enough free ones are found.
        free: list[str] = []
        after: tuple[datetime, str] | None = None
        with self.engine.connect() as conn:
            while len(free) < limit:
                stmt = (select(wf_table.c.id, wf_table.c.owner, wf_table.c.lease_expires_at,
                               wf_table.c.updated_at)
                        .where(active).order_by(wf_table.c.updated_at, wf_table.c.id).limit(_RECOVERY_PAGE))
                if exclude:
                    stmt = stmt.where(wf_table.c.id.not_in(list(exclude)))
                if after is not None:
                    stmt = stmt.where(tuple_(wf_table.c.updated_at, wf_table.c.id) > tuple_(*after))
                rows = conn.execute(stmt).all()
                free.extend(r.id for r in rows if claim_is_free(r.owner, r.lease_expires_at, now))
                if len(rows) < _RECOVERY_PAGE:
                    break
                after = (rows[-1].updated_at, rows[-1].id)
        return free[:limit]

    # -- operator actions ---------------------------------------------------

    def retry(self, saga_id: str, now: datetime, max_retries: int) -> int:
        stmt = (update(wf_table)
                .where(wf_table.c.id == saga_id,
                       wf_table.c.status == WorkflowStatus.DEAD_LETTER.value,
                       wf_table.c.retry_count < max_retries)
                .values(status=WorkflowStatus.PENDING.value, retry_count=wf_table.c.retry_count + 1,
                        started_at=now, updated_at=now, stuck_after=now, owner=None,
                        lease_expires_at=None, version=wf_table.c.version + 1, claims=0,
                        **_cleared_engine_failure())
                .returning(wf_table.c.retry_count))
        doing = f"retrying saga {saga_id!r}"
        with (_connect(self.engine, doing, saga_id=saga_id) as conn,
              _translated(self.engine, doing, saga_id=saga_id), conn.begin()):
            moved = conn.execute(stmt).scalar_one_or_none()
            if moved is not None:
                return int(moved)
            row = conn.execute(select(wf_table.c.status, wf_table.c.retry_count)
                               .where(wf_table.c.id == saga_id)).first()
        _explain_refused_retry(saga_id, row, max_retries)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Dispose of the connection pool."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"SqlStorage({self.url!r})"


def _explain_refused_retry(saga_id: str, row: Any, max_retries: int) -> None:
    if row is None:
        raise SagaNotFoundError(f"no saga with id {saga_id!r}", saga_id=saga_id)
    if row.status != WorkflowStatus.DEAD_LETTER.value:
        raise InvalidStateError(f"saga {saga_id!r} is {row.status}, not dead_letter; only a dead-letter "
                                "saga can be retried", saga_id=saga_id)
    raise RetryCapExceededError(f"saga {saga_id!r} was already retried {row.retry_count} times, the cap "
                                f"is {max_retries}; inspect it with `saga-admin show {saga_id}` and resolve "
                                "it by hand", saga_id=saga_id)



# Hot-path statements are built once: re-executing the same statement object
# reuses its memoized cache key and SQLAlchemy's compiled form, where building
# it per write cost more CPU than the database round trip. UPDATEs take their
# SET columns from each execution's parameters; the WHERE bind names are
# prefixed so they cannot collide with column names.
_UPDATE_WORKFLOW = update(wf_table).where(wf_table.c.id == bindparam("w_id"),
                                          wf_table.c.version == bindparam("w_expected"))
_UPDATE_STEP = update(steps_table).where(steps_table.c.workflow_id == bindparam("s_workflow_id"),
                                         steps_table.c.name == bindparam("s_name"))
_INSERT_STEPS = insert(steps_table)
_TRY_ADVISORY_LOCK = select(func.pg_try_advisory_lock(bindparam("key", type_=BigInteger)))
# The pinned connection drove this one saga: releasing every session lock it
# holds also undoes a lock taken twice, which pg_advisory_unlock would not.
_ADVISORY_UNLOCK = select(func.pg_advisory_unlock_all())
# Taking over an active saga counts as a claim until the executor commits
# progress; bumping the version fences off any executor that held it before.
_COUNT_CLAIM = (update(wf_table)
                .where(wf_table.c.id == bindparam("w_id"),
                       wf_table.c.status.in_([s.value for s in ACTIVE_STATUSES]))
                .values(claims=wf_table.c.claims + 1, version=wf_table.c.version + 1))


@functools.lru_cache(maxsize=64)
def _update_workflow_and_step(workflow_columns: tuple[str, ...], step_columns: tuple[str, ...]) -> Executable:
    """One PostgreSQL statement that updates the saga row and one of its step rows.

    The saga row's UPDATE is a data-modifying CTE fenced by ``version``; the
    step row is updated only if that CTE returned the row, so the statement's
    rowcount is 1 only if the fence held. One round trip instead of two per
    step commit.

    The step row is found by its whole primary key from the parameters, not
    by joining to the CTE's output: a prepared statement's generic plan for
    the join searched the key's second column alone, a scan that grew with
    the table.
    """
    fenced = (update(wf_table)
              .where(wf_table.c.id == bindparam("w_id"), wf_table.c.version == bindparam("w_expected"))
              .values({c: bindparam(f"w_{c}", type_=wf_table.c[c].type) for c in workflow_columns})
              .returning(wf_table.c.id)
              .cte("fenced"))
    return (update(steps_table)
            .where(steps_table.c.workflow_id == bindparam("w_id"), steps_table.c.name == bindparam("s_name"),
                   exists(select(fenced.c.id)))
            .values({c: bindparam(f"s_{c}", type_=steps_table.c[c].type) for c in step_columns}))


@functools.lru_cache(maxsize=8)
def _create_saga_postgresql(workflow_columns: tuple[str, ...], claim: bool) -> Executable:
    """One PostgreSQL statement that inserts a saga row and its pending step rows.

    The saga row's INSERT ... ON CONFLICT DO NOTHING is a CTE; the step rows
    (passed as arrays) are inserted only for the row it returned, so the
    statement returns rows if the saga was created and none if its id
    already existed. One round trip for the saga's first commit.

    With ``claim`` the statement also takes the saga's session advisory lock
    (parameter ``key``) and inserts only if it got it: no rows then means the
    id exists or another session holds the claim. A CTE calling a volatile
    function is evaluated once, before the INSERT that reads it.
    """
    values = [bindparam(f"w_{c}", type_=wf_table.c[c].type) for c in workflow_columns]
    insert_saga = postgresql.insert(wf_table)
    if claim:
        lock = func.pg_try_advisory_lock(bindparam("key", type_=BigInteger))
        claimed = select(lock.label("held")).cte("claim")
        insert_saga = insert_saga.from_select(list(workflow_columns), select(*values).where(claimed.c.held))
    else:
        insert_saga = insert_saga.values(dict(zip(workflow_columns, values)))
    created = (insert_saga
               .on_conflict_do_nothing(index_elements=["id"])
               .returning(wf_table.c.id)
               .cte("created"))
    new_steps = func.unnest(bindparam("names", type_=postgresql.ARRAY(Text)),
                            bindparam("positions", type_=postgresql.ARRAY(Integer)),
                            bindparam("keys", type_=postgresql.ARRAY(Text))
                            ).table_valued("name", "position", "idempotency_key").render_derived("new_steps")
    rows = (select(created.c.id, new_steps.c.name, new_steps.c.position, new_steps.c.idempotency_key,
                   literal(StepStatus.PENDING.value), literal(0))
            .select_from(created.join(new_steps, true())))
    return (insert(steps_table)
            .from_select(["workflow_id", "name", "position", "idempotency_key", "status", "attempts"], rows)
            .returning(steps_table.c.workflow_id))


_INSERT_WORKFLOW = {
    dialect: make(wf_table).on_conflict_do_nothing(index_elements=["id"]).returning(wf_table.c.id)
    for dialect, make in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}


def _conditions(flt: QueryFilter) -> list[Any]:
    c = wf_table.c
    conditions: list[Any] = []
    if flt.statuses:
        conditions.append(c.status.in_([s.value for s in flt.statuses]))
    if flt.saga_name:
        conditions.append(c.saga_name == flt.saga_name)
    if flt.created_after:
        conditions.append(c.created_at >= flt.created_after)
    if flt.created_before:
        conditions.append(c.created_at < flt.created_before)
    if flt.updated_after:
        conditions.append(c.updated_at >= flt.updated_after)
    if flt.updated_before:
        conditions.append(c.updated_at < flt.updated_before)
    if flt.stuck_at:
        conditions.append(c.status.in_([s.value for s in ACTIVE_STATUSES]))
        conditions.append(c.stuck_after < flt.stuck_at)
    return conditions


def _only_statuses(flt: QueryFilter) -> bool:
    """Whether a filter selects by status alone (or not at all)."""
    return not (flt.saga_name or flt.created_after or flt.created_before or flt.updated_after
                or flt.updated_before or flt.stuck_at)


def _counted(statuses: Sequence[WorkflowStatus]) -> Any:
    """How many sagas have one of ``statuses`` (all if empty), from the kept counts."""
    stmt = select(func.coalesce(func.sum(counts_table.c.n), 0))
    if statuses:
        stmt = stmt.where(counts_table.c.status.in_([s.value for s in statuses]))
    return stmt


def _steps_for(conn: Connection, ids: list[str]) -> dict[str, list[Any]]:
    if not ids:
        return {}
    out: dict[str, list[Any]] = {}
    rows = conn.execute(select(steps_table).where(steps_table.c.workflow_id.in_(ids))
                        .order_by(steps_table.c.workflow_id, steps_table.c.position)).mappings()
    for row in rows:
        out.setdefault(row["workflow_id"], []).append(row)
    return out


def _record(row: Any, step_rows: list[Any]) -> WorkflowRecord:
    error = None
    if row["error"] is not None or row["compensation_error"] is not None:
        error = ErrorInfo(step_name=row["error_step"], error=row["error"],
                          compensation_error=row["compensation_error"], timestamp=row["error_at"],
                          traceback=row["error_traceback"],
                          compensation_traceback=row["compensation_traceback"])
    return WorkflowRecord(
        id=row["id"], saga_name=row["saga_name"], status=WorkflowStatus(row["status"]),
        input=row["input"], idempotency_key=row["idempotency_key"], fingerprint=row["fingerprint"],
        steps=tuple(
            StepRecord(name=s["name"], position=s["position"], idempotency_key=s["idempotency_key"],
                       status=StepStatus(s["status"]), result=s["result"], attempts=s["attempts"],
                       started_at=s["started_at"], finished_at=s["finished_at"], error=s["error"],
                       compensation_error=s["compensation_error"], compensated_at=s["compensated_at"])
            for s in step_rows
        ),
        retry_count=row["retry_count"], error=error, created_at=row["created_at"],
        updated_at=row["updated_at"], started_at=row["started_at"], current_step=row["current_step"],
        stuck_after=row["stuck_after"], claims=row["claims"], past_pivot=bool(row["past_pivot"]),
        locks=tuple(row["locks"] or ()),
    )


def _load(conn: Connection, saga_id: str) -> WorkflowRecord | None:
    row = conn.execute(select(wf_table).where(wf_table.c.id == saga_id)).mappings().first()
    if row is None:
        return None
    step_rows = conn.execute(select(steps_table).where(steps_table.c.workflow_id == saga_id)
                             .order_by(steps_table.c.position)).mappings().all()
    return _record(row, list(step_rows))


def advisory_lock_key(saga_id: str, schema: str | None) -> int:
    """The advisory lock key of ``saga_id`` in ``schema``.

    Advisory locks are per database, so sagas with the same id in two schemas
    of one database (tenants, test runs) must not claim the same key.
    """
    return advisory_key(f"{schema}.{saga_id}" if schema else saga_id)


#: Advisory lock keys some session holds in this database now. A bigint key is
#: split into two oids in pg_locks; shifting the high half back rebuilds the
#: signed key. Locks in other databases of the same server are not claims here.
_HELD_ADVISORY_KEYS = (
    select(literal_column("(classid::bigint << 32) | objid::bigint", BigInteger).label("key"))
    .select_from(text("pg_catalog.pg_locks"))
    .where(text("locktype = 'advisory' AND objsubid = 1 AND granted "
                "AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())"))
    .subquery("held")
)
_RECOVERY_PAGE = 500


_RELEASE_LOCKS = delete(locks_table).where(locks_table.c.workflow_id == bindparam("w_id"))


def _insert_locks(conn: Connection, new: NewWorkflow, *, held: bool) -> None:
    """Write the new saga's lock rows: held by a saga that runs now, queued for a submitted one.

    A saga that runs now needs every key free of holders; sagas waiting in
    the queue hold none of their keys.
    """
    if held:
        taken = conn.execute(select(locks_table.c.key, locks_table.c.workflow_id)
                             .where(locks_table.c.key.in_(new.locks), locks_table.c.held.is_(True))).first()
        if taken is not None:
            raise _resource_locked(new.id, new.saga_name, taken.key, taken.workflow_id)
    # The unique index over held keys is what makes two holders impossible;
    # the check above only names the holder. The caller's transaction rolls
    # back on the error, so nothing of the saga is written.
    try:
        conn.execute(insert(locks_table), [dict(key=key, workflow_id=new.id, held=held,
                                                requested_at=new.now) for key in new.locks])
    except IntegrityError as exc:  # a concurrent saga took a key in between
        raise _resource_locked(new.id, new.saga_name, None, None) from exc


def _take_waiting_locks(conn: Connection, saga_id: str, saga_name: str) -> None:
    """Take all of a queued saga's keys at once, or raise ResourceLockedError and take none.

    A key is free for this saga when nobody holds it and no saga queued
    before it waits for it: sagas start in submission order per key.
    """
    mine = locks_table.alias("mine")
    other = locks_table.alias("other")
    blocking = conn.execute(
        select(mine.c.key, other.c.workflow_id)
        .join(other, (other.c.key == mine.c.key) & (other.c.workflow_id != mine.c.workflow_id))
        .where(mine.c.workflow_id == saga_id, mine.c.held.is_(False),
               other.c.held.is_(True) | (tuple_(other.c.requested_at, other.c.workflow_id)
                                         < tuple_(mine.c.requested_at, mine.c.workflow_id)))
        .order_by(other.c.held.desc())).first()
    if blocking is not None:
        raise _resource_locked(saga_id, saga_name, blocking.key, blocking.workflow_id, waiting=True)
    try:
        conn.execute(update(locks_table).where(locks_table.c.workflow_id == saga_id,
                                               locks_table.c.held.is_(False)).values(held=True))
    except IntegrityError as exc:
        raise _resource_locked(saga_id, saga_name, None, None, waiting=True) from exc


def _resource_locked(saga_id: str, saga_name: str, key: str | None, holder: str | None, *,
                     waiting: bool = False) -> ResourceLockedError:
    what = f"lock key {key!r} is held by saga {holder!r}" if key else "one of its lock keys was just taken"
    then = ("it waits in pending and a worker starts it when its keys are free" if waiting else
            "nothing was written; wait for that saga to finish, or submit() to queue this one")
    return ResourceLockedError(f"saga {saga_id!r} ({saga_name}) cannot start: {what}; {then}",
                               saga_id=saga_id, key=key, holder=holder)


def _cleared_engine_failure() -> dict[str, Any]:
    """A retry's values that clear the error block of a saga the engine parked.

    A saga parked while going forward (no step failed: ``error_step`` is
    NULL; or past its pivot) resumes forward, so its reason is cleared; a
    compensation's failure keeps the original error, as the compensation
    continues.
    """
    c = wf_table.c
    forward = (c.error_step.is_(None) & c.compensation_error.is_(None)) | c.past_pivot.is_(True)
    return {column: case((forward, null()), else_=c[column])
            for column in ("error", "error_at", "error_traceback")}


def _is_permanent(exc: BaseException) -> bool:
    """Whether the database refused the data itself, so the same write fails again."""
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        # 22 data exception, 23 integrity, 42 syntax or access rule, 54 program limit.
        return sqlstate[:2] in ("22", "23", "42", "54")
    return isinstance(exc, (DataError, IntegrityError, ProgrammingError)) or not isinstance(exc, DBAPIError)


def _is_disconnect(exc: BaseException) -> bool:
    # Only a lost connection is retried. Lock or statement timeouts, deadlocks
    # and serialization failures are OperationalErrors on a live connection
    # that still holds the claim: they propagate, and the saga stays resumable.
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class SqlSession:
    """One running saga's pinned connection, claim and version fence."""

    def __init__(self, storage: SqlStorage, saga_id: str) -> None:
        self._storage = storage
        self._saga_id = saga_id
        self._conn: Connection | None = None
        self._token = owner_token()
        self._advisory_held = False
        self._lease_held = False
        self._autocommit = False
        self._version = 0
        self._insert_workflow = _INSERT_WORKFLOW.get(storage.dialect)
        #: The saga holds (or waits for) semantic locks, released by its terminal commit.
        self._has_locks = False
        self._lock_key = storage.lock_key(saga_id)

    # -- connection ---------------------------------------------------------

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._storage.engine.connect()
            self._autocommit = False
        return self._conn

    @contextlib.contextmanager
    def _transaction(self, conn: Connection, *, one_statement: bool = False) -> Iterator[None]:
        """A transaction on the pinned connection.

        On PostgreSQL a transaction of ``one_statement`` runs in autocommit
        mode: the statement is its own transaction, atomic and durable when
        its answer arrives, and the BEGIN and COMMIT round trips are saved
        (one round trip per commit instead of three). A transaction of
        several statements gets BEGIN and COMMIT as usual.
        """
        autocommit = one_statement and self._storage.advisory
        if autocommit != self._autocommit:
            # Only the client's mode changes (psycopg sends nothing); the pool
            # restores the default isolation level when the connection returns.
            conn.execution_options(isolation_level="AUTOCOMMIT" if autocommit else conn.default_isolation_level)
            self._autocommit = autocommit
        with conn.begin():
            yield

    def _try_advisory(self, conn: Connection) -> bool:
        got = conn.execute(_TRY_ADVISORY_LOCK, {"key": self._lock_key}).scalar_one()
        return bool(got)

    def _locked(self, holder: str | None = None) -> SagaLockedError:
        who = f" ({holder})" if holder else ""
        return SagaLockedError(
            f"saga {self._saga_id!r} is being run by another live executor{who}; wait for it to "
            "finish, or let a worker resume it if that executor dies", saga_id=self._saga_id)

    # -- protocol -----------------------------------------------------------

    def begin(self, new: NewWorkflow | None, *, saga_id: str, claim: bool,
              now: datetime) -> WorkflowRecord | None:
        conn = self._connection()
        if new is not None:
            self._has_locks = bool(new.locks)
        if self._storage.advisory:
            # A saga with semantic locks is created in a transaction of several
            # statements: a key that is taken must undo the whole creation.
            if new is not None and new.steps and not new.locks:
                if claim:
                    # A session lock outlives a failed statement: from here on
                    # close() releases whatever this session may hold.
                    self._advisory_held = True
                with self._transaction(conn, one_statement=True):
                    created = self._insert_new(conn, new, claim)
                if created:
                    self._version = 0
                    return None
                # It exists, or another session held the claim (and may have
                # let it go without creating it): claim, then insert or load.
            if claim:
                with self._transaction(conn, one_statement=True):
                    if not self._try_advisory(conn):
                        raise self._locked()
                self._advisory_held = True
        with self._transaction(conn):
            if new is not None and self._insert_new(conn, new, claim):
                if new.locks:
                    _insert_locks(conn, new, held=claim and new.started)
                self._lease_held = claim and not self._storage.advisory
                self._version = 0
                return None
            record = _load(conn, saga_id)
            if record is None:
                raise SagaNotFoundError(f"no saga with id {saga_id!r}", saga_id=saga_id)
            self._has_locks = bool(record.locks)
            if claim and not record.status.is_terminal:
                if record.locks:
                    _take_waiting_locks(conn, saga_id, record.saga_name)
                if self._storage.advisory:
                    conn.execute(_COUNT_CLAIM, {"w_id": saga_id})
                else:
                    self._claim_lease(conn, now)
                record = dataclasses.replace(record, claims=record.claims + 1)
            self._version = int(conn.execute(select(wf_table.c.version)
                                              .where(wf_table.c.id == saga_id)).scalar_one())
            return record

    def _insert_new(self, conn: Connection, new: NewWorkflow, claim: bool) -> bool:
        lease = claim and not self._storage.advisory
        values = dict(
            id=new.id, saga_name=new.saga_name, status=WorkflowStatus.PENDING.value, input=new.input,
            idempotency_key=new.idempotency_key, fingerprint=new.fingerprint, retry_count=0,
            version=0, created_at=new.now, updated_at=new.now, started_at=new.now if new.started else None,
            stuck_after=new.stuck_after, owner=self._token if lease else None,
            lease_expires_at=new.now + LEASE_DURATION if lease else None,
            # The creating executor is the saga's first claim when it runs it.
            claims=1 if claim else 0,
            lock_key=self._lock_key if self._storage.advisory else None,
            locks=list(new.locks) if new.locks else None,
        )
        if self._storage.dialect == "postgresql" and new.steps:
            params: dict[str, Any] = {f"w_{c}": v for c, v in values.items()}
            params.update(names=[s.name for s in new.steps], positions=[s.position for s in new.steps],
                          keys=[s.idempotency_key for s in new.steps])
            claim_too = claim and self._storage.advisory
            if claim_too:
                params["key"] = self._lock_key
            stmt = _create_saga_postgresql(tuple(values), claim_too)
            return conn.execute(stmt, params).first() is not None
        if self._insert_workflow is not None:
            if conn.execute(self._insert_workflow, values).scalar_one_or_none() is None:
                return False
        else:  # a dialect without ON CONFLICT: read first
            if conn.execute(select(wf_table.c.id).where(wf_table.c.id == new.id)).first():
                return False
            conn.execute(insert(wf_table), values)
        if new.steps:
            conn.execute(_INSERT_STEPS, [
                dict(workflow_id=new.id, name=s.name, position=s.position, idempotency_key=s.idempotency_key,
                     status=StepStatus.PENDING.value, attempts=0)
                for s in new.steps
            ])
        return True

    def _claim_lease(self, conn: Connection, now: datetime) -> None:
        row = conn.execute(select(wf_table.c.owner, wf_table.c.lease_expires_at, wf_table.c.status,
                                  wf_table.c.version)
                           .where(wf_table.c.id == self._saga_id)).first()
        if row is None or WorkflowStatus(row.status).is_terminal:
            return
        owner, expires = row.owner, row.lease_expires_at
        free = claim_is_free(owner, expires, now)
        if not free:
            raise self._locked(f"owner {owner}, lease until {expires.isoformat() if expires else '?'}")
        if owner is not None:
            logger.warning("taking over saga %s from dead or expired executor %s", self._saga_id, owner,
                           extra={"saga_id": self._saga_id})
        conn.execute(update(wf_table).where(wf_table.c.id == self._saga_id, wf_table.c.version == row.version)
                     .values(owner=self._token, lease_expires_at=now + LEASE_DURATION,
                             version=row.version + 1, claims=wf_table.c.claims + 1))
        self._lease_held = True

    def write(self, change: Change) -> None:
        expected = self._version
        deadline = time.monotonic() + self._storage.reconnect_timeout
        delay = 0.05
        replay = False
        while True:
            try:
                conn = self._connection()
            except DBAPIError as exc:
                failure: DBAPIError = exc  # cannot reach the server (yet): keep trying
            else:
                try:
                    if replay and self._landed(conn, expected):
                        break
                    self._write_once(conn, change, expected)
                    break
                except SagaLockedError:
                    raise
                except Exception as exc:
                    if not _is_disconnect(exc):
                        raise self._write_failed(exc) from exc
                    assert isinstance(exc, DBAPIError)
                    failure = exc
            if time.monotonic() > deadline:
                raise StorageError(
                    f"lost the connection to {self._storage.url} while saving saga "
                    f"{self._saga_id!r} and could not reconnect within "
                    f"{self._storage.reconnect_timeout:.0f}s; the saga stays resumable",
                    saga_id=self._saga_id) from failure
            if not replay:
                logger.warning("connection lost while saving saga %s; reconnecting", self._saga_id,
                               extra={"saga_id": self._saga_id})
            self._advisory_held = False
            replay = True
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        self._version = expected + 1
        if change.workflow.get("status") in _TERMINAL_VALUES:
            self._lease_held = False  # cleared by the final write itself

    def _write_failed(self, exc: Exception) -> StorageError:
        orig = getattr(exc, "orig", None) or exc
        permanent = _is_permanent(exc)
        # The driver's message only: SQLAlchemy's own carries the SQL and its parameters.
        detail = truncate_error(f"{type(orig).__name__}: {str(orig).strip()}".split("\n")[0], 512)
        then = ("the database refused the data itself, so the same write would fail again" if permanent
                else "the saga stays resumable")
        return StorageError(f"saving saga {self._saga_id!r} to {self._storage.url} failed: {detail}; "
                            f"nothing was written by this commit and {then}",
                            saga_id=self._saga_id, permanent=permanent)

    def _landed(self, conn: Connection, expected: int) -> bool:
        """After a reconnect: re-claim, then tell whether the lost commit landed."""
        with self._transaction(conn):
            if self._storage.advisory:
                if not self._try_advisory(conn):
                    raise self._locked("it was taken over while this executor was disconnected")
                self._advisory_held = True
            version = conn.execute(select(wf_table.c.version).where(wf_table.c.id == self._saga_id)).scalar()
        if version == expected + 1:
            return True
        if version != expected:
            raise self._locked("it changed while this executor was disconnected")
        return False

    def _write_once(self, conn: Connection, change: Change, expected: int) -> None:
        values = dict(change.workflow, version=expected + 1)
        if self._lease_held:
            if values.get("status") in _TERMINAL_VALUES:
                values["owner"] = None
                values["lease_expires_at"] = None
            else:
                values["lease_expires_at"] = values["updated_at"] + LEASE_DURATION
        release = self._has_locks and values.get("status") in _RELEASING_VALUES
        if self._storage.dialect == "postgresql" and len(change.steps) <= 1 and not (
                change.new_steps or change.removed_steps or release):
            # The common commits: one step and the saga row, or the saga row alone.
            with self._transaction(conn, one_statement=True):
                self._write_one_statement(conn, change, values, expected)
            return
        with self._transaction(conn):
            self._update_workflow(conn, values, expected)
            if release:
                conn.execute(_RELEASE_LOCKS, {"w_id": self._saga_id})
            for name, step_values in change.steps.items():
                conn.execute(_UPDATE_STEP, dict(step_values, s_workflow_id=self._saga_id, s_name=name))
            if change.new_steps:
                conn.execute(_INSERT_STEPS, [
                    dict(workflow_id=self._saga_id, name=s.name, position=s.position,
                         idempotency_key=s.idempotency_key, status=StepStatus.PENDING.value, attempts=0)
                    for s in change.new_steps
                ])
            if change.removed_steps:
                conn.execute(delete(steps_table).where(steps_table.c.workflow_id == self._saga_id,
                                                       steps_table.c.name.in_(change.removed_steps)))

    def _write_one_statement(self, conn: Connection, change: Change, values: dict[str, Any],
                             expected: int) -> None:
        if not change.steps:
            self._update_workflow(conn, values, expected)
            return
        # A step row always exists: every step row is inserted with the saga
        # (or by the change that adds it).
        ((name, step_values),) = change.steps.items()
        params = {f"w_{c}": v for c, v in values.items()}
        params.update({f"s_{c}": v for c, v in step_values.items()})
        params.update(w_id=self._saga_id, w_expected=expected, s_name=name)
        stmt = _update_workflow_and_step(tuple(values), tuple(step_values))
        if conn.execute(stmt, params).rowcount != 1:
            raise self._locked("its stored state moved on; this executor stops")

    def _update_workflow(self, conn: Connection, values: dict[str, Any], expected: int) -> None:
        result = conn.execute(_UPDATE_WORKFLOW, dict(values, w_id=self._saga_id, w_expected=expected))
        if result.rowcount != 1:
            raise self._locked("its stored state moved on; this executor stops")

    def close(self) -> None:
        conn = self._conn
        self._conn = None
        if conn is None:
            return
        try:
            if self._lease_held and not conn.invalidated:
                with conn.begin():
                    conn.execute(update(wf_table)
                                 .where(wf_table.c.id == self._saga_id, wf_table.c.owner == self._token)
                                 .values(owner=None, lease_expires_at=None))
            if self._advisory_held and not conn.invalidated:
                # A session lock is not transactional: release it outside any
                # transaction, in one round trip.
                if conn.in_transaction():
                    conn.rollback()
                with self._transaction(conn, one_statement=True):
                    conn.execute(_ADVISORY_UNLOCK)
        except DBAPIError:
            # The claim dies with the connection: invalidate it rather than pool it.
            conn.invalidate()
        finally:
            self._lease_held = False
            self._advisory_held = False
            conn.close()


_TERMINAL_VALUES = frozenset(s.value for s in WorkflowStatus if s.is_terminal)
#: Terminal statuses that release a saga's semantic locks; dead letter keeps
#: them, as the resource is in an unknown state until a person resolves it.
_RELEASING_VALUES = frozenset(s.value for s in WorkflowStatus
                              if s.is_terminal and s != WorkflowStatus.DEAD_LETTER)
