"""No saga is left active without progress, and none behaves differently after a crash (DESIGN §2.10-2.12).

Each test is one way the engine could strand a saga or change its course:
values that only become their declared type after a resume, values that
cannot be stored, stored state that no longer decodes, an executor that
keeps dying, busy workers, and failures that leave no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import create_engine, text, update

from sagadsl import (DeadLetterError, Saga, SagaEngine, SagaFailedError, SerializationError, compensates,
                     step)
from sagadsl.storage import InMemoryStorage, SqlStorage, Storage
from sagadsl.storage.models import workflows
from sagadsl.worker import Worker

from .conftest import require_postgres

HERE = Path(__file__).parent
pytestmark = pytest.mark.timeout(120)


@dataclass
class Order:
    order_id: str
    cents: int = 100


@dataclass
class Pay:
    reference: str
    cents: int


calls: list[tuple[str, Any]] = []


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


# -- values are what a resume would give ----------------------------------------


class ReturnsADict(Saga[Order], name="tests.stranded.returns_a_dict"):
    @step(idempotency_key="pay-{order_id}")
    def pay(self) -> Pay:
        return {"reference": "p-1", "cents": self.input.cents}  # type: ignore[return-value]

    @step(idempotency_key="ship-{order_id}")
    def ship(self, pay: Pay) -> str:
        calls.append(("ship", pay))
        return pay.reference


def test_a_later_step_gets_the_declared_type_on_the_first_run(engine: SagaEngine) -> None:
    result = engine.run(ReturnsADict, Order("o-1"), saga_id="o-1", idempotency_key="k")
    assert calls == [("ship", Pay("p-1", 100))]
    assert result.results["pay"] == Pay("p-1", 100)


class SeesItsInput(Saga[Order], name="tests.stranded.sees_its_input"):
    @step(idempotency_key="look-{order_id}")
    def look(self) -> str:
        calls.append(("input", self.input))
        return type(self.input).__name__


def test_a_dict_input_is_the_declared_type_before_the_first_step(engine: SagaEngine) -> None:
    engine.run(SeesItsInput, {"order_id": "o-1", "cents": 5}, saga_id="o-1",  # type: ignore[arg-type]
               idempotency_key="k")
    assert calls == [("input", Order("o-1", 5))]


def test_an_input_that_does_not_fit_the_declared_type_is_refused_and_nothing_is_written(
        engine: SagaEngine) -> None:
    with pytest.raises(SerializationError, match="the input of SeesItsInput"):
        engine.run(SeesItsInput, {"cents": 5}, saga_id="o-1", idempotency_key="k")  # type: ignore[arg-type]
    assert engine.get("o-1") is None
    assert calls == []


# -- a value that cannot be stored ------------------------------------------------


class Unstorable:
    """Has no JSON form."""


class ReturnsUnstorable(Saga[Order], name="tests.stranded.returns_unstorable"):
    @step(idempotency_key="a-{order_id}")
    def a(self) -> str:
        return "A"

    @compensates(a)
    def undo_a(self, a: str) -> None:
        calls.append(("undo a", a))

    @step(idempotency_key="b-{order_id}")
    def b(self, a: str) -> object:
        value = Unstorable()
        calls.append(("b returned", value))
        return value

    @compensates(b)
    def undo_b(self, b: object) -> None:
        calls.append(("undo b", b))
        if self.input.cents < 0:
            raise RuntimeError("cannot undo b")


def test_a_step_whose_value_cannot_be_stored_is_compensated_with_that_value_first(
        engine: SagaEngine) -> None:
    with pytest.raises(SagaFailedError) as failed:
        engine.run(ReturnsUnstorable, Order("o-1"), saga_id="o-1", idempotency_key="k")
    assert isinstance(failed.value.__cause__, SerializationError)
    returned = calls[0][1]
    assert calls == [("b returned", returned), ("undo b", returned), ("undo a", "A")]
    record = engine.get("o-1")
    assert record is not None and record.status == "failed"
    b = record.step("b")
    assert b is not None and b.status == "compensated" and b.result is None
    assert b.error is not None and b.error.startswith("SerializationError")


def test_when_that_compensation_fails_too_the_saga_is_dead_lettered_and_a_retry_does_not_repeat_it(
        engine: SagaEngine) -> None:
    with pytest.raises(SagaError_any()):
        engine.run(ReturnsUnstorable, Order("o-1", cents=-1), saga_id="o-1", idempotency_key="k")
    record = engine.get("o-1")
    assert record is not None and record.status == "dead_letter"
    assert record.error is not None and record.error.compensation_error is not None
    assert "undo its effect by hand" in record.error.compensation_error
    assert [c[0] for c in calls] == ["b returned", "undo b", "undo b", "undo b", "undo a"]
    calls.clear()
    engine.retry("o-1")
    with pytest.raises(SagaFailedError):
        engine.resume("o-1")
    assert calls == []  # undo_b cannot run without its value; undo_a already ran
    assert engine.get("o-1").status == "failed"  # type: ignore[union-attr]


def SagaError_any() -> type[Exception]:
    from sagadsl import SagaError

    return SagaError


# -- errors that are hard to store ---------------------------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class FailsBadly(Saga[Order], name="tests.stranded.fails_badly"):
    @step(idempotency_key="a-{order_id}")
    def a(self) -> str:
        return "A"

    @compensates(a)
    def undo_a(self) -> None:
        calls.append(("undo a", None))

    @step(idempotency_key="b-{order_id}")
    def b(self) -> None:
        if self.input.order_id.startswith("unprintable"):
            raise Unprintable()
        raise ValueError("bad \x00 byte and a lone \ud800 surrogate")


@pytest.mark.parametrize("order_id", ["unprintable-1", "hostile-1"])
def test_an_error_whose_text_is_hard_to_store_still_compensates_and_ends_the_saga(
        engine: SagaEngine, order_id: str) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(FailsBadly, Order(order_id), saga_id=order_id, idempotency_key="k")
    assert calls == [("undo a", None)]
    record = engine.get(order_id)
    assert record is not None and record.status == "failed" and record.error is not None
    if order_id.startswith("unprintable"):
        assert record.error.error == "Unprintable: <str() raised RuntimeError>"
    else:
        assert record.error.error == "ValueError: bad \\x00 byte and a lone \\ud800 surrogate"


@pytest.mark.parametrize("bad", ["nul\x00id", "lone\ud800surrogate"])
def test_an_id_no_backend_can_store_is_refused_alike_and_nothing_is_written(
        engine: SagaEngine, bad: str) -> None:
    with pytest.raises(SerializationError, match="saga_id"):
        engine.run(SeesItsInput, Order("o-1"), saga_id=bad, idempotency_key="k")
    with pytest.raises(SerializationError, match="idempotency_key"):
        engine.run(SeesItsInput, Order("o-1"), saga_id="o-1", idempotency_key=bad)
    with pytest.raises(SerializationError, match="the input of SeesItsInput"):
        engine.run(SeesItsInput, Order(bad), saga_id="o-2", idempotency_key="k")
    with pytest.raises(SerializationError, match=r"KeyedByCallable\.look: step key"):
        engine.run(KeyedByCallable, Order("o-3"), saga_id="o-3", idempotency_key="k")
    assert engine.query().total == 0


def hostile_key(saga: Saga[Order]) -> str:
    return "key-\ud800"


class KeyedByCallable(Saga[Order], name="tests.stranded.keyed_by_callable"):
    @step(idempotency_key=hostile_key)
    def look(self) -> str:
        return "seen"


# -- tracebacks -------------------------------------------------------------------------


class Traced(Saga[Order], name="tests.stranded.traced"):
    @step(idempotency_key="a-{order_id}")
    def a(self) -> str:
        return "A"

    @compensates(a)
    def undo_a(self) -> None:
        refund_the_card()

    @step(idempotency_key="b-{order_id}")
    def b(self) -> None:
        charge_the_card()


def charge_the_card() -> None:
    raise ValueError("card declined")


def refund_the_card() -> None:
    raise ConnectionError("payments unreachable")


def test_the_tracebacks_of_a_failing_step_and_compensation_are_stored_with_the_saga(
        engine: SagaEngine) -> None:
    with pytest.raises(Exception):
        engine.run(Traced, Order("o-1"), saga_id="o-1", idempotency_key="k")
    record = engine.get("o-1")
    assert record is not None and record.status == "dead_letter" and record.error is not None
    assert record.error.traceback is not None and record.error.compensation_traceback is not None
    assert "in charge_the_card" in record.error.traceback
    assert record.error.traceback.rstrip().endswith("ValueError: card declined")
    assert "in refund_the_card" in record.error.compensation_traceback
    assert "ConnectionError: payments unreachable" in record.error.compensation_traceback


# -- stored state the engine cannot drive ------------------------------------------------


class Counted(Saga[Order], name="tests.stranded.counted"):
    @step(idempotency_key="a-{order_id}")
    def a(self) -> int:
        calls.append(("a", self.input.cents))
        return self.input.cents


def set_stored_input(storage: Storage, saga_id: str, value: Any) -> None:
    if isinstance(storage, InMemoryStorage):
        storage._rows[saga_id].values["input"] = value
        return
    assert isinstance(storage, SqlStorage)
    with storage.engine.begin() as conn:
        conn.execute(update(workflows).where(workflows.c.id == saga_id).values(input=value))


def test_a_saga_whose_stored_input_no_longer_decodes_is_dead_lettered_and_resumes_after_a_fix(
        engine: SagaEngine, storage: Storage) -> None:
    engine.submit(Counted, Order("o-1", 7), saga_id="o-1", idempotency_key="k")
    set_stored_input(storage, "o-1", {"order_id": "o-1", "cents": "seven"})
    with pytest.raises(DeadLetterError, match="cannot be driven") as parked:
        engine.resume("o-1")
    assert isinstance(parked.value.__cause__, SerializationError)
    record = engine.get("o-1")
    assert record is not None and record.status == "dead_letter" and record.error is not None
    assert record.error.step_name is None and "stored input" in (record.error.error or "")
    assert record.error.traceback is not None
    assert calls == []
    # An operator repairs the row, then retries: the saga resumes forward.
    set_stored_input(storage, "o-1", {"order_id": "o-1", "cents": 7})
    engine.retry("o-1")
    assert engine.resume("o-1").results == {"a": 7}
    done = engine.get("o-1")
    assert done is not None and done.status == "completed" and done.error is None


def test_a_worker_parks_an_undecodable_saga_instead_of_retrying_it_on_every_poll(
        engine: SagaEngine, storage: Storage) -> None:
    engine.submit(Counted, Order("o-1", 7), saga_id="o-1", idempotency_key="k")
    set_stored_input(storage, "o-1", ["not", "an", "order"])
    stats = Worker(engine, concurrency=1, poll_interval=0.01, stop_when_idle=True).run()
    assert stats.dead_lettered == 1 and stats.errors == 0
    assert engine.get("o-1").status == "dead_letter"  # type: ignore[union-attr]


# -- poison sagas: the executor keeps dying ------------------------------------------------


def run_poison_child(durable_url: tuple[str, str | None], saga_id: str, ledger: Path,
                     **env: str) -> subprocess.CompletedProcess[str]:
    url, schema = durable_url
    return subprocess.run([sys.executable, str(HERE / "poison_sagas.py"), url, schema or "-", saga_id, str(ledger)],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_a_saga_whose_step_kills_its_process_is_parked_after_three_claims_without_progress(
        durable_url: tuple[str, str | None], tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    # The first run commits `prepare`, then dies in `explode`; three more
    # executors take the saga and die before committing anything.
    for _ in range(4):
        died = run_poison_child(durable_url, "p-1", ledger)
        assert died.returncode == -9, died.stdout + died.stderr
    parked = run_poison_child(durable_url, "p-1", ledger)
    assert parked.returncode == 3 and parked.stdout.startswith("DeadLetterError"), parked.stdout + parked.stderr
    assert ledger.read_text().split() == ["prepare"] + ["explode"] * 4

    url, schema = durable_url
    with SagaEngine(SqlStorage(url, schema=schema)) as engine:
        record = engine.get("p-1")
        assert record is not None and record.status == "dead_letter" and record.error is not None
        assert record.error.step_name is None
        assert "3 executors took it in a row" in (record.error.error or "")
        assert [(s.name, s.status) for s in record.steps] == [("prepare", "completed"), ("explode", "pending")]
        engine.retry("p-1")
    # Fixed and retried: it resumes forward, and is not parked again at once.
    fixed = run_poison_child(durable_url, "p-1", ledger, POISON_FIXED="1")
    assert fixed.returncode == 0 and fixed.stdout.strip() == "completed", fixed.stdout + fixed.stderr
    assert ledger.read_text().split() == ["prepare"] + ["explode"] * 5


# -- workers find every recoverable saga ------------------------------------------------


@dataclass
class Hold:
    order_id: str
    gate: str = ""


gates: dict[str, threading.Event] = {}
entered: dict[str, threading.Event] = {}


class Blocks(Saga[Hold], name="tests.stranded.blocks"):
    @step(idempotency_key="wait-{order_id}")
    def wait(self) -> str:
        if self.input.gate:
            entered[self.saga_id].set()
            gates[self.input.gate].wait(60)
        calls.append(("ran", self.saga_id))
        return "ok"


@pytest.fixture
def busy(engine: SagaEngine) -> Iterator[list[threading.Thread]]:
    """Twelve sagas held by live executors in this process, blocked in their step."""
    gate = uuid.uuid4().hex
    gates[gate] = threading.Event()
    threads = []
    for i in range(12):
        saga_id = f"busy-{i:02d}"
        entered[saga_id] = threading.Event()
        thread = threading.Thread(target=engine.run, args=(Blocks, Hold(saga_id, gate)),
                                  kwargs={"saga_id": saga_id, "idempotency_key": "k"}, daemon=True)
        thread.start()
        threads.append(thread)
    for i in range(12):
        assert entered[f"busy-{i:02d}"].wait(30)
    try:
        yield threads
    finally:
        gates[gate].set()
        for thread in threads:
            thread.join(30)


def test_a_worker_reaches_a_recoverable_saga_behind_many_held_ones(
        engine: SagaEngine, busy: list[threading.Thread]) -> None:
    engine.submit(Blocks, Hold("free"), saga_id="free", idempotency_key="k")
    stats = Worker(engine, concurrency=1, poll_interval=0.01, stop_when_idle=True).run()
    assert stats.completed == 1 and stats.locked == 0
    assert ("ran", "free") in calls
    assert engine.get("free").status == "completed"  # type: ignore[union-attr]


@pytest.mark.postgres
def test_claims_in_another_database_of_the_same_server_are_not_claims_here(
        pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    other = f"sagadsl_other_{uuid.uuid4().hex[:8]}"
    other_url = url.rsplit("/", 1)[0] + f"/{other}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{other}"'))
    gate = uuid.uuid4().hex
    gates[gate] = threading.Event()
    entered["same-id"] = threading.Event()
    try:
        # The same schema name and saga id in both databases: the same advisory lock key.
        with create_engine(other_url, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        there = SagaEngine(SqlStorage(other_url, schema=schema, auto_migrate=True))
        here = SagaEngine(SqlStorage(url, schema=schema, auto_migrate=True))
        holder = threading.Thread(target=there.run, args=(Blocks, Hold("same-id", gate)),
                                  kwargs={"saga_id": "same-id", "idempotency_key": "k"}, daemon=True)
        holder.start()
        try:
            assert entered["same-id"].wait(30)
            here.submit(Blocks, Hold("same-id"), saga_id="same-id", idempotency_key="k")
            stats = Worker(here, concurrency=1, poll_interval=0.01, stop_when_idle=True).run()
            assert stats.completed == 1
            assert here.get("same-id").status == "completed"  # type: ignore[union-attr]
        finally:
            gates[gate].set()
            holder.join(30)
            here.close()
            there.close()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)'))
        admin.dispose()
