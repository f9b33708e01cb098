"""Pictures drawn on the server: a saga's step graph as inline SVG, and its steps' timeline.

Nothing is drawn in the browser and nothing is fetched: the page carries the
SVG. Every name in it comes from a saga class or a stored row, so each one is
escaped as it is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from markupsafe import Markup, escape

from ..definition import SagaDefinition

__all__ = ["Bar", "step_graph", "timeline"]

_NODE_W = 184
_NODE_H = 46
_GAP_X = 28
_GAP_Y = 46
_MARGIN = 12
_LABEL = 22  # characters of a name shown in a node; the full name is in its <title>


def _cut(text: str, width: int = _LABEL) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _layers(definition: SagaDefinition) -> list[list[str]]:
    """Steps by depth: a step sits one row below its deepest dependency (declaration order within a row)."""
    depth: dict[str, int] = {}
    for s in definition.steps:  # declaration order is a topological order: dependencies come first
        depth[s.name] = 1 + max((depth[d] for d in s.after), default=-1)
    rows: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for s in definition.steps:
        rows[depth[s.name]].append(s.name)
    return rows


def step_graph(definition: SagaDefinition, statuses: Mapping[str, str]) -> Markup:
    """The step graph as an ``<svg>`` element: one box per step, coloured by its stored status.

    Args:
        definition: The saga class's checked graph.
        statuses: Each step's status in the saga being shown (``pending`` if absent).

    Returns:
        Markup safe to put in a page: every name in it is escaped.
    """
    rows = _layers(definition)
    widest = max((len(r) for r in rows), default=1)
    width = 2 * _MARGIN + widest * _NODE_W + (widest - 1) * _GAP_X
    height = 2 * _MARGIN + len(rows) * _NODE_H + max(len(rows) - 1, 0) * _GAP_Y
    where: dict[str, tuple[float, float]] = {}
    for r, names in enumerate(rows):
        row_w = len(names) * _NODE_W + (len(names) - 1) * _GAP_X
        left = (width - row_w) / 2
        for i, name in enumerate(names):
            where[name] = (left + i * (_NODE_W + _GAP_X), _MARGIN + r * (_NODE_H + _GAP_Y))
    parts: list[str] = [
        (f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
         f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{escape(definition.name)} step graph">'),
        ('<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
         'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/>'
         "</marker></defs>"),
    ]
    for s in definition.steps:
        x, y = where[s.name]
        for dep in s.after:
            dx, dy = where[dep]
            x1, y1 = dx + _NODE_W / 2, dy + _NODE_H
            x2, y2 = x + _NODE_W / 2, y - 2
            mid = (y1 + y2) / 2
            parts.append(f'<path class="edge" d="M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} '
                         f'{x2:.1f},{y2:.1f}" marker-end="url(#arrow)"/>')
    for s in definition.steps:
        x, y = where[s.name]
        status = statuses.get(s.name, "pending")
        kind = getattr(s, "kind", None)
        undo = s.compensation.method_name if s.compensation else None
        sub = f"undo: {undo}" if undo else ("pivot" if kind == "pivot" else "no compensation")
        tip = f"{s.name} ({status})" + (f", compensated by {undo}" if undo else "") + (
            f", {kind}" if kind else "")
        parts.append(
            f'<g class="node step-{escape(status)}"><title>{escape(tip)}</title>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{_NODE_W}" height="{_NODE_H}" rx="6"/>'
            f'<text class="name" x="{x + _NODE_W / 2:.1f}" y="{y + 19:.1f}">{escape(_cut(s.name))}</text>'
            f'<text class="sub" x="{x + _NODE_W / 2:.1f}" y="{y + 36:.1f}">{escape(_cut(sub, 28))}</text>'
            "</g>")
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass(frozen=True)
class Bar:
    """Where one step's bar sits on the timeline, in per cent of the saga's span."""

    left: float
    width: float
    running: bool


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def timeline(steps: Sequence[Mapping[str, Any]], now: datetime) -> tuple[list[Bar | None], float]:
    """A bar per step (None for a step that never started) and the span they cover, in seconds.

    Args:
        steps: The ``steps`` of :func:`sagadsl.cli.render.detail_json`.
        now: The end of a bar whose step has started but not finished.
    """
    spans: list[tuple[datetime, datetime, bool] | None] = []
    for s in steps:
        start, end = _parse(s.get("started_at")), _parse(s.get("finished_at"))
        spans.append(None if start is None else (start, end or max(now, start), end is None))
    known = [x for x in spans if x is not None]
    if not known:
        return [None] * len(steps), 0.0
    first = min(x[0] for x in known)
    last = max(x[1] for x in known)
    total = (last - first).total_seconds()
    bars: list[Bar | None] = []
    for x in spans:
        if x is None:
            bars.append(None)
            continue
        # Steps that all took no measurable time show as ticks at the start, not as full bars.
        left = 0.0 if total <= 0 else (x[0] - first).total_seconds() / total * 100
        width = 0.0 if total <= 0 else (x[1] - x[0]).total_seconds() / total * 100
        # A step of a few milliseconds in a saga of minutes still shows as a tick.
        width = max(width, 0.6)
        bars.append(Bar(left=round(min(left, 99.4), 2), width=round(min(width, 100 - left), 2),
                        running=x[2]))
    return bars, total
