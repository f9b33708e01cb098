"""Wake waiters when a saga ends: one ``LISTEN`` connection per engine (PostgreSQL).

A trigger (migration ``sagadsl_0005``) sends ``NOTIFY sagadsl_done,
'<schema>.<saga id>'`` when a saga's status changes to a terminal one, so the
notification leaves with the terminal commit and the engine's hot path sends
nothing extra. :class:`DoneListener` keeps one connection listening in a
background thread and calls the callbacks registered for that saga id; any
number of waiters share it. While it is not listening (not yet connected,
or reconnecting) waiters only poll, so a lost notification costs at most one
polling interval, never an outcome.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from sqlalchemy.engine import Engine

__all__ = ["DoneListener", "CHANNEL"]

logger = logging.getLogger("sagadsl.storage")

#: The channel of the trigger in migration ``sagadsl_0005``.
CHANNEL = "sagadsl_done"
#: Seconds between checks of the stop flag while no notification arrives.
_TICK = 0.2
#: Seconds the first waiter waits for the connection to listen before it only polls.
_READY_TIMEOUT = 1.0


class DoneListener:
    """A background thread listening on :data:`CHANNEL` for the sagas of one schema.

    Args:
        engine: The storage's SQLAlchemy engine; one connection is taken out
            of its pool for good (so it keeps the pool's connect arguments,
            keepalives included).
        schema: The schema whose sagas are watched (None: the connection's
            current schema).
    """

    def __init__(self, engine: Engine, schema: str | None) -> None:
        self._engine = engine
        self._schema = schema
        self._guard = threading.Lock()
        self._watchers: dict[str, set[Callable[[], None]]] = {}
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def listening(self) -> bool:
        """Whether notifications are being received now."""
        return self._listening.is_set()

    def watch(self, saga_id: str, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` (from the listening thread) whenever saga ``saga_id`` ends; returns the undo.

        The first call starts the thread and waits (a few seconds at most)
        until it listens, so that a notification sent after this returns is
        not missed.
        """
        with self._guard:
            self._watchers.setdefault(saga_id, set()).add(wake)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="sagadsl-listen", daemon=True)
                self._thread.start()
        self._listening.wait(_READY_TIMEOUT)

        def unwatch() -> None:
            with self._guard:
                wakes = self._watchers.get(saga_id)
                if wakes is not None:
                    wakes.discard(wake)
                    if not wakes:
                        del self._watchers[saga_id]

        return unwatch

    def close(self) -> None:
        """Stop the thread and close its connection."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5 * _TICK)

    # -- the listening thread -------------------------------------------------

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            pooled: Any = None
            try:
                pooled = self._engine.raw_connection()
                conn = pooled.driver_connection
                pooled.detach()  # this connection never goes back to the pool
                conn.rollback()
                conn.autocommit = True
                schema = self._schema or str(conn.execute("SELECT current_schema()").fetchone()[0])
                prefix = f"{schema}."
                conn.execute(f"LISTEN {CHANNEL}")
                self._listening.set()
                delay = 0.1
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=_TICK):
                        if note.payload.startswith(prefix):
                            self._wake(note.payload[len(prefix):])
            except Exception:
                if self._stop.is_set():
                    break
                logger.warning("the connection listening for finished sagas failed; waiters poll until "
                               "it is back", exc_info=True)
            finally:
                self._listening.clear()
                if pooled is not None:
                    try:
                        pooled.close()
                    except Exception:
                        pass
            self._wake_all()  # nothing heard while away: let every waiter look again
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

    def _wake(self, saga_id: str) -> None:
        with self._guard:
            wakes = list(self._watchers.get(saga_id, ()))
        for wake in wakes:
            _call(wake)

    def _wake_all(self) -> None:
        with self._guard:
            wakes = [wake for group in self._watchers.values() for wake in group]
        for wake in wakes:
            _call(wake)


def _call(wake: Callable[[], None]) -> None:
    try:
        wake()
    except Exception:  # a waiter whose event loop has closed
        logger.debug("could not wake a waiter", exc_info=True)
