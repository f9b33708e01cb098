"""Saga and step statuses, as ``str`` enums so that ``status == "completed"``."""

from __future__ import annotations

from enum import Enum

__all__ = ["WorkflowStatus", "StepStatus"]


class WorkflowStatus(str, Enum):
    """Where a saga is in its life.

    ``pending`` → ``completed``; ``pending`` → ``compensating`` → ``failed``;
    ``pending`` → (``compensating`` →) ``cancelled`` after ``engine.cancel``;
    any → ``dead_letter``; ``dead_letter`` → ``pending`` only through a retry.
    """

    PENDING = "pending"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD_LETTER = "dead_letter"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        """True for statuses that no executor moves on from by itself."""
        return self in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.DEAD_LETTER,
                        WorkflowStatus.CANCELLED)


class StepStatus(str, Enum):
    """Where one step is: ``pending`` → ``completed`` → ``compensated``.

    ``failed`` marks the step whose failure started the compensation, and
    ``compensation_failed`` a completed step whose compensation gave up.
    """

    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"

    def __str__(self) -> str:
        return self.value


ACTIVE_STATUSES = (WorkflowStatus.PENDING, WorkflowStatus.COMPENSATING)
