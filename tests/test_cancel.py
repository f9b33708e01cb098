"""Cancellation (DESIGN §8): ``engine.cancel``, the ``cancelled`` status, ``saga-admin cancel``.

Every test drives the public API: a saga is cancelled while it waits, while
a step of it runs in another thread or another process, after its executor
was killed, while it races its own completion, and when a compensation
fails; refusals are checked for each status a cancel cannot change.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sagadsl import (
    CompensationFailedError,
    CompensationPolicy,
    InvalidStateError,
    Saga,
    SagaCancelledError,
    SagaEngine,
    SagaError,
    SagaEvent,
    SagaEvents,
    SagaFailedError,
    SagaNotFoundError,
    StepStatus,
    WorkflowStatus,
    compensates,
    step,
)
from sagadsl.cli import cli
from sagadsl.storage import SqlStorage
from sagadsl.worker import Worker
from tests.cancel_sagas import Parcel, Shipment

HERE = Path(__file__).parent


@dataclass
class Order:
    order_id: str
    fail_at: str = ""


#: Steps that wait on a gate block until the test opens it (or 30 s pass).
gates: dict[str, threading.Event] = {}
#: Set by a step when it starts, so the test knows it is in flight.
entered: dict[str, threading.Event] = {}
ledger: list[str] = []
#: A compensation of Order that fails while this is set.
refund_broken = threading.Event()


def _gate(name: str) -> None:
    entered.setdefault(name, threading.Event()).set()
    gate = gates.get(name)
    if gate is not None:
        assert gate.wait(30), f"the test never opened the gate of {name}"


class PlaceOrder(Saga[Order], name="tests.cancel.order"):
    @step(idempotency_key="reserve-{order_id}")
    def reserve(self) -> str:
        ledger.append("reserve")
        _gate("reserve")
        return "R"

    @compensates(reserve)
    def release(self) -> None:
        ledger.append("release")

    @step(idempotency_key="charge-{order_id}", compensation=CompensationPolicy(max_attempts=1))
    def charge(self, reserve: str) -> str:
        ledger.append("charge")
        _gate("charge")
        if self.input.fail_at == "charge":
            raise RuntimeError("card declined")
        return "C"

    @compensates(charge)
    def refund(self) -> None:
        ledger.append("refund")
        _gate("refund")
        if refund_broken.is_set():
            raise ConnectionError("payments service unavailable")

    @step(idempotency_key="confirm-{order_id}")
    def confirm(self, charge: str) -> str:
        ledger.append("confirm")
        _gate("confirm")
        if self.input.fail_at == "confirm":
            raise RuntimeError("warehouse rejected the order")
        return "OK"

    @compensates(confirm)
    def unconfirm(self) -> None:
        ledger.append("unconfirm")


class PivotOrder(Saga[Order], name="tests.cancel.pivot_order"):
    @step(idempotency_key="hold-{order_id}")
    def hold(self) -> str:
        ledger.append("hold")
        _gate("hold")
        return "H"

    @compensates(hold)
    def unhold(self) -> None:
        ledger.append("unhold")

    @step(idempotency_key="capture-{order_id}", pivot=True)
    def capture(self, hold: str) -> str:
        ledger.append("capture")
        _gate("capture")
        return "CAP"

    @step(idempotency_key="notify-{order_id}")
    def notify(self, capture: str) -> str:
        ledger.append("notify")
        _gate("notify")
        return "N"


@dataclass
class Seat:
    seat: str


class TakeSeat(Saga[Seat], name="tests.cancel.seat", locks=("seat:{seat}",)):
    @step(idempotency_key="take-{seat}-{saga_id}")
    def take(self) -> str:
        return self.input.seat


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    gates.clear()
    entered.clear()
    ledger.clear()
    refund_broken.clear()
    yield
    for gate in gates.values():
        gate.set()


def _gated(*names: str) -> None:
    for name in names:
        gates[name] = threading.Event()


def _in_thread(engine: SagaEngine, saga_cls: type[Saga[Order]], order: Order,
               saga_id: str) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = engine.run(saga_cls, order, saga_id=saga_id, idempotency_key=saga_id)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _wait_entered(name: str) -> None:
    assert entered.setdefault(name, threading.Event()).wait(30), f"step {name} never started"


# -- a saga that waits for a worker ------------------------------------------------


def test_a_waiting_saga_is_cancelled_at_once_and_no_step_runs(engine: SagaEngine) -> None:
    engine.submit(PlaceOrder, Order("o-1"), saga_id="o-1", idempotency_key="k")
    assert engine.cancel("o-1", "customer withdrew") == "cancelled"
    record = engine.get("o-1")
    assert record is not None and record.status == WorkflowStatus.CANCELLED
    assert record.cancel_reason == "customer withdrew" and record.stuck_after is None
    assert engine.count(WorkflowStatus.CANCELLED) == 1 and engine.count(WorkflowStatus.PENDING) == 0
    with pytest.raises(SagaCancelledError) as waited:
        engine.wait("o-1", timeout=5)
    assert waited.value.reason == "customer withdrew" and waited.value.code == "SAGA_CANCELLED"
    assert isinstance(waited.value, SagaFailedError)
    with pytest.raises(SagaCancelledError, match="already cancelled"):
        engine.run(PlaceOrder, Order("o-1"), saga_id="o-1", idempotency_key="k")
    stats = Worker(engine, poll_interval=0.01, stop_when_idle=True).run()
    assert stats.finished == 0 and ledger == []


def test_cancelling_a_waiting_saga_frees_its_lock_for_the_next_in_line(engine: SagaEngine) -> None:
    engine.submit(TakeSeat, Seat("12C"), saga_id="first", idempotency_key="a")
    engine.submit(TakeSeat, Seat("12C"), saga_id="second", idempotency_key="b")
    assert engine.cancel("first", "double booking") == "cancelled"
    assert [(lk.saga_id, lk.held) for lk in engine.locks("seat:12C")] == [("second", False)]
    Worker(engine, poll_interval=0.01, stop_when_idle=True).run()
    record = engine.get("second")
    assert record is not None and record.status == WorkflowStatus.COMPLETED
    assert engine.locks("seat:12C") == []


# -- a running saga ----------------------------------------------------------------------


def test_a_running_saga_finishes_its_step_in_flight_then_compensates_everything(engine: SagaEngine) -> None:
    kinds: list[str] = []
    events = SagaEvents(**{f"on_{k}": (lambda e, k=k: kinds.append(k))
                           for k in ("saga_complete", "saga_failed", "saga_cancelled", "dead_letter")})
    eng = SagaEngine(engine.storage, clock=engine.clock, events=events)
    _gated("charge")
    thread, outcome = _in_thread(eng, PlaceOrder, Order("o-2"), "o-2")
    _wait_entered("charge")
    assert eng.cancel("o-2", "fraud suspected") == "requested"
    assert eng.cancel("o-2", "asked twice") == "requested"  # harmless; the first reason stays
    record = eng.get("o-2")
    assert record is not None and record.status == WorkflowStatus.PENDING
    assert record.cancel_reason == "fraud suspected"
    gates["charge"].set()
    thread.join(30)
    error = outcome.get("error")
    assert isinstance(error, SagaCancelledError), outcome
    assert "fraud suspected" in str(error) and error.saga_id == "o-2"
    # The step in flight finished and was committed, then compensated with the other.
    assert ledger == ["reserve", "charge", "refund", "release"]
    record = eng.get("o-2")
    assert record is not None and record.status == WorkflowStatus.CANCELLED
    assert {s.name: s.status for s in record.steps} == {
        "reserve": StepStatus.COMPENSATED, "charge": StepStatus.COMPENSATED, "confirm": StepStatus.PENDING}
    assert kinds == ["saga_cancelled"]
    with pytest.raises(SagaCancelledError):
        eng.wait("o-2", timeout=5)


def test_a_cancel_while_the_last_step_runs_wins_over_the_completion(engine: SagaEngine) -> None:
    _gated("confirm")
    thread, outcome = _in_thread(engine, PlaceOrder, Order("o-3"), "o-3")
    _wait_entered("confirm")
    assert engine.cancel("o-3", "too late for the customer") == "requested"
    gates["confirm"].set()
    thread.join(30)
    assert isinstance(outcome.get("error"), SagaCancelledError), outcome
    assert ledger == ["reserve", "charge", "confirm", "unconfirm", "refund", "release"]
    record = engine.get("o-3")
    assert record is not None and record.status == WorkflowStatus.CANCELLED


def test_a_completion_a_cancel_turned_aside_keeps_the_claim_while_the_saga_compensates(
        durable_url: tuple[str, str | None]) -> None:
    # A terminal commit releases the executor's claim in the same statement,
    # unless the cancel keeps the saga going: then no one else may take it.
    url, schema = durable_url
    _gated("confirm", "refund")
    with SagaEngine(SqlStorage(url, schema=schema)) as first, SagaEngine(SqlStorage(url, schema=schema)) as other:
        thread, outcome = _in_thread(first, PlaceOrder, Order("o-9"), "o-9")
        _wait_entered("confirm")
        assert other.cancel("o-9", "changed my mind") == "requested"
        gates["confirm"].set()
        _wait_entered("refund")
        with pytest.raises(SagaError, match="being run by another live executor"):
            other.run(PlaceOrder, Order("o-9"), saga_id="o-9", idempotency_key="o-9")
        gates["refund"].set()
        thread.join(30)
        assert isinstance(outcome.get("error"), SagaCancelledError), outcome
        assert ledger == ["reserve", "charge", "confirm", "unconfirm", "refund", "release"]
        with pytest.raises(SagaCancelledError):
            other.run(PlaceOrder, Order("o-9"), saga_id="o-9", idempotency_key="o-9")


def test_a_cancel_while_a_step_fails_still_ends_cancelled(engine: SagaEngine) -> None:
    _gated("charge")
    thread, outcome = _in_thread(engine, PlaceOrder, Order("o-4", fail_at="charge"), "o-4")
    _wait_entered("charge")
    assert engine.cancel("o-4", "stop it") == "requested"
    gates["charge"].set()
    thread.join(30)
    assert isinstance(outcome.get("error"), SagaCancelledError), outcome
    record = engine.get("o-4")
    assert record is not None and record.status == WorkflowStatus.CANCELLED
    assert record.error is not None and record.error.step_name == "charge"  # the failure is kept too
    assert ledger == ["reserve", "charge", "release"]


def test_a_compensation_failing_during_a_cancel_dead_letters_and_a_retry_finishes_the_cancel(
        engine: SagaEngine) -> None:
    _gated("charge")
    refund_broken.set()
    thread, outcome = _in_thread(engine, PlaceOrder, Order("o-5"), "o-5")
    _wait_entered("charge")
    engine.cancel("o-5", "customer asked")
    gates["charge"].set()
    thread.join(30)
    error = outcome.get("error")
    assert isinstance(error, CompensationFailedError), outcome
    assert "cancelled (customer asked)" in str(error) and "payments service unavailable" in str(error)
    record = engine.get("o-5")
    assert record is not None and record.status == WorkflowStatus.DEAD_LETTER
    with pytest.raises(CompensationFailedError, match="it was cancelled"):
        engine.run(PlaceOrder, Order("o-5"), saga_id="o-5", idempotency_key="o-5")
    with pytest.raises(InvalidStateError, match="dead letter"):
        engine.cancel("o-5", "again")
    refund_broken.clear()
    engine.retry("o-5")
    with pytest.raises(SagaCancelledError):
        engine.resume("o-5")
    record = engine.get("o-5")
    assert record is not None and record.status == WorkflowStatus.CANCELLED
    assert ledger.count("refund") == 2 and ledger.count("release") == 1


# -- refusals ------------------------------------------------------------------------------


def test_finished_sagas_cannot_be_cancelled(engine: SagaEngine) -> None:
    engine.run(PlaceOrder, Order("done"), saga_id="done", idempotency_key="k")
    with pytest.raises(SagaFailedError):
        engine.run(PlaceOrder, Order("bad", fail_at="charge"), saga_id="bad", idempotency_key="k")
    with pytest.raises(InvalidStateError, match="'done' has already ended completed; there is nothing"):
        engine.cancel("done", "too late")
    with pytest.raises(InvalidStateError, match="'bad' has already ended failed"):
        engine.cancel("bad", "too late")
    engine.submit(PlaceOrder, Order("w"), saga_id="w", idempotency_key="k")
    engine.cancel("w", "first")
    with pytest.raises(InvalidStateError, match="already cancelled \\(first\\)"):
        engine.cancel("w", "second")
    with pytest.raises(SagaNotFoundError):
        engine.cancel("nobody", "no such saga")
    with pytest.raises(SagaNotFoundError):
        engine.cancel("bad\x00id", "an id no backend could store")
    with pytest.raises(ValueError, match="needs a reason"):
        engine.cancel("done", "  ")
    assert engine.get("done").status == WorkflowStatus.COMPLETED  # type: ignore[union-attr]


def test_a_saga_being_compensated_after_a_failure_cannot_be_cancelled(engine: SagaEngine) -> None:
    _gated("refund")
    thread, outcome = _in_thread(engine, PlaceOrder, Order("o-6", fail_at="confirm"), "o-6")
    _wait_entered("refund")
    with pytest.raises(InvalidStateError, match="already being compensated because step 'confirm' failed"):
        engine.cancel("o-6", "too late")
    gates["refund"].set()
    thread.join(30)
    assert type(outcome.get("error")) is SagaFailedError


def test_a_saga_whose_pivot_has_started_or_passed_cannot_be_cancelled(engine: SagaEngine) -> None:
    _gated("capture", "notify")
    thread, outcome = _in_thread(engine, PivotOrder, Order("p-1"), "p-1")
    _wait_entered("capture")
    with pytest.raises(InvalidStateError, match="has started its pivot step"):
        engine.cancel("p-1", "changed my mind")
    gates["capture"].set()
    _wait_entered("notify")
    with pytest.raises(InvalidStateError, match="is past its pivot step"):
        engine.cancel("p-1", "changed my mind")
    gates["notify"].set()
    thread.join(30)
    assert outcome["result"].status == WorkflowStatus.COMPLETED
    assert ledger == ["hold", "capture", "notify"]


def test_a_cancel_before_the_pivot_starts_keeps_the_pivot_from_running(engine: SagaEngine) -> None:
    _gated("hold")
    thread, outcome = _in_thread(engine, PivotOrder, Order("p-2"), "p-2")
    _wait_entered("hold")
    assert engine.cancel("p-2", "stop before capturing") == "requested"
    gates["hold"].set()
    thread.join(30)
    assert isinstance(outcome.get("error"), SagaCancelledError), outcome
    assert ledger == ["hold", "unhold"]  # the pivot never started
    record = engine.get("p-2")
    assert record is not None and record.status == WorkflowStatus.CANCELLED
    assert not record.pivot_started and not record.past_pivot


# -- a cancel racing the saga's own completion ----------------------------------------------


@pytest.mark.parametrize("iterations", [40])
def test_a_cancel_racing_the_completion_has_exactly_one_outcome(engine: SagaEngine, iterations: int) -> None:
    outcomes = {"cancelled": 0, "completed": 0}
    for i in range(iterations):
        saga_id = f"race-{i}"
        _gated("confirm")
        entered.pop("confirm", None)
        ledger.clear()
        thread, outcome = _in_thread(engine, PlaceOrder, Order(saga_id), saga_id)
        _wait_entered("confirm")
        told: dict[str, Any] = {}
        start = threading.Barrier(2)

        def cancel() -> None:
            start.wait()
            # Spread the cancel around the completion commit.
            time.sleep((i % 5) * 0.0005)
            try:
                told["outcome"] = engine.cancel(saga_id, "racing")
            except InvalidStateError as exc:
                told["refused"] = exc

        canceller = threading.Thread(target=cancel)
        canceller.start()
        start.wait()
        gates["confirm"].set()
        canceller.join(30)
        thread.join(30)
        record = engine.get(saga_id)
        assert record is not None
        if "refused" in told:
            # The completion committed first: the caller was told, the saga stands.
            assert "has already ended completed" in str(told["refused"])
            assert record.status == WorkflowStatus.COMPLETED and "result" in outcome
            assert "unconfirm" not in ledger
            outcomes["completed"] += 1
        else:
            assert told["outcome"] == "requested"
            assert record.status == WorkflowStatus.CANCELLED, (i, record.status)
            assert isinstance(outcome.get("error"), SagaCancelledError)
            assert ledger[-3:] == ["unconfirm", "refund", "release"]
            outcomes["cancelled"] += 1
    assert sum(outcomes.values()) == iterations


# -- other processes -----------------------------------------------------------------------------


def _child(url: str, schema: str | None, saga_id: str, work: Path, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(HERE / "cancel_sagas.py"), url, schema or "-", saga_id,
                             str(work), mode], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(HERE.parent)})


def _wait_for(path: Path, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert child.poll() is None, child.stdout.read().decode() if child.stdout else ""
        assert time.monotonic() < deadline, f"the child never created {path.name}"
        time.sleep(0.02)


def test_a_saga_running_in_another_process_notices_the_cancel_at_its_next_commit(
        durable_url: tuple[str, str | None], tmp_path: Path) -> None:
    url, schema = durable_url
    child = _child(url, schema, "x-1", tmp_path, "wait")
    _wait_for(tmp_path / "in-pack", child)
    with SagaEngine(SqlStorage(url, schema=schema)) as engine:
        assert engine.cancel("x-1", "warehouse closed") == "requested"
        (tmp_path / "go").touch()
        with pytest.raises(SagaCancelledError, match="warehouse closed"):
            engine.wait("x-1", timeout=60)
        assert child.wait(60) == 0
        record = engine.get("x-1")
        assert record is not None and record.status == WorkflowStatus.CANCELLED
    assert (tmp_path / "ledger").read_text().split() == ["reserve", "pack", "unpack", "release"]


def test_an_orphaned_saga_is_compensated_by_a_worker_after_a_cancel(
        durable_url: tuple[str, str | None], tmp_path: Path) -> None:
    url, schema = durable_url
    child = _child(url, schema, "x-2", tmp_path, "hang")
    _wait_for(tmp_path / "in-pack", child)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    (tmp_path / "go").touch()  # pack, run again by the worker, returns at once
    # A dead owner's claim is free at once: advisory locks die with the connection, and a
    # lease names its process, which is gone.
    with SagaEngine(SqlStorage(url, schema=schema)) as engine:
        assert engine.cancel("x-2", "its machine died") == "requested"
        deadline = time.monotonic() + 60
        cancelled = 0
        while engine.get("x-2").status != WorkflowStatus.CANCELLED:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, engine.get("x-2")
            # The server may take a moment to see the killed connection gone.
            cancelled += Worker(engine, poll_interval=0.05, stop_when_idle=True).run().cancelled
            time.sleep(0.05)
        assert cancelled == 1
    # pack may have had its effect before the kill: it runs again with its key, its result is
    # committed, and it is compensated with reserve; ship never starts.
    assert (tmp_path / "ledger").read_text().split() == ["reserve", "pack", "pack", "unpack", "release"]


# -- saga-admin cancel -----------------------------------------------------------------------


def test_saga_admin_cancel_cancels_and_says_why_it_refuses(durable_url: tuple[str, str | None],
                                                           tmp_path: Path) -> None:
    url, schema = durable_url
    with SagaEngine(SqlStorage(url, schema=schema)) as engine:
        engine.submit(Shipment, Parcel(str(tmp_path), "quick"), saga_id="s-wait", idempotency_key="k")
        engine.run(Shipment, Parcel(str(tmp_path), "quick"), saga_id="s-done", idempotency_key="k")
    options = ["--database-url", url, *(["--schema", schema] if schema else [])]
    runner = CliRunner()
    result = runner.invoke(cli, [*options, "cancel", "s-wait", "s-done", "s-none", "--reason", "ops [red]x[/]"],
                           prog_name="saga-admin")
    assert result.exit_code == 1
    assert "s-wait: cancelled: it had not started, nothing to compensate" in result.stdout
    assert "refused s-done: saga 's-done' has already ended completed" in result.stderr
    assert "refused s-none: no saga with id 's-none'" in result.stderr
    shown = runner.invoke(cli, [*options, "show", "s-wait"], prog_name="saga-admin")
    assert "cancelled" in shown.stdout and "ops [red]x[/]" in shown.stdout
    doc = json.loads(runner.invoke(cli, [*options, "cancel", "s-wait", "--reason", "again", "-o", "json"],
                                   prog_name="saga-admin").stdout)
    assert doc["cancelled"] == [] and doc["refused"][0]["code"] == "INVALID_STATE"
    missing = runner.invoke(cli, [*options, "cancel", "s-wait"], prog_name="saga-admin")
    assert missing.exit_code == 2 and "--reason" in missing.stderr
    listed = runner.invoke(cli, [*options, "list", "--status", "cancelled", "-o", "json"], prog_name="saga-admin")
    assert [row["id"] for row in json.loads(listed.stdout)["sagas"]] == ["s-wait"]
