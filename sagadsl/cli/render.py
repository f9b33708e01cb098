"""How ``saga-admin`` shows sagas: rich tables for people, stable JSON documents for scripts.

The JSON documents are part of the public interface (documented in
``docs/how-to/saga-admin.md``): keys are only ever added, never renamed or
removed. Times are ISO 8601 in UTC, durations are seconds.

Everything shown comes from the database, where any saga may have put any
text: ids, names, keys, inputs, results, errors and tracebacks are printed
literally, never read as rich markup or emoji codes, and control characters
are shown escaped so that a stored value cannot drive the terminal.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..limits import MAX_RETRY_COUNT
from ..records import StepRecord, WorkflowRecord
from ..status import ACTIVE_STATUSES, StepStatus, WorkflowStatus

__all__ = [
    "ago", "block", "clock_text", "compensations_of", "console", "dead_letter_json", "deadline_of",
    "detail_json", "duration_of", "emit", "is_stuck", "iso", "plain", "position_json", "position_text",
    "print_json", "reached_step", "short", "span", "summary_json", "table", "tracebacks_of",
]

_COMPENSATION_STATUSES = (StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED)
# C0 controls but newline and tab, DEL and C1 controls: ESC would let a stored value drive the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def console() -> Console:
    """A console on the current stdout; wide when stdout is not a terminal, so nothing wraps.

    Markup and emoji codes are off: every string printed is shown as it is.
    """
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    return Console(file=sys.stdout, width=width, highlight=False, soft_wrap=False, markup=False,
                   emoji=False)


def _visible(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


def plain(value: Any, style: str = "") -> Text:
    """``value`` as literal text for a table cell or a line: never markup, control characters escaped."""
    return Text(_visible("-" if value is None else str(value)), style=style)


def block(text: str) -> Text:
    """A multi-line literal text (a traceback) kept as is: not wrapped, not cut at the console's width."""
    return Text(_visible(text.rstrip("\n")), no_wrap=True, overflow="ignore")


def emit(*renderables: Any) -> None:
    """Print tables and text on stdout without rich's trailing padding and blank edges."""
    out = console()
    with out.capture() as captured:
        for renderable in renderables:
            out.print(renderable, crop=False)
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
        "current_step": _name(reached_step(record)),
        "retry_count": record.retry_count,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "age_seconds": round((now - record.created_at).total_seconds(), 3),
        "stuck": is_stuck(record, now),
        "past_pivot": record.past_pivot,
    }


def _name(step: StepRecord | None) -> str | None:
    return None if step is None else step.name


def reached_step(record: WorkflowRecord) -> StepRecord | None:
    """The step where the saga stopped, or is now: what ``list`` and ``show`` call the step reached.

    The failing step of a saga that failed (also while, and after, it
    compensates: ``record.current_step`` then names the step compensated
    last), the last step of a completed saga, else the furthest step that
    started; None before any step started.
    """
    steps = sorted(record.steps, key=lambda s: s.position)
    error = record.error
    if error is not None and error.step_name is not None:
        failing = record.step(error.step_name)
        if failing is not None:
            return failing
    if record.status == WorkflowStatus.COMPLETED and steps:
        return steps[-1]
    touched = [s for s in steps if s.status != StepStatus.PENDING or s.started_at is not None]
    if touched:
        return touched[-1]
    return None if record.current_step is None else record.step(record.current_step)


def deadline_of(record: WorkflowRecord) -> datetime | None:
    """The end of the running saga's 15-minute budget; None once it finished or before it started."""
    return None if record.status.is_terminal else record.deadline


def tracebacks_of(record: WorkflowRecord) -> tuple[str | None, str | None]:
    """The stored tracebacks of the failing step and of the failing compensation, if any."""
    error = record.error
    if error is None:
        return None, None
    return getattr(error, "traceback", None) or None, getattr(error, "compensation_traceback", None) or None


def position_json(record: WorkflowRecord) -> dict[str, Any]:
    """Where the saga is in its step graph: the step it reached (see :func:`reached_step`)."""
    names = [s.name for s in record.steps]
    reached = reached_step(record)
    index = reached.position + 1 if reached is not None else None
    if record.status in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
        phase = "finished"
    elif record.status == WorkflowStatus.DEAD_LETTER:
        phase = "stopped"
    elif record.status == WorkflowStatus.COMPENSATING or record.error is not None:
        phase = "compensating"
    else:
        phase = "forward"
    counts = {status.value: sum(1 for s in record.steps if s.status == status) for status in StepStatus}
    return {"current_step": _name(reached), "index": index, "of": len(names), "phase": phase,
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
    traceback, compensation_traceback = tracebacks_of(record)
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
        "deadline": iso(deadline_of(record)),
        "stuck": is_stuck(record, now),
        "past_pivot": record.past_pivot,
        "cancel_reason": record.cancel_reason,
        "locks": list(record.locks),
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
            "compensation_error": error.compensation_error, "at": iso(error.timestamp),
            "traceback": traceback, "compensation_traceback": compensation_traceback},
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

