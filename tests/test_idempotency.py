"""Idempotency keys are mandatory, and a saga id means one request (DESIGN §2.5, §2.7, §2.8).

Bad input is refused before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from sagadsl import (
    IdempotencyConflictError,
    IdempotencyRequiredError,
    Saga,
    SagaEngine,
    SagaFailedError,
    SerializationError,
    compensates,
    step,
)

calls: list[str] = []


@pytest.fixture(autouse=True)
def _fresh() -> None:
    calls.clear()


@dataclass
class Payment:
    payment_id: str
    cents: int
    note: Any = None


class Pay(Saga[Payment], name="tests.idempotency.pay"):
    @step(idempotency_key="authorize-{payment_id}")
    def authorize(self) -> str:
        calls.append(f"authorize:{self.step_key}")
        return "auth-1"

    @step(idempotency_key=lambda saga: f"capture-{saga.saga_id}-{saga.input.cents}")
    def capture(self, authorize: str) -> int:
        calls.append(f"capture:{self.step_key}")
        return self.input.cents


class Refund(Saga[Payment], name="tests.idempotency.refund"):
    @step(idempotency_key="{payment_id}")
    def refund(self) -> None:
        calls.append("refund")


def assert_nothing_written(engine: SagaEngine, saga_id: str) -> None:
    assert engine.get(saga_id) is None
    assert engine.count() == 0
    assert calls == []


@pytest.mark.parametrize("key", [None, "", "  "])
def test_saga_idempotency_key_is_required(engine: SagaEngine, key: str | None) -> None:
    with pytest.raises(IdempotencyRequiredError) as info:
        engine.run(Pay, Payment("p1", 100), saga_id="p1", idempotency_key=key)

    assert info.value.code == "IDEMPOTENCY_REQUIRED"
    assert str(info.value) == f"Pay: idempotency_key is required and must be a non-empty string, got {key!r}"
    assert_nothing_written(engine, "p1")


@pytest.mark.parametrize("saga_id", [None, "", " "])
def test_saga_id_is_required(engine: SagaEngine, saga_id: str | None) -> None:
    with pytest.raises(IdempotencyRequiredError) as info:
        engine.run(Pay, Payment("p1", 100), saga_id=saga_id, idempotency_key="k1")  # type: ignore[arg-type]

    assert str(info.value) == f"Pay: saga_id is required and must be a non-empty string, got {saga_id!r}"
    assert engine.count() == 0


def test_submit_also_requires_the_keys(engine: SagaEngine) -> None:
    with pytest.raises(IdempotencyRequiredError):
        engine.submit(Pay, Payment("p1", 100), saga_id="p1", idempotency_key="")

    assert_nothing_written(engine, "p1")


def test_step_key_template_with_an_empty_field_is_refused_before_writing(engine: SagaEngine) -> None:
    with pytest.raises(IdempotencyRequiredError) as info:
        engine.run(Refund, Payment("", 100), saga_id="p1", idempotency_key="k1")

    assert str(info.value) == (
        "Refund.refund: the idempotency key '{payment_id}' uses the input field 'payment_id', which is ''; "
        "a key part that is empty would let different sagas share a key, so give the field a value or "
        "key on another field")
    assert_nothing_written(engine, "p1")


class CallableKey(Saga[Payment], name="tests.idempotency.callable_key"):
    @step(idempotency_key=lambda saga: saga.input.note)
    def only(self) -> None:
        calls.append("only")


@pytest.mark.parametrize("note", ["", "   ", None, 42])
def test_step_key_callable_returning_no_string_is_refused(engine: SagaEngine, note: Any) -> None:
    with pytest.raises(IdempotencyRequiredError) as info:
        engine.run(CallableKey, Payment("p1", 1, note), saga_id="p1", idempotency_key="k1")

    assert str(info.value) == (f"CallableKey.only: the idempotency key rendered as {note!r}; it must be a "
                               "non-empty string")
    assert_nothing_written(engine, "p1")


def test_step_keys_are_rendered_and_stored_with_the_saga(engine: SagaEngine) -> None:
    engine.submit(Pay, Payment("p-9", 250), saga_id="s-9", idempotency_key="k1")

    record = engine.get("s-9")
    assert record is not None
    assert [(s.name, s.status, s.idempotency_key) for s in record.steps] == [
        ("authorize", "pending", "authorize-p-9"), ("capture", "pending", "capture-s-9-250")]
    assert calls == []


def test_steps_see_their_own_key(engine: SagaEngine) -> None:
    engine.run(Pay, Payment("p-9", 250), saga_id="s-9", idempotency_key="k1")

    assert calls == ["authorize:authorize-p-9", "capture:capture-s-9-250"]


def test_same_id_with_another_key_conflicts(engine: SagaEngine) -> None:
    engine.run(Pay, Payment("p1", 100), saga_id="p1", idempotency_key="k1")
    calls.clear()

    with pytest.raises(IdempotencyConflictError) as info:
        engine.run(Pay, Payment("p1", 100), saga_id="p1", idempotency_key="k2")

    assert info.value.code == "IDEMPOTENCY_CONFLICT"
    assert str(info.value) == (
        "saga 'p1' already exists with idempotency key 'k1', not 'k2'; the same id with another key is "
        "a different request. Use a new saga_id, or the original key to get the stored outcome")
    assert calls == []


def test_same_id_for_another_saga_class_conflicts(engine: SagaEngine) -> None:
    engine.run(Pay, Payment("p1", 100), saga_id="p1", idempotency_key="k1")
    calls.clear()

    with pytest.raises(IdempotencyConflictError) as info:
        engine.run(Refund, Payment("p1", 100), saga_id="p1", idempotency_key="k1")

    assert str(info.value) == ("saga id 'p1' already belongs to a tests.idempotency.pay saga, not "
                               "tests.idempotency.refund; use another saga_id")
    assert calls == []


def test_submitting_twice_with_the_same_key_changes_nothing(engine: SagaEngine) -> None:
    assert engine.submit(Pay, Payment("p1", 100), saga_id="p1", idempotency_key="k1") is None

    again = engine.submit(Pay, Payment("p1", 100), saga_id="p1", idempotency_key="k1")

    assert again is not None and again.status == "pending"
    assert engine.count() == 1
    with pytest.raises(IdempotencyConflictError):
        engine.submit(Pay, Payment("p1", 100), saga_id="p1", idempotency_key="k2")


def test_input_that_cannot_be_encoded_is_refused_before_writing(engine: SagaEngine) -> None:
    with pytest.raises(SerializationError) as info:
        engine.run(Pay, Payment("p1", 100, note=object()), saga_id="p1", idempotency_key="k1")

    assert info.value.code == "SERIALIZATION_ERROR"
    assert str(info.value) == (
        "the input of Pay (saga 'p1').note is a builtins.object, which has no JSON form; return a "
        "dataclass, pydantic model, TypedDict, Enum, datetime, UUID, Decimal, primitive, or a "
        "list/dict of those")
    assert_nothing_written(engine, "p1")


class Unencodable(Saga[Payment], name="tests.idempotency.unencodable"):
    @step(idempotency_key="a-{payment_id}")
    def a(self) -> str:
        calls.append("a")
        return "A"

    @compensates(a)
    def undo_a(self, value: str) -> None:
        calls.append(f"undo_a:{value}")

    @step(idempotency_key="b-{payment_id}")
    def b(self) -> object:
        calls.append("b")
        return {"lock": object()}


def test_step_result_that_cannot_be_encoded_fails_the_step_and_compensates(engine: SagaEngine) -> None:
    with pytest.raises(SagaFailedError) as info:
        engine.run(Unencodable, Payment("p1", 1), saga_id="p1", idempotency_key="k1")

    assert isinstance(info.value.__cause__, SerializationError)
    assert calls == ["a", "b", "undo_a:A"]
    record = engine.get("p1")
    assert record is not None and record.status == "failed"
    step_b = record.step("b")
    assert step_b is not None
    assert (step_b.status, step_b.attempts) == ("failed", 1)
    assert step_b.error == (
        "SerializationError: result of Unencodable.b (saga 'p1')['lock'] is a builtins.object, which "
        "has no JSON form; return a dataclass, pydantic model, TypedDict, Enum, datetime, UUID, "
        "Decimal, primitive, or a list/dict of those")

