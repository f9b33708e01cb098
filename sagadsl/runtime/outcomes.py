"""How a saga ends, in words: the errors ``run`` raises and the values that park a saga.

Each message is written once, here, whether the executor that ended the
saga raises it or a later ``run`` reports the stored outcome.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..errors import (
    CompensationFailedError,
    DeadLetterError,
    SagaCancelledError,
    SagaError,
    SagaFailedError,
    SagaLockedError,
    StorageError,
)
from ..limits import format_traceback, truncate_error
from ..records import WorkflowRecord
from ..status import WorkflowStatus

__all__ = ["failed_error", "cancelled_error", "cancel_dead_letter_error", "dead_letter_error", "past_pivot_error", "cannot_drive_error", "stored_failure", "goes_backward",
           "parked_values", "is_engine_failure"]


def failed_error(saga_id: str, saga_name: str, step: str | None, error: str | None, *,
                 already: bool = False) -> SagaFailedError:
    """A step failed and every completed step was compensated."""
    verb = "already failed" if already else "failed"
    return SagaFailedError(f"saga {saga_id!r} ({saga_name}) {verb} at step {step!r}: {error}; every "
                           "completed step was compensated", saga_id=saga_id, step_name=step, error=error)


def cancelled_error(saga_id: str, saga_name: str, reason: str, *, already: bool = False) -> SagaCancelledError:
    """The saga was cancelled and every completed step was compensated."""
    verb = "was already cancelled" if already else "was cancelled"
    return SagaCancelledError(f"saga {saga_id!r} ({saga_name}) {verb} ({reason}); every completed step was "
                              "compensated", saga_id=saga_id, reason=reason)


def cancel_dead_letter_error(saga_id: str, saga_name: str, reason: str,
                             compensation_error: str | None) -> CompensationFailedError:
    """The saga was cancelled and a compensation failed: the saga is in dead letter."""
    return CompensationFailedError(
        f"saga {saga_id!r} ({saga_name}) is in dead letter: it was cancelled ({reason}) and a compensation "
        f"failed ({compensation_error}); fix the cause, then `saga-admin retry {saga_id}` to finish "
        "cancelling it", saga_id=saga_id, compensation_error=compensation_error)


def dead_letter_error(saga_id: str, saga_name: str, step: str | None, error: str | None,
                      compensation_error: str | None) -> CompensationFailedError:
    """A step failed and a compensation failed too: the saga is in dead letter."""
    return CompensationFailedError(
        f"saga {saga_id!r} ({saga_name}) is in dead letter: step {step!r} failed ({error}) and a "
        f"compensation failed too ({compensation_error}); fix the cause, then `saga-admin retry {saga_id}`",
        saga_id=saga_id, step_name=step, error=error, compensation_error=compensation_error)


def past_pivot_error(saga_id: str, saga_name: str, step: str | None, error: str | None) -> DeadLetterError:
    """A step after the pivot could not be completed: the saga waits in dead letter, nothing undone."""
    return DeadLetterError(
        f"saga {saga_id!r} ({saga_name}) is past its pivot and step {step!r} could not be completed "
        f"({error}); nothing was compensated. Fix the cause, then `saga-admin retry {saga_id}` to resume "
        "it forward", saga_id=saga_id)


def cannot_drive_error(saga_id: str, saga_name: str, reason: str) -> DeadLetterError:
    """What ``run`` raises after the engine parked a saga it cannot drive."""
    return DeadLetterError(f"saga {saga_id!r} ({saga_name}) cannot be driven and was moved to dead letter: "
                           f"{truncate_error(reason)}. Fix the cause, then `saga-admin retry {saga_id}`",
                           saga_id=saga_id)


def stored_failure(record: WorkflowRecord) -> SagaError:
    """What running a saga that already ended ``failed``, ``cancelled`` or ``dead_letter`` raises."""
    err = record.error
    step, error = (err.step_name, err.error) if err is not None else (None, None)
    if record.status == WorkflowStatus.CANCELLED:
        return cancelled_error(record.id, record.saga_name, record.cancel_reason or "no reason recorded",
                               already=True)
    if record.status == WorkflowStatus.DEAD_LETTER:
        if record.cancel_reason is not None and err is not None and err.compensation_error is not None:
            return cancel_dead_letter_error(record.id, record.saga_name, record.cancel_reason,
                                            err.compensation_error)
        if record.past_pivot and err is not None and err.compensation_error is None and step is not None:
            return past_pivot_error(record.id, record.saga_name, step, error)
        if err is not None and step is None and err.compensation_error is None:
            reason = error or "no reason recorded"
            return DeadLetterError(f"saga {record.id!r} ({record.saga_name}) is in dead letter: the engine "
                                   f"could not drive it: {reason}; fix the cause, then "
                                   f"`saga-admin retry {record.id}`", saga_id=record.id)
        return DeadLetterError(
            f"saga {record.id!r} ({record.saga_name}) is in dead letter: step {step!r} failed ({error}) and "
            f"compensation failed ({err.compensation_error if err else None}); fix the cause, then "
            f"`saga-admin retry {record.id}`", saga_id=record.id)
    return failed_error(record.id, record.saga_name, step, error, already=True)


def goes_backward(record: WorkflowRecord) -> bool:
    """Whether a stored saga resumes by compensating (else it goes forward).

    A saga the engine parked while going forward carries an error with no
    step (and a retry clears it): it resumes forward.
    """
    if record.past_pivot:
        return False  # past the point of no return: only forward
    if record.status == WorkflowStatus.COMPENSATING or record.cancel_reason is not None:
        return True
    err = record.error
    return err is not None and (err.step_name is not None or err.compensation_error is not None)


def parked_values(*, backward: bool, reason: str, cause: BaseException, now: datetime) -> dict[str, Any]:
    """The saga row's values that park it in dead letter because the engine cannot drive it.

    A saga going backward keeps its original error and records the reason
    as its compensation error, so a retry continues the compensation; one
    going forward records the reason as an error of no step, so a retry
    resumes it forward.
    """
    values: dict[str, Any] = {"status": WorkflowStatus.DEAD_LETTER.value, "stuck_after": None,
                              "updated_at": now}
    if backward:
        values.update(compensation_error=truncate_error(reason),
                      compensation_traceback=format_traceback(cause))
    else:
        values.update(error_step=None, error=truncate_error(reason), error_at=now,
                      error_traceback=format_traceback(cause), compensation_error=None)
    return values


def is_engine_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the engine's own machinery failing for one saga, so it must be parked.

    Not the saga's own outcome, not a claim lost to another executor, and
    not a storage failure that may pass (the saga stays resumable then).
    """
    if not isinstance(exc, Exception):
        return False
    if isinstance(exc, (SagaFailedError, CompensationFailedError, DeadLetterError, SagaLockedError)):
        return False
    if isinstance(exc, StorageError):
        return exc.permanent
    return True
