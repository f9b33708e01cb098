"""Cancelling a saga in storage: the two conditional updates, and why a cancel is refused.

A cancel is decided by one conditional UPDATE of the saga row, so that it
and the saga's own commits are ordered by the row's lock: whichever commits
first wins, and the other sees it. A saga that has not started ends at once;
a running one gets its ``cancel_reason`` set, and the executor's commits
(which return that column) take it from there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.sql import Executable

from ..errors import InvalidStateError, SagaNotFoundError
from ..status import WorkflowStatus
from .base import CancelOutcome
from .models import workflows as wf_table

__all__ = ["cancel_waiting", "request_cancel", "explain_refused_cancel", "CANCEL_READ_COLUMNS"]

_PENDING = WorkflowStatus.PENDING.value


def cancel_waiting(reason: str, now: datetime) -> Executable:
    """End a saga no executor has started; the version bump fences off a worker taking it now."""
    return (update(wf_table)
            .where(wf_table.c.id == bindparam("w_id"), wf_table.c.status == _PENDING,
                   wf_table.c.started_at.is_(None))
            .values(status=WorkflowStatus.CANCELLED.value, cancel_reason=reason, updated_at=now, finished_at=now,
                    stuck_after=None, owner=None, lease_expires_at=None, version=wf_table.c.version + 1)
            .returning(wf_table.c.id))


def request_cancel(reason: str) -> Executable:
    """Ask the executor of a running saga to compensate it (no version bump: it keeps its claim)."""
    return (update(wf_table)
            .where(wf_table.c.id == bindparam("w_id"), wf_table.c.status == _PENDING,
                   wf_table.c.started_at.is_not(None), wf_table.c.cancel_reason.is_(None),
                   wf_table.c.past_pivot.is_(False), wf_table.c.pivot_started.is_(False))
            .values(cancel_reason=reason)
            .returning(wf_table.c.id))


#: What :func:`explain_refused_cancel` reads when neither update applied.
CANCEL_READ_COLUMNS = (wf_table.c.status, wf_table.c.cancel_reason, wf_table.c.past_pivot,
                       wf_table.c.pivot_started, wf_table.c.error_step, wf_table.c.started_at)


def explain_refused_cancel(saga_id: str, row: Any) -> CancelOutcome | None:
    """Why neither update applied: raise the error that says so, or return what a cancel already did.

    ``row`` has :data:`CANCEL_READ_COLUMNS` as attributes (None: no such
    saga). Returns ``"requested"`` for a saga already being cancelled, and
    None when the saga moved between the updates and the read (try again).
    """
    if row is None:
        raise SagaNotFoundError(f"no saga with id {saga_id!r}", saga_id=saga_id)
    status = WorkflowStatus(row.status)
    if row.cancel_reason is not None and not status.is_terminal:
        return "requested"
    if status == WorkflowStatus.CANCELLED:
        raise InvalidStateError(f"saga {saga_id!r} is already cancelled ({row.cancel_reason})", saga_id=saga_id)
    if status == WorkflowStatus.DEAD_LETTER:
        raise InvalidStateError(
            f"saga {saga_id!r} is in dead letter, which cancel cannot change: resolve it with "
            f"`saga-admin show {saga_id}` and `saga-admin retry {saga_id}`", saga_id=saga_id)
    if status.is_terminal:
        raise InvalidStateError(f"saga {saga_id!r} has already ended {status.value}; there is nothing to "
                                "cancel", saga_id=saga_id)
    if row.past_pivot or row.pivot_started:
        where = "is past its pivot step" if row.past_pivot else "has started its pivot step"
        raise InvalidStateError(
            f"saga {saga_id!r} {where}, the point of no return: it can only go forward now (its "
            "remaining steps are retried until they succeed), so it cannot be cancelled", saga_id=saga_id)
    if status == WorkflowStatus.COMPENSATING:
        raise InvalidStateError(
            f"saga {saga_id!r} is already being compensated because step {row.error_step!r} failed; it "
            "will end failed", saga_id=saga_id)
    return None
