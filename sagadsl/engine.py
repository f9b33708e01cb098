"""``SagaEngine``: runs sagas against a storage and answers questions about them."""

from __future__ import annotations

import asyncio
import dataclasses
import contextlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Collection, Iterable, Literal, TypeVar

from sqlalchemy.engine import Engine

from .admission import admit, could_be_stored
from .clock import Clock, SystemClock
from .definition import SagaDefinition
from .errors import (
    DefinitionChangedError,
    IdempotencyConflictError,
    SagaError,
    SagaNotFoundError,
    UnknownSagaError,
)
from .events import EventEmitter, SagaEvents
from .limits import MAX_RETRY_COUNT, describe_exception, truncate_error
from .locks import Lock
from .records import QueryResult, SagaResult, WorkflowRecord
from .registry import lookup
from .runtime.executor import SagaExecutor
from .runtime.loops import inline, run_sync
from .runtime.resume import parked, rebuild, stored_outcome
from .runtime.outcomes import cannot_drive_error, is_engine_failure
from .saga import Saga
from .status import ACTIVE_STATUSES, WorkflowStatus
from .storage.base import CancelOutcome, Change, LockRecord, NewWorkflow, QueryFilter, Storage, StorageSession
from .storage.notify import DoneListener
from .storage.sql import SqlStorage
from .worker import Worker, WorkerStats


__all__ = ["SagaEngine", "DEFAULT_DATABASE_URL"]

logger = logging.getLogger("sagadsl.engine")

#: What :meth:`SagaEngine.prune` deletes unless told otherwise: sagas that ended and need no one.
PRUNED_BY_DEFAULT = (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED)
T = TypeVar("T")

#: The embedded default, used when neither an argument nor $SAGADSL_DATABASE_URL is given.
DEFAULT_DATABASE_URL = "sqlite:///sagadsl.db"
#: ``wait`` polls the saga after this many seconds, doubling up to ``_WAIT_POLL_MAX``.
#: On PostgreSQL a notification from the terminal commit wakes it sooner.
_WAIT_POLL_FIRST = 0.01
_WAIT_POLL_MAX = 0.5
#: Sagas ``prune`` deletes per transaction.
PRUNE_BATCH = 1000


