"""Control for services and operators (DESIGN §8): wait, submit_async, start_after, prune, stats --by-name."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select

import sagadsl.engine
from sagadsl import (
    CompensationFailedError,
    CompensationPolicy,
    DeadLetterError,
    IdempotencyConflictError,
    Saga,
    SagaEngine,
    SagaFailedError,
    SagaNotFoundError,
    WorkflowStatus,
    compensates,
    step,
)
from sagadsl.cli import cli
from sagadsl.storage import SqlStorage, Storage
from sagadsl.storage.models import steps as steps_table
from sagadsl.storage.models import workflows as wf_table
from sagadsl.testing import FakeClock
from sagadsl.worker import Worker


@dataclass
class Ticket:
    ticket_id: str
    fail: str = ""


@dataclass
class Seat:
    row: int
    letter: str


#: Set to let Gated's step finish; cleared by each test that uses it.
gate = threading.Event()


class Booking(Saga[Ticket], name="tests.control.booking"):
    @step(idempotency_key="seat-{ticket_id}", compensation=CompensationPolicy(max_attempts=1))
    def seat(self) -> Seat:
        return Seat(12, "C")

    @compensates(seat)
    def free_seat(self, seat: Seat) -> None:
        if self.input.fail == "undo":
            raise RuntimeError("seat map offline")

    @step(idempotency_key="pay-{ticket_id}")
    def pay(self, seat: Seat) -> str:
        if self.input.fail:
            raise ValueError("card declined")
        return f"paid-{self.input.ticket_id}"


class Gated(Saga[Ticket], name="tests.control.gated"):
    @step(idempotency_key="hold-{ticket_id}")
    def hold(self) -> str:
        assert gate.wait(30), "the test never opened the gate"
        return "held"


@pytest.fixture
def worker(engine: SagaEngine) -> Iterator[Worker]:
    """A worker thread driving the engine's submitted sagas."""
    running = Worker(engine, concurrency=4, poll_interval=0.01)
    thread = threading.Thread(target=running.run, name="test-worker")
    thread.start()
    yield running
    gate.set()
    running.stop()
    thread.join(10)


@pytest.fixture(autouse=True)
def closed_gate() -> Iterator[None]:
    gate.clear()
    yield
    gate.set()


# -- wait ----------------------------------------------------------------------


