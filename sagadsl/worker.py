"""The recovery worker: finds sagas with no live executor and drives them to the end.

A worker picks up sagas that were submitted, sagas whose executor died
(PostgreSQL: its advisory lock vanished with its connection; SQLite: its
process on this host is gone, or its lease ran out), and sagas moved back
from dead letter by a retry. Any number of workers on any number of
machines can share one PostgreSQL database: each saga is claimed by exactly
one executor at a time, so a saga that another worker holds is skipped.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable

from .errors import (
    CompensationFailedError,
    DeadLetterError,
    ResourceLockedError,
    SagaCancelledError,
    SagaFailedError,
    SagaLockedError,
    SagaNotFoundError,
    UnknownSagaError,
)

if TYPE_CHECKING:
    from .engine import SagaEngine

__all__ = ["Worker", "WorkerStats"]

logger = logging.getLogger("sagadsl.worker")

#: How long a saga whose class is not importable here is left alone before the
#: worker looks at it again (doubling up to an hour), so it never spins on it.
UNKNOWN_BACKOFF = timedelta(seconds=30)
#: The longest a worker waits before it tries again a saga whose resume failed.
ERROR_BACKOFF_CAP = timedelta(minutes=5)


@dataclass
class WorkerStats:
    """What a worker did so far."""

    claimed: int = 0
    completed: int = 0
    failed: int = 0
    #: Sagas this worker compensated after ``engine.cancel`` (not counted in ``failed``).
    cancelled: int = 0
    dead_lettered: int = 0
    locked: int = 0
    #: Looks at submitted sagas whose semantic lock keys were not free yet.
    waiting: int = 0
    unknown: int = 0
    errors: int = 0
    unknown_sagas: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        """Sagas this worker drove to a terminal status."""
        return self.completed + self.failed + self.cancelled + self.dead_lettered


class Worker:
    """Drives recoverable sagas of one engine until stopped.

    Args:
        engine: The engine whose storage is polled; its saga classes must be
            imported (registered) in this process.
        concurrency: Sagas driven at once, each on its own thread and connection.
        poll_interval: Seconds between polls when there is nothing to do.
        stop_when_idle: Return from :meth:`run` once a poll finds nothing to do
            and nothing is running (for scripts and tests).
        install_signal_handlers: Stop gracefully on SIGTERM and SIGINT (only
            possible from the main thread): no new saga is claimed, the running
            ones finish, then :meth:`run` returns.
        on_idle: Called after each poll that found nothing.
    """

    def __init__(
        self,
        engine: SagaEngine,
        *,
        concurrency: int = 4,
        poll_interval: float = 1.0,
        stop_when_idle: bool = False,
        install_signal_handlers: bool = False,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
        self.engine = engine
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.stop_when_idle = stop_when_idle
        self.install_signal_handlers = install_signal_handlers
        self.on_idle = on_idle
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._in_flight: dict[str, Future[None]] = {}
        self._guard = threading.Lock()
        self._quarantine: dict[str, tuple[float, float]] = {}
        #: Set when a saga it drove finishes, so a worker with every slot busy polls again at once.
        self._slot_freed = threading.Event()

    def stop(self) -> None:
        """Ask the worker to stop claiming sagas; running ones finish first."""
        self._stop.set()
        self._slot_freed.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def run(self) -> WorkerStats:
        """Poll and drive sagas until stopped; return what was done."""
        previous = self._install_handlers() if self.install_signal_handlers else {}
        logger.info("worker started (concurrency %d) on %r", self.concurrency, self.engine.storage)
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="sagadsl-worker")
        try:
            while not self._stop.is_set():
                started = self._poll_once(pool)
                if started is None or started:
                    continue  # every slot was busy until one freed up, or it started sagas: poll again
                with self._guard:
                    busy = bool(self._in_flight)
                if not busy:
                    if self.on_idle is not None:
                        self.on_idle()
                    if self.stop_when_idle:
                        break
                self._stop.wait(self.poll_interval)
        finally:
            pool.shutdown(wait=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            logger.info("worker stopped: %s", self.stats)
        return self.stats

    def _poll_once(self, pool: ThreadPoolExecutor) -> int | None:
        """Start what it can; how many it started, or None if every slot was busy (it waited for one)."""
        now = time.monotonic()
        with self._guard:
            free = self.concurrency - len(self._in_flight)
            # Sagas it runs or has set aside are left out of the poll itself,
            # so they can never crowd out sagas it could run.
            skip = set(self._in_flight) | {saga_id for saga_id, (until, _) in self._quarantine.items()
                                           if until > now}
        if free <= 0:
            # Poll again as soon as a saga finishes, not a poll interval later.
            self._slot_freed.wait(self.poll_interval)
            self._slot_freed.clear()
            return None
        try:
            candidates = self.engine.storage.recoverable(self.engine.clock.now(), free, exclude=skip)
        except Exception:
            with self._guard:
                self.stats.errors += 1
            logger.exception("worker could not poll for sagas; retrying in %.1fs", self.poll_interval)
            return 0
        started = 0
        for saga_id in candidates:
            if started >= free or self._stop.is_set():
                break
            with self._guard:
                self._in_flight[saga_id] = pool.submit(self._drive, saga_id)
            started += 1
        return started

    def _drive(self, saga_id: str) -> None:
        try:
            outcome = self._outcome(saga_id)
        finally:
            with self._guard:
                self._in_flight.pop(saga_id, None)
        self._slot_freed.set()
        with self._guard:
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
            if outcome in ("completed", "failed", "cancelled", "dead_lettered"):
                self.stats.claimed += 1
                self._quarantine.pop(saga_id, None)

    def _outcome(self, saga_id: str) -> str:
        """Drive one saga; name the :class:`WorkerStats` counter its outcome belongs to."""
        try:
            self.engine.resume(saga_id)
            return "completed"
        except SagaLockedError:
            return "locked"
        except ResourceLockedError:
            # Its lock keys are taken: it stays pending, and is looked at
            # again after a poll interval, not in a hot loop.
            with self._guard:
                self._quarantine[saga_id] = (time.monotonic() + self.poll_interval, self.poll_interval)
            return "waiting"
        except SagaCancelledError:
            return "cancelled"
        except SagaFailedError:
            return "failed"
        except (CompensationFailedError, DeadLetterError):
            return "dead_lettered"
        except SagaNotFoundError:
            return "locked"
        except UnknownSagaError as exc:
            self._park_unknown(saga_id, exc)
            return "unknown"
        except Exception:
            with self._guard:
                # A saga that failed to make progress is looked at again later
                # and later (doubling up to ERROR_BACKOFF_CAP), not on every poll.
                previous = self._quarantine.get(saga_id)
                backoff = (min(previous[1] * 2, ERROR_BACKOFF_CAP.total_seconds()) if previous
                           else self.poll_interval)
                self._quarantine[saga_id] = (time.monotonic() + backoff, backoff)
            logger.exception("worker failed to drive saga %s; it stays resumable (next try in %.1fs)",
                             saga_id, backoff, extra={"saga_id": saga_id})
            return "errors"

    def _park_unknown(self, saga_id: str, exc: UnknownSagaError) -> None:
        previous = self._quarantine.get(saga_id)
        backoff = min(previous[1] * 2, 3600.0) if previous else UNKNOWN_BACKOFF.total_seconds()
        with self._guard:
            self._quarantine[saga_id] = (time.monotonic() + backoff, backoff)
            self.stats.unknown_sagas[saga_id] = str(exc)
        logger.error("cannot resume saga %s: %s (next look in %.0fs)", saga_id, exc, backoff,
                     extra={"saga_id": saga_id})

    def _install_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, _frame: FrameType | None) -> None:
            logger.info("worker received %s; finishing running sagas", signal.Signals(signum).name)
            self.stop()

        previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, handle)
        return previous
