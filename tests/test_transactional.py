"""Transactional steps (DESIGN §9): writes to the service's own tables commit with the step.

On SQLite and PostgreSQL: the row is there after success, absent after a
failure, once after retries and timeouts, absent after a SIGKILL inside the
step and once after the resume; a transactional compensation removes it
once, also across a SIGKILL; the session cannot outlive its attempt; two
transactional steps of one saga never share a transaction.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Engine, MetaData, String, Table, create_engine, insert, select, text

from sagadsl import (
    InMemoryStorage,
    Saga,
    SagaEngine,
    SagaError,
    SagaFailedError,
    StepStatus,
    WorkflowStatus,
    compensates,
    step,
)
from sagadsl.storage import SqlStorage
from tests.transactional_sagas import NewOrder, OrderRow, PlaceOrder, app_metadata, outbox

HERE = Path(__file__).parent


@dataclass
class Db:
    url: str
    schema: str | None
    engine: SagaEngine
    #: The service's own engine on the same database (its tables in the same schema).
    app: Engine

    def orders(self) -> list[tuple[str, str]]:
        with self.app.connect() as conn:
            return [tuple(r) for r in conn.execute(select(OrderRow.id, OrderRow.state).order_by(OrderRow.id))]

    def outbox(self) -> list[str]:
        with self.app.connect() as conn:
            return list(conn.execute(select(outbox.c.id).order_by(outbox.c.id)).scalars())


def _app_engine(url: str, schema: str | None) -> Engine:
    app = create_engine(url)
    if schema:
        app = app.execution_options(schema_translate_map={None: schema})
    return app


@pytest.fixture
def db(durable_url: tuple[str, str | None]) -> Iterator[Db]:
    url, schema = durable_url
    app = _app_engine(url, schema)
    app_metadata.create_all(app)
    engine = SagaEngine(SqlStorage(url, schema=schema))
    yield Db(url, schema, engine, app)
    engine.close()
    app.dispose()


def _run(db: Db, order: NewOrder) -> Any:
    return db.engine.run(PlaceOrder, order, saga_id=order.order_id, idempotency_key=order.order_id)


def test_the_rows_exist_after_success(db: Db) -> None:
    result = _run(db, NewOrder("o-1"))
    assert result.status == WorkflowStatus.COMPLETED
    assert db.orders() == [("o-1", "placed")] and db.outbox() == ["placed-o-1"]


def test_no_row_remains_of_a_failing_step_and_a_compensation_removes_a_committed_one(db: Db) -> None:
    with pytest.raises(SagaFailedError):
        _run(db, NewOrder("o-2", fail_times=9))  # insert_order fails every attempt
    assert db.orders() == []
    with pytest.raises(SagaFailedError):
        _run(db, NewOrder("o-3", fail_charge=True))  # inserted, then compensated in its own transaction
    assert db.orders() == [] and db.outbox() == []
    steps = {s.name: s.status for s in db.engine.get("o-3").steps}  # type: ignore[union-attr]
    assert steps["insert_order"] == StepStatus.COMPENSATED


def test_retried_attempts_leave_exactly_one_row(db: Db) -> None:
    result = _run(db, NewOrder("o-4", fail_times=2))
    assert result.status == WorkflowStatus.COMPLETED
    assert db.orders() == [("o-4", "placed")]
    assert db.engine.get("o-4").step("insert_order").attempts == 3  # type: ignore[union-attr]


def test_an_attempt_that_times_out_is_rolled_back_and_the_next_one_lands_once(db: Db) -> None:
    result = _run(db, NewOrder("o-5", stall=2.5))  # attempt 1 outlives its 1 s timeout
    assert result.status == WorkflowStatus.COMPLETED
    time.sleep(2)  # the stalled thread wakes up and returns into a closed connection
    assert db.orders() == [("o-5", "placed")]
    assert db.engine.get("o-5").step("insert_order").attempts == 2  # type: ignore[union-attr]
    # The engine goes on working on that connection's successor.
    assert _run(db, NewOrder("o-6")).status == WorkflowStatus.COMPLETED


# -- SIGKILL inside a transactional step or compensation ---------------------------------


def _kill_inside(db: Db, tmp_path: Path, saga_id: str, where: str) -> None:
    child = subprocess.Popen(
        [sys.executable, str(HERE / "transactional_sagas.py"), db.url, db.schema or "-", saga_id,
         str(tmp_path), where],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    marker = tmp_path / where
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert child.poll() is None, child.stdout.read().decode() if child.stdout else ""
        assert time.monotonic() < deadline, f"the child never reached its {where}"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)


def _resume(db: Db, saga_id: str) -> Any:
    for _ in range(200):  # the server may take a moment to see the connection gone
        try:
            return db.engine.resume(saga_id)
        except SagaError as exc:
            if exc.code != "TRANSACTION_LOCKED":
                raise
            time.sleep(0.05)
    raise AssertionError("the killed executor's claim was never released")


def test_a_sigkill_inside_the_step_leaves_no_row_and_the_resume_writes_it_once(db: Db, tmp_path: Path) -> None:
    _kill_inside(db, tmp_path, "o-7", "step")
    assert db.orders() == []  # flushed into the transaction, never committed
    result = _resume(db, "o-7")
    assert result.status == WorkflowStatus.COMPLETED
    assert db.orders() == [("o-7", "placed")] and db.outbox() == ["placed-o-7"]


def test_a_sigkill_inside_the_compensation_keeps_the_row_until_the_resume_removes_it_once(
        db: Db, tmp_path: Path) -> None:
    _kill_inside(db, tmp_path, "o-8", "compensation")
    assert db.orders() == [("o-8", "placed")]  # the delete was flushed, never committed
    with pytest.raises(SagaFailedError):
        _resume(db, "o-8")
    assert db.orders() == []
    record = db.engine.get("o-8")
    assert record is not None and record.status == WorkflowStatus.FAILED


# -- the session belongs to one attempt ---------------------------------------------------


kept: dict[str, Any] = {}


@dataclass
class Note:
    note_id: str


class KeepsTheSession(Saga[Note], name="tests.transactional.keeps_session"):
    @step(idempotency_key="first-{note_id}", transactional=True)
    def first(self) -> str:
        kept["session"] = self.db
        return "1"

    @step(idempotency_key="second-{note_id}")
    def second(self, first: str) -> str:
        kept["session"].add(OrderRow(id=self.input.note_id, state="leaked"))
        kept["session"].flush()
        return "2"

    @step(idempotency_key="plain-{note_id}")
    def plain(self, second: str) -> str:
        return str(self.db)


def test_a_session_kept_past_its_step_refuses_to_write(db: Db) -> None:
    with pytest.raises(SagaFailedError) as failed:
        db.engine.run(KeepsTheSession, Note("n-1"), saga_id="n-1", idempotency_key="n-1")
    assert failed.value.step_name == "second"
    assert "the self.db session of KeepsTheSession.first was used after its attempt ended" in str(failed.value)
    assert db.orders() == []


def test_self_db_outside_a_transactional_step_says_how_to_get_one(db: Db) -> None:
    class PlainOnly(Saga[Note], name="tests.transactional.plain_only"):
        @step(idempotency_key="plain-{note_id}")
        def plain(self) -> str:
            return str(self.db)

    with pytest.raises(SagaFailedError, match="PlainOnly.db is only available inside a step or compensation "
                                              "declared with transactional=True"):
        db.engine.run(PlainOnly, Note("n-2"), saga_id="n-2", idempotency_key="n-2")


def test_a_storage_that_is_not_sql_is_refused_before_anything_is_written() -> None:
    storage = InMemoryStorage()
    with SagaEngine(storage) as engine:
        with pytest.raises(SagaError, match="PlaceOrder has transactional steps \\(insert_order, announce, "
                                            "cancel_order\\).*is not a SQL storage"):
            engine.run(PlaceOrder, NewOrder("o-9"), saga_id="o-9", idempotency_key="o-9")
        with pytest.raises(SagaError, match="is not a SQL storage"):
            engine.submit(PlaceOrder, NewOrder("o-9"), saga_id="o-9", idempotency_key="o-9")
        assert engine.get("o-9") is None


# -- parallel transactional steps run one at a time ------------------------------------------------


spans: list[tuple[str, float, float]] = []


class Parallel(Saga[Note], name="tests.transactional.parallel"):
    @step(idempotency_key="a-{note_id}", transactional=True)
    def a(self) -> str:
        t0 = time.monotonic()
        self.db.add(OrderRow(id=f"{self.input.note_id}-a", state="a"))
        time.sleep(0.2)
        spans.append(("a", t0, time.monotonic()))
        return "a"

    @step(idempotency_key="b-{note_id}", transactional=True)
    def b(self) -> str:
        t0 = time.monotonic()
        self.db.add(OrderRow(id=f"{self.input.note_id}-b", state="b"))
        time.sleep(0.2)
        spans.append(("b", t0, time.monotonic()))
        return "b"

    @step(idempotency_key="c-{note_id}")
    def c(self) -> str:
        t0 = time.monotonic()
        time.sleep(0.2)
        spans.append(("c", t0, time.monotonic()))
        return "c"


def test_two_transactional_steps_of_one_saga_never_overlap(db: Db) -> None:
    spans.clear()
    result = db.engine.run(Parallel, Note("p"), saga_id="p", idempotency_key="p")
    assert result.status == WorkflowStatus.COMPLETED
    assert db.orders() == [("p-a", "a"), ("p-b", "b")]
    by_name = {name: (start, end) for name, start, end in spans}
    for x, y in (("a", "b"), ("a", "c"), ("b", "c")):
        (s1, e1), (s2, e2) = by_name[x], by_name[y]
        assert e1 <= s2 or e2 <= s1, f"{x} and {y} overlapped: {spans}"


def test_the_users_tables_may_live_in_another_schema(durable_url: tuple[str, str | None]) -> None:
    url, schema = durable_url
    if schema is None:
        pytest.skip("SQLite has one schema per database file")
    other = f"app_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{other}"'))
    ledger = Table("ledger", MetaData(schema=other), Column("id", String(64), primary_key=True))
    ledger.create(admin)

    class Ledger(Saga[Note], name=f"tests.transactional.ledger_{other}"):
        @step(idempotency_key="post-{note_id}", transactional=True)
        def post(self) -> None:
            self.db.execute(insert(ledger).values(id=self.input.note_id))

    try:
        with SagaEngine(SqlStorage(url, schema=schema)) as engine:
            engine.run(Ledger, Note("l-1"), saga_id="l-1", idempotency_key="l-1")
        with admin.connect() as conn:
            assert list(conn.execute(select(ledger.c.id)).scalars()) == ["l-1"]
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{other}" CASCADE'))
        admin.dispose()


_ = threading  # the parallel test relies on the engine's own threads