class TestWait:
    def test_gives_a_completed_sagas_typed_results(self, engine: SagaEngine) -> None:
        engine.run(Booking, Ticket("t1"), saga_id="t1", idempotency_key="k")
        result = engine.wait("t1")
        assert result.status == WorkflowStatus.COMPLETED
        assert result.results == {"seat": Seat(12, "C"), "pay": "paid-t1"}

    def test_returns_when_a_worker_finishes_a_submitted_saga(self, engine: SagaEngine, worker: Worker) -> None:
        engine.submit(Booking, Ticket("t1"), saga_id="t1", idempotency_key="k")
        result = engine.wait("t1", timeout=10)
        assert result.results["pay"] == "paid-t1"

    def test_raises_saga_failed_for_a_failed_saga(self, engine: SagaEngine, worker: Worker) -> None:
        engine.submit(Booking, Ticket("t1", fail="pay"), saga_id="t1", idempotency_key="k")
        with pytest.raises(SagaFailedError, match=r"saga 't1' \(tests.control.booking\) already failed at "
                                                  r"step 'pay': ValueError: card declined"):
            engine.wait("t1", timeout=10)

    def test_raises_dead_letter_for_a_saga_in_dead_letter(self, engine: SagaEngine, worker: Worker) -> None:
        engine.submit(Booking, Ticket("t1", fail="undo"), saga_id="t1", idempotency_key="k")
        with pytest.raises(DeadLetterError, match="is in dead letter"):
            engine.wait("t1", timeout=10)

    def test_raises_the_builtin_timeout_error_while_the_saga_is_active(self, engine: SagaEngine) -> None:
        engine.submit(Booking, Ticket("t1"), saga_id="t1", idempotency_key="k")
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"saga 't1' did not finish within 0.2 s; it is still running"):
            engine.wait("t1", timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 2

    def test_raises_saga_not_found_for_an_unknown_id(self, engine: SagaEngine) -> None:
        with pytest.raises(SagaNotFoundError, match="no saga with id 'nope'"):
            engine.wait("nope", timeout=1)

    def test_works_in_async_code_next_to_a_worker(self, engine: SagaEngine, worker: Worker) -> None:
        async def main() -> Any:
            await engine.submit_async(Booking, Ticket("t1"), saga_id="t1", idempotency_key="k")
            return await engine.wait_async("t1", timeout=10)

        assert asyncio.run(main()).results == {"seat": Seat(12, "C"), "pay": "paid-t1"}

    def test_async_wait_raises_what_the_saga_ended_with(self, engine: SagaEngine, worker: Worker) -> None:
        async def main() -> Any:
            await engine.submit_async(Booking, Ticket("t1", fail="pay"), saga_id="t1", idempotency_key="k")
            return await engine.wait_async("t1", timeout=10)

        with pytest.raises(SagaFailedError, match="card declined"):
            asyncio.run(main())

    def test_async_wait_times_out(self, engine: SagaEngine) -> None:
        engine.submit(Booking, Ticket("t1"), saga_id="t1", idempotency_key="k")
        with pytest.raises(TimeoutError, match="did not finish within 0.1 s"):
            asyncio.run(engine.wait_async("t1", timeout=0.1))

    def test_many_waiters_are_woken_by_one_saga(self, engine: SagaEngine, worker: Worker) -> None:
        engine.submit(Gated, Ticket("g1"), saga_id="g1", idempotency_key="k")
        results: list[Any] = []
        waiters = [threading.Thread(target=lambda: results.append(engine.wait("g1", timeout=10)))
                   for _ in range(5)]
        for waiter in waiters:
            waiter.start()
        time.sleep(0.1)
        gate.set()
        for waiter in waiters:
            waiter.join(10)
        assert [r.results for r in results] == [{"hold": "held"}] * 5


class TestWaitOnPostgres:
    @pytest.fixture
    def pg_engine(self, pg_schema: tuple[str, str]) -> Iterator[SagaEngine]:
        url, schema = pg_schema
        with SagaEngine(SqlStorage(url, schema=schema, auto_migrate=True)) as engine:
            yield engine

    def test_the_terminal_commit_wakes_waiters_long_before_the_polling_would(
            self, pg_engine: SagaEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
        # With the fallback slowed to 30 s, only the notification can wake the waiters in time.
        monkeypatch.setattr(sagadsl.engine, "_WAIT_POLL_FIRST", 30.0)
        monkeypatch.setattr(sagadsl.engine, "_WAIT_POLL_MAX", 30.0)
        ids = [f"g{i}" for i in range(4)]
        for saga_id in ids:
            pg_engine.submit(Gated, Ticket(saga_id), saga_id=saga_id, idempotency_key="k")
        woken: dict[str, float] = {}

        def wait(saga_id: str) -> None:
            pg_engine.wait(saga_id, timeout=20)
            woken[saga_id] = time.monotonic()

        waiters = [threading.Thread(target=wait, args=(saga_id,)) for saga_id in ids]
        for waiter in waiters:
            waiter.start()
        time.sleep(0.5)  # every waiter is asleep on its 30 s poll
        assert [t.name for t in threading.enumerate()].count("sagadsl-listen") == 1
        gate.set()
        finished = time.monotonic()
        runner = Worker(pg_engine, concurrency=4, poll_interval=0.01, stop_when_idle=True)
        runner.run()
        for waiter in waiters:
            waiter.join(20)
        assert sorted(woken) == ids
        assert max(woken.values()) - finished < 3
        assert "listening for finished sagas failed" not in caplog.text

    def test_close_stops_the_listening_connection(self, pg_engine: SagaEngine) -> None:
        pg_engine.run(Booking, Ticket("t1"), saga_id="t1", idempotency_key="k")
        pg_engine.submit(Booking, Ticket("t2"), saga_id="t2", idempotency_key="k")
        with pytest.raises(TimeoutError):
            pg_engine.wait("t2", timeout=0.1)
        assert "sagadsl-listen" in [t.name for t in threading.enumerate()]
        pg_engine.close()
        time.sleep(0.5)
        assert "sagadsl-listen" not in [t.name for t in threading.enumerate()]


# -- submit_async and start_after -------------------------------------------------


class TestSubmitAsync:
    def test_commits_the_saga_as_pending(self, engine: SagaEngine) -> None:
        assert asyncio.run(engine.submit_async(Booking, Ticket("t1"), saga_id="t1", idempotency_key="k")) is None
        record = engine.get("t1")
        assert record is not None and record.status == WorkflowStatus.PENDING and record.started_at is None

    def test_is_idempotent_and_refuses_another_key(self, engine: SagaEngine) -> None:
        asyncio.run(engine.submit_async(Booking, Ticket("t1"), saga_id="t1", idempotency_key="k"))
        again = asyncio.run(engine.submit_async(Booking, Ticket("t1"), saga_id="t1", idempotency_key="k"))
        assert again is not None and again.id == "t1"
        with pytest.raises(IdempotencyConflictError, match="already exists with idempotency key 'k'"):
            asyncio.run(engine.submit_async(Booking, Ticket("t1"), saga_id="t1", idempotency_key="other"))


def drain(engine: SagaEngine) -> Worker:
    worker = Worker(engine, concurrency=2, poll_interval=0.01, stop_when_idle=True)
    worker.run()
    return worker


class TestStartAfter:
    def test_no_worker_takes_the_saga_before_its_time(self, engine: SagaEngine, clock: FakeClock) -> None:
        engine.submit(Booking, Ticket("t1"), saga_id="t1", idempotency_key="k", start_after=timedelta(hours=1))
        record = engine.get("t1")
        assert record is not None and record.start_after == clock.now() + timedelta(hours=1)
        clock.advance(timedelta(minutes=59))
        assert engine.storage.recoverable(clock.now(), 10) == []
        assert drain(engine).stats.claimed == 0
        assert engine.get("t1").status == WorkflowStatus.PENDING  # type: ignore[union-attr]

        clock.advance(timedelta(minutes=1))
        assert engine.storage.recoverable(clock.now(), 10) == ["t1"]
        drain(engine)
        assert engine.get("t1").status == WorkflowStatus.COMPLETED  # type: ignore[union-attr]

    def test_takes_an_absolute_time_and_leaves_other_sagas_alone(self, engine: SagaEngine,
                                                                   clock: FakeClock) -> None:
        at = clock.now() + timedelta(days=1)
        engine.submit(Booking, Ticket("later"), saga_id="later", idempotency_key="k", start_after=at)
        engine.submit(Booking, Ticket("now"), saga_id="now", idempotency_key="k")
        assert engine.storage.recoverable(clock.now(), 10) == ["now"]
        drain(engine)
        assert engine.get("later").start_after == at  # type: ignore[union-attr]
        assert engine.get("later").status == WorkflowStatus.PENDING  # type: ignore[union-attr]
        assert engine.query(stuck=True).total == 0  # waiting for its time is not being stuck

    def test_its_budget_starts_when_a_worker_takes_it(self, engine: SagaEngine, clock: FakeClock) -> None:
        engine.submit(Booking, Ticket("t1"), saga_id="t1", idempotency_key="k", start_after=timedelta(hours=2))
        taken_at = clock.advance(timedelta(hours=2))
        drain(engine)
        record = engine.get("t1")
        assert record is not None and record.status == WorkflowStatus.COMPLETED
        assert record.started_at == taken_at

    def test_run_starts_it_at_once_when_asked_to(self, engine: SagaEngine) -> None:
        engine.submit(Booking, Ticket("t1"), saga_id="t1", idempotency_key="k", start_after=timedelta(hours=1))
        assert engine.run(Booking, Ticket("t1"), saga_id="t1", idempotency_key="k").status == "completed"

    def test_a_naive_datetime_is_refused(self, engine: SagaEngine) -> None:
        with pytest.raises(ValueError, match="Booking: start_after .* is a naive datetime; pass a "
                                             "timezone-aware one"):
            engine.submit(Booking, Ticket("t1"), saga_id="t1", idempotency_key="k",
                          start_after=datetime(2030, 1, 1))
        assert engine.get("t1") is None


# -- prune -----------------------------------------------------------------------


def scanned(storage: Storage) -> dict[str, int]:
    """Counts by status the slow way: a scan of the rows (a query by name on memory)."""
    if isinstance(storage, SqlStorage):
        with storage.engine.connect() as conn:
            rows = conn.execute(select(wf_table.c.status, func.count()).group_by(wf_table.c.status)).all()
        return {status: int(n) for status, n in rows}
    counts: dict[str, int] = {}
    for by_status in storage.count_by_name().values():
        for status, n in by_status.items():
            counts[status.value] = counts.get(status.value, 0) + n
    return counts


def kept(engine: SagaEngine) -> dict[str, int]:
    return {status.value: n for status, n in engine.count_by_status().items() if n}


def step_rows(storage: Storage) -> int | None:
    if not isinstance(storage, SqlStorage):
        return None
    with storage.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(steps_table)).scalar_one())


