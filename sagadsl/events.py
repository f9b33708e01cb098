"""Callbacks that observe a saga's course without being able to change it."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, fields
from typing import Any, Awaitable, Callable, Literal, Union, get_args

__all__ = ["SagaEvent", "SagaEvents", "EventHandler", "EventKind"]

logger = logging.getLogger("sagadsl.events")

#: What can happen to a saga: each kind is the name of a :class:`SagaEvents`
#: callback without its ``on_`` prefix.
EventKind = Literal[
    "saga_start", "saga_complete", "saga_failed", "saga_cancelled", "dead_letter",
    "step_start", "step_complete", "step_failed", "step_retry", "step_skipped", "step_timeout",
    "compensation_start", "compensation_complete", "compensation_failed", "compensation_retry",
    "compensation_timeout",
]


@dataclass(frozen=True)
class SagaEvent:
    """One thing that happened to a saga.

    Attributes:
        kind: The callback's name without ``on_``, e.g. ``"step_complete"``.
        saga_id: The saga's id.
        saga_name: The saga class's registered name.
        step: The step's name, or None for saga-level events.
        result: The step's result (``step_complete``, ``saga_complete``).
        error: The exception, for failure, retry and timeout events. For
            ``saga_failed``, ``saga_cancelled`` and ``dead_letter`` it is the
            error ``run`` raises: its ``step_name`` names the failing step and its
            ``__cause__`` is that step's (or compensation's) exception.
        attempt: The 1-based attempt of a step or compensation.
        duration: Seconds the attempt took; for ``saga_complete``,
            ``saga_failed``, ``saga_cancelled`` and ``dead_letter``, seconds this execution of
            the saga took (a resume counts from the resume).
        idempotency_key: The step's idempotency key (``self.step_key``), for
            step and compensation attempt events.
        resumed: For ``saga_start``: whether this execution resumes a stored
            saga (after a crash, by a worker, or after a retry from dead letter).
    """

    kind: EventKind
    saga_id: str
    saga_name: str
    step: str | None = None
    result: Any = None
    error: BaseException | None = None
    attempt: int | None = None
    duration: float | None = None
    idempotency_key: str | None = None
    resumed: bool | None = None


EventHandler = Callable[[SagaEvent], Union[None, Awaitable[None]]]


@dataclass(frozen=True)
class SagaEvents:
    """Optional callbacks, each called with one :class:`SagaEvent`.

    A callback may be sync or async. One that raises is logged on the
    ``sagadsl.events`` logger and ignored: it never changes the saga's course.
    """

    on_saga_start: EventHandler | None = None
    on_saga_complete: EventHandler | None = None
    on_saga_failed: EventHandler | None = None
    #: Fired once, by the executor that ends a cancelled saga (instead of ``on_saga_failed``).
    on_saga_cancelled: EventHandler | None = None
    on_step_start: EventHandler | None = None
    on_step_complete: EventHandler | None = None
    on_step_failed: EventHandler | None = None
    on_step_retry: EventHandler | None = None
    on_step_skipped: EventHandler | None = None
    on_step_timeout: EventHandler | None = None
    on_compensation_start: EventHandler | None = None
    on_compensation_complete: EventHandler | None = None
    on_compensation_failed: EventHandler | None = None
    on_compensation_retry: EventHandler | None = None
    on_compensation_timeout: EventHandler | None = None
    on_dead_letter: EventHandler | None = None

    @staticmethod
    def combine(*many: SagaEvents | None) -> SagaEvents:
        """One ``SagaEvents`` that calls every given handler in order."""
        present = [m for m in many if m is not None]
        if len(present) == 1:
            return present[0]
        merged: dict[str, EventHandler] = {}
        for f in fields(SagaEvents):
            handlers = [getattr(m, f.name) for m in present if getattr(m, f.name) is not None]
            if handlers:
                merged[f.name] = _chain(handlers)
        return SagaEvents(**merged)


def _chain(handlers: list[EventHandler]) -> EventHandler:
    if len(handlers) == 1:
        return handlers[0]

    async def chained(event: SagaEvent) -> None:
        for handler in handlers:
            await _call_safely(handler, event)

    return chained


async def _call_safely(handler: EventHandler, event: SagaEvent) -> None:
    try:
        outcome = handler(event)
        if inspect.isawaitable(outcome):
            await outcome
    except Exception:
        logger.exception("sagadsl event handler for %s raised; ignored (saga %s, step %s)",
                         event.kind, event.saga_id, event.step)


class EventEmitter:
    """Sends events of one saga to the configured callbacks, safely."""

    __slots__ = ("_events", "saga_id", "saga_name")

    def __init__(self, events: SagaEvents | None, saga_id: str, saga_name: str) -> None:
        self._events = events
        self.saga_id = saga_id
        self.saga_name = saga_name

    async def emit(self, kind: EventKind, step: str | None = None, **details: Any) -> None:
        if self._events is None:
            return
        handler: EventHandler | None = getattr(self._events, _CALLBACKS[kind])
        if handler is None:
            return
        event = SagaEvent(kind, self.saga_id, self.saga_name, step, **details)
        # Inlined rather than awaiting _call_safely: a sync handler (the usual
        # case) then costs no extra coroutine on the hot path.
        try:
            outcome = handler(event)
            if outcome is not None and inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception("sagadsl event handler for %s raised; ignored (saga %s, step %s)",
                             event.kind, event.saga_id, event.step)


#: The callback of each kind, checked against :class:`SagaEvents` once, at import.
_CALLBACKS: dict[str, str] = {kind: f"on_{kind}" for kind in get_args(EventKind)}
assert set(_CALLBACKS.values()) == {f.name for f in fields(SagaEvents)}, "EventKind and SagaEvents disagree"
