"""Calling one step or compensation: attempts, timeouts and backoff."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from ..clock import Clock
from ..errors import ExecutionTimeoutError, SerializationError, StepTimeoutError
from ..events import EventEmitter
from ..saga import _attempt, _step_key

__all__ = ["AttemptOutcome", "call_with_retries", "Budget"]


@dataclass(frozen=True)
class AttemptOutcome:
    """How a step or compensation ended after all its attempts."""

    ok: bool
    value: Any
    attempts: int
    started_at: datetime
    finished_at: datetime
    error: Exception | None = None
    #: What the step returned, in a 1-tuple, when that value could not be
    #: stored: the step's effect happened, so its compensation gets the value.
    unstored: tuple[Any] | None = None


@dataclass(frozen=True)
class Budget:
    """The saga's hard deadline, for bounding forward steps."""

    deadline: datetime | None
    saga_id: str

    def remaining(self, clock: Clock) -> float | None:
        if self.deadline is None:
            return None
        return (self.deadline - clock.now()).total_seconds()

    def exceeded_error(self, what: str) -> ExecutionTimeoutError:
        return ExecutionTimeoutError(
            f"saga {self.saga_id!r} reached its 15-minute execution limit before {what} could finish; "
            "it is being compensated", saga_id=self.saga_id)


class _TimedOut(Exception):
    """Our own timer ran out; a ``TimeoutError`` raised by the step itself is not this."""


def _cancel_requested() -> bool:
    """Whether someone asked to cancel the running task itself (Python 3.11+ can tell)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


async def _invoke(func: Callable[..., Any], kwargs: dict[str, Any], is_async: bool,
                  timeout: float | None, pool: Executor) -> Any:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any]
    if is_async:
        future = asyncio.ensure_future(func(**kwargs))
    else:
        ctx = contextvars.copy_context()
        future = loop.run_in_executor(pool, functools.partial(ctx.run, func, **kwargs))
    if timeout is None:
        return await future
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        future.cancel()

    # A timer beside the plain await, rather than asyncio.wait(): one handle
    # instead of a waiter future and callbacks on every attempt.
    timer = loop.call_later(timeout, expire)
    try:
        value = await future
    except asyncio.CancelledError:
        if not expired or _cancel_requested():
            raise
    except BaseException:
        future.cancel()
        raise
    finally:
        timer.cancel()
    if not expired:
        return value
    # An async step was cancelled and given the chance to clean up (the
    # await above waited for it). A thread cannot be stopped: the attempt
    # fails, the thread runs on and its eventual result is dropped.
    raise _TimedOut()


async def call_with_retries(
    *,
    func: Callable[..., Any],
    kwargs: dict[str, Any],
    is_async: bool,
    key: str,
    where: str,
    step: str,
    max_attempts: int,
    should_retry: Callable[[Exception, int], bool],
    delay: Callable[[int], float],
    timeout: float | None,
    budget: Budget | None,
    clock: Clock,
    pool: Executor,
    emitter: EventEmitter,
    phase: str,
    durable: Callable[[Any], tuple[Any, Any]] | None = None,
) -> AttemptOutcome:
    """Run ``func`` until it succeeds or its attempts are used up.

    ``phase`` is ``"step"`` or ``"compensation"`` and selects the events.
    ``durable`` turns a step's result into ``(value, stored JSON)``: the value
    is the JSON decoded back, which later steps receive, so they see on the
    first run what they would see after a resume. Failing to store the value
    fails the step at once (a retry would return the same value); the value
    it returned is kept in the outcome for its compensation.
    """
    started = clock.now()
    attempt = 0
    while True:
        attempt += 1
        limit = timeout
        bounded_by_budget = False
        if budget is not None:
            remaining = budget.remaining(clock)
            if remaining is not None:
                if remaining <= 0:
                    error: Exception = budget.exceeded_error(where)
                    return AttemptOutcome(False, None, attempt - 1, started, clock.now(), error)
                if limit is None or remaining < limit:
                    limit, bounded_by_budget = remaining, True
        _step_key.set(key)
        _attempt.set(attempt)
        await emitter.emit(f"{phase}_start", step, attempt=attempt, idempotency_key=key)
        t0 = time.perf_counter()
        returned: tuple[Any] | None = None
        try:
            value = await _invoke(func, kwargs, is_async, limit, pool)
            returned = (value,)
            encoded = None
            if durable is not None:
                value, encoded = durable(value)
        except _TimedOut:
            if bounded_by_budget and budget is not None:
                error = budget.exceeded_error(where)
                await emitter.emit("step_timeout", step, error=error, attempt=attempt,
                                   duration=time.perf_counter() - t0, idempotency_key=key)
                return AttemptOutcome(False, None, attempt, started, clock.now(), error)
            error = StepTimeoutError(f"{where} took longer than its timeout of {limit or 0:g}s "
                                     f"(attempt {attempt})")
            await emitter.emit("step_timeout", step, error=error, attempt=attempt,
                               duration=time.perf_counter() - t0, idempotency_key=key)
        except SerializationError as exc:
            if returned is None:  # raised by the step itself: an ordinary failure
                error = exc
            else:
                return AttemptOutcome(False, None, attempt, started, clock.now(), exc, unstored=returned)
        except Exception as exc:
            error = exc
        else:
            duration = time.perf_counter() - t0
            await emitter.emit(f"{phase}_complete", step, result=value, attempt=attempt, duration=duration,
                               idempotency_key=key)
            return AttemptOutcome(True, (value, encoded), attempt, started, clock.now())
        if attempt >= max_attempts or not should_retry(error, attempt):
            return AttemptOutcome(False, None, attempt, started, clock.now(), error)
        if phase == "step":
            await emitter.emit("step_retry", step, error=error, attempt=attempt, idempotency_key=key)
        await clock.sleep(delay(attempt))