def populate(engine: SagaEngine, prefix: str, completed: int = 0, failed: int = 0, dead: int = 0,
             pending: int = 0) -> None:
    for i in range(completed):
        engine.run(Booking, Ticket(f"{prefix}c{i}"), saga_id=f"{prefix}c{i}", idempotency_key="k")
    for i in range(failed):
        with pytest.raises(SagaFailedError):
            engine.run(Booking, Ticket(f"{prefix}f{i}", "pay"), saga_id=f"{prefix}f{i}", idempotency_key="k")
    for i in range(dead):
        with pytest.raises(CompensationFailedError):
            engine.run(Booking, Ticket(f"{prefix}d{i}", "undo"), saga_id=f"{prefix}d{i}", idempotency_key="k")
    for i in range(pending):
        engine.submit(Booking, Ticket(f"{prefix}p{i}"), saga_id=f"{prefix}p{i}", idempotency_key="k")


class TestPrune:
    def test_deletes_old_completed_and_failed_sagas_in_batches(self, engine: SagaEngine,
                                                               clock: FakeClock) -> None:
        populate(engine, "old-", completed=5, failed=2, dead=1, pending=1)
        clock.advance(timedelta(days=31))
        populate(engine, "new-", completed=1, failed=1)
        batches: list[int] = []

        assert engine.prune(timedelta(days=30), batch=3, progress=batches.append) == 7

        assert batches == [3, 3, 1]
        assert engine.get("old-c0") is None and engine.get("old-f1") is None
        left = {r.id: r.status.value for r in engine.query(limit=100).workflows}
        assert left == {"old-d0": "dead_letter", "old-p0": "pending", "new-c0": "completed",
                        "new-f0": "failed"}
        assert kept(engine) == scanned(engine.storage) == {"dead_letter": 1, "pending": 1, "completed": 1,
                                                           "failed": 1}
        assert step_rows(engine.storage) in (None, 8)  # the steps of the sagas left, two each

    def test_deletes_dead_letter_sagas_only_when_named(self, engine: SagaEngine, clock: FakeClock) -> None:
        populate(engine, "old-", completed=1, dead=2)
        clock.advance(timedelta(days=31))
        assert engine.prune(timedelta(days=30), ["dead_letter"]) == 2
        assert kept(engine) == scanned(engine.storage) == {"completed": 1}

    def test_never_deletes_an_active_saga(self, engine: SagaEngine, clock: FakeClock) -> None:
        populate(engine, "old-", pending=2)
        clock.advance(timedelta(days=31))
        with pytest.raises(ValueError, match="prune never deletes active sagas; remove pending, compensating "
                                             "from statuses"):
            engine.prune(timedelta(days=30), ["pending", "compensating", "completed"])
        assert engine.storage.prune(clock.now(), [WorkflowStatus.PENDING], 10) == 0
        assert engine.count("pending") == 2

    def test_keeps_sagas_updated_more_recently_than_older_than(self, engine: SagaEngine,
                                                               clock: FakeClock) -> None:
        populate(engine, "old-", completed=2)
        clock.advance(timedelta(days=29))
        assert engine.prune(timedelta(days=30)) == 0
        assert engine.count() == 2

    def test_goes_by_when_a_saga_ended_not_when_it_was_created(self, engine: SagaEngine,
                                                               clock: FakeClock) -> None:
        engine.submit(Booking, Ticket("late"), saga_id="late", idempotency_key="k")
        populate(engine, "early-", completed=1)
        clock.advance(timedelta(days=40))
        assert engine.resume("late").status == WorkflowStatus.COMPLETED  # created 40 days ago, ended now
        clock.advance(timedelta(days=1))

        assert engine.prune(timedelta(days=30)) == 1

        assert engine.get("early-c0") is None
        assert engine.get("late") is not None
        assert kept(engine) == scanned(engine.storage) == {"completed": 1}

    def test_a_large_table_is_pruned_next_to_running_sagas(self, engine: SagaEngine, clock: FakeClock,
                                                           backend: str) -> None:
        if backend == "memory":
            pytest.skip("bulk-loads rows with SQL")
        assert isinstance(engine.storage, SqlStorage)
        rows = 5000
        old = clock.now() - timedelta(days=60)
        with engine.storage.engine.begin() as conn:
            conn.execute(insert(wf_table), [
                dict(id=f"bulk-{i}", saga_name="tests.control.booking", status="completed", input={},
                     idempotency_key="k", fingerprint="f", retry_count=0, version=3, created_at=old,
                     updated_at=old, started_at=old, claims=0) for i in range(rows)])
            conn.execute(insert(steps_table), [
                dict(workflow_id=f"bulk-{i}", name=name, position=p, idempotency_key=f"{name}-{i}",
                     status="completed", attempts=1) for i in range(rows) for p, name in enumerate(("seat", "pay"))])
        done: list[str] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def run_sagas() -> None:
            i = 0
            while not stop.is_set():
                try:
                    engine.run(Booking, Ticket(f"live-{i}"), saga_id=f"live-{i}", idempotency_key="k")
                    done.append(f"live-{i}")
                except BaseException as exc:
                    errors.append(exc)
                    return
                i += 1

        runner = threading.Thread(target=run_sagas)
        runner.start()
        try:
            deleted = engine.prune(timedelta(days=30), batch=500)
        finally:
            stop.set()
            runner.join(30)
        assert errors == []
        assert deleted == rows
        assert done and engine.count("completed") == len(done)
        assert kept(engine) == scanned(engine.storage) == {"completed": len(done)}
        assert step_rows(engine.storage) == 2 * len(done)


