"""Any failure point in any step graph: checked against a reference model (issue 6).

Hypothesis draws a DAG of up to 10 steps (each step depends on a random set
of earlier ones, or implicitly on the one before it), decides which steps
have a compensation and which run on the event loop or the thread pool, and
picks a failure point: no failure, a failing step, or a failing step and a
failing compensation. The saga runs on ``InMemoryStorage`` with a
``FakeClock`` (compensation backoff costs nothing); a trace of what ran is
then compared with what the model allows.

Which independent steps start before the failure is noticed depends on
scheduling, so the model takes the set of steps that completed from the run
and checks that it is one the graph allows.
"""

from __future__ import annotations

import asyncio
import itertools
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagadsl import (
    CompensationFailedError,
    CompensationPolicy,
    Saga,
    SagaEngine,
    SagaEvent,
    SagaEvents,
    SagaFailedError,
    compensates,
    step,
)
from sagadsl.storage import InMemoryStorage
from sagadsl.testing import FakeClock

COMPENSATION_ATTEMPTS = CompensationPolicy().max_attempts


# -- the drawn scenario -----------------------------------------------------------


@dataclass(frozen=True)
class StepShape:
    index: int
    #: None: no ``after=``, so the step depends on the one declared before it.
    after: tuple[int, ...] | None
    compensated: bool
    is_async: bool

    @property
    def name(self) -> str:
        return f"s{self.index}"

    @property
    def deps(self) -> tuple[int, ...]:
        if self.after is None:
            return (self.index - 1,) if self.index else ()
        return self.after


@dataclass(frozen=True)
class Scenario:
    steps: tuple[StepShape, ...]
    failing_step: int | None
    failing_compensation: int | None

    def ancestors(self, i: int) -> set[int]:
        out: set[int] = set()
        todo = list(self.steps[i].deps)
        while todo:
            d = todo.pop()
            if d not in out:
                out.add(d)
                todo.extend(self.steps[d].deps)
        return out

    def descendants(self, i: int) -> set[int]:
        return {s.index for s in self.steps if i in self.ancestors(s.index)}


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(min_value=1, max_value=10))
    shapes = []
    for i in range(n):
        implicit = draw(st.booleans()) if i else False
        earlier = st.sets(st.integers(0, i - 1)) if i else st.just(set[int]())
        after = None if implicit else tuple(sorted(draw(earlier)))
        compensated, is_async = draw(st.booleans()), draw(st.booleans())
        shapes.append(StepShape(i, after, compensated=compensated, is_async=is_async))
    failing_step = draw(st.none() | st.integers(0, n - 1))
    with_compensation = [s.index for s in shapes if s.compensated]
    failing_compensation = None
    if with_compensation:
        failing_compensation = draw(st.none() | st.sampled_from(with_compensation))
    return Scenario(tuple(shapes), failing_step, failing_compensation)


# -- building and running the saga ----------------------------------------------


class StepFailed(Exception):
    pass


class UndoFailed(Exception):
    pass


