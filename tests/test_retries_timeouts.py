"""Step retries with backoff and step timeouts (DESIGN §1 defaults, §2.2)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass

import pytest

from sagadsl import (
    RetryPolicy,
    Saga,
    SagaEngine,
    SagaFailedError,
    StepTimeoutError,
    compensates,
    step,
)
from sagadsl.testing import FakeClock

attempts: list[tuple[str, int, str]] = []


@pytest.fixture(autouse=True)
def _fresh() -> None:
    attempts.clear()


@dataclass
class Job:
    job_id: str
    succeed_on: int = 99


class Flaky(Saga[Job], name="tests.retries.flaky"):
    @step(idempotency_key="call-{job_id}",
          retry=RetryPolicy(max_attempts=5, backoff=0.2, multiplier=2.0, max_backoff=0.5))
    def call(self) -> int:
        attempts.append(("call", self.attempt, self.step_key))
        if self.attempt < self.input.succeed_on:
            raise ConnectionError(f"attempt {self.attempt} failed")
        return self.attempt


def test_step_is_retried_with_backoff_until_it_succeeds(engine: SagaEngine, clock: FakeClock) -> None:
    result = engine.run(Flaky, Job("j1", succeed_on=4), saga_id="j1", idempotency_key="k1")

    assert result.results == {"call": 4}
    assert [a for _, a, _ in attempts] == [1, 2, 3, 4]
    assert clock.sleeps == [0.2, 0.4, 0.5]  # doubled, then capped at max_backoff
    record = engine.get("j1")
    assert record is not None
    step_record = record.step("call")
    assert step_record is not None and step_record.attempts == 4


def test_step_key_is_the_same_on_every_attempt(engine: SagaEngine) -> None:
    engine.run(Flaky, Job("j1", succeed_on=3), saga_id="j1", idempotency_key="k1")

    assert {key for _, _, key in attempts} == {"call-j1"}
    record = engine.get("j1")
    assert record is not None and record.steps[0].idempotency_key == "call-j1"


def test_step_fails_after_its_last_attempt(engine: SagaEngine, clock: FakeClock) -> None:
    with pytest.raises(SagaFailedError) as info:
        engine.run(Flaky, Job("j1"), saga_id="j1", idempotency_key="k1")

    assert len(attempts) == 5
    assert clock.sleeps == [0.2, 0.4, 0.5, 0.5]
    assert isinstance(info.value.__cause__, ConnectionError)
    assert str(info.value.__cause__) == "attempt 5 failed"
    record = engine.get("j1")
    assert record is not None
    assert record.steps[0].status == "failed" and record.steps[0].attempts == 5
    assert record.steps[0].error == "ConnectionError: attempt 5 failed"


class NoPolicy(Saga[Job], name="tests.retries.no_policy"):
    @step(idempotency_key="call-{job_id}")
    def call(self) -> None:
        attempts.append(("call", self.attempt, self.step_key))
        raise ConnectionError("down")


def test_without_a_retry_policy_a_step_runs_once(engine: SagaEngine, clock: FakeClock) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(NoPolicy, Job("j1"), saga_id="j1", idempotency_key="k1")

    assert len(attempts) == 1
    assert clock.sleeps == []


class Selective(Saga[Job], name="tests.retries.selective"):
    @step(idempotency_key="call-{job_id}",
          retry=RetryPolicy(max_attempts=4, retry_on=(ConnectionError,), give_up_on=(ConnectionRefusedError,)))
    def call(self) -> None:
        attempts.append(("call", self.attempt, self.step_key))
        raise {"value": ValueError, "conn": ConnectionError,
               "refused": ConnectionRefusedError}[self.input.job_id]("no")


@pytest.mark.parametrize(("kind", "expected_attempts"), [("conn", 4), ("value", 1), ("refused", 1)])
def test_retry_on_and_give_up_on_select_what_is_retried(
    engine: SagaEngine, kind: str, expected_attempts: int,
) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(Selective, Job(kind), saga_id=kind, idempotency_key="k")

    assert len(attempts) == expected_attempts


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(max_attempts=6, backoff=1.0, multiplier=3.0, max_backoff=20.0)

    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 3.0, 9.0, 20.0, 20.0]


def test_jitter_spreads_each_delay_within_its_fraction() -> None:
    policy = RetryPolicy(max_attempts=3, backoff=10.0, jitter=0.25)
    rng = random.Random(7)

    delays = [policy.delay(1, rng) for _ in range(200)]

    assert all(7.5 <= d <= 12.5 for d in delays)
    assert len(set(delays)) > 100


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"backoff": -1.0}, {"multiplier": 0.5},
                                    {"jitter": 1.5}])
def test_retry_policy_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="^RetryPolicy: "):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


# -- timeouts ---------------------------------------------------------------

cancelled = threading.Event()
release_thread = threading.Event()


class SlowAsync(Saga[Job], name="tests.timeouts.slow_async"):
    @step(idempotency_key="first-{job_id}")
    def first(self) -> str:
        return "done"

    @compensates(first)
    def undo_first(self, value: str) -> None:
        attempts.append(("undo_first", self.attempt, value))

    @step(idempotency_key="slow-{job_id}", timeout=0.05)
    async def slow(self) -> None:
        attempts.append(("slow", self.attempt, self.step_key))
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise


def test_async_step_is_cancelled_at_its_timeout_and_the_saga_compensates(engine: SagaEngine) -> None:
    cancelled.clear()

    with pytest.raises(SagaFailedError) as info:
        engine.run(SlowAsync, Job("j1"), saga_id="j1", idempotency_key="k1")

    assert cancelled.is_set()
    cause = info.value.__cause__
    assert isinstance(cause, StepTimeoutError)
    assert cause.code == "STEP_TIMEOUT"
    assert str(cause) == "SlowAsync.slow took longer than its timeout of 0.05s (attempt 1)"
    assert attempts == [("slow", 1, "slow-j1"), ("undo_first", 1, "done")]


class SlowSync(Saga[Job], name="tests.timeouts.slow_sync"):
    @step(idempotency_key="slow-{job_id}", timeout=0.05, retry=RetryPolicy(max_attempts=2))
    def slow(self) -> str:
        attempts.append(("slow", self.attempt, self.step_key))
        release_thread.wait(10)
        return "late"


def test_sync_step_overrunning_its_timeout_fails_with_step_timeout(engine: SagaEngine) -> None:
    release_thread.clear()
    started = time.monotonic()
    try:
        with pytest.raises(SagaFailedError) as info:
            engine.run(SlowSync, Job("j1"), saga_id="j1", idempotency_key="k1")
        elapsed = time.monotonic() - started
    finally:
        release_thread.set()  # let the abandoned threads finish

    assert isinstance(info.value.__cause__, StepTimeoutError)
    assert str(info.value.__cause__) == "SlowSync.slow took longer than its timeout of 0.05s (attempt 2)"
    assert [a for _, a, _ in attempts] == [1, 2]  # a timed-out attempt is retried like any failure
    assert elapsed < 5  # did not wait for the threads
    record = engine.get("j1")
    assert record is not None and record.status == "failed"
    assert record.steps[0].result is None


class QuickEnough(Saga[Job], name="tests.timeouts.quick"):
    @step(idempotency_key="quick-{job_id}", timeout=5.0)
    async def quick(self) -> str:
        await asyncio.sleep(0)
        return "ok"

    @step(idempotency_key="quick-sync-{job_id}", timeout=5.0)
    def quick_sync(self) -> str:
        return "ok too"


def test_steps_within_their_timeout_complete(engine: SagaEngine) -> None:
    result = engine.run(QuickEnough, Job("j1"), saga_id="j1", idempotency_key="k1")

    assert result.results == {"quick": "ok", "quick_sync": "ok too"}
