"""Calling one step or compensation: attempts, timeouts and backoff."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import random
import sys
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Callable, Protocol

from ..clock import Clock
from ..errors import ExecutionTimeoutError, SerializationError, StepTimeoutError
from ..events import EventEmitter, EventKind
from ..policies import RetryPolicy
from .context import attempt_number, step_key

__all__ = ["AttemptOutcome", "AttemptPolicy", "Budget", "Call", "Phase", "Runtime", "UntilItSucceeds",
           "call_with_retries"]


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


class Phase(str, Enum):
    """Whether an attempt runs a step forward or compensates one; selects its events."""

    STEP = "step"
    COMPENSATION = "compensation"


_KINDS: dict[Phase, tuple[EventKind, EventKind, EventKind, EventKind]] = {
    # start, complete, retry, timeout
    Phase.STEP: ("step_start", "step_complete", "step_retry", "step_timeout"),
    Phase.COMPENSATION: ("compensation_start", "compensation_complete", "compensation_retry",
                         "compensation_timeout"),
}


class AttemptPolicy(Protocol):
    """What ``call_with_retries`` needs of a policy (RetryPolicy and CompensationPolicy have it)."""

    @property
    def max_attempts(self) -> int: ...

    def should_retry(self, error: BaseException, attempt: int) -> bool: ...

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float: ...


@dataclass(frozen=True)
class UntilItSucceeds:
    """A step's retry policy with no attempt limit: forward recovery after the pivot.

    The policy's ``retry_on``/``give_up_on`` still decide which errors are
    retried and its backoff shape the waits; the saga's 15-minute budget
    bounds the whole. A policy with no backoff would retry in a hot loop
    for 15 minutes, so it waits ``FORWARD_RECOVERY_BACKOFF`` instead.
    """

    policy: RetryPolicy

    @property
    def max_attempts(self) -> int:
        return sys.maxsize

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        return isinstance(error, self.policy.retry_on) and not isinstance(error, self.policy.give_up_on)

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        shape = self.policy if self.policy.backoff > 0 else FORWARD_RECOVERY_BACKOFF
        return shape.delay(failed_attempt, rng)


#: The backoff of forward recovery for a step whose own policy has none.
FORWARD_RECOVERY_BACKOFF = RetryPolicy(backoff=0.5, multiplier=2.0, max_backoff=30.0, jitter=0.1)


@dataclass(frozen=True)
class Call:
    """One step or compensation method to call, with what identifies it."""

    func: Callable[..., Any]
    kwargs: dict[str, Any]
    is_async: bool
    #: The step's idempotency key (``self.step_key`` inside the call).
    key: str
    #: ``Class.method``, for messages.
    where: str
    #: The step's name (a compensation's events name the step it undoes).
    step: str
    phase: Phase


@dataclass(frozen=True)
class Runtime:
    """What every attempt of one saga shares: time, threads and events."""

    clock: Clock
    pool: Executor
    emitter: EventEmitter


async def call_with_retries(
    call: Call,
    policy: AttemptPolicy,
    *,
    timeout: float | None,
    budget: Budget | None,
    runtime: Runtime,
    durable: Callable[[Any], tuple[Any, Any]] | None = None,
) -> AttemptOutcome:
    """Run ``call`` until it succeeds or ``policy`` gives up.

    Each attempt is bounded by ``timeout`` and by what is left of ``budget``.
    ``durable`` turns a step's result into ``(value, stored JSON)``: the value
    is the JSON decoded back, which later steps receive, so they see on the
    first run what they would see after a resume. Failing to store the value
    fails the step at once (a retry would return the same value); the value
    it returned is kept in the outcome for its compensation.
    """
    clock, emitter = runtime.clock, runtime.emitter
    start_kind, complete_kind, retry_kind, timeout_kind = _KINDS[call.phase]
    step, key, where = call.step, call.key, call.where
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
        step_key.set(key)
        attempt_number.set(attempt)
        await emitter.emit(start_kind, step, attempt=attempt, idempotency_key=key)
        t0 = time.perf_counter()
        returned: tuple[Any] | None = None
        try:
            value = await _invoke(call.func, call.kwargs, call.is_async, limit, runtime.pool)
            returned = (value,)
            encoded = None
            if durable is not None:
                value, encoded = durable(value)
        except _TimedOut:
            if bounded_by_budget and budget is not None:
                error = budget.exceeded_error(where)
                await emitter.emit(timeout_kind, step, error=error, attempt=attempt,
                                   duration=time.perf_counter() - t0, idempotency_key=key)
                return AttemptOutcome(False, None, attempt, started, clock.now(), error)
            error = StepTimeoutError(f"{where} took longer than its timeout of {limit or 0:g}s "
                                     f"(attempt {attempt})")
            await emitter.emit(timeout_kind, step, error=error, attempt=attempt,
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
            await emitter.emit(complete_kind, step, result=value, attempt=attempt, duration=duration,
                               idempotency_key=key)
            return AttemptOutcome(True, (value, encoded), attempt, started, clock.now())
        if attempt >= policy.max_attempts or not policy.should_retry(error, attempt):
            return AttemptOutcome(False, None, attempt, started, clock.now(), error)
        await emitter.emit(retry_kind, step, error=error, attempt=attempt, idempotency_key=key)
        await clock.sleep(policy.delay(attempt))
