"""What may enter the store: ids, keys and inputs checked, and the new saga's first commit built.

Everything here runs before the first commit, so a mistake leaves no row:
text no backend can store, an id or key too long for its column, an input
that does not decode to the declared type.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .codec import from_json, to_json
from .definition import SagaDefinition
from .errors import IdempotencyRequiredError, SagaDefinitionError, SerializationError
from .keys import render_locks
from .limits import describe_exception
from .runtime.stuck import stuck_allowance
from .saga import Saga
from .storage.base import NewStep, NewWorkflow

__all__ = ["admit", "definition_of", "could_be_stored", "MAX_ID_LENGTH"]

#: Saga ids, idempotency keys and lock keys are stored in columns of this many characters.
MAX_ID_LENGTH = 255


def admit(saga_cls: type[Saga[Any]], input: Any, saga_id: Any, idempotency_key: Any,
          now: datetime) -> tuple[NewWorkflow, Saga[Any]]:
    """The new saga's first commit and its bound instance, or an error and nothing written.

    The saga sees its input as a resume would: encoded, then decoded to the
    declared input type.
    """
    definition = definition_of(saga_cls)
    _check_id(saga_id, "saga_id", saga_cls)
    _check_id(idempotency_key, "idempotency_key", saga_cls)
    where = f"the input of {saga_cls.__name__} (saga {saga_id!r})"
    input_json = to_json(input, where=where)
    try:
        decoded = from_json(input_json, definition.input_type, where=where)
    except SerializationError:
        raise
    except Exception as exc:  # a constructor of the input type raised
        raise SerializationError(f"{where}: decoding it back failed: {describe_exception(exc)}") from exc
    saga = saga_cls._bind(decoded, saga_id)
    keys = [_storable(s.render_key(saga), f"{definition.class_name}.{s.name}: step key")
            for s in definition.steps]
    locks = tuple(_lock_key(key, definition.class_name) for key in render_locks(definition, saga))
    new = NewWorkflow(
        id=saga_id, saga_name=definition.name, input=input_json, idempotency_key=idempotency_key,
        fingerprint=definition.fingerprint,
        steps=tuple(NewStep(s.name, s.position, k) for s, k in zip(definition.steps, keys)),
        now=now, stuck_after=now + stuck_allowance(definition), locks=locks,
    )
    return new, saga


def definition_of(saga_cls: Any) -> SagaDefinition:
    definition = getattr(saga_cls, "definition", None)
    if not isinstance(saga_cls, type) or not issubclass(saga_cls, Saga) or definition is None:
        raise SagaDefinitionError(f"{saga_cls!r} is not a concrete Saga subclass with steps; "
                                  "pass a class like `class PlaceOrder(Saga[Order])`")
    assert isinstance(definition, SagaDefinition)
    return definition


def _check_id(value: Any, what: str, saga_cls: type) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise IdempotencyRequiredError(
            f"{saga_cls.__name__}: {what} is required and must be a non-empty string, got {value!r}")
    if not isinstance(value, str):
        raise TypeError(f"{saga_cls.__name__}: {what} must be a str, got {type(value).__name__}")
    if len(value) > MAX_ID_LENGTH:
        raise IdempotencyRequiredError(f"{saga_cls.__name__}: {what} is {len(value)} characters; at most "
                                       f"{MAX_ID_LENGTH} are stored: use a shorter id, or a hash of it")
    return _storable(value, f"{saga_cls.__name__}: {what}")


def could_be_stored(saga_id: Any) -> bool:
    if not isinstance(saga_id, str) or len(saga_id) > MAX_ID_LENGTH or "\x00" in saga_id:
        return False
    try:
        saga_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lock_key(key: str, class_name: str) -> str:
    if len(key) > MAX_ID_LENGTH:
        raise IdempotencyRequiredError(f"{class_name}: the lock key {key[:40]!r}... is {len(key)} characters; "
                                       f"at most {MAX_ID_LENGTH} are stored: use shorter input fields")
    return _storable(key, f"{class_name}: lock key")


def _storable(value: str, what: str) -> str:
    """``value`` if every backend can store it as text; else SerializationError."""
    if "\x00" in value:
        raise SerializationError(f"{what} {value!r} contains a NUL character (\\x00), which PostgreSQL "
                                 "cannot store; remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SerializationError(f"{what} {value!r} contains a lone surrogate, which is not valid "
                                 "UTF-8 and no database can store; fix how the text was decoded") from None
    return value
