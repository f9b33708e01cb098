"""Resuming a saga after its class changed: what is compatible, what is refused (issue 6).

Each test deploys a first version of a saga, lets a process "die" in the
middle of it (a step raises ``Crash``, a ``BaseException``: nothing after it
is written, so the row stays ``pending`` with the earlier steps committed),
then deploys a changed class under the same saga name and resumes the saga
from a fresh engine, as a restarted process would.

The changed class is written as a second class statement with the same
class name in the same test: same ``name=`` and same ``module:qualname``,
which the registry accepts as a redeployment of the same class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from sagadsl import DefinitionChangedError, Saga, SagaEngine, WorkflowRecord, step
from sagadsl.testing import FakeClock


class Crash(BaseException):
    """The process dies inside a step: no failure is recorded, nothing is compensated."""


@dataclass
class Order:
    order_id: str


#: Steps that crash when they run.
crash_in: set[str] = set()
#: (step, version) of every step body that ran.
ran: list[tuple[str, str]] = []

FIX = ('ship incompatible changes under a new saga name (class X(Saga[T], name="...v2")) and let '
       "running instances finish on the old class")


def work(step_name: str, version: str) -> str:
    ran.append((step_name, version))
    if step_name in crash_in:
        raise Crash(step_name)
    return f"{step_name}@{version}"


@pytest.fixture(autouse=True)
def _reset() -> None:
    crash_in.clear()
    ran.clear()


Deploy = Callable[[], SagaEngine]


@pytest.fixture
def deploy(durable_url: tuple[str, str | None]) -> Iterator[Deploy]:
    """Start an engine on the test database, as a freshly started process would."""
    url, schema = durable_url
    engines: list[SagaEngine] = []

    def start() -> SagaEngine:
        engine = SagaEngine(url, schema=schema, clock=FakeClock())
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        engine.close()


def crash_during(engine: SagaEngine, saga_cls: type[Saga[Order]], step_name: str) -> WorkflowRecord:
    """Run saga ``o-1`` until ``step_name`` kills the process; return the stored row."""
    crash_in.add(step_name)
    with pytest.raises(Crash):
        engine.run(saga_cls, Order("o-1"), saga_id="o-1", idempotency_key="k-1")
    crash_in.clear()
    ran.clear()
    record = engine.get("o-1")
    assert record is not None and record.status == "pending"
    return record


def steps_of(record: WorkflowRecord | None) -> list[tuple[str, str]]:
    assert record is not None
    return [(s.name, s.status.value) for s in record.steps]


# -- compatible changes -------------------------------------------------------------


def test_steps_appended_at_the_end_run_and_get_rows(deploy: Deploy) -> None:
    class Orders(Saga[Order], name="tests.evolution.append"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v1")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v1")

    before = crash_during(deploy(), Orders, "charge")
    assert steps_of(before) == [("reserve", "completed"), ("charge", "pending")]

    class Orders(Saga[Order], name="tests.evolution.append"):  # type: ignore[no-redef]
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v2")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v2")

        @step(idempotency_key="ship-{order_id}")
        async def ship(self, charge: str) -> str:
            return work("ship", "v2")

    engine = deploy()
    result = engine.resume("o-1")

    assert result.results == {"reserve": "reserve@v1", "charge": "charge@v2", "ship": "ship@v2"}
    assert ran == [("charge", "v2"), ("ship", "v2")]
    after = engine.get("o-1")
    assert after is not None and after.status == "completed"
    assert after.fingerprint == Orders.definition.fingerprint != before.fingerprint
    assert [(s.name, s.position, s.idempotency_key, s.status.value) for s in after.steps] == [
        ("reserve", 0, "reserve-o-1", "completed"),
        ("charge", 1, "charge-o-1", "completed"),
        ("ship", 2, "ship-o-1", "completed"),
    ]


def test_a_step_added_after_the_last_completed_step_is_compatible(deploy: Deploy) -> None:
    class Orders(Saga[Order], name="tests.evolution.insert_after_completed"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v1")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v1")

    crash_during(deploy(), Orders, "charge")

    class Orders(  # type: ignore[no-redef]
            Saga[Order], name="tests.evolution.insert_after_completed"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v2")

        @step(idempotency_key="fraud-check-{order_id}")
        def fraud_check(self) -> str:
            return work("fraud_check", "v2")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v2")

    engine = deploy()
    engine.resume("o-1")

    assert ran == [("fraud_check", "v2"), ("charge", "v2")]
    after = engine.get("o-1")
    assert after is not None
    # Stored positions follow the new declaration order.
    assert [(s.name, s.position) for s in after.steps] == [
        ("reserve", 0), ("fraud_check", 1), ("charge", 2)]


def test_a_changed_step_body_is_compatible(deploy: Deploy) -> None:
    class Orders(Saga[Order], name="tests.evolution.body"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v1")

        @step(idempotency_key="charge-{order_id}")
        def charge(self, reserve: str) -> str:
            return work("charge", "v1")

    before = crash_during(deploy(), Orders, "charge")

    class Orders(Saga[Order], name="tests.evolution.body"):  # type: ignore[no-redef]
        @step(idempotency_key="reserve-{order_id}")
        async def reserve(self) -> str:
            return work("reserve", "v2")

        @step(idempotency_key="charge-{order_id}")
        def charge(self, reserve: str) -> str:
            return work("charge", "v2") + f" after {reserve}"

    assert Orders.definition.fingerprint == before.fingerprint
    result = deploy().resume("o-1")

    # The completed step keeps its stored result; the pending one runs the new body.
    assert result.results == {"reserve": "reserve@v1", "charge": "charge@v2 after reserve@v1"}
    assert ran == [("charge", "v2")]


def test_removing_a_step_that_never_ran_is_compatible(deploy: Deploy) -> None:
    class Orders(Saga[Order], name="tests.evolution.remove_pending"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v1")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v1")

        @step(idempotency_key="ship-{order_id}")
        def ship(self) -> str:
            return work("ship", "v1")

    crash_during(deploy(), Orders, "charge")

    class Orders(Saga[Order], name="tests.evolution.remove_pending"):  # type: ignore[no-redef]
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v2")

        @step(idempotency_key="ship-{order_id}")
        def ship(self) -> str:
            return work("ship", "v2")

    engine = deploy()
    result = engine.resume("o-1")

    assert result.results == {"reserve": "reserve@v1", "ship": "ship@v2"}
    assert ran == [("ship", "v2")]
    after = engine.get("o-1")
    assert after is not None
    assert [(s.name, s.position, s.status.value) for s in after.steps] == [
        ("reserve", 0, "completed"), ("ship", 1, "completed")]


# -- incompatible changes -----------------------------------------------------------


def test_renaming_a_completed_step_is_refused(deploy: Deploy) -> None:
    class Orders(Saga[Order], name="tests.evolution.rename"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v1")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v1")

    crash_during(deploy(), Orders, "charge")

    class Orders(Saga[Order], name="tests.evolution.rename"):  # type: ignore[no-redef]
        @step(idempotency_key="reserve-{order_id}")
        def hold_stock(self) -> str:
            return work("hold_stock", "v2")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v2")

    with pytest.raises(DefinitionChangedError) as info:
        deploy().resume("o-1")

    assert str(info.value) == (
        "saga 'o-1' (tests.evolution.rename): step 'reserve' is completed in the stored saga but "
        f"Orders no longer has it (removed or renamed); {FIX}")
    assert info.value.code == "DEFINITION_CHANGED"
    assert ran == []


def test_removing_a_completed_step_is_refused(deploy: Deploy) -> None:
    class Orders(Saga[Order], name="tests.evolution.remove_completed"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v1")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v1")

    crash_during(deploy(), Orders, "charge")

    class Orders(Saga[Order], name="tests.evolution.remove_completed"):  # type: ignore[no-redef]
        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v2")

    with pytest.raises(DefinitionChangedError) as info:
        deploy().resume("o-1")

    assert str(info.value) == (
        "saga 'o-1' (tests.evolution.remove_completed): step 'reserve' is completed in the stored "
        f"saga but Orders no longer has it (removed or renamed); {FIX}")
    assert ran == []


def test_reordering_completed_steps_is_refused(deploy: Deploy) -> None:
    class Orders(Saga[Order], name="tests.evolution.reorder"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v1")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v1")

        @step(idempotency_key="ship-{order_id}")
        def ship(self) -> str:
            return work("ship", "v1")

    crash_during(deploy(), Orders, "ship")

    class Orders(Saga[Order], name="tests.evolution.reorder"):  # type: ignore[no-redef]
        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v2")

        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v2")

        @step(idempotency_key="ship-{order_id}")
        def ship(self) -> str:
            return work("ship", "v2")

    with pytest.raises(DefinitionChangedError) as info:
        deploy().resume("o-1")

    assert str(info.value) == (
        "saga 'o-1' (tests.evolution.reorder): steps that already ran were reordered "
        f"(reserve, charge became charge, reserve); {FIX}")
    assert ran == []


def test_inserting_a_step_before_a_completed_one_is_refused(deploy: Deploy) -> None:
    class Orders(Saga[Order], name="tests.evolution.insert_before_completed"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v1")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v1")

        @step(idempotency_key="ship-{order_id}")
        def ship(self) -> str:
            return work("ship", "v1")

    crash_during(deploy(), Orders, "ship")

    class Orders(  # type: ignore[no-redef]
            Saga[Order], name="tests.evolution.insert_before_completed"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v2")

        @step(idempotency_key="fraud-check-{order_id}")
        def fraud_check(self) -> str:
            return work("fraud_check", "v2")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v2")

        @step(idempotency_key="ship-{order_id}")
        def ship(self) -> str:
            return work("ship", "v2")

    with pytest.raises(DefinitionChangedError) as info:
        deploy().run(Orders, Order("o-1"), saga_id="o-1", idempotency_key="k-1")

    assert str(info.value) == (
        "saga 'o-1' (tests.evolution.insert_before_completed): new step 'fraud_check' was inserted "
        f"before step 'charge', which already ran; add new steps after it, or {FIX}")
    assert ran == []


def test_making_a_completed_step_wait_for_one_that_never_ran_is_refused(deploy: Deploy) -> None:
    class Orders(Saga[Order], name="tests.evolution.new_dependency"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v1")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v1")

    crash_during(deploy(), Orders, "charge")

    class Orders(Saga[Order], name="tests.evolution.new_dependency"):  # type: ignore[no-redef]
        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v2")

        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v2")

    with pytest.raises(DefinitionChangedError) as info:
        deploy().resume("o-1")

    assert str(info.value) == (
        "saga 'o-1' (tests.evolution.new_dependency): step 'reserve' already ran but now runs "
        f"after 'charge', which has not run; {FIX}")
    assert ran == []


def test_a_refused_change_leaves_the_stored_saga_as_it_was(deploy: Deploy) -> None:
    class Orders(Saga[Order], name="tests.evolution.untouched"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v1")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v1")

    before = crash_during(deploy(), Orders, "charge")

    class Orders(Saga[Order], name="tests.evolution.untouched"):  # type: ignore[no-redef]
        @step(idempotency_key="reserve-{order_id}")
        def hold_stock(self) -> str:
            return work("hold_stock", "v2")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v2")

        @step(idempotency_key="ship-{order_id}")
        def ship(self) -> str:
            return work("ship", "v2")

    engine = deploy()
    with pytest.raises(DefinitionChangedError):
        engine.resume("o-1")

    after = engine.get("o-1")
    assert after is not None
    assert (after.status, after.fingerprint, after.error) == ("pending", before.fingerprint, None)
    assert steps_of(after) == steps_of(before)
    # The claim was released: the saga can be resumed again (by a worker still on the old class).
    with pytest.raises(DefinitionChangedError):
        engine.resume("o-1")


# -- shipping an incompatible version ------------------------------------------------


def test_a_new_saga_name_runs_beside_in_flight_instances_of_the_old_one(deploy: Deploy) -> None:
    class PlaceOrder(Saga[Order], name="tests.evolution.place_order.v1"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v1")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v1")

    crash_during(deploy(), PlaceOrder, "charge")

    class PlaceOrderV2(Saga[Order], name="tests.evolution.place_order.v2"):
        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v2")

        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v2")

    engine = deploy()
    old = engine.resume("o-1")
    new = engine.run(PlaceOrderV2, Order("o-2"), saga_id="o-2", idempotency_key="k-2")

    assert old.results == {"reserve": "reserve@v1", "charge": "charge@v1"}
    assert new.results == {"charge": "charge@v2", "reserve": "reserve@v2"}
    # Drained: no instance of the old version is still in flight, so it can be deleted.
    in_flight = engine.query(status=["pending", "compensating", "dead_letter"],
                             saga_name="tests.evolution.place_order.v1")
    assert in_flight.total == 0


def test_a_resume_left_with_no_step_to_run_completes_the_saga(deploy: Deploy) -> None:
    class Orders(Saga[Order], name="tests.evolution.nothing_left"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v1")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v1")

    crash_during(deploy(), Orders, "charge")

    class Orders(Saga[Order], name="tests.evolution.nothing_left"):  # type: ignore[no-redef]
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v2")

    engine = deploy()
    assert engine.resume("o-1").results == {"reserve": "reserve@v1"}
    after = engine.get("o-1")
    assert after is not None and after.status == "completed"
    assert engine.storage.recoverable(FakeClock().now(), 10) == []


def test_a_submitted_saga_resumed_on_a_changed_class_stores_the_new_positions(deploy: Deploy) -> None:
    class Orders(Saga[Order], name="tests.evolution.submitted_then_changed"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v1")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v1")

    deploy().submit(Orders, Order("o-1"), saga_id="o-1", idempotency_key="k-1")

    class Orders(Saga[Order], name="tests.evolution.submitted_then_changed"):  # type: ignore[no-redef]
        @step(idempotency_key="check-{order_id}")
        def check(self) -> str:
            return work("check", "v2")

        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str:
            return work("reserve", "v2")

        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> str:
            return work("charge", "v2")

    engine = deploy()
    engine.resume("o-1")
    after = engine.get("o-1")
    assert after is not None
    assert [(s.name, s.position) for s in after.steps] == [("check", 0), ("reserve", 1), ("charge", 2)]
    assert ran == [("check", "v2"), ("reserve", "v2"), ("charge", "v2")]
