"""pytest plugin (entry point ``pytest11``): fixtures for testing sagas.

Installed with sagadsl; nothing to configure. Each fixture builds a fresh
engine per test and closes it afterwards. All engines use the same
:class:`~sagadsl.testing.FakeClock` (``saga_clock``), so retry backoff costs
no time and a test can jump past a timeout or the 15-minute limit with
``saga_clock.advance(...)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from ..engine import SagaEngine
from ..storage.base import Storage
from ..storage.memory import InMemoryStorage
from ..storage.sql import SqlStorage
from .clock import FakeClock
from .crash import CrashingStorage, CrashPoint

#: ``saga_crash_engine(point, storage=None)``: an engine that crashes at ``point``.
CrashEngineFactory = Callable[..., SagaEngine]


@pytest.fixture
def saga_clock() -> FakeClock:
    """A :class:`FakeClock` shared by the engines of this test."""
    return FakeClock()


@pytest.fixture
def saga_engine(saga_clock: FakeClock) -> Iterator[SagaEngine]:
    """A :class:`SagaEngine` on in-memory storage with the fake clock."""
    engine = SagaEngine(InMemoryStorage(), clock=saga_clock)
    yield engine
    engine.close()


@pytest.fixture
def sqlite_saga_engine(saga_clock: FakeClock, tmp_path: Path) -> Iterator[SagaEngine]:
    """A :class:`SagaEngine` on a fresh SQLite file in ``tmp_path``, with the fake clock.

    Use it where the JSON round trip through a real database matters: results
    are decoded from the stored row on resume, as in production.
    """
    engine = SagaEngine(SqlStorage(f"sqlite:///{tmp_path / 'sagas.db'}"), clock=saga_clock)
    yield engine
    engine.close()


@pytest.fixture
def saga_crash_engine(saga_clock: FakeClock) -> Iterator[CrashEngineFactory]:
    """A factory of engines that simulate a crash at one commit.

    ``saga_crash_engine(CrashPoint.before("charge"))`` returns an engine on
    in-memory storage (or on ``storage=``, if given) wrapped in a
    :class:`~sagadsl.testing.CrashingStorage`. Its ``run`` raises
    :class:`~sagadsl.testing.SimulatedCrash` at that point; ``resume`` on
    the same engine then continues as a worker would after a restart.
    """
    engines: list[SagaEngine] = []

    def make(crash_at: CrashPoint, storage: Storage | None = None) -> SagaEngine:
        engine = SagaEngine(CrashingStorage(storage or InMemoryStorage(), crash_at), clock=saga_clock)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()
