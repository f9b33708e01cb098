"""Resuming a stored saga after its class changed: what is compatible, what is not.

Compatible: a changed step body, new steps declared after every step that
already ran, and removing steps that never ran. Incompatible: removing or
renaming a step that ran, reordering steps that ran, declaring a new step
before one that ran, and making a step that ran depend on one that did not.
Those raise :class:`~sagadsl.DefinitionChangedError`; ship such a change as a
new saga name (``name="orders.place.v2"``) and let old instances drain.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .definition import SagaDefinition
from .errors import DefinitionChangedError
from .records import WorkflowRecord
from .status import StepStatus
from .storage.base import Change, NewStep

__all__ = ["reconcile"]

_FIX = ("ship incompatible changes under a new saga name (class X(Saga[T], name=\"...v2\")) "
        "and let running instances finish on the old class")


def reconcile(definition: SagaDefinition, record: WorkflowRecord, saga: Any,
              now: datetime) -> Change | None:
    """The change that brings a stored saga's steps in line with ``definition``.

    New steps get pending rows, rows of removed steps that never ran are
    deleted, and the remaining rows take the positions of the new
    declaration order. Nothing is written when the change is refused.

    Returns None when the fingerprints match.

    Raises:
        DefinitionChangedError: naming what changed incompatibly.
    """
    if record.fingerprint == definition.fingerprint:
        return None
    where = f"saga {record.id!r} ({record.saga_name})"
    ran = [s for s in record.steps if s.status != StepStatus.PENDING]
    removed: list[str] = []
    for stored in record.steps:
        if definition.has_step(stored.name):
            continue
        if stored.status != StepStatus.PENDING:
            raise DefinitionChangedError(
                f"{where}: step {stored.name!r} is {stored.status.value} in the stored saga but "
                f"{definition.class_name} no longer has it (removed or renamed); {_FIX}",
                saga_id=record.id)
        removed.append(stored.name)
    ran_names = [s.name for s in sorted(ran, key=lambda s: s.position)]
    current_order = [n for n in definition.step_names if n in ran_names]
    if current_order != ran_names:
        raise DefinitionChangedError(
            f"{where}: steps that already ran were reordered ({', '.join(ran_names)} became "
            f"{', '.join(current_order)}); {_FIX}", saga_id=record.id)
    stored_names = {s.name for s in record.steps}
    last_ran = max((definition.step(n).position for n in ran_names), default=-1)
    added: list[NewStep] = []
    for step in definition.steps:
        if step.name in stored_names:
            continue
        if step.position < last_ran:
            raise DefinitionChangedError(
                f"{where}: new step {step.name!r} was inserted before step "
                f"{definition.steps[last_ran].name!r}, which already ran; add new steps after it, "
                f"or {_FIX}",
                saga_id=record.id)
        added.append(NewStep(step.name, step.position, step.render_key(saga)))
    # A step that ran must not now wait for one that did not: its inputs would
    # have been produced after it, and compensation order would be wrong.
    did_run = set(ran_names)
    for name in ran_names:
        for dep in definition.step(name).after:
            if dep not in did_run:
                raise DefinitionChangedError(
                    f"{where}: step {name!r} already ran but now runs after {dep!r}, which has not "
                    f"run; {_FIX}", saga_id=record.id)
    moved = {s.name: {"position": definition.step(s.name).position} for s in record.steps
             if definition.has_step(s.name) and definition.step(s.name).position != s.position}
    return Change(workflow={"fingerprint": definition.fingerprint, "updated_at": now}, steps=moved,
                  new_steps=tuple(added), removed_steps=tuple(removed))
