"""Edge cases where a saga must still end in a clear state, never stuck or double-driven."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from sagadsl import (
    CompensationFailedError,
    CompensationPolicy,
    RetryPolicy,
    Saga,
    SagaEngine,
    SagaFailedError,
    SagaLockedError,
    SerializationError,
    StorageError,
    compensates,
    step,
)
from sagadsl.registry import _by_name
from sagadsl.storage import SqlStorage, Storage
from sagadsl.testing import FakeClock
from sagadsl.worker import Worker


@dataclass
class Order:
    order_id: str


log: list[str] = []
flaky: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    log.clear()
    flaky.clear()


# -- a TimeoutError raised by the step itself is an ordinary failure -------------------


class OwnTimeouts(Saga[Order], name="tests.robustness.own_timeouts"):
    @step(idempotency_key="call-{order_id}", retry=RetryPolicy(max_attempts=3))
    async def call(self) -> str:
        flaky["call"] = flaky.get("call", 0) + 1
        if flaky["call"] < 3:
            await asyncio.wait_for(asyncio.sleep(1), 0.001)  # the client library's own timeout
        return "ok"


def test_a_step_s_own_timeout_error_is_retried_by_its_policy(engine: SagaEngine) -> None:
    result = engine.run(OwnTimeouts, Order("o-1"), saga_id="o-1", idempotency_key="k")
    assert result.results == {"call": "ok"}
    record = engine.get("o-1")
    assert record is not None and record.steps[0].attempts == 3


class CompensationTimesOut(Saga[Order], name="tests.robustness.compensation_times_out"):
    @step(idempotency_key="hold-{order_id}", compensation=CompensationPolicy(max_attempts=2, backoff=0))
    def hold(self) -> str:
        return "h"

    @compensates(hold)
    async def unhold(self, value: str) -> None:
        log.append("unhold")
        await asyncio.wait_for(asyncio.sleep(1), 0.001)

    @step(idempotency_key="fail-{order_id}")
    def fail(self) -> None:
        raise ValueError("no")


def test_a_compensation_s_own_timeout_error_ends_in_dead_letter(engine: SagaEngine) -> None:
    with pytest.raises(CompensationFailedError):
        engine.run(CompensationTimesOut, Order("o-1"), saga_id="o-1", idempotency_key="k")
    record = engine.get("o-1")
    assert record is not None and record.status == "dead_letter"
    assert log == ["unhold", "unhold"]
    assert record.error is not None and "TimeoutError" in (record.error.compensation_error or "")


# -- a retried dead letter whose compensation takes an already compensated result -------


class Chain(Saga[Order], name="tests.robustness.chain"):
    @step(idempotency_key="reserve-{order_id}")
    def reserve(self) -> str:
        return "R"

    @compensates(reserve)
    def release(self, value: str) -> None:
        log.append(f"release {value}")

    @step(idempotency_key="charge-{order_id}", compensation=CompensationPolicy(max_attempts=1))
    def charge(self, reserve: str) -> str:
        return "C"

    @compensates(charge)
    def refund(self, value: str, reserve: str) -> None:
        if not flaky.get("refunds_up"):
            raise ConnectionError("refunds down")
        log.append(f"refund {value} of {reserve}")

    @step(idempotency_key="ship-{order_id}")
    def ship(self, charge: str) -> None:
        raise ValueError("no truck")


def test_a_retried_compensation_gets_the_result_of_a_step_already_compensated(engine: SagaEngine) -> None:
    with pytest.raises(CompensationFailedError):
        engine.run(Chain, Order("o-1"), saga_id="o-1", idempotency_key="k")
    assert log == ["release R"]
    flaky["refunds_up"] = 1
    engine.retry("o-1")
    with pytest.raises(SagaFailedError):
        engine.resume("o-1")
    assert log == ["release R", "refund C of R"]
    assert engine.get("o-1").status == "failed"  # type: ignore[union-attr]


# -- text PostgreSQL cannot store --------------------------------------------------------


class Nul(Saga[Order], name="tests.robustness.nul"):
    @step(idempotency_key="a-{order_id}")
    def a(self) -> str:
        return "fine"

    @compensates(a)
    def undo_a(self, value: str) -> None:
        log.append("undo a")

    @step(idempotency_key="b-{order_id}")
    def b(self) -> str:
        if self.input.order_id == "raise":
            raise ValueError("bad byte \x00 here")
        return "binary\x00data"


def test_a_result_with_a_nul_character_fails_the_step_and_compensates(engine: SagaEngine) -> None:
    with pytest.raises(SagaFailedError) as info:
        engine.run(Nul, Order("o-1"), saga_id="o-1", idempotency_key="k")
    assert isinstance(info.value.__cause__, SerializationError)
    assert log == ["undo a"]
    assert engine.get("o-1").status == "failed"  # type: ignore[union-attr]


def test_an_error_message_with_a_nul_character_is_stored_escaped(engine: SagaEngine) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(Nul, Order("raise"), saga_id="o-1", idempotency_key="k")
    record = engine.get("o-1")
    assert record is not None and record.error is not None
    assert record.error.error == "ValueError: bad byte \\x00 here"


# -- workers are not starved by sagas they cannot run -----------------------------------


class Simple(Saga[Order], name="tests.robustness.simple"):
    @step(idempotency_key="only-{order_id}")
    def only(self) -> str:
        return "done"


class Foreign(Saga[Order], name="tests.robustness.foreign"):
    @step(idempotency_key="only-{order_id}")
    def only(self) -> str:
        return "done"


def test_sagas_of_unknown_classes_do_not_crowd_out_the_others(engine: SagaEngine,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(12):
        engine.submit(Foreign, Order(f"f{i}"), saga_id=f"f{i:02d}", idempotency_key="k")
    engine.submit(Simple, Order("mine"), saga_id="z-mine", idempotency_key="k")
    monkeypatch.delitem(_by_name, Foreign.saga_name)
    worker = Worker(engine, concurrency=4, poll_interval=0.01)
    threading.Timer(1.0, worker.stop).start()
    worker.run()
    assert engine.get("z-mine").status == "completed"  # type: ignore[union-attr]
    assert worker.stats.unknown == 12


# -- a run_async cancelled while its first commit is in flight -------------------------


class SlowBegin:
    """Storage whose sessions take a while to make the saga's first commit."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.is_production_safe = inner.is_production_safe
        self.detects_dead_executors = inner.detects_dead_executors

    def session(self, saga_id: str) -> Any:
        session = self.inner.session(saga_id)
        begin = session.begin

        def slow_begin(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.3)
            return begin(*args, **kwargs)

        session.begin = slow_begin  # type: ignore[method-assign]
        return session

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_cancelling_run_async_during_the_first_commit_releases_the_claim(sqlite_url: str) -> None:
    storage = SqlStorage(sqlite_url)
    engine = SagaEngine(SlowBegin(storage))  # type: ignore[arg-type]

    async def cancelled() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.run_async(Simple, Order("o-1"), saga_id="o-1",
                                                    idempotency_key="k"), 0.05)

    asyncio.run(cancelled())
    other = SagaEngine(sqlite_url)
    try:
        assert other.storage.recoverable(FakeClock(datetime.now().astimezone()).now(), 10) == ["o-1"]
        assert other.resume("o-1").results == {"only": "done"}
    finally:
        other.close()
        engine.close()


