"""Helpers for testing sagas: a fake clock, ready-made engines and crash injection.

The pytest plugin in :mod:`sagadsl.testing.plugin` is registered through the
``pytest11`` entry point, so installing sagadsl gives every test suite the
``saga_clock``, ``saga_engine``, ``sqlite_saga_engine`` and
``saga_crash_engine`` fixtures.
"""

from .clock import FakeClock
from .crash import (
    CrashingStorage,
    CrashPoint,
    CrashRun,
    SimulatedCrash,
    assert_converges,
    explore_crash_points,
)

__all__ = [
    "FakeClock",
    "SimulatedCrash",
    "CrashPoint",
    "CrashingStorage",
    "CrashRun",
    "explore_crash_points",
    "assert_converges",
]
