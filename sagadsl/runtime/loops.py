"""Running a saga's coroutine from sync code: one event loop per thread, wound down after an interrupt."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Awaitable, Callable, TypeVar

__all__ = ["run_sync", "inline"]

logger = logging.getLogger("sagadsl.engine")
T = TypeVar("T")
_loops = threading.local()


def run_sync(coro: Awaitable[T]) -> T:
    """Run ``coro`` to its end on this thread's loop (``SagaEngine.run`` and friends)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        if asyncio.iscoroutine(coro):
            coro.close()
        raise RuntimeError("SagaEngine.run() was called from a running event loop; "
                           "use `await engine.run_async(...)` there")
    loop = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _loops.loop = loop
    try:
        return loop.run_until_complete(coro)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            discard_loop(loop)
        raise


def discard_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Wind down a thread's loop after a KeyboardInterrupt or SystemExit went through it.

    asyncio lets those leave ``run_until_complete`` while the saga's coroutine
    is still suspended. Cancelling what is left runs its ``finally`` blocks
    (the storage session closes, releasing the claim) now, instead of in the
    middle of the next ``run`` on this thread.
    """
    _loops.loop = None
    try:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    except BaseException:
        logger.warning("could not wind down an interrupted saga cleanly", exc_info=True)
    finally:
        loop.close()


async def _inline(fn: Callable[[], T]) -> T:
    return fn()


async def inline(fn: Callable[[], T]) -> T:
    """Run a storage call in the caller's thread (``run``: there is nothing else to do meanwhile)."""
    return fn()
