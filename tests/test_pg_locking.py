"""One executor per saga on PostgreSQL, across processes and threads (DESIGN §2.6)."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Connection, create_engine, func, select

from sagadsl import Saga, SagaEngine, SagaLockedError, SqlStorage, WorkflowStatus, step
from sagadsl import migrate as sagadsl_migrate
from sagadsl.storage.claims import AdvisoryClaim
from sagadsl.storage.sql import advisory_lock_key
from tests import pg_sagas

pytestmark = pytest.mark.postgres

PROCESSES = 4
SAGAS = 50


@pytest.fixture
def installed(pg_schema: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """``(url, schema)`` with sagadsl's tables and the ledger installed."""
    url, schema = pg_schema
    SqlStorage(url, schema=schema, auto_migrate=True).close()
    pg_sagas.create_ledger(url, schema)
    yield url, schema


class TestFourProcessesDrivingTheSameSagas:
    def test_every_step_runs_once_and_every_other_attempt_is_refused_or_answered(
            self, installed: tuple[str, str]) -> None:
        url, schema = installed
        ids = [f"s-{i:02d}" for i in range(SAGAS)]
        failing = {i for i in ids if int(i[2:]) % 5 == 0}
        ctx = multiprocessing.get_context("spawn")
        start = ctx.Barrier(PROCESSES)
        results = ctx.Queue()
        # Two workers walk the ids forwards and two backwards, so that they
        # collide both on a saga being started and on one being finished.
        orders = [ids, ids, ids[::-1], ids[::-1]]
        workers = [ctx.Process(target=pg_sagas.contend, args=(url, schema, order, failing, start, results, n))
                   for n, order in enumerate(orders)]
        for w in workers:
            w.start()
        try:
            reports = [results.get(timeout=120) for _ in workers]
        finally:
            for w in workers:
                w.join(30)
                if w.is_alive():
                    w.kill()
        assert [w.exitcode for w in workers] == [0] * PROCESSES

        attempts = [(saga_id, outcome) for _, _, outcomes in reports for saga_id, outcome in outcomes]
        assert len(attempts) == PROCESSES * SAGAS
        unexpected = [a for a in attempts if a[1].startswith("unexpected")]
        assert unexpected == []

        # Each step (and each compensation) ran exactly once in total.
        rows = pg_sagas.ledger(url, schema)
        executions = Counter((saga_id, action.split(":")[0]) for saga_id, action, _ in rows)
        expected: Counter[tuple[str, str]] = Counter()
        for saga_id in ids:
            actions = ["a", "b", "c"] + (["undo_b", "undo_a"] if saga_id in failing else [])
            expected.update((saga_id, action) for action in actions)
        assert executions == expected
        # ... and all of one saga's steps by one process.
        assert all(len({pid for s, _, pid in rows if s == saga_id}) == 1 for saga_id in ids)

        # Every saga ended in one terminal state, and every attempt saw either
        # that outcome or SagaLockedError.
        storage = SqlStorage(url, schema=schema)
        try:
            stored = {saga_id: storage.get(saga_id) for saga_id in ids}
        finally:
            storage.close()
        for saga_id in ids:
            record = stored[saga_id]
            assert record is not None
            want = WorkflowStatus.FAILED if saga_id in failing else WorkflowStatus.COMPLETED
            assert record.status == want, saga_id
            seen = {outcome for s, outcome in attempts if s == saga_id}
            assert want.value in seen and seen <= {want.value, "locked"}, (saga_id, seen)
        # All four start on the same saga ids at the same moment, each step
        # sleeping 10 ms: if no attempt was ever refused, nothing was contended.
        assert any(outcome == "locked" for _, outcome in attempts)


@dataclass
class Hold:
    hold_id: str


entered = threading.Event()
release = threading.Event()


class HeldOpen(Saga[Hold], name="tests.pg.held_open"):
    @step(idempotency_key="first-{hold_id}")
    def first(self) -> str:
        return "first"

    @step(idempotency_key="blocking-{hold_id}")
    def blocking(self) -> str:
        entered.set()
        assert release.wait(30), "the test never released the step"
        return "blocking"


def _try_lock_from_another_session(url: str, schema: str, saga_id: str) -> bool:
    key = advisory_lock_key(saga_id, schema)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            got = bool(conn.execute(select(func.pg_try_advisory_lock(key))).scalar_one())
            if got:
                conn.execute(select(func.pg_advisory_unlock(key)))
            return got
    finally:
        engine.dispose()


@dataclass
class MidStep:
    """Saga ``held-1`` blocked inside its second step, run by ``engine`` in ``thread``."""

    engine: SagaEngine
    url: str
    schema: str
    thread: threading.Thread
    outcome: list[object]


