"""A clock that tests move by hand."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta, timezone

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`~sagadsl.Clock` whose time only moves when told to.

    ``sleep`` advances the clock instead of waiting, so retry backoff costs
    nothing; :meth:`advance` jumps past step timeouts or the 15-minute limit.

    Args:
        start: The initial time (default: 2030-01-01 00:00 UTC).
        auto_advance: Seconds added on every ``now()`` call, for tests that
            want time to pass by itself.
    """

    def __init__(self, start: datetime | None = None, *, auto_advance: float = 0.0) -> None:
        self._now = start or datetime(2030, 1, 1, tzinfo=timezone.utc)
        if self._now.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._step = timedelta(seconds=auto_advance)
        self._guard = threading.Lock()
        #: Every ``sleep`` requested, in seconds, in order.
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        with self._guard:
            current = self._now
            self._now += self._step
            return current

    def advance(self, amount: float | timedelta) -> datetime:
        """Move the clock forward by seconds or a timedelta; return the new time."""
        delta = amount if isinstance(amount, timedelta) else timedelta(seconds=amount)
        with self._guard:
            self._now += delta
            return self._now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)