# -- count_by_name and the CLI -------------------------------------------------------


def test_count_by_name_counts_each_saga_name_per_status(engine: SagaEngine) -> None:
    populate(engine, "", completed=2, failed=1, pending=1)
    engine.submit(Gated, Ticket("g1"), saga_id="g1", idempotency_key="k")
    assert engine.count_by_name() == {
        "tests.control.booking": {WorkflowStatus.COMPLETED: 2, WorkflowStatus.FAILED: 1,
                                  WorkflowStatus.PENDING: 1},
        "tests.control.gated": {WorkflowStatus.PENDING: 1},
    }


@pytest.fixture
def cli_db(durable_url: tuple[str, str | None]) -> Iterator[list[str]]:
    """Sagas 40 days old and fresh ones; the global options that select the database."""
    url, schema = durable_url
    options = ["--database-url", url] + (["--schema", schema] if schema else [])
    aged = FakeClock(datetime.now(timezone.utc) - timedelta(days=40))
    with SagaEngine(SqlStorage(url, schema=schema), clock=aged) as old:
        populate(old, "old-", completed=3, failed=1, dead=1)
    with SagaEngine(SqlStorage(url, schema=schema)) as fresh:
        populate(fresh, "new-", completed=1, pending=1)
        fresh.submit(Gated, Ticket("g1"), saga_id="g1", idempotency_key="k")
    yield options


