"""Independent steps run concurrently; a failure compensates the graph branch by branch.

Issue 6. Wall-time tests use real sleeps: the ``engine`` fixture's FakeClock
only drives the engine's own waits (backoff, limits), not the steps' sleeps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from sagadsl import (
    CompensationFailedError,
    RetryPolicy,
    Saga,
    SagaEngine,
    SagaEvent,
    SagaEvents,
    SagaFailedError,
    compensates,
    step,
)
from sagadsl.storage import Storage
from sagadsl.testing import FakeClock


@dataclass
class Job:
    job_id: str


#: (event, step) in the order they happened, appended by steps and compensations.
log: list[tuple[str, str]] = []
#: step -> (monotonic start, monotonic end) of its last run.
spans: dict[str, tuple[float, float]] = {}


@pytest.fixture(autouse=True)
def _fresh_log() -> None:
    log.clear()
    spans.clear()


def _timed_sync(name: str, seconds: float) -> None:
    start = time.monotonic()
    time.sleep(seconds)
    spans[name] = (start, time.monotonic())


async def _timed_async(name: str, seconds: float) -> None:
    start = time.monotonic()
    await asyncio.sleep(seconds)
    spans[name] = (start, time.monotonic())


def _overlap(a: str, b: str) -> bool:
    (a0, a1), (b0, b1) = spans[a], spans[b]
    return a0 < b1 and b0 < a1


# -- ready steps run concurrently ----------------------------------------------


class AsyncFanIn(Saga[Job], name="tests.parallel.async_fan_in"):
    @step(idempotency_key="left-{job_id}", after=())
    async def left(self) -> str:
        await _timed_async("left", 0.5)
        return "L"

    @step(idempotency_key="right-{job_id}", after=())
    async def right(self) -> str:
        await _timed_async("right", 0.5)
        return "R"

    @step(idempotency_key="join-{job_id}", after=(left, right))
    async def join(self, left: str, right: str) -> str:
        return left + right


class SyncFanIn(Saga[Job], name="tests.parallel.sync_fan_in"):
    @step(idempotency_key="left-{job_id}", after=())
    def left(self) -> str:
        _timed_sync("left", 0.5)
        return "L"

    @step(idempotency_key="right-{job_id}", after=())
    def right(self) -> str:
        _timed_sync("right", 0.5)
        return "R"

    @step(idempotency_key="join-{job_id}", after=("left", "right"))
    def join(self, left: str, right: str) -> str:
        return left + right


@pytest.mark.parametrize("entry", ["run", "run_async"])
@pytest.mark.parametrize("saga_cls", [AsyncFanIn, SyncFanIn], ids=["async", "sync"])
def test_independent_steps_run_concurrently(engine: SagaEngine, saga_cls: type[Saga[Job]],
                                            entry: str) -> None:
    started = time.monotonic()
    if entry == "run":
        result = engine.run(saga_cls, Job("j-1"), saga_id="fan-in-1", idempotency_key="k-1")
    else:
        result = asyncio.run(engine.run_async(saga_cls, Job("j-1"), saga_id="fan-in-1",
                                              idempotency_key="k-1"))
    elapsed = time.monotonic() - started

    assert result.status == "completed"
    assert _overlap("left", "right")
    # Two 0.5 s steps one after the other would take at least 1 s.
    assert elapsed < 0.9, f"took {elapsed:.2f}s"


@pytest.mark.parametrize("saga_cls", [AsyncFanIn, SyncFanIn], ids=["async", "sync"])
def test_a_step_after_two_branches_receives_both_results(engine: SagaEngine,
                                                          saga_cls: type[Saga[Job]]) -> None:
    result = engine.run(saga_cls, Job("j-1"), saga_id="fan-in-1", idempotency_key="k-1")

    assert result.results == {"left": "L", "right": "R", "join": "LR"}
    record = engine.get("fan-in-1")
    assert record is not None
    assert [(s.name, s.status, s.result) for s in record.steps] == [
        ("left", "completed", "L"), ("right", "completed", "R"), ("join", "completed", "LR")]


# -- compensation of a diamond ---------------------------------------------------


class Diamond(Saga[Job], name="tests.parallel.diamond"):
    """a -> b, a -> c, (b, c) -> d; d fails."""

    @step(idempotency_key="a-{job_id}", after=())
    def a(self) -> str:
        log.append(("run", "a"))
        return "a"

    @compensates(a)
    def undo_a(self, a: str) -> None:
        log.append(("undo", a))

    @step(idempotency_key="b-{job_id}", after=(a,))
    async def b(self) -> str:
        log.append(("run", "b"))
        return "b"

    @compensates(b)
    async def undo_b(self, b: str) -> None:
        await asyncio.sleep(0.01)
        log.append(("undo", b))

    @step(idempotency_key="c-{job_id}", after=(a,))
    def c(self) -> str:
        log.append(("run", "c"))
        return "c"

    @compensates(c)
    def undo_c(self, c: str) -> None:
        log.append(("undo", c))

    @step(idempotency_key="d-{job_id}", after=(b, c))
    def d(self) -> str:
        log.append(("run", "d"))
        raise RuntimeError("d is out of stock")

    @compensates(d)
    def undo_d(self, d: str) -> None:
        log.append(("undo", d))


def test_diamond_compensates_dependents_before_their_dependency(engine: SagaEngine) -> None:
    with pytest.raises(SagaFailedError) as info:
        engine.run(Diamond, Job("j-1"), saga_id="diamond-1", idempotency_key="k-1")

    assert str(info.value.__cause__) == "d is out of stock"
    runs = [name for kind, name in log if kind == "run"]
    undos = [name for kind, name in log if kind == "undo"]
    assert runs[0] == "a" and sorted(runs[1:3]) == ["b", "c"] and runs[3] == "d"
    # d never completed, so it is not compensated; a comes after both its dependents.
    assert sorted(undos[:2]) == ["b", "c"] and undos[2:] == ["a"]
    record = engine.get("diamond-1")
    assert record is not None and record.status == "failed"
    assert {s.name: s.status for s in record.steps} == {
        "a": "compensated", "b": "compensated", "c": "compensated", "d": "failed"}


class Branches(Saga[Job], name="tests.parallel.branches"):
    """Two independent roots whose compensations can only finish together."""

    @step(idempotency_key="left-{job_id}", after=())
    async def left(self) -> str:
        return "left"

    @compensates(left)
    async def undo_left(self) -> None:
        await _rendezvous("left")

    @step(idempotency_key="right-{job_id}", after=())
    async def right(self) -> str:
        return "right"

    @compensates(right)
    async def undo_right(self) -> None:
        await _rendezvous("right")

    @step(idempotency_key="fail-{job_id}", after=(left, right))
    async def fail(self) -> None:
        raise RuntimeError("rejected")


_arrived: dict[str, asyncio.Event] = {}


async def _rendezvous(me: str) -> None:
    """Wait for the other branch's compensation; fails unless both run at the same time."""
    _arrived.setdefault(me, asyncio.Event()).set()
    other = "right" if me == "left" else "left"
    await asyncio.wait_for(_arrived.setdefault(other, asyncio.Event()).wait(), timeout=2)
    log.append(("undo", me))


