"""What one saga costs the database on the normal path (DESIGN §4, issue 7).

Counted with SQLAlchemy's own events on the storage's engine, so the test sees
exactly what reaches the driver. Not timed: the benchmarks measure speed.
"""

from __future__ import annotations

import re
import threading
import types
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
from sqlalchemy import event

from sagadsl import Saga, SagaCancelledError, SagaEngine, compensates, step
from sagadsl.storage import SqlStorage


@dataclass
class Parcel:
    parcel_id: str


class Ship(Saga[Parcel], name="tests.statement_count.ship"):
    @step(idempotency_key="label-{parcel_id}")
    def label(self) -> str:
        return f"label-{self.input.parcel_id}"

    @compensates(label)
    def void_label(self, label: str) -> None:
        pass

    @step(idempotency_key="pick-{parcel_id}")
    def pick(self, label: str) -> int:
        return 3

    @step(idempotency_key="dispatch-{parcel_id}")
    async def dispatch(self, pick: int) -> dict[str, int]:
        return {"boxes": pick}


class PivotShip(Saga[Parcel], name="tests.statement_count.pivot_ship"):
    @step(idempotency_key="hold-{parcel_id}")
    def hold(self) -> str:
        return "h"

    @compensates(hold)
    def unhold(self) -> None:
        pass

    @step(idempotency_key="capture-{parcel_id}", pivot=True)
    def capture(self, hold: str) -> str:
        return "c"

    @step(idempotency_key="notify-{parcel_id}")
    def notify(self, capture: str) -> str:
        return "n"


#: Opened by the test once it has cancelled the saga whose second step waits on it.
pack_gate = threading.Event()
pack_entered = threading.Event()


class Pack(Saga[Parcel], name="tests.statement_count.pack"):
    @step(idempotency_key="box-{parcel_id}")
    def box(self) -> str:
        return "b"

    @compensates(box)
    def unbox(self) -> None:
        pass

    @step(idempotency_key="tape-{parcel_id}")
    def tape(self, box: str) -> str:
        pack_entered.set()
        assert pack_gate.wait(30)
        return "t"

    @compensates(tape)
    def untape(self) -> None:
        pass

    @step(idempotency_key="stamp-{parcel_id}")
    def stamp(self, tape: str) -> str:
        return "s"


def _numbered_step(i: int) -> Any:
    def run(self: Saga[Parcel]) -> int:
        return i

    run.__name__ = run.__qualname__ = f"step_{i:03d}"
    return step(idempotency_key=f"step{i}-{{parcel_id}}")(run)


HundredSteps: type[Saga[Parcel]] = types.new_class(
    "HundredSteps", (Saga[Parcel],), {"name": "tests.statement_count.hundred"},
    lambda ns: ns.update({f"step_{i:03d}": _numbered_step(i) for i in range(100)}, __module__=__name__),
)

#: The only SELECTs allowed on the normal path: claiming and releasing the
#: PostgreSQL session advisory lock.
_ADVISORY_CALL = re.compile(r"^\s*SELECT\s+pg_(try_)?advisory_(un)?lock(_all)?\(", re.IGNORECASE)


_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)


class Traffic:
    """Statements and commits seen on one storage's engine.

    A commit is a transaction that wrote: a COMMIT after writes, or a write
    statement run in autocommit mode, which is its own transaction.
    """

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.commits = 0
        #: Commits that were a single statement in autocommit mode.
        self.single_statement_commits = 0

    def reads(self) -> list[str]:
        return [s for s in self.statements
                if s.lstrip().upper().startswith("SELECT") and not _ADVISORY_CALL.match(s)]


@pytest.fixture
def storage(durable_url: tuple[str, str | None]) -> Iterator[SqlStorage]:
    url, schema = durable_url
    store = SqlStorage(url, schema=schema)
    yield store
    store.close()


@pytest.fixture
def engine(storage: SqlStorage) -> Iterator[SagaEngine]:
    eng = SagaEngine(storage)
    yield eng
    eng.close()


@pytest.fixture
def traffic(storage: SqlStorage) -> Iterator[Traffic]:
    seen = Traffic()

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.statements.append(statement)
        if _WRITE.match(statement):
            if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
                seen.commits += 1
                seen.single_statement_commits += 1
            else:
                conn.info["sagadsl_test_wrote"] = True

    def on_commit(conn: Any) -> None:
        if conn.info.pop("sagadsl_test_wrote", False):
            seen.commits += 1

    def on_rollback(conn: Any) -> None:
        conn.info.pop("sagadsl_test_wrote", None)

    listeners = [("before_cursor_execute", on_execute), ("commit", on_commit), ("rollback", on_rollback)]
    for name, fn in listeners:
        event.listen(storage.engine, name, fn)
    yield seen
    for name, fn in listeners:
        event.remove(storage.engine, name, fn)


