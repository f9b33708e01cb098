"""Events (DESIGN §2.9): every callback fires in order, and none can change a saga's course."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import pytest

from sagadsl import (
    CompensationFailedError,
    CompensationPolicy,
    RetryPolicy,
    Saga,
    SagaEngine,
    SagaEvent,
    SagaEvents,
    SagaFailedError,
    StepTimeoutError,
    compensates,
    step,
)
from sagadsl.storage import Storage
from sagadsl.testing import FakeClock


@dataclass
class Order:
    order_id: str
    fail: bool = False
    break_undo: bool = False


class Declined(Exception):
    pass


class Checkout(Saga[Order], name="tests.events.checkout"):
    @step(idempotency_key="reserve-{order_id}", compensation=CompensationPolicy(max_attempts=1))
    def reserve(self) -> str:
        return "r-1"

    @compensates(reserve)
    async def release(self, reservation: str) -> None:
        if self.input.break_undo:
            raise RuntimeError("release failed")

    @step(idempotency_key="charge-{order_id}", retry=RetryPolicy(max_attempts=2))
    async def charge(self, reserve: str) -> int:
        if self.input.fail:
            raise Declined("card declined")
        return 42


class Recorder:
    """Collects every event; one handler per callback, each recording its kind."""

    def __init__(self) -> None:
        self.events: list[SagaEvent] = []

    def handler(self, event: SagaEvent) -> None:
        self.events.append(event)

    def callbacks(self) -> SagaEvents:
        return SagaEvents(**{f.name: self.handler for f in fields(SagaEvents)})

    @property
    def trace(self) -> list[tuple[str, str | None, int | None]]:
        return [(e.kind, e.step, e.attempt) for e in self.events]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def observed(storage: Storage, clock: FakeClock, recorder: Recorder) -> SagaEngine:
    engine = SagaEngine(storage, clock=clock, events=recorder.callbacks())
    return engine


def test_every_callback_is_a_field_of_saga_events() -> None:
    assert [f.name for f in fields(SagaEvents)] == [
        "on_saga_start", "on_saga_complete", "on_saga_failed", "on_saga_cancelled", "on_step_start", "on_step_complete",
        "on_step_failed", "on_step_retry", "on_step_skipped", "on_step_timeout",
        "on_compensation_start", "on_compensation_complete", "on_compensation_failed",
        "on_compensation_retry", "on_compensation_timeout", "on_dead_letter"]


def test_every_event_kind_has_its_callback() -> None:
    from typing import get_args

    from sagadsl.events import EventKind

    assert sorted(f"on_{kind}" for kind in get_args(EventKind)) == sorted(f.name for f in fields(SagaEvents))


class UndoRetried(Saga[Order], name="tests.events.undo_retried"):
    @step(idempotency_key="reserve-{order_id}",
          compensation=CompensationPolicy(max_attempts=2, backoff=0, timeout=0.05))
    def reserve(self) -> str:
        return "r-1"

    @compensates(reserve)
    async def release(self) -> None:
        import asyncio

        if self.attempt == 1:
            await asyncio.sleep(10)  # the first attempt times out

    @step(idempotency_key="charge-{order_id}")
    def charge(self) -> None:
        raise Declined("card declined")


def test_a_compensation_that_times_out_and_is_retried_says_so_in_its_own_events(
        observed: SagaEngine, recorder: Recorder) -> None:
    with pytest.raises(SagaFailedError):
        observed.run(UndoRetried, Order("o1"), saga_id="o1", idempotency_key="k1")
    assert recorder.trace[-6:] == [
        ("compensation_start", "reserve", 1), ("compensation_timeout", "reserve", 1),
        ("compensation_retry", "reserve", 1),
        ("compensation_start", "reserve", 2), ("compensation_complete", "reserve", 2),
        ("saga_failed", None, None),
    ]
    assert "step_timeout" not in [kind for kind, _, _ in recorder.trace]
    timeout = next(e for e in recorder.events if e.kind == "compensation_timeout")
    assert isinstance(timeout.error, StepTimeoutError)


def test_saga_level_events_carry_the_duration_of_the_execution(observed: SagaEngine,
                                                                recorder: Recorder) -> None:
    observed.run(Checkout, Order("o1"), saga_id="o1", idempotency_key="k1")
    with pytest.raises(SagaFailedError):
        observed.run(Checkout, Order("o2", fail=True), saga_id="o2", idempotency_key="k2")
    with pytest.raises(CompensationFailedError):
        observed.run(Checkout, Order("o3", fail=True, break_undo=True), saga_id="o3", idempotency_key="k3")
    ends = [e for e in recorder.events if e.kind in ("saga_complete", "saga_failed", "dead_letter")]
    assert [e.kind for e in ends] == ["saga_complete", "saga_failed", "dead_letter"]
    assert all(e.duration is not None and e.duration >= 0 for e in ends)


def test_events_of_a_successful_saga(observed: SagaEngine, recorder: Recorder) -> None:
    observed.run(Checkout, Order("o1"), saga_id="o1", idempotency_key="k1")

    assert recorder.trace == [
        ("saga_start", None, None),
        ("step_start", "reserve", 1), ("step_complete", "reserve", 1),
        ("step_start", "charge", 1), ("step_complete", "charge", 1),
        ("saga_complete", None, None),
    ]
    assert all((e.saga_id, e.saga_name) == ("o1", "tests.events.checkout") for e in recorder.events)
    complete = [e for e in recorder.events if e.kind == "step_complete"]
    assert [e.result for e in complete] == ["r-1", 42]
    assert all(e.duration is not None and e.duration >= 0 for e in complete)
    assert recorder.events[-1].result == {"reserve": "r-1", "charge": 42}


def test_events_of_a_failed_saga(observed: SagaEngine, recorder: Recorder) -> None:
    with pytest.raises(SagaFailedError):
        observed.run(Checkout, Order("o1", fail=True), saga_id="o1", idempotency_key="k1")

    assert recorder.trace == [
        ("saga_start", None, None),
        ("step_start", "reserve", 1), ("step_complete", "reserve", 1),
        ("step_start", "charge", 1), ("step_retry", "charge", 1),
        ("step_start", "charge", 2), ("step_failed", "charge", 2),
        ("compensation_start", "reserve", 1), ("compensation_complete", "reserve", 1),
        ("saga_failed", None, None),
    ]
    errors = {e.kind: e.error for e in recorder.events if e.error is not None}
    assert set(errors) == {"step_retry", "step_failed", "saga_failed"}
    assert isinstance(errors["step_retry"], Declined) and isinstance(errors["step_failed"], Declined)
    # A saga-level event names no step: its error (what run raises) names it.
    failed = errors["saga_failed"]
    assert isinstance(failed, SagaFailedError) and failed.step_name == "charge"
    assert isinstance(failed.__cause__, Declined)


def test_events_of_a_dead_lettered_saga(observed: SagaEngine, recorder: Recorder) -> None:
    with pytest.raises(CompensationFailedError):
        observed.run(Checkout, Order("o1", fail=True, break_undo=True), saga_id="o1", idempotency_key="k1")

    assert recorder.trace[-4:] == [
        ("step_failed", "charge", 2),
        ("compensation_start", "reserve", 1), ("compensation_failed", "reserve", 1),
        ("dead_letter", None, None),
    ]
    dead = recorder.events[-1].error
    assert isinstance(dead, CompensationFailedError) and dead.step_name == "charge"
    assert isinstance(dead.__cause__, RuntimeError)


class Slow(Saga[Order], name="tests.events.slow"):
    @step(idempotency_key="wait-{order_id}", timeout=0.05)
    async def wait(self) -> None:
        import asyncio

        await asyncio.sleep(10)


def test_step_timeout_event(observed: SagaEngine, recorder: Recorder) -> None:
    with pytest.raises(SagaFailedError):
        observed.run(Slow, Order("o1"), saga_id="o1", idempotency_key="k1")

    assert recorder.trace == [
        ("saga_start", None, None), ("step_start", "wait", 1), ("step_timeout", "wait", 1),
        ("step_failed", "wait", 1), ("saga_failed", None, None)]
    timeout_event = recorder.events[2]
    assert isinstance(timeout_event.error, StepTimeoutError)
    assert timeout_event.duration is not None and timeout_event.duration >= 0.04


class Crash(BaseException):
    """Stands in for the executor dying mid-step (see tests/test_resume.py)."""


class Interrupted(Saga[Order], name="tests.events.interrupted"):
    @step(idempotency_key="first-{order_id}")
    def first(self) -> str:
        return "one"

    @step(idempotency_key="second-{order_id}")
    def second(self) -> str:
        if crash_next:
            crash_next.clear()
            raise Crash()
        return "two"


crash_next: list[bool] = []


def test_step_skipped_event_on_resume(observed: SagaEngine, recorder: Recorder) -> None:
    crash_next[:] = [True]
    with pytest.raises(Crash):
        observed.run(Interrupted, Order("o1"), saga_id="o1", idempotency_key="k1")
    recorder.events.clear()

    observed.run(Interrupted, Order("o1"), saga_id="o1", idempotency_key="k1")

    assert recorder.trace == [
        ("saga_start", None, None), ("step_skipped", "first", None),
        ("step_start", "second", 1), ("step_complete", "second", 1), ("saga_complete", None, None)]
    assert recorder.events[1].result == "one"


def test_a_raising_handler_is_logged_and_ignored(
    storage: Storage, clock: FakeClock, caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(event: SagaEvent) -> None:
        raise ValueError(f"handler broke on {event.step}")

    engine = SagaEngine(storage, clock=clock, events=SagaEvents(
        on_step_start=explode, on_step_complete=explode, on_saga_complete=explode))

    with caplog.at_level(logging.ERROR, logger="sagadsl.events"):
        result = engine.run(Checkout, Order("o1"), saga_id="o1", idempotency_key="k1")

    assert result.status == "completed"
    assert result.results == {"reserve": "r-1", "charge": 42}
    messages = [r.getMessage() for r in caplog.records if r.name == "sagadsl.events"]
    assert messages[0] == "sagadsl event handler for step_start raised; ignored (saga o1, step reserve)"
    assert len(messages) == 5
    assert all(r.exc_info is not None for r in caplog.records if r.name == "sagadsl.events")


def test_a_raising_handler_does_not_change_a_failure(storage: Storage, clock: FakeClock) -> None:
    def explode(event: SagaEvent) -> None:
        raise ValueError("handler broke")

    engine = SagaEngine(storage, clock=clock, events=SagaEvents(
        on_step_failed=explode, on_compensation_start=explode, on_saga_failed=explode))

    with pytest.raises(SagaFailedError) as info:
        engine.run(Checkout, Order("o1", fail=True), saga_id="o1", idempotency_key="k1")

    assert isinstance(info.value.__cause__, Declined)
    record = engine.get("o1")
    assert record is not None and record.status == "failed"


def test_async_handlers_are_awaited(storage: Storage, clock: FakeClock) -> None:
    seen: list[str] = []

    async def on_step_complete(event: SagaEvent) -> None:
        seen.append(f"{event.step}={event.result}")

    engine = SagaEngine(storage, clock=clock, events=SagaEvents(on_step_complete=on_step_complete))
    engine.run(Checkout, Order("o1"), saga_id="o1", idempotency_key="k1")

    assert seen == ["reserve=r-1", "charge=42"]


def test_combined_callbacks_all_run(storage: Storage, clock: FakeClock) -> None:
    seen: list[str] = []

    events = SagaEvents.combine(
        SagaEvents(on_saga_start=lambda e: seen.append("first")),
        None,
        SagaEvents(on_saga_start=lambda e: seen.append("second")),
    )
    SagaEngine(storage, clock=clock, events=events).run(
        Checkout, Order("o1"), saga_id="o1", idempotency_key="k1")

    assert seen == ["first", "second"]