def test_independent_branches_compensate_concurrently(engine: SagaEngine) -> None:
    _arrived.clear()
    # No retry: a compensation that timed out waiting for its sibling fails the test.
    with pytest.raises(SagaFailedError):
        engine.run(Branches, Job("j-1"), saga_id="branches-1", idempotency_key="k-1")

    assert sorted(name for _, name in log) == ["left", "right"]
    record = engine.get("branches-1")
    assert record is not None and record.status == "failed"


# -- a failure in one branch -----------------------------------------------------


boom_raised = threading.Event()


class SplitBranches(Saga[Job], name="tests.parallel.split_branches"):
    """``slow`` is still running when ``boom`` fails; ``after_slow`` would be ready next."""

    @step(idempotency_key="slow-{job_id}", after=())
    def slow(self) -> str:
        log.append(("start", "slow"))
        assert boom_raised.wait(timeout=5)
        time.sleep(0.2)
        log.append(("end", "slow"))
        return "slow"

    @compensates(slow)
    def undo_slow(self, slow: str) -> None:
        log.append(("undo", slow))

    @step(idempotency_key="boom-{job_id}", after=())
    async def boom(self) -> None:
        log.append(("start", "boom"))
        boom_raised.set()
        raise RuntimeError("boom")

    @step(idempotency_key="after-slow-{job_id}", after=(slow,))
    def after_slow(self) -> None:
        log.append(("start", "after_slow"))


