"""How ``saga-admin`` shows sagas: rich tables for people, stable JSON documents for scripts.

The JSON documents are part of the public interface (documented in
``docs/how-to/saga-admin.md``): keys are only ever added, never renamed or
removed. Times are ISO 8601 in UTC, durations are seconds.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from ..limits import MAX_RETRY_COUNT
from ..records import StepRecord, WorkflowRecord
from ..status import ACTIVE_STATUSES, StepStatus, WorkflowStatus

__all__ = [
    "ago", "clock_text", "compensations_of", "console", "dead_letter_json", "detail_json",
    "duration_of", "emit", "is_stuck",
    "iso", "position_json", "position_text", "print_json", "short", "span", "summary_json", "table",
]

_COMPENSATION_STATUSES = (StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED)


def console() -> Console:
    """A console on the current stdout; wide when stdout is not a terminal, so nothing wraps."""
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    return Console(file=sys.stdout, width=width, highlight=False, soft_wrap=False)


def emit(*renderables: Any) -> None:
    """Print tables and text on stdout without rich's trailing padding and blank edges."""
    out = console()
    with out.capture() as captured:
        for renderable in renderables:
            out.print(renderable)
    lines = [line.rstrip() for line in captured.get().splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def print_json(document: Any) -> None:
    """Print one JSON document on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")


def iso(value: datetime | None) -> str | None:
    """``value`` as ISO 8601 UTC (``...Z``), or None."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def clock_text(value: datetime | None) -> str:
    """``value`` as ``YYYY-MM-DD HH:MM:SS`` UTC for tables."""
    return "-" if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def span(delta: timedelta | float | None) -> str:
    """A short human duration: ``850ms``, ``4.2s``, ``3m05s``, ``2h07m``, ``3d04h``."""
    if delta is None:
        return "-"
    seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def ago(value: datetime | None, now: datetime) -> str:
    """How long before ``now`` the time ``value`` was."""
    return "-" if value is None else f"{span(now - value)} ago"


def duration_of(step: StepRecord) -> float | None:
    """Seconds from the step's start to its end, or None while it has not finished."""
    if step.started_at is None or step.finished_at is None:
        return None
    return (step.finished_at - step.started_at).total_seconds()


def short(value: Any, width: int = 48, *, raw: bool = False) -> str:
    """A stored JSON value (or, with ``raw``, a text) on one line, cut to ``width`` characters."""
    if value is None:
        return "-"
    text = " ".join(str(value).split()) if raw else json.dumps(
        value, ensure_ascii=False, separators=(", ", ": "), default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def is_stuck(record: WorkflowRecord, now: datetime) -> bool:
    """True when an active saga has made no progress for longer than its timeouts allow."""
    return (record.status in ACTIVE_STATUSES and record.stuck_after is not None
            and record.stuck_after < now)


def table(*columns: str, title: str | None = None) -> Table:
    """A plain table that pastes well into tickets."""
    return Table(*columns, box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)



def summary_json(record: WorkflowRecord, now: datetime) -> dict[str, Any]:
    """One row of ``list``."""
    return {
        "id": record.id,
        "saga": record.saga_name,
        "status": record.status.value,
        "current_step": record.current_step,
        "retry_count": record.retry_count,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "age_seconds": round((now - record.created_at).total_seconds(), 3),
        "stuck": is_stuck(record, now),
    }


def position_json(record: WorkflowRecord) -> dict[str, Any]:
    """Where the saga is in its step graph."""
    names = [s.name for s in record.steps]
    index = names.index(record.current_step) + 1 if record.current_step in names else None
    if record.status in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED):
        phase = "finished"
    elif record.status == WorkflowStatus.DEAD_LETTER:
        phase = "stopped"
    elif record.status == WorkflowStatus.COMPENSATING or record.error is not None:
        phase = "compensating"
    else:
        phase = "forward"
    counts = {status.value: sum(1 for s in record.steps if s.status == status) for status in StepStatus}
    return {"current_step": record.current_step, "index": index, "of": len(names), "phase": phase,
            "steps_by_status": counts}


def position_text(record: WorkflowRecord) -> str:
    """:func:`position_json` as one sentence."""
    pos = position_json(record)
    where = (f"step {pos['index']} of {pos['of']} ({pos['current_step']})" if pos["index"]
             else f"not started (0 of {pos['of']} steps)")
    counts = ", ".join(f"{n} {status}" for status, n in pos["steps_by_status"].items() if n)
    return f"{where}, {pos['phase']}; steps: {counts or 'none'}"


def compensations_of(record: WorkflowRecord) -> list[dict[str, Any]]:
    """The compensations that ran: compensated steps and failed compensations."""
    return [
        {"step": s.name,
         "status": "completed" if s.status == StepStatus.COMPENSATED else "failed",
         "finished_at": iso(s.compensated_at), "error": s.compensation_error}
        for s in record.steps if s.status in _COMPENSATION_STATUSES or s.compensation_error
    ]


def detail_json(record: WorkflowRecord, now: datetime) -> dict[str, Any]:
    """Everything ``show`` prints."""
    error = record.error
    return {
        "id": record.id,
        "saga": record.saga_name,
        "status": record.status.value,
        "idempotency_key": record.idempotency_key,
        "input": record.input,
        "retry_count": record.retry_count,
        "max_retries": MAX_RETRY_COUNT,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "started_at": iso(record.started_at),
        "deadline": iso(record.deadline),
        "stuck": is_stuck(record, now),
        "position": position_json(record),
        "steps": [
            {"name": s.name, "position": s.position, "status": s.status.value, "attempts": s.attempts,
             "idempotency_key": s.idempotency_key, "started_at": iso(s.started_at),
             "finished_at": iso(s.finished_at), "duration_seconds": duration_of(s),
             "result": s.result, "error": s.error}
            for s in record.steps
        ],
        "compensations": compensations_of(record),
        "error": None if error is None else {
            "step": error.step_name, "error": error.error,
            "compensation_error": error.compensation_error, "at": iso(error.timestamp)},
    }


def dead_letter_json(record: WorkflowRecord) -> dict[str, Any]:
    """One row of ``dead-letter``."""
    error = record.error
    return {
        "id": record.id,
        "saga": record.saga_name,
        "retry_count": record.retry_count,
        "failed_step": error.step_name if error else None,
        "error": error.error if error else None,
        "compensation_error": error.compensation_error if error else None,
        "failed_at": iso(error.timestamp if error else None),
        "updated_at": iso(record.updated_at),
    }

