"""Compensation (DESIGN §2.4, §2.5): order, inputs, dead letter, and what `run` raises."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sagadsl import (
    MAX_ERROR_LENGTH,
    CompensationFailedError,
    CompensationPolicy,
    DeadLetterError,
    Saga,
    SagaEngine,
    SagaFailedError,
    compensates,
    step,
)
from sagadsl.testing import FakeClock

calls: list[str] = []


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


@dataclass
class Trip:
    trip_id: str
    fail_at: str = ""
    huge: bool = False


class Declined(Exception):
    pass


def maybe_fail(saga: Saga[Trip], name: str) -> None:
    if saga.input.fail_at == name:
        message = "x" * 10_000 if saga.input.huge else f"{name} declined"
        raise Declined(message)


@dataclass
class Seat:
    flight: str
    seat: str


class BookTrip(Saga[Trip], name="tests.compensation.book_trip"):
    @step(idempotency_key="flight-{trip_id}")
    def flight(self) -> Seat:
        calls.append("flight")
        maybe_fail(self, "flight")
        return Seat("LH-400", "12A")

    @compensates(flight)
    def cancel_flight(self, seat: Seat) -> None:
        calls.append(f"cancel_flight:{seat.flight}/{seat.seat}")

    @step(idempotency_key="hotel-{trip_id}")
    async def hotel(self, flight: Seat) -> str:
        calls.append("hotel")
        maybe_fail(self, "hotel")
        return f"room-near-{flight.flight}"

    @compensates(hotel)
    async def cancel_hotel(self, room: str, flight: Seat) -> None:
        calls.append(f"cancel_hotel:{room}:{flight.seat}")

    @step(idempotency_key="notify-{trip_id}")
    def notify(self) -> int:
        calls.append("notify")
        maybe_fail(self, "notify")
        return 1

    @step(idempotency_key="car-{trip_id}")
    def car(self, hotel: str) -> str:
        calls.append("car")
        maybe_fail(self, "car")
        return "car-7"

    @compensates(car)
    def return_car(self, car: str) -> None:
        calls.append(f"return_car:{car}")

    @step(idempotency_key="pay-{trip_id}")
    def pay(self) -> None:
        calls.append("pay")
        maybe_fail(self, "pay")


FORWARD = ["flight", "hotel", "notify", "car", "pay"]


def test_completed_steps_are_compensated_in_reverse_completion_order(engine: SagaEngine) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(BookTrip, Trip("t1", fail_at="pay"), saga_id="t1", idempotency_key="k1")

    assert calls == FORWARD + ["return_car:car-7", "cancel_hotel:room-near-LH-400:12A",
                               "cancel_flight:LH-400/12A"]


def test_compensation_receives_its_step_result_and_its_dependencies_results(engine: SagaEngine) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(BookTrip, Trip("t1", fail_at="notify"), saga_id="t1", idempotency_key="k1")

    assert calls == ["flight", "hotel", "notify", "cancel_hotel:room-near-LH-400:12A",
                     "cancel_flight:LH-400/12A"]


def test_the_failing_step_and_steps_after_it_are_not_compensated(engine: SagaEngine) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(BookTrip, Trip("t1", fail_at="car"), saga_id="t1", idempotency_key="k1")

    assert calls == ["flight", "hotel", "notify", "car", "cancel_hotel:room-near-LH-400:12A",
                     "cancel_flight:LH-400/12A"]
    record = engine.get("t1")
    assert record is not None
    assert record.status == "failed"
    assert {s.name: s.status for s in record.steps} == {
        "flight": "compensated", "hotel": "compensated", "notify": "completed", "car": "failed",
        "pay": "pending"}


def test_failure_raises_saga_failed_with_the_step_error_as_cause(engine: SagaEngine) -> None:
    with pytest.raises(SagaFailedError) as info:
        engine.run(BookTrip, Trip("t1", fail_at="hotel"), saga_id="t1", idempotency_key="k1")

    assert isinstance(info.value.__cause__, Declined)
    assert info.value.code == "SAGA_FAILED"
    assert info.value.step_name == "hotel"
    assert info.value.error == "Declined: hotel declined"
    assert str(info.value) == ("saga 't1' (tests.compensation.book_trip) failed at step 'hotel': "
                               "Declined: hotel declined; every completed step was compensated")
    record = engine.get("t1")
    assert record is not None and record.error is not None
    assert (record.error.step_name, record.error.error, record.error.compensation_error) == (
        "hotel", "Declined: hotel declined", None)


def test_first_step_failing_leaves_nothing_to_compensate(engine: SagaEngine) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(BookTrip, Trip("t1", fail_at="flight"), saga_id="t1", idempotency_key="k1")

    assert calls == ["flight"]
    record = engine.get("t1")
    assert record is not None and record.status == "failed"


class FragileUndo(Saga[Trip], name="tests.compensation.fragile_undo"):
    @step(idempotency_key="a-{trip_id}")
    def a(self) -> str:
        calls.append("a")
        return "A"

    @compensates(a)
    def undo_a(self, value: str) -> None:
        calls.append(f"undo_a:{value}")

    @step(idempotency_key="b-{trip_id}")
    def b(self) -> str:
        calls.append("b")
        return "B"

    @compensates(b)
    def undo_b(self, value: str) -> None:
        calls.append(f"undo_b:{value}:attempt{self.attempt}")
        raise RuntimeError("undo refused " + "y" * 10_000)

    @step(idempotency_key="c-{trip_id}")
    def c(self) -> None:
        calls.append("c")
        raise Declined("z" * 10_000)


def test_failed_compensation_sends_saga_to_dead_letter_and_others_still_run(
    engine: SagaEngine, clock: FakeClock,
) -> None:
    with pytest.raises(CompensationFailedError) as info:
        engine.run(FragileUndo, Trip("t1"), saga_id="t1", idempotency_key="k1")

    # Default CompensationPolicy: 3 attempts, 0.5 s then 1 s apart.
    assert calls == ["a", "b", "c", "undo_b:B:attempt1", "undo_b:B:attempt2", "undo_b:B:attempt3",
                     "undo_a:A"]
    assert clock.sleeps == [0.5, 1.0]
    assert info.value.code == "COMPENSATION_FAILED"
    assert isinstance(info.value.__cause__, RuntimeError)
    record = engine.get("t1")
    assert record is not None
    assert record.status == "dead_letter"
    assert {s.name: s.status for s in record.steps} == {
        "a": "compensated", "b": "compensation_failed", "c": "failed"}


def test_dead_letter_records_both_errors_cut_to_the_limit(engine: SagaEngine) -> None:
    with pytest.raises(CompensationFailedError):
        engine.run(FragileUndo, Trip("t1"), saga_id="t1", idempotency_key="k1")

    record = engine.get("t1")
    assert record is not None and record.error is not None
    error, compensation_error = record.error.error, record.error.compensation_error
    assert error is not None and compensation_error is not None
    assert record.error.step_name == "c"
    assert error.startswith("Declined: zzz")
    assert compensation_error.startswith("undo_b (compensating b): RuntimeError: undo refused yyy")
    for text in (error, compensation_error):
        assert len(text.encode()) == MAX_ERROR_LENGTH
        assert text.endswith("…")
    step_b = record.step("b")
    assert step_b is not None and step_b.compensation_error is not None
    assert len(step_b.compensation_error.encode()) <= MAX_ERROR_LENGTH


def test_running_a_dead_letter_saga_raises_dead_letter(engine: SagaEngine) -> None:
    with pytest.raises(CompensationFailedError):
        engine.run(FragileUndo, Trip("t1"), saga_id="t1", idempotency_key="k1")
    calls.clear()

    with pytest.raises(DeadLetterError) as info:
        engine.run(FragileUndo, Trip("t1"), saga_id="t1", idempotency_key="k1")

    assert info.value.code == "DEAD_LETTER"
    assert calls == []


class CustomUndoPolicy(Saga[Trip], name="tests.compensation.custom_policy"):
    @step(idempotency_key="a-{trip_id}",
          compensation=CompensationPolicy(max_attempts=4, backoff=2.0, multiplier=3.0, max_backoff=10.0))
    def a(self) -> None:
        pass

    @compensates(a)
    def undo_a(self) -> None:
        calls.append(f"undo_a:{self.attempt}")
        if self.attempt < 4:
            raise RuntimeError("not yet")

    @step(idempotency_key="b-{trip_id}")
    def b(self) -> None:
        raise Declined("no")


def test_compensation_policy_retries_until_the_compensation_succeeds(
    engine: SagaEngine, clock: FakeClock,
) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(CustomUndoPolicy, Trip("t1"), saga_id="t1", idempotency_key="k1")

    assert calls == ["undo_a:1", "undo_a:2", "undo_a:3", "undo_a:4"]
    assert clock.sleeps == [2.0, 6.0, 10.0]
    record = engine.get("t1")
    assert record is not None and record.status == "failed"


def test_retry_from_dead_letter_continues_the_compensation(engine: SagaEngine) -> None:
    with pytest.raises(CompensationFailedError):
        engine.run(FragileUndo, Trip("t1"), saga_id="t1", idempotency_key="k1")
    calls.clear()

    assert engine.retry("t1") == 1
    record = engine.get("t1")
    assert record is not None and record.status == "pending" and record.retry_count == 1
    with pytest.raises(CompensationFailedError):
        engine.run(FragileUndo, Trip("t1"), saga_id="t1", idempotency_key="k1")

    # Only the compensation that failed runs again; no forward step runs.
    assert calls == ["undo_b:B:attempt1", "undo_b:B:attempt2", "undo_b:B:attempt3"]