def test_a_failed_branch_waits_for_its_running_sibling_and_compensates_it(
        storage: Storage, clock: FakeClock) -> None:
    boom_raised.clear()
    seen: list[tuple[str, str | None]] = []

    def record(event: SagaEvent) -> None:
        seen.append((event.kind, event.step))

    events = SagaEvents(on_step_failed=record, on_step_complete=record,
                        on_compensation_complete=record)
    engine = SagaEngine(storage, clock=clock, events=events)
    with pytest.raises(SagaFailedError) as info:
        engine.run(SplitBranches, Job("j-1"), saga_id="split-1", idempotency_key="k-1")
    stored = engine.get("split-1")
    engine.close()

    assert str(info.value.__cause__) == "boom"
    assert ("start", "after_slow") not in log
    assert log[-2:] == [("end", "slow"), ("undo", "slow")]
    assert seen == [("step_failed", "boom"), ("step_complete", "slow"),
                    ("compensation_complete", "slow")]
    assert stored is not None and stored.status == "failed"
    assert stored.error is not None and stored.error.step_name == "boom"
    assert {s.name: s.status for s in stored.steps} == {
        "slow": "compensated", "boom": "failed", "after_slow": "pending"}


class FailingBranchUndo(Saga[Job], name="tests.parallel.failing_branch_undo"):
    """The compensation of one branch fails; the other branch is still compensated."""

    @step(idempotency_key="left-{job_id}", after=())
    def left(self) -> str:
        return "left"

    @compensates(left)
    def undo_left(self) -> None:
        raise RuntimeError("cannot undo left")

    @step(idempotency_key="right-{job_id}", after=())
    def right(self) -> str:
        return "right"

    @compensates(right)
    def undo_right(self) -> None:
        log.append(("undo", "right"))

    @step(idempotency_key="fail-{job_id}", after=(left, right))
    def fail(self) -> None:
        raise RuntimeError("rejected")


def test_a_failed_compensation_in_one_branch_does_not_stop_the_other(engine: SagaEngine) -> None:
    with pytest.raises(CompensationFailedError):
        engine.run(FailingBranchUndo, Job("j-1"), saga_id="undo-1", idempotency_key="k-1")

    assert log == [("undo", "right")]
    record = engine.get("undo-1")
    assert record is not None and record.status == "dead_letter"
    assert {s.name: s.status for s in record.steps} == {
        "left": "compensation_failed", "right": "compensated", "fail": "failed"}


# -- per-step context ------------------------------------------------------------


contexts: list[tuple[str, str, str, int]] = []


class Interleaved(Saga[Job], name="tests.parallel.interleaved"):
    """Concurrent steps that read their own key and attempt across suspension points."""

    @step(idempotency_key="first-{job_id}", after=(), retry=RetryPolicy(max_attempts=2))
    async def first(self) -> None:
        await self._observe("first")
        if self.attempt == 1:
            raise ConnectionError("try again")

    @step(idempotency_key="second-{job_id}", after=())
    async def second(self) -> None:
        await self._observe("second")

    @step(idempotency_key="third-{job_id}", after=())
    def third(self) -> None:
        contexts.append(("third", "before", self.step_key, self.attempt))
        time.sleep(0.05)
        contexts.append(("third", "after", self.step_key, self.attempt))

    async def _observe(self, name: str) -> None:
        contexts.append((name, "before", self.step_key, self.attempt))
        await asyncio.sleep(0.05)
        contexts.append((name, "after", self.step_key, self.attempt))


def test_concurrent_steps_each_see_their_own_key_and_attempt(engine: SagaEngine) -> None:
    contexts.clear()
    engine.run(Interleaved, Job("j-1"), saga_id="ctx-1", idempotency_key="k-1")

    by_step: dict[str, set[tuple[str, int]]] = {}
    for name, _, key, attempt in contexts:
        by_step.setdefault(name, set()).add((key, attempt))
    assert by_step == {
        "first": {("first-j-1", 1), ("first-j-1", 2)},
        "second": {("second-j-1", 1)},
        "third": {("third-j-1", 1)},
    }
    # Each attempt saw the same values before and after suspending.
    first_attempts = [(phase, attempt) for name, phase, _, attempt in contexts if name == "first"]
    assert first_attempts == [("before", 1), ("after", 1), ("before", 2), ("after", 2)]


def test_step_key_is_unavailable_outside_a_step() -> None:
    saga: Any = Interleaved._bind(Job("j-1"), "ctx-1")
    message = r"Interleaved\.step_key is only available inside a step"
    with pytest.raises(RuntimeError, match=message):
        _ = saga.step_key