# -- claims -------------------------------------------------------------------------------


class Blocking(Saga[Order], name="tests.robustness.blocking"):
    @step(idempotency_key="wait-{order_id}")
    def wait(self) -> str:
        log.append("entered")
        gate.wait(10)
        return "done"


gate = threading.Event()


def test_a_live_local_executor_keeps_its_claim_after_its_lease_runs_out(sqlite_url: str) -> None:
    clock = FakeClock(datetime.now().astimezone())
    first = SagaEngine(sqlite_url, clock=clock)
    second = SagaEngine(sqlite_url, clock=clock)
    gate.clear()
    runner = threading.Thread(target=first.run, args=(Blocking, Order("o-1")),
                              kwargs={"saga_id": "o-1", "idempotency_key": "k"})
    runner.start()
    try:
        while "entered" not in log:
            time.sleep(0.01)
        clock.advance(timedelta(hours=1))  # far past the lease
        assert second.storage.recoverable(clock.now(), 10) == []
        with pytest.raises(SagaLockedError):
            second.resume("o-1")
    finally:
        gate.set()
        runner.join(10)
        first.close()
        second.close()
    assert log == ["entered"]


def test_a_lock_timeout_on_a_commit_leaves_the_saga_resumable_and_unclaimed(
        pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    impatient = create_engine(url, connect_args={"options": "-c lock_timeout=100"})
    engine = SagaEngine(SqlStorage(impatient, schema=schema, auto_migrate=True))
    blocker = create_engine(url)

    class HoldsItsRow(Saga[Order], name="tests.robustness.holds_its_row"):
        @step(idempotency_key="a-{order_id}")
        def a(self) -> str:
            if not held.closed:
                # Someone else (an operator's open transaction) holds the saga row.
                held.execute(text(f'SELECT 1 FROM "{schema}".sagadsl_workflows WHERE id = :id FOR UPDATE'),
                             {"id": self.saga_id})
            return "A"

    held = blocker.connect()
    held.begin()
    try:
        with pytest.raises(StorageError, match="LockNotAvailable"):
            engine.run(HoldsItsRow, Order("o-1"), saga_id="o-1", idempotency_key="k")
    finally:
        held.rollback()
        held.close()
    try:
        assert engine.storage.recoverable(FakeClock(datetime.now().astimezone()).now(), 10) == ["o-1"]
        assert engine.resume("o-1").results == {"a": "A"}
    finally:
        engine.close()
        blocker.dispose()


# -- KeyboardInterrupt in a step ------------------------------------------------------------


class Interrupted(Saga[Order], name="tests.robustness.interrupted"):
    @step(idempotency_key="a-{order_id}")
    async def a(self) -> str:
        if not flaky.get("calm"):
            raise KeyboardInterrupt
        return "A"


def test_a_keyboard_interrupt_in_a_step_releases_the_claim_before_it_propagates(engine: SagaEngine) -> None:
    with pytest.raises(KeyboardInterrupt):
        engine.run(Interrupted, Order("o-1"), saga_id="o-1", idempotency_key="k")
    flaky["calm"] = 1
    # The same thread runs the saga again at once: nothing of the interrupted
    # run is left holding the saga or waiting to resume on this thread's loop.
    assert engine.run(Interrupted, Order("o-1"), saga_id="o-1", idempotency_key="k").results == {"a": "A"}