class TestASecondRunInAnotherThread:
    @pytest.fixture
    def mid_step(self, installed: tuple[str, str]) -> Iterator[MidStep]:
        url, schema = installed
        entered.clear()
        release.clear()
        engine = SagaEngine(url, schema=schema)
        outcome: list[object] = []
        first = threading.Thread(target=lambda: outcome.append(
            engine.run(HeldOpen, Hold("1"), saga_id="held-1", idempotency_key="k-1")))
        first.start()
        try:
            assert entered.wait(30)
            yield MidStep(engine, url, schema, first, outcome)
        finally:
            release.set()
            first.join(30)
            engine.close()

    def test_raises_saga_locked_error_while_the_first_is_mid_step(self, mid_step: MidStep) -> None:
        with pytest.raises(SagaLockedError) as info:
            mid_step.engine.run(HeldOpen, Hold("1"), saga_id="held-1", idempotency_key="k-1")
        assert str(info.value) == (
            "saga 'held-1' is being run by another live executor; wait for it to finish, or let a "
            "worker resume it if that executor dies")
        assert info.value.code == "TRANSACTION_LOCKED"

    def test_the_lock_is_free_once_the_first_run_finishes(self, mid_step: MidStep) -> None:
        assert not _try_lock_from_another_session(mid_step.url, mid_step.schema, "held-1")
        release.set()
        mid_step.thread.join(30)
        assert [getattr(o, "status", o) for o in mid_step.outcome] == ["completed"]
        assert _try_lock_from_another_session(mid_step.url, mid_step.schema, "held-1")
        again = mid_step.engine.run(HeldOpen, Hold("1"), saga_id="held-1", idempotency_key="k-1")
        assert again.results == {"first": "first", "blocking": "blocking"}


class Quick(Saga[Hold], name="tests.pg.quick"):
    @step(idempotency_key="only-{hold_id}")
    def only(self) -> str:
        return "only"


def test_the_same_saga_id_in_another_schema_is_another_saga(installed: tuple[str, str]) -> None:
    url, schema = installed
    other = f"{schema}_b"
    entered.clear()
    release.clear()
    blocked = SagaEngine(url, schema=schema)
    thread = threading.Thread(target=lambda: blocked.run(HeldOpen, Hold("1"), saga_id="held-1",
                                                         idempotency_key="k-1"))
    thread.start()
    try:
        assert entered.wait(30)
        sagadsl_migrate(url, schema=other)
        neighbour = SagaEngine(url, schema=other)
        try:
            # Advisory locks are per database; the claim must still be per schema.
            result = neighbour.run(Quick, Hold("1"), saga_id="held-1", idempotency_key="k-1")
        finally:
            neighbour.close()
        assert result.results == {"only": "only"}
    finally:
        release.set()
        thread.join(30)
        blocked.close()
        drop = create_engine(url)
        with drop.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{other}" CASCADE')
        drop.dispose()


@dataclass
class OtherSession:
    """An engine on ``installed``, and another session that can hold a saga's claim."""

    engine: SagaEngine
    conn: Connection
    schema: str

    def hold(self, saga_id: str) -> None:
        self.conn.execute(select(func.pg_advisory_lock(advisory_lock_key(saga_id, self.schema))))

    def release(self, saga_id: str) -> None:
        self.conn.execute(select(func.pg_advisory_unlock(advisory_lock_key(saga_id, self.schema))))


@pytest.fixture
def other_session(installed: tuple[str, str]) -> Iterator[OtherSession]:
    url, schema = installed
    holder = create_engine(url)
    engine = SagaEngine(url, schema=schema)
    try:
        with holder.connect() as conn:
            yield OtherSession(engine, conn, schema)
    finally:
        engine.close()
        holder.dispose()


def test_a_new_saga_whose_id_another_session_claims_is_refused_and_not_created(
        other_session: OtherSession) -> None:
    engine = other_session.engine
    other_session.hold("new-1")
    # The claim and the saga row are one statement: refused, it writes nothing.
    with pytest.raises(SagaLockedError, match="'new-1' is being run by another live executor"):
        engine.run(Quick, Hold("1"), saga_id="new-1", idempotency_key="k-1")
    assert engine.get("new-1") is None

    other_session.release("new-1")
    # Once the claim is free the same call creates and runs it.
    assert engine.run(Quick, Hold("1"), saga_id="new-1", idempotency_key="k-1").results == {"only": "only"}


