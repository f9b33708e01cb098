"""Resume (DESIGN §2.1, §2.3, §2.5): finished sagas are never re-run; unfinished ones continue.

An executor that dies mid-step is simulated in-process by a step raising a
``BaseException`` that the runtime does not handle: nothing is recorded for
the interrupted step, and the claim is released as the stack unwinds.
tests/test_crash_resume.py does the same with a real process killed by SIGKILL.
"""

from __future__ import annotations

import datetime as dt
import enum
import threading
import uuid
from dataclasses import dataclass
from decimal import Decimal

import pytest

from sagadsl import (
    Saga,
    SagaEngine,
    SagaFailedError,
    SagaLockedError,
    SagaNotFoundError,
    UnknownSagaError,
    compensates,
    registry,
    step,
)

calls: list[str] = []
crash_at: list[str] = []
fail_at: list[str] = []


@pytest.fixture(autouse=True)
def _fresh() -> None:
    calls.clear()
    crash_at.clear()
    fail_at.clear()


class Crash(BaseException):
    """The executor 'dies' here: no step outcome is written."""


class Carrier(enum.Enum):
    DHL = "dhl"
    UPS = "ups"


@dataclass
class Parcel:
    parcel_id: uuid.UUID
    weight_kg: Decimal
    packed_at: dt.datetime
    carrier: Carrier


@dataclass
class Shipment:
    shipment_id: str


PARCEL = Parcel(uuid.UUID("12345678-1234-5678-1234-567812345678"), Decimal("1.250"),
                dt.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc), Carrier.UPS)


def checkpoint(name: str) -> None:
    calls.append(name)
    if name in crash_at:
        raise Crash(name)
    if name in fail_at:
        raise RuntimeError(f"{name} failed")


class Shipping(Saga[Shipment], name="tests.resume.shipping"):
    @step(idempotency_key="pack-{shipment_id}")
    def pack(self) -> Parcel:
        checkpoint("pack")
        return PARCEL

    @compensates(pack)
    def unpack(self, parcel: Parcel) -> None:
        assert parcel == PARCEL and isinstance(parcel.carrier, Carrier)
        calls.append(f"unpack:{parcel.weight_kg}")

    @step(idempotency_key="label-{shipment_id}")
    async def label(self, pack: Parcel) -> dict[str, uuid.UUID]:
        checkpoint("label")
        # Typed after a resume too: the stored JSON is decoded to Parcel.
        assert isinstance(pack, Parcel) and isinstance(pack.parcel_id, uuid.UUID)
        assert isinstance(pack.weight_kg, Decimal) and isinstance(pack.packed_at, dt.datetime)
        assert pack == PARCEL
        return {"label": pack.parcel_id}

    @compensates(label)
    async def void_label(self, labels: dict[str, uuid.UUID], pack: Parcel) -> None:
        calls.append(f"void_label:{labels['label'].hex[:8]}:{pack.carrier.value}")

    @step(idempotency_key="dispatch-{shipment_id}")
    def dispatch(self, pack: Parcel, label: dict[str, uuid.UUID]) -> str:
        checkpoint("dispatch")
        return f"{pack.carrier.value}:{label['label']}"


def crash_in(engine: SagaEngine, step_name: str, saga_id: str = "s1") -> None:
    crash_at[:] = [step_name]
    with pytest.raises(Crash):
        engine.run(Shipping, Shipment(saga_id), saga_id=saga_id, idempotency_key="k1")
    crash_at.clear()
    calls.clear()


def test_a_crash_leaves_completed_steps_committed_and_the_saga_pending(engine: SagaEngine) -> None:
    crash_in(engine, "label")

    record = engine.get("s1")
    assert record is not None
    assert record.status == "pending"
    assert [(s.name, s.status) for s in record.steps] == [
        ("pack", "completed"), ("label", "pending"), ("dispatch", "pending")]
    assert record.steps[0].result == {"parcel_id": "12345678-1234-5678-1234-567812345678",
                                      "weight_kg": "1.250", "packed_at": "2030-01-02T03:04:05.678000+00:00",
                                      "carrier": "ups"}


def test_running_again_skips_completed_steps_and_reruns_the_interrupted_one(engine: SagaEngine) -> None:
    crash_in(engine, "dispatch")

    result = engine.run(Shipping, Shipment("s1"), saga_id="s1", idempotency_key="k1")

    assert calls == ["dispatch"]
    assert result.status == "completed"
    assert result.results["dispatch"] == f"ups:{PARCEL.parcel_id}"


def test_results_are_decoded_to_their_annotated_types_after_resume(engine: SagaEngine) -> None:
    crash_in(engine, "dispatch")

    result = engine.run(Shipping, Shipment("s1"), saga_id="s1", idempotency_key="k1")

    parcel = result.results["pack"]
    assert parcel == PARCEL
    assert type(parcel.parcel_id) is uuid.UUID and type(parcel.weight_kg) is Decimal
    assert type(parcel.carrier) is Carrier and parcel.packed_at.tzinfo is not None
    assert result.results["label"] == {"label": PARCEL.parcel_id}


def test_steps_completed_before_a_crash_are_compensated_when_a_later_step_fails(
    engine: SagaEngine,
) -> None:
    crash_in(engine, "dispatch")
    fail_at[:] = ["dispatch"]

    with pytest.raises(SagaFailedError):
        engine.run(Shipping, Shipment("s1"), saga_id="s1", idempotency_key="k1")

    assert calls == ["dispatch", "void_label:12345678:ups", "unpack:1.250"]
    record = engine.get("s1")
    assert record is not None and record.status == "failed"


