"""Pivot steps and forward recovery (DESIGN §7).

Before the pivot's completion commits, a saga is rolled back as always;
after it, its steps are retried until they succeed, and a step that cannot
succeed parks the saga in dead letter with nothing compensated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from sagadsl import (DeadLetterError, ExecutionTimeoutError, RetryPolicy, Saga, SagaEngine, SagaError,
                     SagaEvent, SagaEvents, SagaFailedError, compensates, step)
from sagadsl.storage import SqlStorage
from sagadsl.testing import FakeClock

from . import pivot_sagas  # noqa: F401  (registers the child's saga class here too)

HERE = Path(__file__).parent

ledger: list[str] = []


class Permanent(Exception):
    """An error the shipping service will keep returning."""


@dataclass
class Order:
    order_id: str
    fail_reserve: bool = False
    fail_charge: bool = False
    ship_failures: int = 0
    ship_permanent: bool = False
    ship_forever: bool = False


class PlaceOrder(Saga[Order], name="tests.pivot.place_order"):
    @step(idempotency_key="reserve-{order_id}")
    def reserve(self) -> str:
        ledger.append("reserve")
        if self.input.fail_reserve:
            raise RuntimeError("out of stock")
        return "r-1"

    @compensates(reserve)
    def release(self) -> None:
        ledger.append("release")

    @step(idempotency_key="charge-{order_id}", pivot=True)
    def charge(self, reserve: str) -> str:
        ledger.append("charge")
        if self.input.fail_charge:
            raise RuntimeError("card declined")
        return "c-1"

    @step(idempotency_key="ship-{order_id}",
          retry=RetryPolicy(backoff=0.1, max_backoff=1.0, give_up_on=(Permanent,)))
    def ship(self, charge: str) -> str:
        ledger.append(f"ship#{self.attempt}")
        if self.input.ship_permanent:
            raise Permanent("address does not exist")
        if self.input.ship_forever or self.attempt <= self.input.ship_failures:
            raise ConnectionError("carrier unreachable")
        return "s-1"

    @step(idempotency_key="email-{order_id}")
    def email(self, ship: str) -> None:
        ledger.append("email")


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    ledger.clear()


def test_the_kinds_are_derived_from_the_pivot() -> None:
    kinds = {s.name: s.kind for s in PlaceOrder.definition.steps}
    assert kinds == {"reserve": "compensatable", "charge": "pivot", "ship": "retriable",
                     "email": "retriable"}
    assert PlaceOrder.definition.pivot == "charge"


def test_a_failure_before_the_pivot_compensates_as_always(engine: SagaEngine) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(PlaceOrder, Order("o-1", fail_charge=True), saga_id="o-1", idempotency_key="k")
    assert ledger == ["reserve", "charge", "release"]
    record = engine.get("o-1")
    assert record is not None and record.status == "failed" and not record.past_pivot


def test_a_step_after_the_pivot_is_retried_past_its_attempt_limit_until_it_succeeds(
        engine: SagaEngine, clock: FakeClock) -> None:
    result = engine.run(PlaceOrder, Order("o-1", ship_failures=4), saga_id="o-1", idempotency_key="k")
    assert result.status == "completed"
    assert ledger == ["reserve", "charge", "ship#1", "ship#2", "ship#3", "ship#4", "ship#5", "email"]
    assert clock.sleeps == [0.1, 0.2, 0.4, 0.8]  # the policy's backoff shape, without its attempt limit
    record = engine.get("o-1")
    assert record is not None and record.past_pivot and record.status == "completed"


def test_an_error_the_policy_does_not_retry_parks_the_saga_with_nothing_compensated(
        engine: SagaEngine) -> None:
    with pytest.raises(SagaError) as parked:
        engine.run(PlaceOrder, Order("o-1", ship_permanent=True), saga_id="o-1", idempotency_key="k")
    assert isinstance(parked.value, DeadLetterError) and not isinstance(parked.value, SagaFailedError)
    assert isinstance(parked.value.__cause__, Permanent)
    assert "past its pivot" in str(parked.value)
    assert ledger == ["reserve", "charge", "ship#1"]  # no release: past the point of no return
    record = engine.get("o-1")
    assert record is not None and record.status == "dead_letter" and record.past_pivot
    assert record.error is not None and record.error.step_name == "ship"
    assert record.error.error == "Permanent: address does not exist"
    assert record.error.compensation_error is None
    assert [(s.name, s.status) for s in record.steps] == [
        ("reserve", "completed"), ("charge", "completed"), ("ship", "failed"), ("email", "pending")]
    # Running it again reports the same, without running anything.
    with pytest.raises(DeadLetterError, match="past its pivot"):
        engine.run(PlaceOrder, Order("o-1"), saga_id="o-1", idempotency_key="k")
    assert ledger == ["reserve", "charge", "ship#1"]


def test_the_end_of_the_budget_parks_the_saga_with_the_execution_timeout(
        engine: SagaEngine, clock: FakeClock) -> None:
    def late(event: SagaEvent) -> None:
        if event.kind == "step_retry" and event.attempt == 3:
            clock.advance(timedelta(minutes=16))

    eng = SagaEngine(engine.storage, clock=clock, events=SagaEvents(on_step_retry=late))
    with pytest.raises(DeadLetterError) as parked:
        eng.run(PlaceOrder, Order("o-1", ship_forever=True), saga_id="o-1", idempotency_key="k")
    assert isinstance(parked.value.__cause__, ExecutionTimeoutError)
    assert "release" not in ledger
    record = engine.get("o-1")
    assert record is not None and record.status == "dead_letter" and record.past_pivot
    assert record.error is not None and (record.error.error or "").startswith("ExecutionTimeoutError")


def test_retry_resumes_forward_with_a_new_budget_skipping_completed_steps(
        engine: SagaEngine, storage: object) -> None:
    with pytest.raises(DeadLetterError):
        engine.run(PlaceOrder, Order("o-1", ship_permanent=True), saga_id="o-1", idempotency_key="k")
    ledger.clear()
    engine.retry("o-1")
    # The operator fixed the address: the class now reads it from elsewhere.
    from sagadsl.storage import InMemoryStorage

    fixed = {"order_id": "o-1", "fail_reserve": False, "fail_charge": False, "ship_failures": 0,
             "ship_permanent": False, "ship_forever": False}
    if isinstance(storage, InMemoryStorage):
        storage._rows["o-1"].values["input"] = fixed
    else:
        from sqlalchemy import update

        from sagadsl.storage.models import workflows

        assert isinstance(storage, SqlStorage)
        with storage.engine.begin() as conn:
            conn.execute(update(workflows).where(workflows.c.id == "o-1").values(input=fixed))
    result = engine.resume("o-1")
    assert result.status == "completed" and result.results["ship"] == "s-1"
    assert ledger == ["ship#1", "email"]
    record = engine.get("o-1")
    assert record is not None and record.status == "completed" and record.retry_count == 1
    assert record.error is None


def test_no_compensation_event_fires_past_the_pivot(engine: SagaEngine) -> None:
    kinds: list[str] = []
    handlers = {f"on_{k}": (lambda e: kinds.append(e.kind)) for k in (
        "compensation_start", "compensation_complete", "compensation_failed", "saga_failed", "dead_letter")}
    eng = SagaEngine(engine.storage, clock=engine.clock, events=SagaEvents(**handlers))
    with pytest.raises(DeadLetterError):
        eng.run(PlaceOrder, Order("o-1", ship_permanent=True), saga_id="o-1", idempotency_key="k")
    assert kinds == ["dead_letter"]


# -- a real crash right after the pivot commits -------------------------------------


def test_a_saga_killed_right_after_its_pivot_committed_resumes_forward(
        durable_url: tuple[str, str | None], tmp_path: Path) -> None:
    url, schema = durable_url
    child = subprocess.Popen(
        [sys.executable, str(HERE / "pivot_sagas.py"), url, schema or "-", "p-1", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker = tmp_path / "in-ship"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert child.poll() is None, child.stdout.read().decode() if child.stdout else ""
        assert time.monotonic() < deadline, "the child never reached ship"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    with SagaEngine(SqlStorage(url, schema=schema)) as engine:
        record = engine.get("p-1")
        assert record is not None and record.past_pivot and record.status == "pending"
        for _ in range(100):  # the server may take a moment to see the connection gone
            try:
                result = engine.resume("p-1")
                break
            except SagaError as exc:
                if exc.code != "TRANSACTION_LOCKED":
                    raise
                time.sleep(0.05)
        assert result.status == "completed"
    effects = (tmp_path / "ledger").read_text().split()
    assert effects == ["reserve", "charge", "ship", "ship"]  # the pivot ran once, nothing released