def test_a_claim_released_between_the_create_and_the_retry_still_creates_the_saga(
        other_session: OtherSession, monkeypatch: pytest.MonkeyPatch) -> None:
    other_session.hold("new-2")
    take = AdvisoryClaim.take

    def released_first(self: AdvisoryClaim, conn: Connection) -> None:
        # The creating statement found the claim taken; its holder lets go
        # without having created the saga.
        other_session.release("new-2")
        take(self, conn)

    monkeypatch.setattr(AdvisoryClaim, "take", released_first)
    result = other_session.engine.run(Quick, Hold("2"), saga_id="new-2", idempotency_key="k-2")

    assert result.results == {"only": "only"}
    assert other_session.engine.get("new-2") is not None


# -- a take-over in the moment a saga ends or is cancelled ------------------------------

#: What the steps of Pair did, in order.
pair_effects: list[str] = []


@dataclass
class PairJob:
    job_id: str


class Pair(Saga[PairJob], name="tests.pg.pair"):
    @step(idempotency_key="first-{job_id}")
    def first(self) -> str:
        pair_effects.append("first")
        return "1"

    @step(idempotency_key="second-{job_id}")
    def second(self, first: str) -> str:
        pair_effects.append("second")
        return first + "2"


def _advisory_locks_on(conn: Connection, schema: str, saga_id: str) -> int:
    key = advisory_lock_key(saga_id, schema)
    return int(conn.exec_driver_sql(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND ((classid::bigint << 32) | objid::bigint) = %(key)s", {"key": key}).scalar_one())


def test_a_take_over_while_the_final_commit_lands_runs_no_step_again(installed: tuple[str, str]) -> None:
    # The commit that ends a saga releases its claim in the same statement,
    # a moment before other sessions see that commit: long enough, behind a
    # slow disk or a synchronous standby, for another executor to take the
    # claim and read the saga as it was. A deferred trigger that sleeps at
    # commit time holds that moment open.
    url, schema = installed
    pair_effects.clear()
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE FUNCTION "{schema}".slow_commit() RETURNS trigger LANGUAGE plpgsql '
                                 "AS $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$")
            conn.exec_driver_sql(f'CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON "{schema}".sagadsl_workflows '
                                 "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.status = 'completed') "
                                 f'EXECUTE FUNCTION "{schema}".slow_commit()')
        with SagaEngine(SqlStorage(url, schema=schema)) as first, \
                SagaEngine(SqlStorage(url, schema=schema)) as second, admin.connect() as watcher:
            outcome: dict[str, object] = {}
            runner = threading.Thread(target=lambda: outcome.update(
                result=first.run(Pair, PairJob("j"), saga_id="j", idempotency_key="j")))
            runner.start()
            for _ in range(3000):
                if pair_effects == ["first", "second"] and not _advisory_locks_on(watcher, schema, "j"):
                    break
                threading.Event().wait(0.001)
            assert first.get("j").status == WorkflowStatus.PENDING  # type: ignore[union-attr]

            taken_over = second.resume("j")

            runner.join(30)
        assert taken_over.status == WorkflowStatus.COMPLETED
        assert getattr(outcome.get("result"), "status", None) == WorkflowStatus.COMPLETED
        assert pair_effects == ["first", "second"]
    finally:
        admin.dispose()


def test_a_cancel_committed_between_a_take_over_s_read_and_its_claim_wins(installed: tuple[str, str]) -> None:
    # A cancel of a waiting saga ends it without the claim. A worker that
    # read the saga before that commit, and counts its take-over after it,
    # must not drive what it read.
    from sagadsl import SagaCancelledError

    url, schema = installed
    pair_effects.clear()
    admin = create_engine(url)
    try:
        with SagaEngine(SqlStorage(url, schema=schema)) as canceller, \
                SagaEngine(SqlStorage(url, schema=schema)) as worker, admin.connect() as blocker:
            canceller.submit(Pair, PairJob("w"), saga_id="w", idempotency_key="w")
            # A row lock held outside orders the two: the cancel queues for it
            # first, the take-over's count second, after the take-over's read.
            blocking = blocker.begin()
            blocker.exec_driver_sql(f'SELECT 1 FROM "{schema}".sagadsl_workflows WHERE id = %(id)s FOR UPDATE',
                                    {"id": "w"})
            outcome: dict[str, object] = {}

            def take_over() -> None:
                try:
                    outcome["resume"] = worker.resume("w")
                except Exception as exc:  # noqa: BLE001 - the test inspects it
                    outcome["resume"] = exc

            cancelling = threading.Thread(target=lambda: outcome.update(cancel=canceller.cancel("w", "not now")))
            cancelling.start()
            threading.Event().wait(0.5)
            taking = threading.Thread(target=take_over)
            taking.start()
            threading.Event().wait(0.5)
            blocking.commit()
            cancelling.join(30)
            taking.join(30)
        assert outcome["cancel"] == "cancelled"
        assert isinstance(outcome["resume"], SagaCancelledError), outcome
        assert pair_effects == []
    finally:
        admin.dispose()
