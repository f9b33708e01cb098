"""sagadsl.testing: the pytest plugin, crash injection and the convergence helper."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from sagadsl import (
    CompensationFailedError,
    InMemoryStorage,
    Saga,
    SagaEngine,
    SagaFailedError,
    compensates,
    step,
)
from sagadsl.testing import (
    CrashingStorage,
    CrashPoint,
    FakeClock,
    SimulatedCrash,
    assert_converges,
    explore_crash_points,
)

pytest_plugins = ["pytester"]


# -- a saga calling an idempotent fake service ------------------------------------


@dataclass
class Ledger:
    """A downstream service that deduplicates on the idempotency key, like a real one should."""

    effects: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)

    def apply(self, key: str, what: str) -> str:
        self.calls.append(what)
        if what in self.fail:
            raise RuntimeError(f"{what} refused")
        self.effects.setdefault(key, what)
        return key

    def undo(self, key: str) -> None:
        self.calls.append(f"undo:{key}")
        if f"undo:{key}" in self.fail:
            raise RuntimeError(f"undo of {key} refused")
        self.effects.pop(key, None)

    def reset(self, fail: set[str] | None = None) -> None:
        self.effects.clear()
        self.calls.clear()
        self.fail = set(fail or ())


ledger = Ledger()


@dataclass
class Trip:
    trip_id: str


class BookTrip(Saga[Trip], name="tests.toolkit.book_trip"):
    @step(idempotency_key="flight-{trip_id}")
    def flight(self) -> str:
        return ledger.apply(self.step_key, "flight")

    @compensates(flight)
    def cancel_flight(self, booking: str) -> None:
        ledger.undo(booking)

    @step(idempotency_key="hotel-{trip_id}")
    async def hotel(self) -> str:
        return ledger.apply(self.step_key, "hotel")

    @compensates(hotel)
    async def cancel_hotel(self, booking: str) -> None:
        ledger.undo(booking)

    @step(idempotency_key="car-{trip_id}")
    def car(self) -> str:
        return ledger.apply(self.step_key, "car")


def effects() -> dict[str, str]:
    return dict(ledger.effects)


# -- the plugin ------------------------------------------------------------------------


PLUGIN_TESTS = '''
from sagadsl import InMemoryStorage, MAX_EXECUTION_DURATION, SqlStorage
from sagadsl.testing import CrashPoint, FakeClock, SimulatedCrash
import pytest

def test_clock(saga_clock):
    assert isinstance(saga_clock, FakeClock)
    before = saga_clock.now()
    saga_clock.advance(MAX_EXECUTION_DURATION)
    assert saga_clock.now() - before == MAX_EXECUTION_DURATION

def test_memory_engine(saga_engine, saga_clock):
    assert isinstance(saga_engine.storage, InMemoryStorage)
    assert saga_engine.clock is saga_clock

def test_sqlite_engine(sqlite_saga_engine, tmp_path):
    assert isinstance(sqlite_saga_engine.storage, SqlStorage)
    assert str(tmp_path) in str(sqlite_saga_engine.storage.engine.url)

def test_crash_engine(saga_crash_engine):
    engine = saga_crash_engine(CrashPoint.before("x"))
    assert repr(engine.storage).startswith("CrashingStorage(InMemoryStorage()")
'''


def test_plugin_fixtures_load_through_the_pytest11_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PLUGIN_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_disabling_the_sagadsl_plugin_removes_its_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PLUGIN_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:sagadsl", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(["*fixture 'saga_clock' not found*"])


def test_a_user_test_suite_can_crash_and_resume_a_saga(pytester: pytest.Pytester) -> None:
    pytester.makepyfile('''
        from dataclasses import dataclass
        import pytest
        from sagadsl import Saga, step
        from sagadsl.testing import CrashPoint, SimulatedCrash

        calls = []

        @dataclass
        class Job:
            id: str

        class TwoSteps(Saga[Job], name="user.two_steps"):
            @step(idempotency_key="a-{id}")
            def a(self) -> int:
                calls.append("a")
                return 1

            @step(idempotency_key="b-{id}")
            def b(self, a: int) -> int:
                calls.append("b")
                return a + 1

        def test_resume_after_crash(saga_crash_engine):
            engine = saga_crash_engine(CrashPoint.before("b"))
            with pytest.raises(SimulatedCrash):
                engine.run(TwoSteps, Job("j"), saga_id="j", idempotency_key="j")
            assert engine.resume("j").results == {"a": 1, "b": 2}
            assert calls == ["a", "b", "b"]
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


# -- crash points ----------------------------------------------------------------------


def test_crash_point_describes_itself() -> None:
    assert str(CrashPoint.before("hotel")) == "before the commit that marks step 'hotel' completed"
    assert str(CrashPoint.after("flight", "compensated")) == (
        "after the commit that marks step 'flight' compensated")


def test_crash_point_rejects_an_unknown_status() -> None:
    with pytest.raises(ValueError, match="'done' is not a valid StepStatus"):
        CrashPoint.before("hotel", "done")


def test_simulated_crash_is_not_an_exception() -> None:
    assert not issubclass(SimulatedCrash, Exception)
    assert issubclass(SimulatedCrash, BaseException)


def _engine(point: CrashPoint) -> tuple[SagaEngine, CrashingStorage]:
    storage = CrashingStorage(InMemoryStorage(), crash_at=point)
    return SagaEngine(storage, clock=FakeClock()), storage


def test_crash_before_a_commit_leaves_the_step_pending_and_it_runs_again() -> None:
    ledger.reset()
    engine, storage = _engine(CrashPoint.before("hotel"))
    with pytest.raises(SimulatedCrash, match="simulated crash before the commit that marks step 'hotel'"):
        engine.run(BookTrip, Trip("t1"), saga_id="t1", idempotency_key="t1")
    record = engine.get("t1")
    assert record is not None and record.status == "pending"
    assert [s.status for s in record.steps] == ["completed", "pending", "pending"]

    result = engine.resume("t1")

    assert result.status == "completed"
    assert ledger.calls == ["flight", "hotel", "hotel", "car"]
    assert storage.fired == [CrashPoint.before("hotel")]


def test_crash_after_a_commit_keeps_the_step_and_it_does_not_run_again() -> None:
    ledger.reset()
    engine, _ = _engine(CrashPoint.after("hotel"))
    with pytest.raises(SimulatedCrash):
        engine.run(BookTrip, Trip("t2"), saga_id="t2", idempotency_key="t2")
    record = engine.get("t2")
    assert record is not None
    assert [s.status for s in record.steps] == ["completed", "completed", "pending"]

    engine.resume("t2")

    assert ledger.calls == ["flight", "hotel", "car"]


def test_crash_during_compensation_resumes_backwards() -> None:
    ledger.reset(fail={"car"})
    engine, _ = _engine(CrashPoint.after("hotel", "compensated"))
    with pytest.raises(SimulatedCrash):
        engine.run(BookTrip, Trip("t3"), saga_id="t3", idempotency_key="t3")
    record = engine.get("t3")
    assert record is not None and record.status == "compensating"

    with pytest.raises(SagaFailedError):
        engine.resume("t3")

    assert ledger.calls == ["flight", "hotel", "car", "undo:hotel-t3", "undo:flight-t3"]
    assert ledger.effects == {}


def test_crashing_storage_passes_everything_through_when_disarmed() -> None:
    ledger.reset()
    engine, storage = _engine(CrashPoint.before("nowhere"))
    assert engine.run(BookTrip, Trip("t4"), saga_id="t4", idempotency_key="t4").status == "completed"
    assert storage.fired == []
    assert [sorted(c.steps) for c in storage.commits] == [["flight"], ["hotel"], ["car"]]


# -- exploring every crash point -------------------------------------------------------


def test_explore_visits_before_and_after_every_step_commit() -> None:
    runs = explore_crash_points(BookTrip, Trip("e1"), reset=ledger.reset, observe=effects)
    assert [str(r.point) for r in runs[1:]] == [
        f"{when} the commit that marks step '{name}' completed"
        for name in ("flight", "hotel", "car") for when in ("before", "after")
    ]
    assert all(r.converged for r in runs), [r.problems for r in runs]
    assert runs[0].status == "completed"
    assert runs[0].effects == {"flight-e1": "flight", "hotel-e1": "hotel", "car-e1": "car"}


def test_explore_covers_failure_and_compensation_commits() -> None:
    runs = explore_crash_points(BookTrip, Trip("e2"), reset=lambda: ledger.reset(fail={"car"}),
                                observe=effects)
    assert runs[0].status == "failed"
    assert {(r.point.step, r.point.status.value) for r in runs[1:] if r.point} == {
        ("flight", "completed"), ("hotel", "completed"), ("car", "failed"),
        ("hotel", "compensated"), ("flight", "compensated")}
    assert len(runs) == 11
    assert all(r.converged for r in runs)


def test_explore_covers_a_dead_letter_outcome() -> None:
    runs = assert_converges(BookTrip, Trip("e3"),
                            reset=lambda: ledger.reset(fail={"car", "undo:flight-e3"}), observe=effects)
    assert runs[0].status == "dead_letter"
    assert any(r.point is not None and r.point.status == "compensation_failed" for r in runs)


def test_assert_converges_reports_effects_that_happened_twice() -> None:
    class Careless(Saga[Trip], name="tests.toolkit.careless"):
        @step(idempotency_key="pay-{trip_id}")
        def pay(self) -> None:
            # A fresh key on every attempt: the service cannot tell a rerun from a new payment.
            ledger.apply(f"pay-{len(ledger.calls)}", "pay")

        @step(idempotency_key="mail-{trip_id}")
        def mail(self) -> None:
            ledger.apply(self.step_key, "mail")

    with pytest.raises(AssertionError) as info:
        assert_converges(Careless, Trip("e4"), reset=ledger.reset, observe=effects)
    message = str(info.value)
    assert message.startswith("Careless did not converge at 1 of 4 crash points:\n"
                              "  before the commit that marks step 'pay' completed:\n"
                              "    - observed effects {")
    assert "'pay-0': 'pay', 'pay-1': 'pay'" in message


def test_explore_accepts_any_storage_and_engine(tmp_path: Any) -> None:
    urls = iter(f"sqlite:///{tmp_path / f'db{i}.sqlite'}" for i in range(100))
    from sagadsl import SqlStorage

    clocks: list[FakeClock] = []

    def engine_factory(storage: Any) -> SagaEngine:
        clocks.append(FakeClock())
        return SagaEngine(storage, clock=clocks[-1])

    runs = assert_converges(BookTrip, Trip("e5"), storage_factory=lambda: SqlStorage(next(urls)),
                            engine_factory=engine_factory, reset=ledger.reset, observe=effects)
    assert len(runs) == 7 and len(clocks) == 7


def test_crashing_storage_leaves_a_dead_letter_outcome_unchanged() -> None:
    ledger.reset(fail={"car", "undo:flight-c1"})
    engine, _ = _engine(CrashPoint.before("nowhere"))
    with pytest.raises(CompensationFailedError):
        engine.run(BookTrip, Trip("c1"), saga_id="c1", idempotency_key="c1")
