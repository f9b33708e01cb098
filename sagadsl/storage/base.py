"""The storage contract: what the engine needs from a place that keeps sagas.

Two backends ship: :class:`~sagadsl.storage.sql.SqlStorage` (SQLite and
PostgreSQL) and :class:`~sagadsl.storage.memory.InMemoryStorage` (tests only).
A team can plug in its own by implementing :class:`Storage`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Collection, Literal, Protocol, Sequence, runtime_checkable

from ..records import QueryResult, WorkflowRecord
from ..status import WorkflowStatus

__all__ = ["Storage", "StorageSession", "NewWorkflow", "NewStep", "QueryFilter", "Change", "LockRecord",
           "CancelOutcome", "GUARDED_COLUMNS"]


@dataclass(frozen=True)
class NewStep:
    """A step row written when its saga is created (status ``pending``)."""

    name: str
    position: int
    idempotency_key: str


@dataclass(frozen=True)
class NewWorkflow:
    """Everything written by a saga's first commit."""

    id: str
    saga_name: str
    input: Any
    idempotency_key: str
    fingerprint: str
    steps: tuple[NewStep, ...]
    now: datetime
    stuck_after: datetime | None
    #: False for a submitted saga: its execution budget starts when an
    #: executor first claims it, not while it waits for a worker.
    started: bool = True
    #: Semantic lock keys, rendered: taken in the creating commit by a saga
    #: that runs at once, queued for one that is submitted.
    locks: tuple[str, ...] = ()
    #: A submitted saga that no worker takes before this time (None: at once).
    start_after: datetime | None = None


@dataclass(frozen=True)
class Change:
    """One commit's worth of changes to a saga and its steps.

    ``workflow`` holds column values of the saga row (``updated_at`` is
    always set); ``steps`` maps step names to column values of their rows.
    """

    workflow: dict[str, Any]
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    new_steps: tuple[NewStep, ...] = ()
    removed_steps: tuple[str, ...] = ()
    #: The commit completes the saga, or starts or passes its pivot: if a
    #: cancel was requested first, the saga row's ``GUARDED_COLUMNS`` keep
    #: their values (decided by the database, under the row's lock), while
    #: the rest of the change (the step's result) still lands.
    unless_cancelled: bool = False
    #: The commit of a transactional step's (or compensation's) outcome: the
    #: writes of its successful attempt commit in the same transaction. Any
    #: other commit rolls back what an attempt left open.
    with_step_writes: bool = False


#: The saga row's columns that a commit made "unless cancelled" leaves as
#: they are once a cancel is requested: the completion (status, stuck time and
#: the claim's release), the pivot's start and its passing. The rest of the
#: commit (a step's result, the current step) lands either way.
GUARDED_COLUMNS = frozenset({"status", "stuck_after", "past_pivot", "pivot_started", "owner",
                             "lease_expires_at", "finished_at"})

#: What ``cancel`` did: ended a saga that had not started, or asked its executor to.
CancelOutcome = Literal["cancelled", "requested"]


@dataclass(frozen=True)
class LockRecord:
    """A semantic lock key and a saga that holds it or waits for it."""

    key: str
    saga_id: str
    held: bool
    requested_at: datetime


@dataclass(frozen=True)
class QueryFilter:
    """What :meth:`Storage.query` selects; unset fields do not filter."""

    statuses: tuple[WorkflowStatus, ...] = ()
    saga_name: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    stuck_at: datetime | None = None
    offset: int = 0
    limit: int = 100
    #: Newest or oldest created first (ties broken by id, the same way).
    order: Literal["newest", "oldest"] = "newest"