class SagaEngine:
    """Runs sagas durably and answers questions about them.

    Args:
        url_or_storage: A database URL (``sqlite:///app.db``,
            ``postgresql+psycopg://user@host/db``), a SQLAlchemy ``Engine``, or
            a :class:`~sagadsl.storage.Storage`. Default: ``$SAGADSL_DATABASE_URL``,
            else the embedded SQLite file ``./sagadsl.db``.
        events: Callbacks observing every saga this engine runs.
        clock: Source of time (tests inject a fake one).
        lock: A :class:`~sagadsl.Lock` to use instead of the storage's own
            claims (:class:`~sagadsl.NoopLock` turns claiming off).
        step_threads: Size of the thread pool that runs sync steps.
        schema: PostgreSQL schema holding sagadsl's tables.
    """

    def __init__(
        self,
        url_or_storage: str | Engine | Storage | None = None,
        *,
        events: SagaEvents | None = None,
        clock: Clock | None = None,
        lock: Lock | None = None,
        step_threads: int = 16,
        schema: str | None = None,
    ) -> None:
        if url_or_storage is None:
            url_or_storage = os.environ.get("SAGADSL_DATABASE_URL") or DEFAULT_DATABASE_URL
        if isinstance(url_or_storage, (str, Engine)):
            storage: Storage = SqlStorage(url_or_storage, schema=schema)
        else:
            storage = url_or_storage
        self.storage = storage
        if not storage.is_production_safe:
            logger.warning("sagadsl is using %r, which is not production safe: sagas are lost when the "
                           "process exits; use SQLite or PostgreSQL outside tests", storage)
        self.events = events
        self.clock: Clock = clock or SystemClock()
        self.lock = lock
        self._step_pool = ThreadPoolExecutor(max_workers=step_threads, thread_name_prefix="sagadsl-step")
        self._db_pool = ThreadPoolExecutor(max_workers=max(4, step_threads // 2),
                                           thread_name_prefix="sagadsl-db")
        self._listener: DoneListener | None = None
        self._listener_guard = threading.Lock()

    # -- running ----------------------------------------------------------------

    def run(self, saga_cls: type[Saga[T]], input: T, *, saga_id: str,
            idempotency_key: str | None = None) -> SagaResult:
        """Run a saga to its end in this thread and return its result.

        Creates the saga, or resumes it if ``saga_id`` exists and is not
        finished; a finished saga is not run again. A saga that exists runs
        on its stored input: ``input`` is only used to create it.

        Returns:
            The completed saga's status and typed step results.

        Raises:
            IdempotencyRequiredError: ``saga_id`` or ``idempotency_key`` is missing or empty.
            IdempotencyConflictError: ``saga_id`` exists with another key or saga class.
            SagaFailedError: a step failed and everything was compensated.
            CompensationFailedError: a compensation failed; the saga is in dead letter.
            DeadLetterError: the saga was already in dead letter.
            SagaLockedError: another live executor is driving it.
            SerializationError: the input cannot be stored as JSON.
        """
        return self._sync(self._start(saga_cls, input, saga_id, idempotency_key, offload=False))

    async def run_async(self, saga_cls: type[Saga[T]], input: T, *, saga_id: str,
                        idempotency_key: str | None = None) -> SagaResult:
        """Like :meth:`run`, on the caller's event loop; database calls go to threads."""
        return await self._start(saga_cls, input, saga_id, idempotency_key, offload=True)

    def submit(self, saga_cls: type[Saga[T]], input: T, *, saga_id: str,
               idempotency_key: str | None = None,
               start_after: datetime | timedelta | None = None) -> WorkflowRecord | None:
        """Commit the saga as ``pending`` and return at once; a worker runs it.

        The saga's 15-minute execution budget starts when a worker first
        takes it, not while it waits in the queue. :meth:`wait` gives its
        outcome.

        Submitting an existing saga id again with the same key changes
        nothing and returns the stored saga; another key raises
        :class:`IdempotencyConflictError`.

        Args:
            start_after: No worker takes the saga before this time (a
                timezone-aware datetime, or a delay from now). It only
                holds workers back: :meth:`run` or :meth:`resume` of the saga
                id runs it at once, as an explicit request to.

        Returns:
            None when the saga was created, else the stored saga.
        """
        new = self._submitted(saga_cls, input, saga_id, idempotency_key, start_after)
        return self._begin_submitted(new, saga_cls, idempotency_key)

    async def submit_async(self, saga_cls: type[Saga[T]], input: T, *, saga_id: str,
                           idempotency_key: str | None = None,
                           start_after: datetime | timedelta | None = None) -> WorkflowRecord | None:
        """Like :meth:`submit`, for async code: the database commit runs in a thread."""
        new = self._submitted(saga_cls, input, saga_id, idempotency_key, start_after)
        return await self._offloaded(lambda: self._begin_submitted(new, saga_cls, idempotency_key))

    def _submitted(self, saga_cls: type[Saga[Any]], input: Any, saga_id: Any, idempotency_key: Any,
                   start_after: datetime | timedelta | None) -> NewWorkflow:
        new, _ = self._prepare(saga_cls, input, saga_id, idempotency_key)
        if start_after is None:
            return dataclasses.replace(new, started=False)
        if isinstance(start_after, timedelta):
            start_after = new.now + start_after
        elif not isinstance(start_after, datetime):
            raise TypeError(f"{saga_cls.__name__}: start_after must be a datetime or a timedelta, "
                            f"got {type(start_after).__name__}")
        elif start_after.tzinfo is None:
            raise ValueError(f"{saga_cls.__name__}: start_after {start_after!r} is a naive datetime; pass a "
                             "timezone-aware one, e.g. datetime.now(timezone.utc) + timedelta(hours=1)")
        # It is not stuck while it waits for its time.
        stuck_after = (None if new.stuck_after is None
                       else max(new.stuck_after, start_after + (new.stuck_after - new.now)))
        return dataclasses.replace(new, started=False, start_after=start_after, stuck_after=stuck_after)

    def _begin_submitted(self, new: NewWorkflow, saga_cls: type[Saga[Any]],
                         idempotency_key: str | None) -> WorkflowRecord | None:
        session = self.storage.session(new.id)
        try:
            record = session.begin(new, saga_id=new.id, claim=False, now=new.now)
        finally:
            session.close()
        if record is not None:
            self._check_same(record, saga_cls, idempotency_key)
        return record

    def wait(self, saga_id: str, timeout: float | None = None) -> SagaResult:
        """Block until saga ``saga_id`` ends and give its outcome, as :meth:`run` would.

        Another thread, process or worker drives the saga; this only watches.
        On PostgreSQL the terminal commit wakes the waiter (``LISTEN``/``NOTIFY``,
        one listening connection per engine, however many wait); elsewhere,
        and as a fallback, the saga is polled every 10 ms, backing off to 500 ms.

        Args:
            timeout: Seconds to wait at most (None: until it ends).

        Returns:
            The completed saga's status and typed step results.

        Raises:
            TimeoutError: the saga did not end within ``timeout``.
            SagaNotFoundError: no saga has this id.
            SagaFailedError: a step failed and everything was compensated.
            DeadLetterError: the saga is in dead letter.
            UnknownSagaError: its class is not imported in this process.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        outcome = self._outcome(saga_id)
        if outcome is not None:
            return outcome
        woken = threading.Event()
        unwatch = self._watch(saga_id, woken.set)
        try:
            delay = _WAIT_POLL_FIRST
            while True:
                woken.clear()
                outcome = self._outcome(saga_id)
                if outcome is not None:
                    return outcome
                woken.wait(_pause(delay, deadline, saga_id, timeout))
                delay = min(delay * 2, _WAIT_POLL_MAX)
        finally:
            unwatch()

    async def wait_async(self, saga_id: str, timeout: float | None = None) -> SagaResult:
        """Like :meth:`wait`, on the caller's event loop; database reads go to threads."""
        deadline = None if timeout is None else time.monotonic() + timeout
        outcome = await self._offloaded(lambda: self._outcome(saga_id))
        if outcome is not None:
            return outcome
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(woken.set)

        unwatch = await self._offloaded(lambda: self._watch(saga_id, wake))
        try:
            delay = _WAIT_POLL_FIRST
            while True:
                woken.clear()
                outcome = await self._offloaded(lambda: self._outcome(saga_id))
                if outcome is not None:
                    return outcome
                pause = _pause(delay, deadline, saga_id, timeout)
                # Not contextlib.suppress: from Python 3.11 on it would swallow _pause's TimeoutError too.
                try:
                    await asyncio.wait_for(woken.wait(), pause)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, _WAIT_POLL_MAX)
        finally:
            unwatch()

    def _outcome(self, saga_id: str) -> SagaResult | None:
        """The outcome of a finished saga (returned or raised), None while it is active."""
        record = self.get(saga_id)
        if record is None:
            raise SagaNotFoundError(f"no saga with id {saga_id!r}", saga_id=saga_id)
        if not record.status.is_terminal:
            return None
        return self._stored_outcome(record, lookup(record.saga_name).definition)

    def _watch(self, saga_id: str, wake: Callable[[], None]) -> Callable[[], None]:
        """Have ``wake`` called when the saga ends, where the database can say so; returns the undo."""
        storage = self.storage
        if not (isinstance(storage, SqlStorage) and storage.dialect == "postgresql"):
            return _nothing
        with self._listener_guard:
            if self._listener is None:
                self._listener = DoneListener(storage.engine, storage.schema)
            listener = self._listener
        return listener.watch(saga_id, wake)

    def resume(self, saga_id: str) -> SagaResult:
        """Drive a stored saga to its end by id, rebuilding it from its registered name.

        Raises:
            SagaNotFoundError: no saga has this id.
            UnknownSagaError: its class is not imported in this process.
        """
        return self._sync(self._drive(None, saga_id, None, None, offload=False))

    async def resume_async(self, saga_id: str) -> SagaResult:
        """Like :meth:`resume`, on the caller's event loop."""
        return await self._drive(None, saga_id, None, None, offload=True)

    def _sync(self, coro: Awaitable[T]) -> T:
        return run_sync(coro)

    def _prepare(self, saga_cls: type[Saga[Any]], input: Any, saga_id: Any,
                 idempotency_key: Any) -> tuple[NewWorkflow, Saga[Any]]:
        self._check_can_run(saga_cls.definition)
        return admit(saga_cls, input, saga_id, idempotency_key, self.clock.now())

    def _check_can_run(self, definition: SagaDefinition) -> None:
        """Refuse, before anything is written or run, a saga this storage cannot carry."""
        if definition.has_transactional and not getattr(self.storage, "runs_transactional_steps", False):
            names = [s.name for s in definition.steps if s.transactional] + [
                s.compensation.method_name for s in definition.steps
                if s.compensation is not None and s.compensation.transactional]
            raise SagaError(
                f"{definition.class_name} has transactional steps ({', '.join(names)}), whose writes commit "
                f"in the saga's own database transaction, but {self.storage!r} is not a SQL storage; run it "
                "on SQLite or PostgreSQL (SagaEngine('sqlite:///...') or a postgresql+psycopg:// URL)")

    async def _start(self, saga_cls: type[Saga[Any]], input: Any, saga_id: str,
                     idempotency_key: str | None, offload: bool) -> SagaResult:
        new, saga = self._prepare(saga_cls, input, saga_id, idempotency_key)
        return await self._drive(saga_cls, saga_id, new, saga, offload=offload)

    def _check_same(self, record: WorkflowRecord, saga_cls: type[Saga[Any]] | None,
                    idempotency_key: str | None) -> None:
        if saga_cls is not None and record.saga_name != saga_cls.definition.name:
            raise IdempotencyConflictError(
                f"saga id {record.id!r} already belongs to a {record.saga_name} saga, not "
                f"{saga_cls.definition.name}; use another saga_id", saga_id=record.id)
        if idempotency_key is not None and record.idempotency_key != idempotency_key:
            raise IdempotencyConflictError(
                f"saga {record.id!r} already exists with idempotency key {record.idempotency_key!r}, "
                f"not {idempotency_key!r}; the same id with another key is a different request. Use a "
                "new saga_id, or the original key to get the stored outcome", saga_id=record.id)

    async def _drive(self, saga_cls: type[Saga[Any]] | None, saga_id: str, new: NewWorkflow | None,
                     saga: Saga[Any] | None, *, offload: bool) -> SagaResult:
        db = self._offloaded if offload else inline
        lock_cm = self.lock.acquire(saga_id) if self.lock is not None else contextlib.nullcontext()
        with lock_cm:
            session = self.storage.session(saga_id)
            try:
                now = new.now if new is not None else self.clock.now()
                record = await db(lambda: session.begin(new, saga_id=saga_id, claim=self.lock is None,
                                                        now=now))
                return await self._execute(saga_cls, saga_id, new, saga, session, record, db)
            finally:
                await db(session.close)

    async def _execute(self, saga_cls: type[Saga[Any]] | None, saga_id: str, new: NewWorkflow | None,
                       saga: Saga[Any] | None, session: StorageSession, record: WorkflowRecord | None,
                       db: Callable[[Callable[[], Any]], Awaitable[Any]]) -> SagaResult:
        if record is None:
            assert saga is not None and saga_cls is not None and new is not None
            executor = self._executor(saga, saga_cls.definition, session, None, new.now, db)
            executor.keys.update({s.name: s.idempotency_key for s in new.steps})
            return await executor.execute(resumed=False)
        self._check_same(record, saga_cls, new.idempotency_key if new is not None else None)
        cls = saga_cls or lookup(record.saga_name)
        definition = cls.definition
        if record.status.is_terminal:
            return self._stored_outcome(record, definition)
        self._check_can_run(definition)
        try:
            executor = await self._resumed_executor(cls, definition, session, record, db)
        except Exception as exc:
            # A class this process lacks, or has in an incompatible version, is
            # not parked: during a rolling deploy another worker can drive it.
            if not is_engine_failure(exc) or isinstance(exc, (UnknownSagaError, DefinitionChangedError)):
                raise
            reason = f"the engine cannot resume it: {describe_exception(exc)}"
            await self._park(session, record, reason, exc, db)
            raise cannot_drive_error(saga_id, record.saga_name, reason) from exc
        return await executor.execute(resumed=True)

    async def _resumed_executor(self, cls: type[Saga[Any]], definition: SagaDefinition,
                                session: StorageSession, record: WorkflowRecord,
                                db: Callable[[Callable[[], Any]], Awaitable[Any]]) -> SagaExecutor:
        """Rebuild a stored saga and the executor that resumes it (the first commit included)."""
        saga, change, started_at = rebuild(cls, definition, record, self.clock.now())
        executor = self._executor(saga, definition, session, record, started_at, db)
        if change is not None:
            await db(lambda: session.write(change))
        return executor

    async def _park(self, session: StorageSession, record: WorkflowRecord, reason: str, cause: BaseException,
                    db: Callable[[Callable[[], Any]], Awaitable[Any]]) -> None:
        values = parked(record, reason, cause, self.clock.now())
        await db(lambda: session.write(Change(workflow=values)))
        error = cannot_drive_error(record.id, record.saga_name, reason)
        error.__cause__ = cause
        await EventEmitter(self.events, record.id, record.saga_name).emit("dead_letter", error=error)

    def _executor(self, saga: Saga[Any], definition: SagaDefinition, session: StorageSession,
                  record: WorkflowRecord | None, started_at: datetime,
                  db: Callable[[Callable[[], Any]], Awaitable[Any]]) -> SagaExecutor:
        return SagaExecutor(
            saga=saga, definition=definition, session=session, record=record, started_at=started_at,
            clock=self.clock, pool=self._step_pool,
            emitter=EventEmitter(self.events, saga.saga_id, definition.name), db=db,
        )

    def _stored_outcome(self, record: WorkflowRecord, definition: SagaDefinition) -> SagaResult:
        return stored_outcome(record, definition)

    async def _offloaded(self, fn: Callable[[], T]) -> T:
        future = asyncio.get_running_loop().run_in_executor(self._db_pool, fn)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The storage call cannot be stopped halfway. Wait for it, so the
            # session is never used by two threads at once and the ``finally``
            # that closes it (releasing the claim) sees what it did.
            while not future.done():
                try:
                    await asyncio.shield(future)
                except asyncio.CancelledError:
                    continue
                except Exception:
                    break
            raise

    # -- questions and operator actions ----------------------------------------

    def get(self, saga_id: str) -> WorkflowRecord | None:
        """The stored saga ``saga_id`` with its steps, or None."""
        if not could_be_stored(saga_id):
            return None  # no backend could have stored it
        return self.storage.get(saga_id)

    def query(
        self,
        status: WorkflowStatus | str | Iterable[WorkflowStatus | str] | None = None,
        *,
        saga_name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        updated_after: datetime | None = None,
        updated_before: datetime | None = None,
        stuck: bool = False,
        offset: int = 0,
        limit: int = 100,
        order: Literal["newest", "oldest"] = "newest",
    ) -> QueryResult:
        """One page of sagas, newest (or oldest) first, and the total that match.

        Args:
            status: One status or several.
            saga_name: Only sagas of this registered name.
            created_after: Only sagas created at or after this time.
            created_before: Only sagas created before this time.
            updated_after: Only sagas last updated at or after this time.
            updated_before: Only sagas last updated before this time.
            stuck: Only active sagas that have made no progress for longer
                than their timeouts allow.
            offset: How many matching sagas to skip.
            limit: The most sagas to return.
            order: ``newest`` or ``oldest`` created first.
        """
        if limit < 0 or offset < 0:
            raise ValueError("offset and limit must be >= 0")
        if order not in ("newest", "oldest"):
            raise ValueError(f"order must be 'newest' or 'oldest', not {order!r}")
        statuses: tuple[WorkflowStatus, ...]
        if status is None:
            statuses = ()
        elif isinstance(status, (str, WorkflowStatus)):
            statuses = (WorkflowStatus(status),)
        else:
            statuses = tuple(WorkflowStatus(s) for s in status)
        return self.storage.query(QueryFilter(
            statuses=statuses, saga_name=saga_name, created_after=created_after,
            created_before=created_before, updated_after=updated_after, updated_before=updated_before,
            stuck_at=self.clock.now() if stuck else None, offset=offset, limit=limit, order=order))

    def count(self, *statuses: WorkflowStatus | str) -> int:
        """How many sagas have one of ``statuses`` (all sagas if none given)."""
        return self.storage.count([WorkflowStatus(s) for s in statuses])

    def count_by_status(self) -> dict[WorkflowStatus, int]:
        """How many sagas are in each status (every status present, 0 if none)."""
        return self.storage.count_by_status()

    def locks(self, *keys: str) -> list[LockRecord]:
        """Who holds and who waits for semantic lock keys (every key if none given).

        Ordered by key; for each key its holder first, then its waiters in queue order.
        """
        return self.storage.locks(keys)

    def count_by_name(self) -> dict[str, dict[WorkflowStatus, int]]:
        """How many sagas of each registered name are in each status (statuses with none left out).

        Unlike :meth:`count_by_status` this scans the sagas; it is meant for
        operators, not for a hot path.
        """
        return self.storage.count_by_name()

    def prune(self, older_than: timedelta,
              statuses: Collection[WorkflowStatus | str] = PRUNED_BY_DEFAULT,
              *, batch: int = PRUNE_BATCH, progress: Callable[[int], None] | None = None) -> int:
        """Delete finished sagas last updated more than ``older_than`` ago, with their steps.

        Deletes ``batch`` sagas per short transaction, so running sagas are
        not held up. Dead-letter sagas are only deleted when ``statuses``
        names ``dead_letter``; active ones never. The counts by status stay
        exact.

        Args:
            older_than: How long ago a saga's last update must be.
            statuses: The statuses to delete.
            batch: Sagas deleted per transaction.
            progress: Called with the number deleted after each batch.

        Returns:
            How many sagas were deleted.

        Raises:
            ValueError: ``statuses`` names an active status, or ``older_than``
                or ``batch`` is negative or zero.
        """
        chosen = tuple(WorkflowStatus(s) for s in statuses)
        active = [s.value for s in chosen if s in ACTIVE_STATUSES]
        if active:
            raise ValueError(f"prune never deletes active sagas; remove {', '.join(active)} from statuses")
        if older_than < timedelta(0):
            raise ValueError(f"older_than must not be negative, got {older_than}")
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        return self.storage.prune(self.clock.now() - older_than, chosen, batch, progress)

    def retry(self, saga_id: str) -> int:
        """Move a dead-letter saga back to ``pending`` with a new execution budget.

        A worker (or :meth:`resume`) then continues its compensation.

        Returns:
            The saga's retry count after this retry.

        Raises:
            SagaNotFoundError: no saga has this id.
            InvalidStateError: the saga is not in dead letter.
            RetryCapExceededError: it was already retried ``MAX_RETRY_COUNT`` times.
        """
        return self.storage.retry(saga_id, self.clock.now(), MAX_RETRY_COUNT)

    def cancel(self, saga_id: str, reason: str) -> CancelOutcome:
        """Cancel a saga that has not passed its pivot: it is compensated and ends ``cancelled``.

        A saga that waits for a worker (submitted, not started) ends at
        once. A running one is noticed by its executor at its next commit,
        on whichever machine it runs, or by a worker if its executor died: a
        step in flight finishes and its result is committed, then every
        completed step is compensated (a failing compensation sends it to
        dead letter, as usual). This call does not wait for that; use
        :meth:`wait`, which then raises :class:`SagaCancelledError`.

        A cancel and the saga's own completion are ordered by the database:
        if the saga completed first, this raises; if the cancel came first,
        the saga ends ``cancelled``. Never both.

        Returns:
            ``"cancelled"`` if the saga ended in this call, ``"requested"`` if
            its executor will compensate it (also when it was already asked).

        Raises:
            SagaNotFoundError: no saga has this id.
            InvalidStateError: it has ended, is being compensated after a
                failure, or has started or passed its pivot step.
            ValueError: ``reason`` is empty.
        """
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, got {type(reason).__name__}")
        if not reason.strip():
            raise ValueError(f"cancelling saga {saga_id!r} needs a reason: say why, for the people who "
                             "will read it later (saga-admin show prints it)")
        if not could_be_stored(saga_id):
            raise SagaNotFoundError(f"no saga with id {saga_id!r}", saga_id=str(saga_id))
        outcome = self.storage.cancel(saga_id, truncate_error(reason), self.clock.now())
        logger.info("saga %s: cancel %s (%s)", saga_id, outcome, reason, extra={"saga_id": saga_id, "step": None})
        return outcome

    def run_worker(
        self,
        *,
        concurrency: int = 4,
        poll_interval: float = 1.0,
        stop_when_idle: bool = False,
        install_signal_handlers: bool = False,
    ) -> WorkerStats:
        """Run a recovery worker in this thread until it is stopped.

        See :class:`sagadsl.worker.Worker` for what it picks up and the options.
        Saga classes must be imported first, so they are registered.
        """
        return Worker(self, concurrency=concurrency, poll_interval=poll_interval,
                      stop_when_idle=stop_when_idle,
                      install_signal_handlers=install_signal_handlers).run()

    def close(self) -> None:
        """Stop the thread pools and release database connections."""
        with self._listener_guard:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self._step_pool.shutdown(wait=False, cancel_futures=True)
        self._db_pool.shutdown(wait=False, cancel_futures=True)
        self.storage.close()

    def __enter__(self) -> SagaEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SagaEngine({self.storage!r})"


def _nothing() -> None:
    pass


def _pause(delay: float, deadline: float | None, saga_id: str, timeout: float | None) -> float:
    """How long a waiter sleeps before it polls again; TimeoutError once its deadline passed."""
    if deadline is None:
        return delay
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"saga {saga_id!r} did not finish within {timeout:g} s; it is still running "
                           "(or waiting for a worker): wait again, or look at it with "
                           f"`saga-admin show {saga_id}`")
    return min(delay, remaining)
