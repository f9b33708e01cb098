"""SQL storage on SQLAlchemy Core: SQLite (embedded default) and PostgreSQL.

One pinned connection per running saga. Writes are Core statements built
from the ORM tables, each commit guarded by the saga row's ``version`` so
an executor that lost its claim cannot overwrite a newer state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from datetime import datetime
from typing import Any, Callable, Collection, Iterator, Sequence, TypeVar

from sqlalchemy import and_, case, delete, func, insert, null, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError

from ..errors import (
    InvalidStateError,
    RetryCapExceededError,
    SagaLockedError,
    SagaNotFoundError,
    StorageError,
)
from ..limits import truncate_error
from ..records import QueryResult, WorkflowRecord
from ..status import ACTIVE_STATUSES, StepStatus, WorkflowStatus
from ..urls import mask_url
from .base import CancelOutcome, Change, LockRecord, NewWorkflow, QueryFilter
from .claims import ADVISORY, LEASE, LEASE_DURATION, ClaimProtocol, advisory_lock_key, locked
from .connect import connect as _connect
from .connect import create_engine as _create_engine
from .connect import read as _read
from .connect import translated as _translated
from .models import locks as locks_table
from .models import status_counts as counts_table
from .models import steps as steps_table
from .models import workflows as wf_table
from .rows import conditions, counted, load, load_versioned, only_statuses, record_of, steps_for
from .schema import check_schema, migrate, validate_schema_name
from .semantic_locks import insert_locks, take_waiting_locks
from .driver_sql import DriverStatements
from .step_transactions import StepAttempt, open_attempt
from .cancelling import CANCEL_READ_COLUMNS, cancel_waiting, explain_refused_cancel, request_cancel
from .statements import (INSERT_STEPS, INSERT_WORKFLOW, RELEASE_LOCKS, UPDATE_STEP, create_saga_postgresql,
                         update_workflow, update_workflow_and_step)

__all__ = ["SqlStorage", "SqlSession", "mask_url", "advisory_lock_key", "LEASE_DURATION"]

logger = logging.getLogger("sagadsl.storage")

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
    #: Transactional steps write through the saga's own connection and transaction (DESIGN §9).
    runs_transactional_steps = True
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
        #: The claim protocol, chosen once: advisory locks on PostgreSQL, leases elsewhere.
        self.claims: ClaimProtocol = ADVISORY if self.dialect == "postgresql" else LEASE
        #: PostgreSQL commits a single statement without BEGIN/COMMIT round trips.
        self.single_statement_autocommit = self.dialect == "postgresql"
        self.url = mask_url(engine.url)
        #: The hot-path statements, compiled once to the driver's SQL.
        self.statements = DriverStatements(engine)
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
        return _read(self.engine, f"reading saga {saga_id!r}", lambda conn: load(conn, saga_id),
                     saga_id=saga_id)

    def query(self, flt: QueryFilter) -> QueryResult:
        where = conditions(flt)
        page = (select(wf_table).where(*where)
                .order_by(*((wf_table.c.created_at.asc(), wf_table.c.id.asc()) if flt.order == "oldest"
                            else (wf_table.c.created_at.desc(), wf_table.c.id.desc())))
                .offset(flt.offset).limit(flt.limit))
        if only_statuses(flt):
            # The trigger-kept counts answer at any table size.
            total = counted(flt.statuses)
        else:
            total = select(func.count()).select_from(wf_table).where(*where)
        def fetch(conn: Connection) -> tuple[Sequence[Any], int, dict[str, list[Any]]]:
            rows = conn.execute(page).mappings().all()
            count = int(conn.execute(total).scalar_one())
            return rows, count, steps_for(conn, [r["id"] for r in rows])

        rows, count, step_rows = _read(self.engine, "querying sagas", fetch)
        return QueryResult(workflows=[record_of(r, step_rows.get(r["id"], [])) for r in rows], total=count)

    def count(self, statuses: Sequence[WorkflowStatus]) -> int:
        return _read(self.engine, "counting sagas",
                     lambda conn: int(conn.execute(counted(statuses)).scalar_one()))

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
        return _read(self.engine, "reading semantic locks", lambda conn: [
            LockRecord(r.key, r.workflow_id, bool(r.held), r.requested_at) for r in conn.execute(stmt)])

    def lock_key(self, saga_id: str) -> int:
        """The PostgreSQL advisory lock key that claims ``saga_id`` in this storage."""
        return advisory_lock_key(saga_id, self.schema)

    def recoverable(self, now: datetime, limit: int, exclude: Collection[str] = ()) -> list[str]:
        return _read(self.engine, "looking for recoverable sagas",
                     lambda conn: self.claims.recoverable(conn, now, limit, exclude))

    def count_by_name(self) -> dict[str, dict[WorkflowStatus, int]]:
        c = wf_table.c
        stmt = select(c.saga_name, c.status, func.count()).group_by(c.saga_name, c.status)

        def fetch(conn: Connection) -> dict[str, dict[WorkflowStatus, int]]:
            counts: dict[str, dict[WorkflowStatus, int]] = {}
            for name, status, n in conn.execute(stmt):
                counts.setdefault(name, {})[WorkflowStatus(status)] = int(n)
            return counts

        return _read(self.engine, "counting sagas by name", fetch)

    # -- operator actions ---------------------------------------------------

    def prune(self, before: datetime, statuses: Collection[WorkflowStatus], batch: int,
              progress: Callable[[int], None] | None = None) -> int:
        c = wf_table.c
        wanted = [s.value for s in statuses if s not in ACTIVE_STATUSES]
        if not wanted or batch < 1:
            return 0
        # finished_at is updated_at as of the commit that ended the saga; a row
        # written by other means may lack it, and goes by updated_at. A saga
        # is created before it ends, so the created_at bound changes nothing
        # but lets the (status, created_at) index narrow the scan.
        matching = (c.status.in_(wanted), c.created_at < before,
                    or_(c.finished_at < before, and_(c.finished_at.is_(None), c.updated_at < before)))
        # The ids first, then the rows: PostgreSQL may run a LIMIT ... FOR
        # UPDATE subquery of ``DELETE ... WHERE id IN (...)`` more than once,
        # deleting more than a batch in one transaction.
        pick = select(c.id).where(*matching).limit(batch)
        if self.dialect == "postgresql":
            # Rows an executor or a retry holds are left for a later batch, not waited for.
            pick = pick.with_for_update(skip_locked=True)
        doing = "pruning old sagas"
        deleted = 0
        while True:
            # One short transaction per batch: its steps and locks go by ON
            # DELETE CASCADE, the status counts by their triggers.
            with (_connect(self.engine, doing) as conn, _translated(self.engine, doing), conn.begin()):
                ids = list(conn.execute(pick).scalars())
                # The conditions again: a saga a retry moved back to pending meanwhile stays.
                n = conn.execute(delete(wf_table).where(c.id.in_(ids), *matching)).rowcount if ids else 0
            deleted += n
            if n and progress is not None:
                progress(n)
            if n < batch:
                return deleted

    def retry(self, saga_id: str, now: datetime, max_retries: int) -> int:
        stmt = (update(wf_table)
                .where(wf_table.c.id == saga_id,
                       wf_table.c.status == WorkflowStatus.DEAD_LETTER.value,
                       wf_table.c.retry_count < max_retries)
                .values(status=WorkflowStatus.PENDING.value, retry_count=wf_table.c.retry_count + 1,
                        started_at=now, updated_at=now, stuck_after=now, owner=None, finished_at=None,
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

    def cancel(self, saga_id: str, reason: str, now: datetime) -> CancelOutcome:
        doing = f"cancelling saga {saga_id!r}"
        with _connect(self.engine, doing, saga_id=saga_id) as conn, _translated(self.engine, doing, saga_id=saga_id):
            # A saga that moves between the updates and the read (a worker
            # starts it) is tried again; it cannot move that way twice.
            for _ in range(3):
                with conn.begin():
                    if conn.execute(cancel_waiting(reason, now), {"w_id": saga_id}).first() is not None:
                        conn.execute(RELEASE_LOCKS, {"w_id": saga_id})
                        return "cancelled"
                    if conn.execute(request_cancel(reason), {"w_id": saga_id}).first() is not None:
                        return "requested"
                    row = conn.execute(select(*CANCEL_READ_COLUMNS).where(wf_table.c.id == saga_id)).first()
                outcome = explain_refused_cancel(saga_id, row)
                if outcome is not None:
                    return outcome
        raise InvalidStateError(f"saga {saga_id!r} kept changing while it was being cancelled; try again",
                                saga_id=saga_id)

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
    """One running saga's pinned connection, claim and version fence.

    The claim protocol is the storage's (:mod:`sagadsl.storage.claims`); the
    session only decides when to take, renew and release it.
    """

    def __init__(self, storage: SqlStorage, saga_id: str) -> None:
        self._storage = storage
        self._saga_id = saga_id
        self._conn: Connection | None = None
        self._claim = storage.claims.for_session(saga_id, storage.schema)
        self._autocommit = False
        self._version = 0
        #: The saga holds (or waits for) semantic locks, released by its terminal commit.
        self._has_locks = False
        #: The last attempt of a transactional step, whose transaction may still be open.
        self._attempt: StepAttempt | None = None
        #: The connection was closed under a running attempt: take the claim again before writing.
        self._reclaim = False

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
        autocommit = one_statement and self._storage.single_statement_autocommit
        if autocommit != self._autocommit:
            # Only the client's mode changes (psycopg sends nothing); the pool
            # restores the default isolation level when the connection returns.
            conn.execution_options(isolation_level="AUTOCOMMIT" if autocommit else conn.default_isolation_level)
            self._autocommit = autocommit
        with conn.begin():
            yield

    # -- protocol -----------------------------------------------------------

    def begin(self, new: NewWorkflow | None, *, saga_id: str, claim: bool,
              now: datetime) -> WorkflowRecord | None:
        conn = self._connection()
        if new is not None:
            self._has_locks = bool(new.locks)
            # One statement creates the saga (and takes the claim, where the
            # protocol allows); a saga with semantic locks needs several, as a
            # key that is taken must undo the whole creation.
            if new.steps and not new.locks and self._storage.dialect == "postgresql":
                with self._transaction(conn, one_statement=True):
                    created = self._insert_new(conn, new, claim, one_statement=True)
                if created:
                    self._claim.created(claim)
                    self._version = 0
                    return None
                # It exists, or another session held the claim (and may have
                # let it go without creating it): claim, then insert or load.
        if claim:
            with self._transaction(conn, one_statement=True):
                self._claim.take(conn)
        try:
            with self._transaction(conn):
                if new is not None and self._insert_new(conn, new, claim):
                    if new.locks:
                        insert_locks(conn, new, held=claim and new.started)
                    self._claim.created(claim)
                    self._version = 0
                    return None
                return self._load_and_count(conn, saga_id, claim, now)
        except _MovedOn:
            pass
        # A commit landed between the read and the count of the take-over:
        # the one that ended the saga (which released its claim in the same
        # statement, a moment before other sessions could see that commit)
        # or a cancel. That first transaction was rolled back; what is read
        # now is what that commit left, and a saga is never driven from a
        # read older than its version.
        with self._transaction(conn):
            loaded = load_versioned(conn, saga_id)
        if loaded is None:
            raise SagaNotFoundError(f"no saga with id {saga_id!r}", saga_id=saga_id)
        record, self._version = loaded
        if not record.status.is_terminal:
            raise locked(saga_id, "it moved on while this executor was taking it over")
        return record

    def _load_and_count(self, conn: Connection, saga_id: str, claim: bool, now: datetime) -> WorkflowRecord:
        """Inside the loading transaction: read the saga and, if it is active and claimed, count the take-over.

        Raises:
            _MovedOn: the count found a newer version than the one read.
        """
        loaded = load_versioned(conn, saga_id)
        if loaded is None:
            raise SagaNotFoundError(f"no saga with id {saga_id!r}", saga_id=saga_id)
        record, version = loaded
        self._has_locks = bool(record.locks)
        if claim and not record.status.is_terminal:
            if record.locks:
                take_waiting_locks(conn, saga_id, record.saga_name)
            counted = self._claim.count(conn, now)
            if counted != version + 1:
                raise _MovedOn
            record = dataclasses.replace(record, claims=record.claims + 1)
            version = counted
        self._version = version
        return record

    def _insert_new(self, conn: Connection, new: NewWorkflow, claim: bool, *, one_statement: bool = False) -> bool:
        values = dict(
            id=new.id, saga_name=new.saga_name, status=WorkflowStatus.PENDING.value, input=new.input,
            idempotency_key=new.idempotency_key, fingerprint=new.fingerprint, retry_count=0,
            version=0, created_at=new.now, updated_at=new.now, started_at=new.now if new.started else None,
            stuck_after=new.stuck_after,
            # The creating executor is the saga's first claim when it runs it.
            claims=1 if claim else 0,
            locks=list(new.locks) if new.locks else None, start_after=new.start_after,
            # Given, not left to the columns' Python defaults: the create statement then runs as driver SQL.
            past_pivot=False, pivot_started=False,
            **self._claim.creation_values(claim, new.now),
        )
        if one_statement:
            params: dict[str, Any] = {f"w_{c}": v for c, v in values.items()}
            params.update(names=[s.name for s in new.steps], positions=[s.position for s in new.steps],
                          keys=[s.idempotency_key for s in new.steps])
            claim_too = claim and self._claim.claims_in_create
            if claim_too:
                params["key"] = values["lock_key"]
            stmt = create_saga_postgresql(tuple(values), claim_too)
            return self._storage.statements.execute(conn, stmt, params).first() is not None
        insert_workflow = INSERT_WORKFLOW.get(self._storage.dialect)
        if insert_workflow is not None:
            if conn.execute(insert_workflow, values).scalar_one_or_none() is None:
                return False
        else:  # a dialect without ON CONFLICT: read first
            if conn.execute(select(wf_table.c.id).where(wf_table.c.id == new.id)).first():
                return False
            conn.execute(insert(wf_table), values)
        if new.steps:
            conn.execute(INSERT_STEPS, [
                dict(workflow_id=new.id, name=s.name, position=s.position, idempotency_key=s.idempotency_key,
                     status=StepStatus.PENDING.value, attempts=0)
                for s in new.steps
            ])
        return True

    # -- transactional steps --------------------------------------------------

    def open_step_attempt(self, where: str) -> StepAttempt:
        """Begin the transaction of one attempt of the transactional step ``where`` (``Class.method``).

        Called from the attempt's own thread; the executor runs nothing
        else on this connection until the attempt finishes.
        """
        self._drop_attempt()
        conn = self._connection()
        if self._reclaim:
            self._landed(conn, self._version)  # takes the claim again; raises if the saga moved on
            self._reclaim = False
        if self._autocommit:
            conn.execution_options(isolation_level=conn.default_isolation_level)
            self._autocommit = False
        self._attempt = open_attempt(conn, where)
        return self._attempt

    def _drop_attempt(self) -> None:
        """Undo what the last attempt left open: roll it back, or close the connection under it."""
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            return
        if attempt.done.is_set():
            attempt.rollback()
            return
        # Its thread still runs (it timed out): it must not write into
        # anything that follows. Closing the connection rolls its
        # transaction back on the server and fails its next statement.
        attempt.closed = True
        attempt.conn.invalidate()
        self._claim.forget()
        self._reclaim = True

    def _commit_attempt(self, change: Change) -> str | None:
        """Commit ``change`` in the transaction of the attempt that succeeded, with its writes."""
        attempt, self._attempt = self._attempt, None
        assert attempt is not None and attempt.succeeded and attempt.done.is_set()
        expected = self._version
        values = _row_values(change, expected)
        self._claim.write_values(values)
        release = self._has_locks and values.get("status") in _RELEASING_VALUES
        try:
            if self._storage.dialect == "postgresql" and len(change.steps) <= 1 and not (
                    change.new_steps or change.removed_steps or release):
                reason = self._write_one_statement(attempt.conn, change, values, expected)
            else:
                reason = self._write_statements(attempt.conn, change, values, expected)
            attempt.conn.commit()
        except SagaLockedError:
            attempt.rollback()
            raise
        except Exception as exc:
            attempt.rollback()
            if _is_disconnect(exc):
                self._claim.forget()
                self._reclaim = True
                raise StorageError(
                    f"lost the connection to {self._storage.url} while committing a transactional step "
                    f"of saga {self._saga_id!r}; the saga stays resumable: if the commit did not land, "
                    "the step runs again with none of its writes kept", saga_id=self._saga_id) from exc
            raise self._write_failed(exc) from exc
        self._version = expected + 1
        if _ends(change, reason):
            self._claim.ended(released=False)
        return reason

    # -- commits ------------------------------------------------------------

    def write(self, change: Change) -> str | None:
        if change.with_step_writes and self._attempt is not None and self._attempt.succeeded:
            return self._commit_attempt(change)
        self._drop_attempt()  # a failed (or discarded) attempt's writes never land
        expected = self._version
        reason: str | None = None
        released = False
        deadline = time.monotonic() + self._storage.reconnect_timeout
        delay = 0.05
        replay = self._reclaim
        while True:
            try:
                conn = self._connection()
            except DBAPIError as exc:
                failure: DBAPIError = exc  # cannot reach the server (yet): keep trying
            else:
                try:
                    if replay:
                        landed, reason = self._landed(conn, expected)
                        if landed:
                            break
                    reason, released = self._write_once(conn, change, expected)
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
            self._claim.forget()
            replay = True
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        self._reclaim = False
        self._version = expected + 1
        if _ends(change, reason):
            self._claim.ended(released=released)
        return reason

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

    def _landed(self, conn: Connection, expected: int) -> tuple[bool, str | None]:
        """After a reconnect: re-claim, then tell whether the lost commit landed (and the cancel reason)."""
        with self._transaction(conn):
            self._claim.after_reconnect(conn)
            row = conn.execute(select(wf_table.c.version, wf_table.c.cancel_reason)
                               .where(wf_table.c.id == self._saga_id)).first()
        version = row.version if row is not None else None
        if version == expected + 1:
            assert row is not None
            return True, row.cancel_reason
        if version != expected:
            raise locked(self._saga_id, "it changed while this executor was disconnected")
        return False, None

    def _write_once(self, conn: Connection, change: Change, expected: int) -> tuple[str | None, bool]:
        """One try at committing ``change``: the cancel reason, and whether a commit that ends the saga
        also released the claim."""
        values = _row_values(change, expected)
        self._claim.write_values(values)
        release = self._has_locks and values.get("status") in _RELEASING_VALUES
        if self._storage.single_statement_autocommit and len(change.steps) <= 1 and not (
                change.new_steps or change.removed_steps or release):
            # The common commits: one step and the saga row, or the saga row alone.
            release_claim = (self._claim.releases_in_terminal_commit and self._claim.held
                             and values.get("status") in _TERMINAL_VALUES)
            with self._transaction(conn, one_statement=True):
                return self._write_one_statement(conn, change, values, expected, release_claim), release_claim
        with self._transaction(conn):
            return self._write_statements(conn, change, values, expected), False

    def _write_statements(self, conn: Connection, change: Change, values: dict[str, Any],
                          expected: int) -> str | None:
        """The statements of a commit of several, inside the transaction open on ``conn``."""
        release = self._has_locks and values.get("status") in _RELEASING_VALUES
        reason = self._update_workflow(conn, values, expected, change.unless_cancelled)
        if release and (reason is None or not change.unless_cancelled):
            conn.execute(RELEASE_LOCKS, {"w_id": self._saga_id})
        for name, step_values in change.steps.items():
            conn.execute(UPDATE_STEP, dict(step_values, s_workflow_id=self._saga_id, s_name=name))
        if change.new_steps:
            conn.execute(INSERT_STEPS, [
                dict(workflow_id=self._saga_id, name=s.name, position=s.position,
                     idempotency_key=s.idempotency_key, status=StepStatus.PENDING.value, attempts=0)
                for s in change.new_steps
            ])
        if change.removed_steps:
            conn.execute(delete(steps_table).where(steps_table.c.workflow_id == self._saga_id,
                                                   steps_table.c.name.in_(change.removed_steps)))
        return reason

    def _write_one_statement(self, conn: Connection, change: Change, values: dict[str, Any],
                             expected: int, release_claim: bool = False) -> str | None:
        if not change.steps:
            return self._update_workflow(conn, values, expected, change.unless_cancelled, release_claim)
        # A step row always exists: every step row is inserted with the saga
        # (or by the change that adds it).
        ((name, step_values),) = change.steps.items()
        params = {f"w_{c}": v for c, v in values.items()}
        params.update({f"s_{c}": v for c, v in step_values.items()})
        params.update(w_id=self._saga_id, w_expected=expected, s_name=name)
        stmt = update_workflow_and_step(tuple(values), tuple(step_values), change.unless_cancelled, release_claim)
        row = self._storage.statements.execute(conn, stmt, params).first()
        if row is None:
            raise locked(self._saga_id, "its stored state moved on; this executor stops")
        return row[0]  # type: ignore[no-any-return]

    def _update_workflow(self, conn: Connection, values: dict[str, Any], expected: int,
                         unless_cancelled: bool, release_claim: bool = False) -> str | None:
        params = {f"w_{c}": v for c, v in values.items()}
        params.update(w_id=self._saga_id, w_expected=expected)
        stmt = update_workflow(tuple(values), unless_cancelled, release_claim)
        row = self._storage.statements.execute(conn, stmt, params).first()
        if row is None:
            raise locked(self._saga_id, "its stored state moved on; this executor stops")
        return row[0]  # type: ignore[no-any-return]

    def close(self) -> None:
        conn = self._conn
        self._conn = None
        if conn is None:
            return
        try:
            if self._claim.held and not conn.invalidated:
                if conn.in_transaction():
                    conn.rollback()
                with self._transaction(conn, one_statement=True):
                    self._claim.release(conn)
        except DBAPIError:
            # The claim dies with the connection: invalidate it rather than pool it.
            conn.invalidate()
        finally:
            self._claim.forget()
            conn.close()


#: Terminal statuses that release a saga's semantic locks; dead letter keeps
#: them, as the resource is in an unknown state until a person resolves it.
_RELEASING_VALUES = frozenset(s.value for s in WorkflowStatus
                              if s.is_terminal and s != WorkflowStatus.DEAD_LETTER)
_TERMINAL_VALUES = frozenset(s.value for s in WorkflowStatus if s.is_terminal)


class _MovedOn(Exception):
    """The saga row changed between the read and the count of a take-over."""


def _ends(change: Change, reason: str | None) -> bool:
    """Whether a commit of ``change`` that returned the cancel ``reason`` ended the saga."""
    return change.workflow.get("status") in _TERMINAL_VALUES and (reason is None or not change.unless_cancelled)


def _row_values(change: Change, expected: int) -> dict[str, Any]:
    """The saga row's values of a commit: the change's, the next version, and when it ended."""
    values = dict(change.workflow, version=expected + 1)
    if values.get("status") in _TERMINAL_VALUES:
        values.setdefault("finished_at", values.get("updated_at"))
    return values