@runtime_checkable
class StorageSession(Protocol):
    """The storage side of one running saga: one pinned connection, one claim.

    Used by one executor at a time; closing it releases the claim.
    """

    def begin(self, new: NewWorkflow | None, *, saga_id: str, claim: bool,
              now: datetime) -> WorkflowRecord | None:
        """Claim the saga and write ``new`` in one commit.

        Returns None when ``new`` was written; otherwise the stored saga
        (claimed too, if it is not finished).

        Raises:
            SagaLockedError: another live executor holds the saga.
            SagaNotFoundError: ``new`` is None and no such saga exists.
        """
        ...

    def write(self, change: Change) -> str | None:
        """Commit ``change`` atomically; return the saga's cancel reason, if a cancel was requested.

        The reason comes back with the commit itself, so a running saga
        notices a cancel without a round trip of its own.

        Raises:
            SagaLockedError: the claim was lost; nothing was written.
        """
        ...

    def close(self) -> None:
        """Release the claim and the connection."""
        ...


@runtime_checkable
class Storage(Protocol):
    """Where sagas are kept."""

    #: False for storages that lose everything when the process ends.
    is_production_safe: bool
    #: True when a dead executor's claim is released at once.
    detects_dead_executors: bool

    def session(self, saga_id: str) -> StorageSession:
        """A session for running the saga ``saga_id``."""
        ...

    def get(self, saga_id: str) -> WorkflowRecord | None:
        """The saga ``saga_id`` with its steps, or None."""
        ...

    def query(self, flt: QueryFilter) -> QueryResult:
        """One page of sagas matching ``flt``, in ``flt.order`` of creation, and the total."""
        ...

    def count(self, statuses: Sequence[WorkflowStatus]) -> int:
        """How many sagas have one of ``statuses`` (all sagas if empty)."""
        ...

    def count_by_status(self) -> dict[WorkflowStatus, int]:
        """How many sagas are in each status."""
        ...

    def retry(self, saga_id: str, now: datetime, max_retries: int) -> int:
        """Move a dead-letter saga back to ``pending`` and return its new retry count.

        The cap is enforced in the same atomic update that moves the saga.

        Raises:
            SagaNotFoundError: no saga has this id.
            InvalidStateError: the saga is not in dead letter.
            RetryCapExceededError: it was already retried ``max_retries`` times.
        """
        ...

    def recoverable(self, now: datetime, limit: int, exclude: Collection[str] = ()) -> list[str]:
        """Ids of active sagas that may have no live executor, oldest first.

        Oldest by when the saga became due: its ``start_after``, else its
        creation (then by id).

        A saga whose ``start_after`` is later than ``now`` is left out.
        ``exclude`` lists ids the caller does not want (it runs them, or it
        set them aside), so that they never crowd out the others.
        """
        ...

    def count_by_name(self) -> dict[str, dict[WorkflowStatus, int]]:
        """How many sagas of each registered name are in each status (statuses with none left out)."""
        ...

    def prune(self, before: datetime, statuses: Collection[WorkflowStatus], batch: int,
              progress: Callable[[int], None] | None = None) -> int:
        """Delete the sagas in ``statuses`` last updated before ``before``, with their steps and locks.

        Deletes ``batch`` sagas per transaction, so that no lock is held for
        long, and calls ``progress`` with the number deleted after each one.
        Active sagas are never deleted, whatever ``statuses`` says.

        Returns:
            How many sagas were deleted.
        """
        ...

    def cancel(self, saga_id: str, reason: str, now: datetime) -> CancelOutcome:
        """Cancel the saga: at once if it has not started, else by asking its executor.

        A saga that waits (``pending``, never started by an executor) ends
        ``cancelled`` in this call, releasing its semantic locks and fencing
        off a worker that is taking it. A running one gets ``reason`` in its
        row, which its executor's next commit returns. Asking twice is
        harmless and returns ``"requested"`` again.

        Raises:
            SagaNotFoundError: no saga has this id.
            InvalidStateError: the saga has ended, is being compensated after
                a failure, or has started its pivot step.
        """
        ...

    def locks(self, keys: Sequence[str] = ()) -> list[LockRecord]:
        """Who holds and who waits for semantic lock keys (all keys if none given).

        Ordered by key, then holder first, then waiters in queue order.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...

