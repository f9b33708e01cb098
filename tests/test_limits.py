"""Hard limits (DESIGN §2.7): the 15-minute budget, the retry cap, error length."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from sagadsl import (
    MAX_ERROR_LENGTH,
    MAX_EXECUTION_DURATION,
    MAX_RETRY_COUNT,
    CompensationFailedError,
    CompensationPolicy,
    ExecutionTimeoutError,
    InvalidStateError,
    RetryCapExceededError,
    Saga,
    SagaEngine,
    SagaFailedError,
    SagaNotFoundError,
    compensates,
    step,
    truncate_error,
)
from sagadsl.testing import FakeClock

calls: list[str] = []
the_clock: list[FakeClock] = []


@pytest.fixture(autouse=True)
def _fresh(clock: FakeClock) -> None:
    calls.clear()
    the_clock[:] = [clock]


def test_limits_have_their_documented_values() -> None:
    assert MAX_EXECUTION_DURATION == timedelta(minutes=15)
    assert MAX_RETRY_COUNT == 10
    assert MAX_ERROR_LENGTH == 2048


@dataclass
class Batch:
    batch_id: str
    overrun: float = 0.0


class LongRunning(Saga[Batch], name="tests.limits.long_running"):
    @step(idempotency_key="load-{batch_id}")
    def load(self) -> str:
        calls.append("load")
        the_clock[0].advance(self.input.overrun)
        return "loaded"

    @compensates(load)
    def unload(self, value: str) -> None:
        calls.append(f"unload:{value}")

    @step(idempotency_key="process-{batch_id}")
    def process(self) -> None:
        calls.append("process")


def test_no_step_starts_after_fifteen_minutes_and_the_saga_compensates(engine: SagaEngine) -> None:
    overrun = MAX_EXECUTION_DURATION.total_seconds() + 1

    with pytest.raises(SagaFailedError) as info:
        engine.run(LongRunning, Batch("b1", overrun=overrun), saga_id="b1", idempotency_key="k1")

    assert calls == ["load", "unload:loaded"]
    cause = info.value.__cause__
    assert isinstance(cause, ExecutionTimeoutError)
    assert cause.code == "EXECUTION_TIMEOUT"
    assert str(cause) == ("saga 'b1' reached its 15-minute execution limit before step 'process' "
                          "could finish; it is being compensated")
    assert info.value.step_name == "process"
    record = engine.get("b1")
    assert record is not None and record.status == "failed"
    assert [s.status for s in record.steps] == ["compensated", "pending"]


def test_a_saga_just_inside_its_budget_completes(engine: SagaEngine) -> None:
    overrun = MAX_EXECUTION_DURATION.total_seconds() - 1

    result = engine.run(LongRunning, Batch("b1", overrun=overrun), saga_id="b1", idempotency_key="k1")

    assert result.status == "completed"
    assert calls == ["load", "process"]


def test_the_budget_is_exhausted_at_exactly_fifteen_minutes(engine: SagaEngine) -> None:
    overrun = MAX_EXECUTION_DURATION.total_seconds()

    with pytest.raises(SagaFailedError) as info:
        engine.run(LongRunning, Batch("b1", overrun=overrun), saga_id="b1", idempotency_key="k1")

    assert isinstance(info.value.__cause__, ExecutionTimeoutError)
    assert calls == ["load", "unload:loaded"]


class AlwaysDeadLetter(Saga[Batch], name="tests.limits.always_dead_letter"):
    @step(idempotency_key="a-{batch_id}", compensation=CompensationPolicy(max_attempts=1))
    def a(self) -> None:
        pass

    @compensates(a)
    def undo_a(self) -> None:
        calls.append("undo_a")
        raise RuntimeError("still broken")

    @step(idempotency_key="b-{batch_id}")
    def b(self) -> None:
        raise ValueError("boom")


def test_retry_from_dead_letter_is_capped(engine: SagaEngine) -> None:
    with pytest.raises(CompensationFailedError):
        engine.run(AlwaysDeadLetter, Batch("b1"), saga_id="b1", idempotency_key="k1")

    for expected in range(1, MAX_RETRY_COUNT + 1):
        assert engine.retry("b1") == expected
        with pytest.raises(CompensationFailedError):
            engine.run(AlwaysDeadLetter, Batch("b1"), saga_id="b1", idempotency_key="k1")

    with pytest.raises(RetryCapExceededError) as info:
        engine.retry("b1")

    assert info.value.code == "RETRY_CAP_EXCEEDED"
    assert str(info.value) == ("saga 'b1' was already retried 10 times, the cap is 10; inspect it with "
                               "`saga-admin show b1` and resolve it by hand")
    record = engine.get("b1")
    assert record is not None
    assert (record.status, record.retry_count) == ("dead_letter", MAX_RETRY_COUNT)
    assert calls == ["undo_a"] * (MAX_RETRY_COUNT + 1)


def test_retry_starts_a_new_execution_budget(engine: SagaEngine, clock: FakeClock) -> None:
    with pytest.raises(CompensationFailedError):
        engine.run(AlwaysDeadLetter, Batch("b1"), saga_id="b1", idempotency_key="k1")
    clock.advance(MAX_EXECUTION_DURATION * 2)

    engine.retry("b1")

    record = engine.get("b1")
    assert record is not None
    assert record.started_at == clock.now()
    assert record.deadline == clock.now() + MAX_EXECUTION_DURATION


def test_only_a_dead_letter_saga_can_be_retried(engine: SagaEngine) -> None:
    engine.run(LongRunning, Batch("b1"), saga_id="b1", idempotency_key="k1")

    with pytest.raises(InvalidStateError) as info:
        engine.retry("b1")

    assert str(info.value) == ("saga 'b1' is completed, not dead_letter; only a dead-letter saga can "
                               "be retried")
    record = engine.get("b1")
    assert record is not None and (record.status, record.retry_count) == ("completed", 0)


def test_retrying_an_unknown_saga_raises_not_found(engine: SagaEngine) -> None:
    with pytest.raises(SagaNotFoundError) as info:
        engine.retry("nope")

    assert str(info.value) == "no saga with id 'nope'"


def test_truncate_error_keeps_short_texts() -> None:
    assert truncate_error("short") == "short"
    assert truncate_error("é" * 1024) == "é" * 1024  # exactly 2048 bytes


def test_truncate_error_cuts_on_a_character_boundary() -> None:
    cut = truncate_error("é" * 5000)

    assert len(cut.encode()) <= MAX_ERROR_LENGTH
    assert cut.endswith("…")
    assert set(cut[:-1]) == {"é"}