def test_resume_by_id_rebuilds_the_saga_from_its_registered_name(engine: SagaEngine) -> None:
    crash_in(engine, "label")

    result = engine.resume("s1")

    assert calls == ["label", "dispatch"]
    assert result.results["pack"] == PARCEL


def test_a_submitted_saga_runs_every_step_when_run(engine: SagaEngine) -> None:
    engine.submit(Shipping, Shipment("s1"), saga_id="s1", idempotency_key="k1")
    assert calls == []

    result = engine.run(Shipping, Shipment("s1"), saga_id="s1", idempotency_key="k1")

    assert calls == ["pack", "label", "dispatch"]
    assert result.status == "completed"


def test_a_completed_saga_returns_its_stored_outcome_without_running_a_step(engine: SagaEngine) -> None:
    first = engine.run(Shipping, Shipment("s1"), saga_id="s1", idempotency_key="k1")
    calls.clear()

    again = engine.run(Shipping, Shipment("s1"), saga_id="s1", idempotency_key="k1")

    assert calls == []
    assert again == first
    assert again.results["pack"] == PARCEL


def test_a_failed_saga_raises_its_stored_failure_without_running_a_step(engine: SagaEngine) -> None:
    fail_at[:] = ["label"]
    with pytest.raises(SagaFailedError):
        engine.run(Shipping, Shipment("s1"), saga_id="s1", idempotency_key="k1")
    calls.clear()
    fail_at.clear()

    with pytest.raises(SagaFailedError) as info:
        engine.run(Shipping, Shipment("s1"), saga_id="s1", idempotency_key="k1")

    assert calls == []
    assert info.value.step_name == "label"
    assert str(info.value) == ("saga 's1' (tests.resume.shipping) already failed at step 'label': "
                               "RuntimeError: label failed; every completed step was compensated")


def test_resuming_a_saga_whose_class_is_not_registered_raises_unknown_saga(
    engine: SagaEngine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine.submit(Shipping, Shipment("s1"), saga_id="s1", idempotency_key="k1")
    monkeypatch.delitem(registry._by_name, "tests.resume.shipping")

    with pytest.raises(UnknownSagaError) as info:
        engine.resume("s1")

    assert info.value.code == "UNKNOWN_SAGA"
    assert str(info.value) == (
        "no saga class is registered as 'tests.resume.shipping' in this process; import the module "
        "that defines it (saga-admin worker --import MODULE) before resuming")
    record = engine.get("s1")
    assert record is not None and record.status == "pending"
    assert calls == []


def test_resuming_an_unknown_id_raises_not_found(engine: SagaEngine) -> None:
    with pytest.raises(SagaNotFoundError) as info:
        engine.resume("missing")

    assert str(info.value) == "no saga with id 'missing'"
    assert engine.count() == 0


# -- durable before proceeding (§2.1) and one executor (§2.6) ------------------

observed_engine: list[SagaEngine] = []
snapshots: list[list[tuple[str, str, object]]] = []
step_started = threading.Event()
release_step = threading.Event()


class Observed(Saga[Shipment], name="tests.resume.observed"):
    """Each step reads the stored saga through the engine while it runs."""

    def _snapshot(self) -> None:
        record = observed_engine[0].get(self.saga_id)
        assert record is not None and record.status == "pending"
        snapshots.append([(s.name, s.status.value, s.result) for s in record.steps])

    @step(idempotency_key="first-{shipment_id}")
    def first(self) -> str:
        self._snapshot()
        return "one"

    @step(idempotency_key="second-{shipment_id}")
    async def second(self) -> str:
        self._snapshot()
        return "two"

    @step(idempotency_key="third-{shipment_id}")
    def third(self) -> str:
        self._snapshot()
        step_started.set()
        release_step.wait(10)
        return "three"


def test_the_saga_and_each_result_are_committed_before_the_next_step_runs(engine: SagaEngine) -> None:
    observed_engine[:] = [engine]
    snapshots.clear()
    release_step.set()

    engine.run(Observed, Shipment("s1"), saga_id="s1", idempotency_key="k1")

    assert snapshots == [
        [("first", "pending", None), ("second", "pending", None), ("third", "pending", None)],
        [("first", "completed", "one"), ("second", "pending", None), ("third", "pending", None)],
        [("first", "completed", "one"), ("second", "completed", "two"), ("third", "pending", None)],
    ]


def test_a_second_executor_of_a_running_saga_is_refused(engine: SagaEngine) -> None:
    observed_engine[:] = [engine]
    step_started.clear()
    release_step.clear()
    outcome: list[object] = []
    runner = threading.Thread(target=lambda: outcome.append(
        engine.run(Observed, Shipment("s1"), saga_id="s1", idempotency_key="k1")))
    runner.start()
    try:
        assert step_started.wait(10)
        with pytest.raises(SagaLockedError) as info:
            engine.run(Observed, Shipment("s1"), saga_id="s1", idempotency_key="k1")
        assert info.value.code == "TRANSACTION_LOCKED"
    finally:
        release_step.set()
        runner.join(10)

    assert len(outcome) == 1 and getattr(outcome[0], "status") == "completed"
