"""OpenTelemetry spans and metrics fed by :class:`~sagadsl.SagaEvents`.

One span covers one execution of a saga (a fresh run, or a resume after a
crash, by a worker or after a retry from dead letter). Each step attempt and
each compensation attempt is a child span. While a step runs, its span is the
current span, so spans the step's own code creates (HTTP calls, queries)
nest under it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from contextvars import Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import Link, Span, SpanContext, Status, StatusCode, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sagadsl.observability needs OpenTelemetry; install it with `pip install 'sagadsl[otel]'` "
        "(opentelemetry-api, plus opentelemetry-sdk or your vendor's distribution to export data)"
    ) from exc

from .. import __version__
from ..events import SagaEvent, SagaEvents

if TYPE_CHECKING:
    from ..engine import SagaEngine

__all__ = ["COMPENSATE", "FORWARD", "OpenTelemetryEvents", "instrument"]

logger = logging.getLogger("sagadsl.observability")

#: ``saga.phase`` of a step attempt.
FORWARD = "forward"
#: ``saga.phase`` of a compensation attempt.
COMPENSATE = "compensate"

_INSTRUMENTATION = "sagadsl"
# Step calls are mostly remote calls: milliseconds to a minute.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class _Attempt:
    span: Span
    started: float
    token: Token[otel_context.Context] | None
    task: asyncio.Task[object] | None


@dataclass
class _Execution:
    span: Span
    parent: otel_context.Context
    saga_name: str
    resumed: bool
    attempts: dict[tuple[str, str], _Attempt] = field(default_factory=dict)


def _root_cause(event: SagaEvent) -> tuple[BaseException | None, str | None]:
    """The exception a saga-level failure event is about, and the step that failed.

    Such an event carries the error ``run`` raises; the span records what
    the step (or compensation) itself raised, and the step's name.
    """
    error = event.error
    step = getattr(error, "step_name", None)
    if error is not None and error.__cause__ is not None:
        error = error.__cause__
    return error, step


def _current_task() -> asyncio.Task[object] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _describe(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return f"{type(error).__name__}: {error}"


class OpenTelemetryEvents:
    """Turns a saga engine's events into OpenTelemetry spans and metrics.

    Pass :attr:`events` to ``SagaEngine(events=...)`` (combine it with your
    own callbacks through :meth:`SagaEvents.combine`), then call
    :meth:`observe` with the engine to publish the gauges that query it.

    Spans (all ``INTERNAL``):

    * ``saga <name>``: one execution; a child of the span current where
      ``engine.run`` was called. Attributes ``saga.id``, ``saga.name``,
      ``saga.resumed``, ``saga.outcome``; a ``step skipped`` event for each
      step a resume did not run again; a link to the previous execution of the
      same saga when this process ran it.
    * ``step <step>`` and ``compensate <step>``: one attempt. Attributes
      ``saga.id``, ``saga.name``, ``saga.step``, ``saga.phase``
      (``forward``/``compensate``), ``saga.attempt``,
      ``saga.idempotency_key``, ``saga.outcome``.

    A failed attempt or saga has status ``ERROR``, an ``error.type``
    attribute and the exception recorded.

    Args:
        tracer_provider: Where spans go; default the global provider.
        meter_provider: Where metrics go; default the global provider.
        remembered_executions: How many finished executions are remembered
            (by saga id) so that a later resume in this process links to them.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        remembered_executions: int = 10_000,
    ) -> None:
        self._tracer = trace.get_tracer(_INSTRUMENTATION, __version__, tracer_provider=tracer_provider)
        self._meter = metrics.get_meter(_INSTRUMENTATION, __version__, meter_provider=meter_provider)
        meter = self._meter
        self._started = meter.create_counter(
            "sagadsl.sagas.started", unit="{execution}",
            description="Saga executions started (saga.resumed tells fresh runs from resumes)")
        self._completed = meter.create_counter(
            "sagadsl.sagas.completed", unit="{saga}", description="Sagas that completed")
        self._failed = meter.create_counter(
            "sagadsl.sagas.failed", unit="{saga}",
            description="Sagas that failed and were fully compensated")
        self._dead_lettered = meter.create_counter(
            "sagadsl.sagas.dead_lettered", unit="{saga}",
            description="Sagas moved to dead letter because a compensation failed")
        self._step_duration = meter.create_histogram(
            "sagadsl.step.duration", unit="s",
            description="Duration of one step or compensation attempt",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS)
        self._retries = meter.create_counter(
            "sagadsl.step.retries", unit="{retry}",
            description="Step or compensation attempts that failed and were retried")
        self._compensations = meter.create_counter(
            "sagadsl.compensations", unit="{compensation}",
            description="Compensations finished, by saga.outcome (compensated or failed)")
        self._executions: dict[str, _Execution] = {}
        self._previous: OrderedDict[str, SpanContext] = OrderedDict()
        self._remembered = remembered_executions
        self._guard = threading.Lock()
        self._observed: SagaEngine | None = None
        #: The callbacks to pass to ``SagaEngine(events=...)``.
        self.events = SagaEvents(
            on_saga_start=self._saga_start,
            on_saga_complete=self._saga_complete,
            on_saga_failed=self._saga_failed,
            on_dead_letter=self._dead_letter,
            on_step_skipped=self._step_skipped,
            on_step_start=self._attempt_start,
            on_step_complete=self._attempt_complete,
            on_step_retry=self._attempt_retry,
            on_step_timeout=self._attempt_timeout,
            on_step_failed=self._attempt_failed,
            on_compensation_start=self._attempt_start,
            on_compensation_complete=self._attempt_complete,
            on_compensation_failed=self._attempt_failed,
            on_compensation_retry=self._attempt_retry,
            on_compensation_timeout=self._attempt_timeout,
        )

    # -- gauges -------------------------------------------------------------------

    def observe(self, engine: SagaEngine) -> None:
        """Publish gauges that query ``engine``'s storage at each metrics collection.

        ``sagadsl.dead_letter.depth`` is ``engine.count("dead_letter")``;
        ``sagadsl.sagas.stuck`` is the number of active sagas that made no
        progress for longer than their timeouts allow. Each costs one
        ``COUNT`` query per collection interval.

        Raises:
            ValueError: an engine is already observed.
        """
        if self._observed is not None:
            raise ValueError(f"{self!r} already observes {self._observed!r}; create another "
                             "OpenTelemetryEvents for a second engine")
        self._observed = engine
        self._meter.create_observable_gauge(
            "sagadsl.dead_letter.depth", callbacks=[self._dead_letter_depth], unit="{saga}",
            description="Sagas in dead letter, waiting for a person to retry them")
        self._meter.create_observable_gauge(
            "sagadsl.sagas.stuck", callbacks=[self._stuck], unit="{saga}",
            description="Active sagas that made no progress for longer than their timeouts allow")

    def _dead_letter_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        engine = self._observed
        assert engine is not None
        try:
            return [Observation(engine.count("dead_letter"))]
        except Exception:
            logger.warning("could not count dead-letter sagas for the sagadsl.dead_letter.depth gauge",
                           exc_info=True)
            return []

    def _stuck(self, options: CallbackOptions) -> Iterable[Observation]:
        engine = self._observed
        assert engine is not None
        try:
            return [Observation(engine.query(stuck=True, limit=0).total)]
        except Exception:
            logger.warning("could not count stuck sagas for the sagadsl.sagas.stuck gauge", exc_info=True)
            return []

    # -- saga executions -----------------------------------------------------------

    def _saga_start(self, event: SagaEvent) -> None:
        with self._guard:
            interrupted = self._executions.pop(event.saga_id, None)
            previous = self._previous.get(event.saga_id)
        if interrupted is not None:
            # The last execution in this process ended without a terminal
            # event: a BaseException (cancellation, interpreter shutdown)
            # went through the executor. Close its spans so they export.
            self._end_execution(interrupted, "interrupted",
                                "the execution stopped before the saga reached a terminal status")
            previous = interrupted.span.get_span_context()
        resumed = bool(event.resumed)
        links = [Link(previous, {"saga.link": "previous_execution"})] if previous is not None else None
        span = self._tracer.start_span(
            f"saga {event.saga_name}",
            attributes={"saga.id": event.saga_id, "saga.name": event.saga_name, "saga.resumed": resumed},
            links=links)
        self._executions[event.saga_id] = _Execution(
            span, trace.set_span_in_context(span), event.saga_name, resumed)
        self._started.add(1, {"saga.name": event.saga_name, "saga.resumed": resumed})

    def _step_skipped(self, event: SagaEvent) -> None:
        execution = self._executions.get(event.saga_id)
        if execution is None or event.step is None:
            return
        if not execution.resumed:  # an engine that does not report ``resumed`` on saga_start
            execution.resumed = True
            execution.span.set_attribute("saga.resumed", True)
        execution.span.add_event("step skipped", {"saga.step": event.step})

    def _saga_complete(self, event: SagaEvent) -> None:
        execution = self._finish_execution(event)
        if execution is not None:
            self._end_execution(execution, "completed", None)
            self._completed.add(1, {"saga.name": execution.saga_name})

    def _saga_failed(self, event: SagaEvent) -> None:
        execution = self._finish_execution(event)
        if execution is not None:
            cause, step = _root_cause(event)
            self._end_execution(execution, "failed", _describe(cause) or "a step failed", cause, step)
            self._failed.add(1, {"saga.name": execution.saga_name})

    def _dead_letter(self, event: SagaEvent) -> None:
        execution = self._finish_execution(event)
        if execution is not None:
            cause, step = _root_cause(event)
            self._end_execution(execution, "dead_letter", _describe(cause) or "a compensation failed",
                                cause, step)
            self._dead_lettered.add(1, {"saga.name": execution.saga_name})

    def _finish_execution(self, event: SagaEvent) -> _Execution | None:
        with self._guard:
            execution = self._executions.pop(event.saga_id, None)
            if execution is not None:
                self._previous[event.saga_id] = execution.span.get_span_context()
                self._previous.move_to_end(event.saga_id)
                while len(self._previous) > self._remembered:
                    self._previous.popitem(last=False)
        return execution

    def _end_execution(self, execution: _Execution, outcome: str, failure: str | None,
                       error: BaseException | None = None, step: str | None = None) -> None:
        for attempt in list(execution.attempts.values()):
            self._end_attempt(attempt, "interrupted", "the saga execution ended while this attempt ran")
        execution.attempts.clear()
        span = execution.span
        span.set_attribute("saga.outcome", outcome)
        if step is not None:
            span.set_attribute("saga.step", step)
        if failure is not None:
            if error is not None:
                span.set_attribute("error.type", type(error).__qualname__)
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, failure))
        span.end()

    # -- attempts ------------------------------------------------------------------

    def _attempt_start(self, event: SagaEvent) -> None:
        execution = self._executions.get(event.saga_id)
        if execution is None or event.step is None:
            return
        phase = FORWARD if event.kind == "step_start" else COMPENSATE
        key = (event.step, phase)
        if not execution.span.is_recording():
            # Tracing is off (no SDK configured, or the saga was not sampled):
            # keep only what the metrics need, and skip span and context work.
            execution.attempts[key] = _Attempt(trace.INVALID_SPAN, time.perf_counter(), None, None)
            return
        attributes: dict[str, str | int] = {
            "saga.id": event.saga_id, "saga.name": event.saga_name, "saga.step": event.step,
            "saga.phase": phase, "saga.attempt": event.attempt or 1,
        }
        if event.idempotency_key is not None:
            attributes["saga.idempotency_key"] = event.idempotency_key
        name = f"step {event.step}" if phase == FORWARD else f"compensate {event.step}"
        span = self._tracer.start_span(name, context=execution.parent, attributes=attributes)
        # The attempt's span becomes current in the attempt's task, so that
        # the step's code (and the thread a sync step runs on) nests its own
        # spans under it. It is detached only from that same task.
        token = otel_context.attach(trace.set_span_in_context(span))
        execution.attempts[key] = _Attempt(span, time.perf_counter(), token, _current_task())

    def _attempt_complete(self, event: SagaEvent) -> None:
        phase = FORWARD if event.kind == "step_complete" else COMPENSATE
        outcome = "completed" if phase == FORWARD else "compensated"
        found = self._pop_attempt(event, phase)
        if found is None:
            return
        execution, step, attempt = found
        self._end_attempt(attempt, outcome, None)
        self._record_duration(execution, step, phase, outcome, attempt, event.duration)
        if phase == COMPENSATE:
            self._compensations.add(1, {"saga.name": execution.saga_name, "saga.step": step,
                                        "saga.outcome": outcome})

    def _attempt_retry(self, event: SagaEvent) -> None:
        phase = FORWARD if event.kind == "step_retry" else COMPENSATE
        execution = self._executions.get(event.saga_id)
        if execution is None or event.step is None:
            return
        self._retries.add(1, {"saga.name": execution.saga_name, "saga.step": event.step,
                              "saga.phase": phase})
        found = self._pop_attempt(event, phase)
        if found is not None:  # None after a timeout, which already ended the attempt
            _, step, attempt = found
            self._end_attempt(attempt, "retried", _describe(event.error), event.error)
            self._record_duration(execution, step, phase, "retried", attempt)

    def _attempt_timeout(self, event: SagaEvent) -> None:
        phase = FORWARD if event.kind == "step_timeout" else COMPENSATE
        found = self._pop_attempt(event, phase)
        if found is not None:
            execution, step, attempt = found
            self._end_attempt(attempt, "timed_out", _describe(event.error), event.error)
            self._record_duration(execution, step, phase, "timed_out", attempt, event.duration)

    def _attempt_failed(self, event: SagaEvent) -> None:
        phase = FORWARD if event.kind == "step_failed" else COMPENSATE
        execution = self._executions.get(event.saga_id)
        if execution is None or event.step is None:
            return
        found = self._pop_attempt(event, phase)
        if found is not None:  # None after a timeout, which already ended the attempt
            _, step, attempt = found
            self._end_attempt(attempt, "failed", _describe(event.error) or "the attempt failed",
                              event.error)
            self._record_duration(execution, step, phase, "failed", attempt)
        if phase == COMPENSATE:
            self._compensations.add(1, {"saga.name": execution.saga_name, "saga.step": event.step,
                                        "saga.outcome": "failed"})

    def _pop_attempt(self, event: SagaEvent, phase: str) -> tuple[_Execution, str, _Attempt] | None:
        execution = self._executions.get(event.saga_id)
        if execution is None or event.step is None:
            return None
        attempt = execution.attempts.pop((event.step, phase), None)
        if attempt is None:
            return None
        return execution, event.step, attempt

    def _end_attempt(self, attempt: _Attempt, outcome: str, failure: str | None,
                     error: BaseException | None = None) -> None:
        span = attempt.span
        span.set_attribute("saga.outcome", outcome)
        if failure is not None:
            if error is not None:
                span.set_attribute("error.type", type(error).__qualname__)
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, failure))
        span.end()
        if attempt.token is not None and attempt.task is not None and attempt.task is _current_task():
            otel_context.detach(attempt.token)

    def _record_duration(self, execution: _Execution, step: str, phase: str, outcome: str,
                         attempt: _Attempt, measured: float | None = None) -> None:
        seconds = measured if measured is not None else time.perf_counter() - attempt.started
        self._step_duration.record(seconds, {"saga.name": execution.saga_name, "saga.step": step,
                                             "saga.phase": phase, "saga.outcome": outcome})

    def __repr__(self) -> str:
        return f"OpenTelemetryEvents(tracer={self._tracer!r})"


def instrument(
    engine: SagaEngine,
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> OpenTelemetryEvents:
    """Trace and measure every saga ``engine`` runs from now on, in one call.

    Adds the OpenTelemetry callbacks to the engine's existing events (which
    keep running, before them) and publishes its gauges.

    Args:
        engine: The engine to instrument.
        tracer_provider: Where spans go; default the global provider.
        meter_provider: Where metrics go; default the global provider.

    Returns:
        The installed :class:`OpenTelemetryEvents`.
    """
    telemetry = OpenTelemetryEvents(tracer_provider=tracer_provider, meter_provider=meter_provider)
    engine.events = SagaEvents.combine(engine.events, telemetry.events)
    telemetry.observe(engine)
    return telemetry