def test_a_three_step_saga_costs_four_commits(engine: SagaEngine, traffic: Traffic) -> None:
    result = engine.run(Ship, Parcel("p-1"), saga_id="p-1", idempotency_key="p-1")

    assert result.status == "completed"
    assert traffic.commits == 4, "\n".join(traffic.statements)


@pytest.mark.parametrize("durable_backend", ["postgres"])
def test_on_postgresql_each_commit_is_one_statement(engine: SagaEngine, traffic: Traffic) -> None:
    engine.run(Ship, Parcel("p-1"), saga_id="p-1", idempotency_key="p-1")

    # Claim and create in one statement, then three step commits, the last
    # of which also releases the claim: four round trips, none of them BEGIN
    # or COMMIT.
    assert traffic.single_statement_commits == 4
    assert len(traffic.statements) == 4, "\n".join(traffic.statements)
    assert "pg_try_advisory_lock" in traffic.statements[0]
    assert "pg_advisory_unlock_all" in traffic.statements[-1]


@pytest.mark.parametrize("durable_backend", ["postgres"])
def test_taking_over_a_submitted_saga_reads_it_once(engine: SagaEngine, traffic: Traffic) -> None:
    engine.submit(Ship, Parcel("p-1"), saga_id="p-1", idempotency_key="p-1")
    traffic.statements.clear()

    engine.resume("p-1")

    # The claim, the saga row and its step rows, then the counted take-over
    # (which returns the row's version): nothing read twice.
    assert len(traffic.reads()) == 2, "\n".join(traffic.statements)
    assert "pg_try_advisory_lock" in traffic.statements[0]


def test_a_three_step_saga_reads_nothing(engine: SagaEngine, traffic: Traffic) -> None:
    engine.run(Ship, Parcel("p-1"), saga_id="p-1", idempotency_key="p-1")

    assert any(s.lstrip().upper().startswith(("INSERT", "WITH", "UPDATE")) for s in traffic.statements)
    assert traffic.reads() == []


def test_a_hundred_step_saga_costs_one_commit_per_step_and_one_more(engine: SagaEngine,
                                                                    traffic: Traffic) -> None:
    engine.run(HundredSteps, Parcel("p-1"), saga_id="p-1", idempotency_key="p-1")

    assert traffic.commits == 101
    assert traffic.reads() == []


def test_statements_per_step_do_not_grow_with_the_number_of_steps(engine: SagaEngine,
                                                                  traffic: Traffic) -> None:
    engine.run(Ship, Parcel("p-1"), saga_id="p-1", idempotency_key="p-1")
    three = len(traffic.statements)
    traffic.statements.clear()

    engine.run(HundredSteps, Parcel("p-2"), saga_id="p-2", idempotency_key="p-2")
    hundred = len(traffic.statements)

    # Both sagas pay the same for their first commit and their last, so
    # 97 more steps must cost 97 times what one step commit costs.
    per_step, remainder = divmod(hundred - three, 97)
    assert remainder == 0
    assert 1 <= per_step <= 3


def test_a_pivot_saga_costs_one_commit_more_for_its_point_of_no_return(engine: SagaEngine,
                                                                      traffic: Traffic) -> None:
    engine.run(PivotShip, Parcel("p-1"), saga_id="p-1", idempotency_key="p-1")

    # Create, three steps, and the commit that orders the pivot's start against a cancel.
    assert traffic.commits == 5, "\n".join(traffic.statements)
    assert traffic.reads() == []


def test_a_running_saga_learns_of_a_cancel_from_its_own_commits(
        engine: SagaEngine, traffic: Traffic, durable_url: tuple[str, str | None]) -> None:
    pack_gate.clear()
    pack_entered.clear()
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            engine.run(Pack, Parcel("p-1"), saga_id="p-1", idempotency_key="p-1")
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    assert pack_entered.wait(30)
    url, schema = durable_url
    with SagaEngine(SqlStorage(url, schema=schema)) as other:  # another connection pool, not counted
        assert other.cancel("p-1", "no longer needed") == "requested"
    pack_gate.set()
    runner.join(30)

    assert isinstance(outcome.get("error"), SagaCancelledError)
    # Create, box, tape (whose commit returns the cancel), untape, unbox (ends it cancelled).
    assert traffic.commits == 5, "\n".join(traffic.statements)
    assert traffic.reads() == []


def test_a_saga_with_transactional_steps_still_costs_one_commit_per_step_and_one_more(
        engine: SagaEngine, traffic: Traffic, storage: SqlStorage) -> None:
    from tests.transactional_sagas import NewOrder, PlaceOrder, app_metadata

    app_metadata.create_all(storage.engine)
    traffic.commits = 0
    traffic.statements.clear()
    engine.run(PlaceOrder, NewOrder("o-1"), saga_id="o-1", idempotency_key="o-1")

    # Create, then each of the three steps: the two transactional ones commit
    # their own INSERT in the same transaction as their completion.
    assert traffic.commits == 4, "\n".join(traffic.statements)
    assert traffic.reads() == []
