"""Drawings of a saga's step graph: plain text, Mermaid and Graphviz DOT.

``saga-admin graph`` prints them; ``SagaDefinition.to_text()``,
``to_mermaid()`` and ``to_dot()`` return them. Compensatable steps are drawn
as before; the pivot and the retriable steps after it (DESIGN §7) are marked
in every format, so a saga without a pivot draws exactly as it always did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: definition.py imports this module for its to_* methods
    from .definition import SagaDefinition, StepDefinition

__all__ = ["to_text", "to_mermaid", "to_dot"]


def to_text(definition: SagaDefinition) -> str:
    """The graph as indented plain text, one line per step."""
    lines = [f"{definition.name} ({definition.class_name})"]
    if definition.locks:
        lines.append(f"  locks: {', '.join(definition.locks)}")
    for s in definition.steps:
        after = f" after {', '.join(s.after)}" if s.after else ""
        undo = f"  undo: {s.compensation.method_name}" if s.compensation else ""
        mode = "async" if s.is_async else "sync"
        marks = ", ".join([mode] + ([s.kind] if s.kind != "compensatable" else []))
        lines.append(f"  {s.position + 1}. {s.name} [{marks}]{after}{undo}")
    return "\n".join(lines)


def _mermaid_node(s: StepDefinition) -> str:
    if s.kind == "pivot":
        return f'step_{s.name}{{{{"{s.name} (pivot)"}}}}:::pivot'
    if s.kind == "retriable":
        return f'step_{s.name}("{s.name} (retriable)"):::retriable'
    return f'step_{s.name}["{s.name}"]'


def to_mermaid(definition: SagaDefinition) -> str:
    """The graph as a Mermaid flowchart, compensations as dotted edges.

    Node ids are prefixed (``step_``, ``undo_``) because Mermaid reserves
    some words a step may be called, such as ``end``. The pivot is a hexagon
    and the retriable steps are rounded, each with its kind in its label and
    a class (``pivot``, ``retriable``) to style.
    """
    lines = ["flowchart TD"]
    for s in definition.steps:
        lines.append(f"    {_mermaid_node(s)}")
        for dep in s.after:
            lines.append(f"    step_{dep} --> step_{s.name}")
        if s.compensation:
            lines.append(f'    undo_{s.name}(["{s.compensation.method_name}"])')
            lines.append(f"    step_{s.name} -. compensated by .-> undo_{s.name}")
    if definition.pivot is not None:
        lines.append("    classDef pivot stroke-width:3px")
        lines.append("    classDef retriable stroke-dasharray:4 2")
    return "\n".join(lines)


def _dot_node(s: StepDefinition) -> str:
    if s.kind == "pivot":
        return f'"{s.name}" [shape=hexagon, label="{s.name} (pivot)"];'
    if s.kind == "retriable":
        return f'"{s.name}" [shape=box, style=rounded, label="{s.name} (retriable)"];'
    return f'"{s.name}" [shape=box];'


def to_dot(definition: SagaDefinition) -> str:
    """The graph in Graphviz DOT, compensations as dashed edges.

    The pivot is a hexagon and the retriable steps are rounded boxes, each
    with its kind in its label.
    """
    quoted = definition.name.replace("\\", "\\\\").replace('"', '\\"')
    lines = [f'digraph "{quoted}" {{', "    rankdir=TB;"]
    for s in definition.steps:
        lines.append(f"    {_dot_node(s)}")
        for dep in s.after:
            lines.append(f'    "{dep}" -> "{s.name}";')
        if s.compensation:
            lines.append(f'    "{s.compensation.method_name}" [shape=ellipse, style=dashed];')
            lines.append(f'    "{s.name}" -> "{s.compensation.method_name}" [style=dashed, label="undo"];')
    lines.append("}")
    return "\n".join(lines)
