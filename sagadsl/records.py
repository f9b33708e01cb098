"""What the engine hands back: stored sagas, their steps, and run results."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .status import StepStatus, WorkflowStatus

__all__ = ["StepRecord", "ErrorInfo", "WorkflowRecord", "QueryResult", "SagaResult"]


@dataclass(frozen=True)
class StepRecord:
    """One step of a stored saga.

    ``result`` is the stored JSON form; :meth:`SagaEngine.run` decodes it to
    the step's annotated type.
    """

    name: str
    position: int
    idempotency_key: str
    status: StepStatus
    result: Any = None
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    compensation_error: str | None = None
    compensated_at: datetime | None = None


@dataclass(frozen=True)
class ErrorInfo:
    """Why a saga failed: the failing step, its error and any compensation error.

    ``step_name`` is None when no step failed but the engine could not drive
    the saga (its stored state does not decode, its executor kept dying):
    ``error`` then says why, and a retry resumes it where it was.
    """

    step_name: str | None
    error: str | None
    compensation_error: str | None
    timestamp: datetime | None
    #: The failing step's traceback (bounded to 16 KiB), when it failed in Python.
    traceback: str | None = None
    #: The traceback of the first compensation that failed, if any.
    compensation_traceback: str | None = None


@dataclass(frozen=True)
class WorkflowRecord:
    """A stored saga as the storage holds it.

    ``input`` and step results are in their stored JSON form.
    """

    id: str
    saga_name: str
    status: WorkflowStatus
    input: Any
    idempotency_key: str
    fingerprint: str
    steps: tuple[StepRecord, ...]
    retry_count: int
    error: ErrorInfo | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    current_step: str | None = None
    stuck_after: datetime | None = None
    #: Executors that took the saga since its last commit of progress; past
    #: ``MAX_CLAIMS_WITHOUT_PROGRESS`` it is parked in dead letter as poison.
    claims: int = 0
    #: True once the pivot step's completion committed: the saga only goes forward.
    past_pivot: bool = False
    #: The semantic lock keys the saga holds (or, while it waits, wants).
    locks: tuple[str, ...] = ()
    #: A submitted saga that no worker takes before this time (None: at once).
    start_after: datetime | None = None
    #: Set by ``engine.cancel``: the reason given. A saga with one and not
    #: yet ``cancelled`` is being compensated (or will be, at its next commit).
    cancel_reason: str | None = None
    #: The pivot step has started: from then on the saga cannot be cancelled.
    pivot_started: bool = False

    def step(self, name: str) -> StepRecord | None:
        """The step called ``name``, or None."""
        for step in self.steps:
            if step.name == name:
                return step
        return None

    @property
    def deadline(self) -> datetime | None:
        """When the saga's execution budget runs out (None until an executor starts it)."""
        from .limits import MAX_EXECUTION_DURATION

        return self.started_at + MAX_EXECUTION_DURATION if self.started_at is not None else None


@dataclass(frozen=True)
class QueryResult:
    """One page of a query and the total number of matching sagas."""

    workflows: list[WorkflowRecord]
    total: int


@dataclass(frozen=True)
class SagaResult:
    """The outcome of a completed saga: its status and each step's typed result."""

    saga_id: str
    status: WorkflowStatus
    results: dict[str, Any] = field(default_factory=dict)
