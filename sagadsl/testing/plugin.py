"""pytest plugin (entry point ``pytest11``): fixtures for testing sagas."""

from __future__ import annotations

from typing import Iterator

import pytest

from ..engine import SagaEngine
from ..storage.memory import InMemoryStorage
from .clock import FakeClock


@pytest.fixture
def saga_clock() -> FakeClock:
    """A :class:`FakeClock` for the engine under test."""
    return FakeClock()


@pytest.fixture
def saga_engine(saga_clock: FakeClock) -> Iterator[SagaEngine]:
    """A :class:`SagaEngine` on in-memory storage with the fake clock."""
    engine = SagaEngine(InMemoryStorage(), clock=saga_clock)
    yield engine
    engine.close()
