"""What OpenTelemetry instrumentation costs on the sequential 3-step saga.

Three configurations of the same saga:

* plain: no events at all;
* disabled: ``OpenTelemetryEvents`` wired in, with OpenTelemetry's no-op
  tracer and meter providers (instrumented code, telemetry turned off);
* enabled: the OpenTelemetry SDK recording every span (batched to an
  exporter that drops them) and every metric (an in-memory reader).

What tracing adds is CPU in the thread that drives the saga; on the
sequential path it adds straight to the saga's wall time. Throughput alone
cannot resolve a 2 % difference on a shared machine (the commit rate drifts
by more than that between rounds), so the cost is measured in two parts:

1. the extra CPU per saga of each configuration over plain, measured on
   in-memory storage (no database noise) with async steps (no thread
   hand-offs, whose cost varies more than what is measured; the events are
   the same), in interleaved rounds, as the median of the per-round
   differences of thread CPU time;
2. the plain saga's wall time on PostgreSQL, measured in the same run.

overhead = extra CPU per saga / plain wall time per saga on PostgreSQL.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import workloads as w

from sagadsl import InMemoryStorage, SagaEngine
from sagadsl.events import SagaEvents


@dataclass(frozen=True)
class TracingCost:
    """CPU per saga (seconds) of each configuration, per round, and the PostgreSQL wall time."""

    plain_cpu: list[float]
    disabled_cpu: list[float]
    enabled_cpu: list[float]
    pg_wall: list[float]

    def _extra(self, cpu: list[float]) -> float:
        return statistics.median(c - p for c, p in zip(cpu, self.plain_cpu))

    @property
    def disabled_overhead(self) -> float:
        return self._extra(self.disabled_cpu) / statistics.median(self.pg_wall)

    @property
    def enabled_overhead(self) -> float:
        return self._extra(self.enabled_cpu) / statistics.median(self.pg_wall)


def _events() -> tuple[SagaEvents, SagaEvents, Callable[[], None]]:
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import NoOpTracerProvider

    from sagadsl.observability import OpenTelemetryEvents

    class DropSpans(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    off = OpenTelemetryEvents(tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider())
    on = OpenTelemetryEvents(tracer_provider=tracer_provider, meter_provider=meter_provider)

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return off.events, on.events, shutdown


def _cpu_per_saga(runner: w.SagaRunner, sagas: int) -> float:
    started = time.thread_time()
    runner.sequential(w.ThreeAsyncSteps, sagas)
    return (time.thread_time() - started) / sagas


def measure(url: str, rounds: int, sagas: int, log: Callable[[str], None]) -> TracingCost:
    """``rounds`` interleaved rounds of ``sagas`` sagas per configuration."""
    off, on, shutdown = _events()
    logging.getLogger("sagadsl.engine").setLevel(logging.ERROR)  # the in-memory storage warning
    engines = [SagaEngine(InMemoryStorage()), SagaEngine(InMemoryStorage(), events=off),
               SagaEngine(InMemoryStorage(), events=on)]
    runners = [w.SagaRunner(e) for e in engines]
    cpu: list[list[float]] = [[], [], []]
    w.prepare_pg(url)
    pg = w.pg_engine(url)
    pg_runner = w.SagaRunner(pg)
    pg_wall: list[float] = []
    try:
        for runner in runners:
            w.warm_up(runner, w.ThreeAsyncSteps)
        w.warm_up(pg_runner, w.ThreeSteps)
        for r in range(1, rounds + 1):
            log(f"tracing round {r}/{rounds}")
            for i in [(r + k) % 3 for k in range(3)]:  # rotate who goes first
                cpu[i].append(_cpu_per_saga(runners[i], sagas * 10))
            pg_wall.append(1 / pg_runner.sequential(w.ThreeSteps, sagas))
    finally:
        for engine in (*engines, pg):
            engine.close()
        shutdown()
        w.drop_pg(url)
    return TracingCost(plain_cpu=cpu[0], disabled_cpu=cpu[1], enabled_cpu=cpu[2], pg_wall=pg_wall)
