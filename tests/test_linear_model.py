"""Any failure point in any linear saga matches a small reference model (DESIGN §2.4, §2.5).

Hypothesis draws a chain of 1-8 steps (sync or async, with or without a
compensation, itself sync or async), a step that fails (or none) and the
compensations that fail. The engine's executed sequence, final status and
step statuses must equal what the model predicts.
"""

from __future__ import annotations

import tempfile
import threading
import types
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagadsl import (
    CompensationFailedError,
    CompensationPolicy,
    Saga,
    SagaEngine,
    SagaFailedError,
    SagaMeta,
    compensates,
    step,
)
from sagadsl.storage import InMemoryStorage, SqlStorage, Storage
from sagadsl.testing import FakeClock


@dataclass(frozen=True)
class StepShape:
    is_async: bool
    compensation: str | None  # None, "sync" or "async"


@dataclass(frozen=True)
class Scenario:
    steps: tuple[StepShape, ...]
    failing_step: int | None
    failing_compensations: frozenset[int]


@dataclass(frozen=True)
class Prediction:
    trace: list[str]
    status: str
    step_statuses: list[str]


def predict(scenario: Scenario) -> Prediction:
    """The reference model of a linear saga."""
    n, fail = len(scenario.steps), scenario.failing_step
    if fail is None:
        return Prediction([f"s{i}" for i in range(n)], "completed", ["completed"] * n)
    trace = [f"s{i}" for i in range(fail + 1)]
    statuses = ["completed"] * fail + ["failed"] + ["pending"] * (n - fail - 1)
    dead = False
    for i in reversed(range(fail)):
        if scenario.steps[i].compensation is None:
            continue
        trace.append(f"undo{i}:{i * 10}")
        if i in scenario.failing_compensations:
            statuses[i], dead = "compensation_failed", True
        else:
            statuses[i] = "compensated"
    return Prediction(trace, "dead_letter" if dead else "failed", statuses)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    shapes = tuple(draw(st.lists(
        st.builds(StepShape, st.booleans(), st.sampled_from([None, "sync", "async"])),
        min_size=1, max_size=8)))
    failing_step = draw(st.none() | st.integers(0, len(shapes) - 1))
    compensable = [i for i, s in enumerate(shapes[:failing_step or 0]) if s.compensation is not None]
    failing = draw(st.sets(st.sampled_from(compensable))) if compensable else set()
    return Scenario(shapes, failing_step, frozenset(failing))


class Boom(Exception):
    pass


def build_saga(scenario: Scenario, trace: list[str]) -> type[Saga[Any]]:
    """A saga class for ``scenario`` whose steps and compensations append to ``trace``."""
    guard = threading.Lock()

    def record(entry: str) -> None:
        with guard:
            trace.append(entry)

    def make_step(i: int, shape: StepShape) -> Callable[..., Any]:
        def body(self: Saga[Any]) -> int:
            record(f"s{i}")
            if scenario.failing_step == i:
                raise Boom(f"s{i}")
            return i * 10

        async def async_body(self: Saga[Any]) -> int:
            return body(self)

        fn = async_body if shape.is_async else body
        fn.__name__, fn.__qualname__ = f"s{i}", f"Linear.s{i}"
        return step(idempotency_key=f"s{i}-{{saga_id}}",
                    compensation=CompensationPolicy(max_attempts=1))(fn)

    def make_undo(i: int, kind: str) -> Callable[..., Any]:
        def body(self: Saga[Any], value: int) -> None:
            record(f"undo{i}:{value}")
            if i in scenario.failing_compensations:
                raise Boom(f"undo{i}")

        async def async_body(self: Saga[Any], value: int) -> None:
            body(self, value)

        fn = async_body if kind == "async" else body
        fn.__name__, fn.__qualname__ = f"undo{i}", f"Linear.undo{i}"
        return compensates(f"s{i}")(fn)

    namespace: dict[str, Any] = {"__module__": __name__, "__qualname__": "Linear"}
    for i, shape in enumerate(scenario.steps):
        namespace[f"s{i}"] = make_step(i, shape)
        if shape.compensation is not None:
            namespace[f"undo{i}"] = make_undo(i, shape.compensation)
    # Every generated class has the same module and qualified name, so each
    # one replaces the previous under the same registered name.
    cls = types.new_class("Linear", (Saga[Any],), {"name": "tests.linear_model.generated"},
                          lambda body: body.update(namespace))
    assert isinstance(cls, SagaMeta)
    return cast("type[Saga[Any]]", cls)


def check(engine: SagaEngine, scenario: Scenario) -> None:
    trace: list[str] = []
    saga_cls = build_saga(scenario, trace)
    saga_id = uuid.uuid4().hex
    expected = predict(scenario)

    if expected.status == "completed":
        result = engine.run(saga_cls, {}, saga_id=saga_id, idempotency_key="k")
        assert result.results == {f"s{i}": i * 10 for i in range(len(scenario.steps))}
    else:
        error = CompensationFailedError if expected.status == "dead_letter" else SagaFailedError
        with pytest.raises(error) as info:
            engine.run(saga_cls, {}, saga_id=saga_id, idempotency_key="k")
        assert isinstance(info.value, (SagaFailedError, CompensationFailedError))
        assert info.value.step_name == f"s{scenario.failing_step}"

    assert trace == expected.trace
    record = engine.get(saga_id)
    assert record is not None
    assert record.status == expected.status
    assert [s.status for s in record.steps] == expected.step_statuses


@pytest.fixture(scope="module")
def memory_engine() -> Iterator[SagaEngine]:
    engine = SagaEngine(InMemoryStorage(), clock=FakeClock())
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def sqlite_engine() -> Iterator[SagaEngine]:
    with tempfile.TemporaryDirectory() as tmp:
        storage: Storage = SqlStorage(f"sqlite:///{Path(tmp) / 'model.db'}")
        engine = SagaEngine(storage, clock=FakeClock())
        yield engine
        engine.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_linear_sagas_match_the_model_in_memory(memory_engine: SagaEngine, scenario: Scenario) -> None:
    check(memory_engine, scenario)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_linear_sagas_match_the_model_on_sqlite(sqlite_engine: SagaEngine, scenario: Scenario) -> None:
    check(sqlite_engine, scenario)


def test_the_model_itself() -> None:
    shapes = (StepShape(False, "sync"), StepShape(True, None), StepShape(False, "async"),
              StepShape(True, "sync"))
    prediction = predict(Scenario(shapes, failing_step=3, failing_compensations=frozenset({2})))

    assert prediction.trace == ["s0", "s1", "s2", "s3", "undo2:20", "undo0:0"]
    assert prediction.status == "dead_letter"
    assert prediction.step_statuses == ["compensated", "completed", "compensation_failed", "failed"]
