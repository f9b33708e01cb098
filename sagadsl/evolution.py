"""Resuming a stored saga after its class changed: what is compatible, what is not.

Compatible: a changed step body, new steps after every step that already
completed, and removing steps that never ran. Incompatible: removing or
renaming a step that ran, or reordering steps that ran. Those raise
:class:`~sagadsl.DefinitionChangedError`; ship such a change as a new saga
name (``name="orders.place.v2"``) and let old instances drain.
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


def reconcile(definition: SagaDefinition, record: WorkflowRecord, saga: Any,
              now: datetime) -> Change | None:
    """The change that brings a stored saga's steps in line with ``definition``.

    Returns None when the fingerprints match.

    Raises:
        DefinitionChangedError: naming what changed incompatibly.
    """
    if record.fingerprint == definition.fingerprint:
        return None
    where = f"saga {record.id!r} ({record.saga_name})"
    fix = ("ship incompatible changes under a new saga name (class X(Saga[T], name=\"...v2\")) and let "
           "running instances finish on the old class")
    ran = [s for s in record.steps if s.status != StepStatus.PENDING]
    removed: list[str] = []
    for stored in record.steps:
        if definition.has_step(stored.name):
            continue
        if stored.status != StepStatus.PENDING:
            raise DefinitionChangedError(
                f"{where}: step {stored.name!r} is {stored.status.value} in the stored saga but "
                f"{definition.class_name} no longer has it (removed or renamed); {fix}", saga_id=record.id)
        removed.append(stored.name)
    ran_names = [s.name for s in sorted(ran, key=lambda s: s.position)]
    current_order = [n for n in definition.step_names if n in ran_names]
    if current_order != ran_names:
        raise DefinitionChangedError(
            f"{where}: steps that already ran were reordered ({', '.join(ran_names)} became "
            f"{', '.join(current_order)}); {fix}", saga_id=record.id)
    stored_names = {s.name for s in record.steps}
    last_ran = max((definition.step(n).position for n in ran_names), default=-1)
    added: list[NewStep] = []
    for step in definition.steps:
        if step.name in stored_names:
            continue
        if step.position < last_ran:
            raise DefinitionChangedError(
                f"{where}: new step {step.name!r} was inserted before step "
                f"{definition.steps[last_ran].name!r}, which already ran; add new steps after it, or {fix}",
                saga_id=record.id)
        added.append(NewStep(step.name, step.position, step.render_key(saga)))
    return Change(workflow={"fingerprint": definition.fingerprint, "updated_at": now},
                  new_steps=tuple(added), removed_steps=tuple(removed))
