"""Fault injection: make a saga "crash" right before or right after a commit.

A real crash kills the process between two commits. :class:`CrashingStorage`
reproduces that inside a test: it wraps any :class:`~sagadsl.Storage` and,
when the executor is about to commit (or has just committed) the change that
marks a given step ``completed``, ``failed``, ``compensated`` or
``compensation_failed``, raises :class:`SimulatedCrash`. That is a
``BaseException``, so no ``except Exception`` in the engine or in your saga
swallows it: it unwinds like process death, and what is in the storage is
exactly what a crashed process would have left behind. Resuming the saga
afterwards (``engine.resume(saga_id)``, as a worker would) shows whether it
converges.

:func:`explore_crash_points` does this for every commit a saga makes;
:func:`assert_converges` turns any divergence into a test failure.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Collection, Literal, Sequence

from ..engine import SagaEngine
from ..errors import SagaError
from ..records import QueryResult, WorkflowRecord
from ..saga import Saga
from ..status import StepStatus, WorkflowStatus
from ..storage.base import CancelOutcome, Change, LockRecord, NewWorkflow, QueryFilter, Storage, StorageSession
from ..storage.memory import InMemoryStorage
from .clock import FakeClock

__all__ = [
    "SimulatedCrash",
    "CrashPoint",
    "CrashingStorage",
    "CrashRun",
    "explore_crash_points",
    "assert_converges",
]

When = Literal["before", "after"]


@dataclass(frozen=True)
class CrashPoint:
    """A commit at which to crash: ``when`` the commit that sets ``step`` to ``status``.

    Build one with :meth:`before` or :meth:`after`::

        CrashPoint.before("charge")                  # charge ran, its result is lost
        CrashPoint.after("reserve", "compensated")   # release committed, then the crash

    Attributes:
        step: The step name.
        status: The step status the commit writes: ``"completed"`` (the
            default), ``"failed"``, ``"compensated"`` or ``"compensation_failed"``.
        when: ``"before"`` the commit (nothing of it is stored) or ``"after"``
            it (stored, but the executor never learns it succeeded).
    """

    step: str
    status: StepStatus
    when: When

    def __post_init__(self) -> None:
        if self.when not in ("before", "after"):
            raise ValueError(f"CrashPoint.when must be 'before' or 'after', got {self.when!r}")
        # Accept plain strings such as "completed" and store the enum.
        object.__setattr__(self, "status", StepStatus(self.status))

    @classmethod
    def before(cls, step: str, status: StepStatus | str = StepStatus.COMPLETED) -> CrashPoint:
        """Crash just before the commit that sets ``step`` to ``status``."""
        return cls(step, StepStatus(status), "before")

    @classmethod
    def after(cls, step: str, status: StepStatus | str = StepStatus.COMPLETED) -> CrashPoint:
        """Crash just after the commit that sets ``step`` to ``status``."""
        return cls(step, StepStatus(status), "after")

    def matches(self, change: Change) -> bool:
        """Whether ``change`` is the commit this point is about."""
        values = change.steps.get(self.step)
        return values is not None and values.get("status") == self.status.value

    def __str__(self) -> str:
        return f"{self.when} the commit that marks step {self.step!r} {self.status.value}"


class SimulatedCrash(BaseException):
    """Raised by :class:`CrashingStorage` to simulate the death of the process.

    It derives from ``BaseException`` (like ``KeyboardInterrupt``) so that
    ``except Exception`` blocks let it through, as they would a real crash.

    Attributes:
        point: The crash point that fired.
    """

    def __init__(self, point: CrashPoint) -> None:
        super().__init__(f"simulated crash {point}")
        self.point = point


class CrashingStorage:
    """A :class:`~sagadsl.Storage` that raises :class:`SimulatedCrash` at one commit.

    Every call is passed to ``inner``. The first commit matching ``crash_at``
    raises :class:`SimulatedCrash` before or after it reaches ``inner``; the
    point then disarms, so resuming the saga on the same storage runs
    normally. Use :meth:`arm` to set a new point.

    Args:
        inner: The storage that really keeps the sagas.
        crash_at: Where to crash; None starts disarmed.
    """

    def __init__(self, inner: Storage, crash_at: CrashPoint | None = None) -> None:
        self.inner = inner
        self.is_production_safe = inner.is_production_safe
        self.detects_dead_executors = inner.detects_dead_executors
        self._guard = threading.Lock()
        self._armed = crash_at
        #: The points that fired, in order.
        self.fired: list[CrashPoint] = []
        #: Every change committed through this storage, in order.
        self.commits: list[Change] = []

    def arm(self, crash_at: CrashPoint | None) -> None:
        """Crash at ``crash_at`` next (None disarms)."""
        with self._guard:
            self._armed = crash_at

    def _take(self, change: Change) -> CrashPoint | None:
        with self._guard:
            point = self._armed
            if point is None or not point.matches(change):
                return None
            self._armed = None
            self.fired.append(point)
            return point

    def _record(self, change: Change) -> None:
        with self._guard:
            self.commits.append(change)

    def session(self, saga_id: str) -> StorageSession:
        return _CrashingSession(self, self.inner.session(saga_id))

    def get(self, saga_id: str) -> WorkflowRecord | None:
        return self.inner.get(saga_id)

    def query(self, flt: QueryFilter) -> QueryResult:
        return self.inner.query(flt)

    def count(self, statuses: Sequence[WorkflowStatus]) -> int:
        return self.inner.count(statuses)

    def count_by_status(self) -> dict[WorkflowStatus, int]:
        return self.inner.count_by_status()

    def retry(self, saga_id: str, now: datetime, max_retries: int) -> int:
        return self.inner.retry(saga_id, now, max_retries)

    def recoverable(self, now: datetime, limit: int, exclude: Collection[str] = ()) -> list[str]:
        return self.inner.recoverable(now, limit, exclude)

    def count_by_name(self) -> dict[str, dict[WorkflowStatus, int]]:
        return self.inner.count_by_name()

    def prune(self, before: datetime, statuses: Collection[WorkflowStatus], batch: int,
              progress: Callable[[int], None] | None = None) -> int:
        return self.inner.prune(before, statuses, batch, progress)

    def locks(self, keys: Sequence[str] = ()) -> list[LockRecord]:
        return self.inner.locks(keys)

    def cancel(self, saga_id: str, reason: str, now: datetime) -> CancelOutcome:
        return self.inner.cancel(saga_id, reason, now)

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"CrashingStorage({self.inner!r}, crash_at={self._armed!r})"


class _CrashingSession:
    def __init__(self, owner: CrashingStorage, inner: StorageSession) -> None:
        self._owner = owner
        self._inner = inner

    def begin(self, new: NewWorkflow | None, *, saga_id: str, claim: bool,
              now: datetime) -> WorkflowRecord | None:
        return self._inner.begin(new, saga_id=saga_id, claim=claim, now=now)

    def write(self, change: Change) -> str | None:
        point = self._owner._take(change)
        if point is not None and point.when == "before":
            raise SimulatedCrash(point)
        reason = self._inner.write(change)
        self._owner._record(change)
        if point is not None:
            raise SimulatedCrash(point)
        return reason

    def close(self) -> None:
        self._inner.close()


@dataclass(frozen=True)
class CrashRun:
    """How a saga ended after crashing at :attr:`point` and being resumed.

    Attributes:
        point: Where it crashed (None for the crash-free reference run).
        status: The saga's final status.
        steps: Each step's final status, by step name.
        results: The completed saga's step results (empty otherwise).
        effects: What ``observe()`` returned at the end (None without ``observe``).
        problems: Every way this run differs from the reference run; empty
            when it converged.
    """

    point: CrashPoint | None
    status: WorkflowStatus
    steps: dict[str, StepStatus]
    results: dict[str, Any] = field(default_factory=dict)
    effects: Any = None
    problems: tuple[str, ...] = ()

    @property
    def converged(self) -> bool:
        """True when the run ended exactly like the reference run."""
        return not self.problems


def _default_engine(storage: Storage) -> SagaEngine:
    return SagaEngine(storage, clock=FakeClock())


def _finish(engine: SagaEngine, saga_id: str, call: Callable[[], Any]) -> tuple[WorkflowRecord, dict[str, Any]]:
    results: dict[str, Any] = {}
    try:
        results = dict(call().results)
    except SagaError:
        pass  # failed and dead-letter outcomes are read from the stored row below
    record = engine.get(saga_id)
    if record is None:
        raise AssertionError(f"saga {saga_id!r} was not stored")
    return record, results


def _step_statuses(record: WorkflowRecord) -> dict[str, StepStatus]:
    return {s.name: s.status for s in record.steps}


def explore_crash_points(
    saga_cls: type[Saga[Any]],
    input: Any,
    *,
    engine_factory: Callable[[Storage], SagaEngine] = _default_engine,
    storage_factory: Callable[[], Storage] = InMemoryStorage,
    saga_id: str = "crash-exploration",
    idempotency_key: str = "crash-exploration-key",
    reset: Callable[[], None] | None = None,
    observe: Callable[[], Any] | None = None,
) -> list[CrashRun]:
    """Crash a saga at every commit it makes, resume it, and compare the outcomes.

    First the saga runs once without a crash (the *reference run*), on a
    :class:`CrashingStorage` that records every commit. Every commit that
    sets a step's status (``completed``, ``failed``, ``compensated``,
    ``compensation_failed``) yields two crash points: before it and after it.
    For each point, on fresh storage: ``reset()``, run the saga until
    :class:`SimulatedCrash` fires, then ``engine.resume(saga_id)`` as a
    worker would, until the saga reaches a final status.

    A run *converges* when all of these hold, compared to the reference run:

    * the crash point was reached;
    * the saga ends in the same status (``completed``, ``failed`` or
      ``dead_letter``);
    * every step ends in the same status (so each completed step was
      compensated exactly when the reference compensated it);
    * a completed saga returns equal step results;
    * ``observe()`` returns an equal value. ``observe`` should report the
      state of the test doubles your steps call (a fake inventory, a fake
      payment ledger). Steps may run twice around a crash (at-least-once),
      so equality here shows the *effects* happened once: that the saga
      passes ``self.step_key`` and the doubles deduplicate on it, as the
      real services must.

    Args:
        saga_cls: The saga class.
        input: Its input.
        engine_factory: Builds an engine on the given storage; default:
            ``SagaEngine(storage, clock=FakeClock())`` so retries cost no time.
        storage_factory: Builds fresh, empty storage for each run; default:
            :class:`~sagadsl.InMemoryStorage`.
        saga_id: The saga id used in every run.
        idempotency_key: The saga idempotency key used in every run.
        reset: Called before each run to empty your test doubles.
        observe: Called after each run; its results must be equal (``==``).

    Returns:
        The reference run first, then one :class:`CrashRun` per crash point,
        each with its :attr:`CrashRun.problems`.
    """

    def run_once(point: CrashPoint | None) -> tuple[CrashRun, list[Change]]:
        if reset is not None:
            reset()
        storage = CrashingStorage(storage_factory(), crash_at=point)
        engine = engine_factory(storage)
        try:
            crashed = False

            def first() -> Any:
                return engine.run(saga_cls, input, saga_id=saga_id, idempotency_key=idempotency_key)

            try:
                record, results = _finish(engine, saga_id, first)
            except SimulatedCrash:
                crashed = True
                record, results = _finish(engine, saga_id, lambda: engine.resume(saga_id))
            problems = [] if point is None or crashed else [f"the crash point was never reached ({point})"]
            run = CrashRun(point, record.status, _step_statuses(record), results,
                           observe() if observe is not None else None, tuple(problems))
            return run, list(storage.commits)
        finally:
            engine.close()

    reference, commits = run_once(None)
    points: list[CrashPoint] = []
    for change in commits:
        for name, values in change.steps.items():
            status = values.get("status")
            if status is None:
                continue
            for when in ("before", "after"):
                point = CrashPoint(name, StepStatus(status), when)
                if point not in points:
                    points.append(point)

    runs = [reference]
    for point in points:
        run, _ = run_once(point)
        problems = list(run.problems)
        if run.status != reference.status:
            problems.append(f"saga ended {run.status.value}, the reference run ended {reference.status.value}")
        for name, status in reference.steps.items():
            got = run.steps.get(name)
            if got != status:
                problems.append(f"step {name!r} ended {got.value if got else None}, "
                                f"the reference run left it {status.value}")
        if run.results != reference.results:
            problems.append(f"results {run.results!r} differ from the reference run's {reference.results!r}")
        if observe is not None and run.effects != reference.effects:
            problems.append(f"observed effects {run.effects!r} differ from the reference run's "
                            f"{reference.effects!r}")
        runs.append(CrashRun(point, run.status, run.steps, run.results, run.effects, tuple(problems)))
    return runs


def assert_converges(
    saga_cls: type[Saga[Any]],
    input: Any,
    **options: Any,
) -> list[CrashRun]:
    """Run :func:`explore_crash_points` and fail if any crash point diverges.

    Takes the same arguments as :func:`explore_crash_points`.

    Returns:
        Every run, the reference run first, for further assertions.

    Raises:
        AssertionError: listing each crash point whose run did not converge
            and how it differed.
    """
    runs = explore_crash_points(saga_cls, input, **options)
    bad = [run for run in runs if not run.converged]
    if bad:
        lines = [f"{saga_cls.__name__} did not converge at {len(bad)} of {len(runs) - 1} crash points:"]
        for run in bad:
            lines.append(f"  {run.point}:")
            lines.extend(f"    - {problem}" for problem in run.problems)
        raise AssertionError("\n".join(lines))
    return runs