class Trace:
    """What happened, in order: (kind, step index)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, int]] = []

    def add(self, kind: str, index: int) -> None:
        self.entries.append((kind, index))  # list.append is atomic, also from pool threads

    def first(self, kind: str, index: int) -> int:
        return self.entries.index((kind, index))

    def last(self, kind: str, index: int) -> int:
        return max(i for i, entry in enumerate(self.entries) if entry == (kind, index))

    def indices(self, kind: str) -> list[int]:
        return [index for k, index in self.entries if k == kind]

    def has(self, kind: str, index: int) -> bool:
        return (kind, index) in self.entries


def _forward(trace: Trace, index: int, fails: bool, is_async: bool) -> Any:
    def body() -> str:
        if fails:
            trace.add("fail", index)
            raise StepFailed(f"s{index} failed")
        trace.add("end", index)
        return f"r{index}"

    if is_async:
        async def run_async(self: Saga[Any]) -> str:
            trace.add("start", index)
            await asyncio.sleep(0)  # let concurrent steps interleave
            return body()
        return run_async

    def run_sync(self: Saga[Any]) -> str:
        trace.add("start", index)
        return body()
    return run_sync


def _compensation(trace: Trace, index: int, fails: bool, is_async: bool) -> Any:
    def body() -> None:
        trace.add("undo", index)
        if fails:
            raise UndoFailed(f"undo of s{index} failed")
        trace.add("undone", index)

    if is_async:
        async def undo_async(self: Saga[Any]) -> None:
            await asyncio.sleep(0)
            body()
        return undo_async

    def undo_sync(self: Saga[Any]) -> None:
        body()
    return undo_sync


def build_saga(scenario: Scenario, trace: Trace) -> type[Saga[dict[str, int]]]:
    def body(ns: dict[str, Any]) -> None:
        # The same module and qualname every time, so re-registering the name is allowed.
        ns["__module__"] = __name__
        ns["__qualname__"] = "RandomGraph"
        for s in scenario.steps:
            options: dict[str, Any] = {}
            if s.after is not None:
                options["after"] = tuple(f"s{d}" for d in s.after)
            fn = _forward(trace, s.index, s.index == scenario.failing_step, s.is_async)
            ns[s.name] = step(idempotency_key=f"{s.name}-{{saga_id}}", **options)(fn)
            if s.compensated:
                fails = s.index == scenario.failing_compensation
                undo = _compensation(trace, s.index, fails, s.is_async)
                ns[f"undo_{s.name}"] = compensates(s.name)(undo)

    return types.new_class("RandomGraph", (Saga[dict[str, int]],),
                           {"name": "tests.graph_model.random"}, body)


_ids = itertools.count()


@pytest.fixture(scope="module")
def model_engine() -> Iterator[tuple[SagaEngine, list[tuple[str, int]]]]:
    """One in-memory engine for every example; events land in the yielded list."""
    events: list[tuple[str, int]] = []

    def record(event: SagaEvent) -> None:
        assert event.step is not None
        events.append((event.kind, int(event.step[1:])))

    engine = SagaEngine(InMemoryStorage(), clock=FakeClock(),
                        events=SagaEvents(on_step_start=record, on_step_failed=record))
    yield engine, events
    engine.close()


# -- the model ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_any_failure_point_in_any_graph(model_engine: tuple[SagaEngine, list[tuple[str, int]]],
                                        scenario: Scenario) -> None:
    engine, events = model_engine
    events.clear()
    trace = Trace()
    saga_cls = build_saga(scenario, trace)
    saga_id = f"graph-{next(_ids)}"
    n = len(scenario.steps)
    f, g = scenario.failing_step, scenario.failing_compensation

    raised: BaseException | None = None
    try:
        result = engine.run(saga_cls, {"n": n}, saga_id=saga_id, idempotency_key=saga_id)
    except (SagaFailedError, CompensationFailedError) as exc:
        raised = exc
    record = engine.get(saga_id)
    assert record is not None
    stored = {int(s.name[1:]): s.status.value for s in record.steps}

    started = set(trace.indices("start"))
    completed = set(trace.indices("end"))

    # Forward: a step starts only after each of its dependencies returned.
    for i in started:
        for d in scenario.steps[i].deps:
            assert trace.has("end", d) and trace.first("end", d) < trace.first("start", i), (i, d)

    if f is None:
        assert raised is None
        assert result.status == "completed"
        assert result.results == {f"s{i}": f"r{i}" for i in range(n)}
        assert record.status == "completed"
        assert stored == {i: "completed" for i in range(n)}
        assert trace.indices("undo") == []
        return

    # The failing step always becomes ready; its ancestors must have completed,
    # its descendants never became ready, so never ran.
    assert trace.has("fail", f)
    assert scenario.ancestors(f) <= completed
    assert not started & scenario.descendants(f)
    assert completed == started - {f}
    # Nothing is launched once the failure was noticed.
    noticed = events.index(("step_failed", f))
    assert all(kind != "step_start" for kind, _ in events[noticed:])
    # Compensation starts only after every running sibling finished.
    kinds = [kind for kind, _ in trace.entries]
    undo_entries = [i for i, kind in enumerate(kinds) if kind in ("undo", "undone")]
    forward_entries = [i for i, kind in enumerate(kinds) if kind in ("start", "end", "fail")]
    if undo_entries:
        assert max(forward_entries) < min(undo_entries)

    # Every committed step with a compensation is compensated exactly once.
    to_undo = {i for i in completed if scenario.steps[i].compensated}
    assert set(trace.indices("undo")) == to_undo
    for i in to_undo:
        attempts = trace.indices("undo").count(i)
        if i == g:
            assert attempts == COMPENSATION_ATTEMPTS
            assert not trace.has("undone", i)
        else:
            assert attempts == 1 and trace.indices("undone").count(i) == 1
    # ... and never before one of its dependents (direct or transitive).
    for i in to_undo:
        for j in scenario.descendants(i) & to_undo:
            assert trace.last("undo", j) < trace.first("undo", i), (j, i)

    dead = g is not None and g in to_undo
    expected_steps = {}
    for i in range(n):
        if i == f:
            expected_steps[i] = "failed"
        elif i not in completed:
            expected_steps[i] = "pending"
        elif i not in to_undo:
            expected_steps[i] = "completed"
        else:
            expected_steps[i] = "compensation_failed" if i == g else "compensated"
    assert stored == expected_steps
    assert record.error is not None and record.error.step_name == f"s{f}"
    if dead:
        assert isinstance(raised, CompensationFailedError)
        assert record.status == "dead_letter"
        assert record.error.compensation_error is not None
        assert record.error.compensation_error.startswith(f"undo_s{g} (compensating s{g}): ")
    else:
        assert type(raised) is SagaFailedError
        assert isinstance(raised.__cause__, StepFailed)
        assert record.status == "failed"
        assert record.error.compensation_error is None


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios())
def test_the_definition_keeps_the_closures_of_any_graph(scenario: Scenario) -> None:
    definition = build_saga(scenario, Trace()).definition

    for s in scenario.steps:
        assert definition.ancestors[s.name] == {f"s{i}" for i in scenario.ancestors(s.index)}
        assert definition.descendants[s.name] == {f"s{i}" for i in scenario.descendants(s.index)}