def saga_admin(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), prog_name="saga-admin",
                              env={"SAGADSL_DATABASE_URL": None, "SAGADSL_SCHEMA": None, "SAGADSL_OUTPUT": None})


def test_stats_by_name_prints_a_row_per_saga_name(cli_db: list[str]) -> None:
    result = saga_admin(*cli_db, "stats", "--by-name")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert lines[0] == ["SAGA", "PENDING", "COMPENSATING", "COMPLETED", "FAILED", "DEAD_LETTER", "CANCELLED",
                        "TOTAL"]
    assert ["tests.control.booking", "1", "0", "4", "1", "1", "0", "7"] in lines
    assert ["tests.control.gated", "1", "0", "0", "0", "0", "0", "1"] in lines


def test_stats_by_name_as_json(cli_db: list[str]) -> None:
    result = saga_admin(*cli_db, "stats", "--by-name", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"by_name": {
        "tests.control.booking": {"pending": 1, "compensating": 0, "completed": 4, "failed": 1,
                                  "dead_letter": 1, "cancelled": 0},
        "tests.control.gated": {"pending": 1, "compensating": 0, "completed": 0, "failed": 0,
                                "dead_letter": 0, "cancelled": 0}}}


def test_stats_by_name_refuses_watch(cli_db: list[str]) -> None:
    result = saga_admin(*cli_db, "stats", "--by-name", "--watch")
    assert result.exit_code == 2
    assert "--by-name cannot be combined with --watch" in result.stderr


