"""Taking a stored saga up again: rebuilt from its row, parked if it cannot be, or its stored outcome."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from ..codec import from_json
from ..definition import SagaDefinition
from ..evolution import reconcile
from ..limits import MAX_CLAIMS_WITHOUT_PROGRESS
from ..records import SagaResult, WorkflowRecord
from ..saga import Saga
from ..status import WorkflowStatus
from ..storage.base import Change
from .outcomes import goes_backward, parked_values, stored_failure

__all__ = ["rebuild", "parked", "stored_outcome", "PoisonSagaError"]

logger = logging.getLogger("sagadsl.engine")


class PoisonSagaError(RuntimeError):
    """A saga whose executors keep dying before they commit anything (the cause of its parking)."""

    def __init__(self, message: str, *, saga_id: str) -> None:
        super().__init__(message)
        self.saga_id = saga_id


def rebuild(cls: type[Saga[Any]], definition: SagaDefinition, record: WorkflowRecord,
            now: datetime) -> tuple[Saga[Any], Change | None, datetime]:
    """The saga bound to its stored input, the change that adapts its row, and its budget's start.

    Raises:
        PoisonSagaError: too many executors took it in a row without committing anything.
        SerializationError: its stored input no longer decodes.
        DefinitionChangedError: its class changed incompatibly.
    """
    saga_id = record.id
    if record.claims > MAX_CLAIMS_WITHOUT_PROGRESS:
        raise PoisonSagaError(
            f"{record.claims - 1} executors took it in a row and each stopped before committing "
            "anything (a step may be killing its process, or running out of memory); it is parked so "
            "that its effects are not repeated without end", saga_id=saga_id)
    input_value = from_json(record.input, definition.input_type,
                            where=f"stored input of saga {saga_id!r} ({record.saga_name})")
    saga = cls._bind(input_value, saga_id)
    change = reconcile(definition, record, saga, now)
    started_at = record.started_at
    if started_at is None:
        # A submitted saga's budget starts now, when an executor first takes it.
        started_at = now
        change = Change(workflow={**(change.workflow if change else {}), "started_at": now, "updated_at": now},
                        steps=change.steps if change else {},
                        new_steps=change.new_steps if change else (),
                        removed_steps=change.removed_steps if change else ())
    return saga, change, started_at


def parked(record: WorkflowRecord, reason: str, cause: BaseException, now: datetime) -> dict[str, Any]:
    """The row values that park a stored saga the engine cannot resume (logged at ERROR)."""
    logger.error("saga %s cannot be resumed; moving it to dead letter: %s", record.id, reason,
                 exc_info=cause, extra={"saga_id": record.id, "step": None})
    return parked_values(backward=goes_backward(record), reason=reason, cause=cause, now=now)


def stored_outcome(record: WorkflowRecord, definition: SagaDefinition) -> SagaResult:
    """What running a finished saga again gives: its typed results, or the error it ended with."""
    if record.status == WorkflowStatus.COMPLETED:
        results = {}
        for step in record.steps:
            if definition.has_step(step.name):
                results[step.name] = from_json(
                    step.result, definition.step(step.name).return_type(),
                    where=f"stored result of {definition.class_name}.{step.name} (saga {record.id!r})")
            else:
                results[step.name] = step.result
        return SagaResult(record.id, record.status, results)
    raise stored_failure(record)
