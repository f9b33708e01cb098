"""Reading sagas: query conditions, the kept counts, and rows turned into records."""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import Text, any_, bindparam, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from ..records import ErrorInfo, StepRecord, WorkflowRecord
from ..status import ACTIVE_STATUSES, StepStatus, WorkflowStatus
from .base import QueryFilter
from .models import status_counts as counts_table
from .models import steps as steps_table
from .models import workflows as wf_table

__all__ = ["conditions", "only_statuses", "counted", "steps_for", "record_of", "load", "load_versioned"]


def conditions(flt: QueryFilter) -> list[Any]:
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


def only_statuses(flt: QueryFilter) -> bool:
    """Whether a filter selects by status alone (or not at all)."""
    return not (flt.saga_name or flt.created_after or flt.created_before or flt.updated_after
                or flt.updated_before or flt.stuck_at)


def counted(statuses: Sequence[WorkflowStatus]) -> Any:
    """How many sagas have one of ``statuses`` (all if empty), from the kept counts."""
    stmt = select(func.coalesce(func.sum(counts_table.c.n), 0))
    if statuses:
        stmt = stmt.where(counts_table.c.status.in_([s.value for s in statuses]))
    return stmt


#: The step rows of a page of sagas. On PostgreSQL the ids go as one array
#: parameter: an IN list of a hundred is expanded, compiled and sent as a
#: hundred parameters on every call, which cost a page about a quarter of
#: its time.
_STEPS_OF_IDS = (select(steps_table)
                 .where(steps_table.c.workflow_id == any_(bindparam("ids", type_=postgresql.ARRAY(Text))))
                 .order_by(steps_table.c.workflow_id, steps_table.c.position))


def steps_for(conn: Connection, ids: list[str]) -> dict[str, list[Any]]:
    """The step rows of the sagas ``ids``, by saga id, in step order."""
    if not ids:
        return {}
    if conn.dialect.name == "postgresql":
        result = conn.execute(_STEPS_OF_IDS, {"ids": ids})
    else:
        result = conn.execute(select(steps_table).where(steps_table.c.workflow_id.in_(ids))
                              .order_by(steps_table.c.workflow_id, steps_table.c.position))
    out: dict[str, list[Any]] = {}
    for row in result.mappings().all():
        out.setdefault(row["workflow_id"], []).append(row)
    return out


def record_of(row: Any, step_rows: list[Any]) -> WorkflowRecord:
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
        locks=tuple(row["locks"] or ()), start_after=row["start_after"],
        cancel_reason=row["cancel_reason"], pivot_started=bool(row["pivot_started"]),
    )


def load(conn: Connection, saga_id: str) -> WorkflowRecord | None:
    loaded = load_versioned(conn, saga_id)
    return None if loaded is None else loaded[0]


def load_versioned(conn: Connection, saga_id: str) -> tuple[WorkflowRecord, int] | None:
    """The saga ``saga_id`` and the version of its row as read (None if there is no such saga)."""
    row = conn.execute(select(wf_table).where(wf_table.c.id == saga_id)).mappings().first()
    if row is None:
        return None
    step_rows = conn.execute(select(steps_table).where(steps_table.c.workflow_id == saga_id)
                             .order_by(steps_table.c.position)).mappings().all()
    return record_of(row, list(step_rows)), int(row["version"])
