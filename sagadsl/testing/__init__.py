"""Helpers for testing sagas: a fake clock, ready-made engines and crash injection."""

from .clock import FakeClock

__all__ = ["FakeClock"]