def test_prune_dry_run_only_counts(cli_db: list[str]) -> None:
    result = saga_admin(*cli_db, "prune", "--older-than", "30d", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("would delete 4 completed/failed/cancelled sagas last updated before ")
    assert result.stdout.endswith(" (dry run)\n")
    again = saga_admin(*cli_db, "stats", "-o", "json")
    assert json.loads(again.stdout)["total"] == 8


def test_prune_deletes_old_finished_sagas_in_batches(cli_db: list[str]) -> None:
    result = saga_admin(*cli_db, "prune", "--older-than", "30d", "--batch", "2", "-o", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["deleted"] == out["matching"] == 4 and out["statuses"] == ["completed", "failed", "cancelled"]
    stats = json.loads(saga_admin(*cli_db, "stats", "-o", "json").stdout)
    assert stats["by_status"] == {"pending": 2, "compensating": 0, "completed": 1, "failed": 0,
                                  "dead_letter": 1, "cancelled": 0}


def test_prune_deletes_dead_letter_when_named(cli_db: list[str]) -> None:
    result = saga_admin(*cli_db, "prune", "--older-than", "30d", "--status", "dead_letter")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("deleted 1 dead_letter saga last updated before ")


def test_prune_refuses_an_active_status_and_a_bad_duration(cli_db: list[str]) -> None:
    result = saga_admin(*cli_db, "prune", "--older-than", "30d", "--status", "pending")
    assert result.exit_code == 2 and "'pending' is not one of" in result.stderr
    result = saga_admin(*cli_db, "prune", "--older-than", "a month")
    assert result.exit_code == 2
    assert "'a month' is not a duration like 90s, 30m, 12h, 30d or 2w" in result.stderr
