"""OpenTelemetry spans and metrics for a saga's course, read back from the SDK's in-memory exporters."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sagadsl import (
    CompensationFailedError,
    RetryPolicy,
    Saga,
    SagaEngine,
    SagaFailedError,
    compensates,
    step,
)
from sagadsl.observability import OpenTelemetryEvents, instrument
from sagadsl.storage import InMemoryStorage
from sagadsl.testing import FakeClock


class Crash(BaseException):
    """Stands in for the process dying in the middle of a step."""


@dataclass
class Order:
    order_id: str
    fail_at: str = ""
    crash_at: str = ""
    release_breaks: bool = False
    flaky: bool = False


crashed: set[str] = set()
flaked: set[str] = set()
seen_spans: dict[str, Any] = {}


def _maybe_fail(saga: Saga[Order], name: str) -> None:
    seen_spans[name] = trace.get_current_span().get_span_context()
    if saga.input.crash_at == name and saga.saga_id not in crashed:
        crashed.add(saga.saga_id)
        raise Crash()
    if saga.input.fail_at == name:
        raise ValueError(f"{name} declined")


class PlaceOrder(Saga[Order], name="tests.otel.place_order"):
    @step(idempotency_key="reserve-{order_id}")
    def reserve(self) -> str:
        _maybe_fail(self, "reserve")
        return "r-1"

    @compensates(reserve)
    def release(self, reservation: str) -> None:
        if self.input.release_breaks:
            raise RuntimeError("inventory service down")

    @step(idempotency_key="charge-{order_id}", retry=RetryPolicy(max_attempts=2))
    async def charge(self) -> int:
        if self.input.flaky and self.saga_id not in flaked:
            flaked.add(self.saga_id)
            raise ConnectionError("payment gateway reset")
        _maybe_fail(self, "charge")
        return 1200

    @compensates(charge)
    async def refund(self, payment: int) -> None:
        pass

    @step(idempotency_key="ship-{order_id}")
    def ship(self) -> str:
        _maybe_fail(self, "ship")
        return "parcel-1"


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    events: OpenTelemetryEvents
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """The data points of metric ``name`` by sorted attributes: a value or a histogram count."""
        out: dict[tuple[tuple[str, Any], ...], Any] = {}
        data = self.metrics.get_metrics_data()
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        key = tuple(sorted(dict(point.attributes or {}).items()))
                        out[key] = point.count if hasattr(point, "bucket_counts") else point.value
        return out


@pytest.fixture
def telemetry(engine: SagaEngine) -> Iterator[Telemetry]:
    """``engine`` instrumented with in-memory span and metric exporters."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    installed = instrument(engine, tracer_provider=tracer_provider, meter_provider=meter_provider)
    seen_spans.clear()
    yield Telemetry(exporter, reader, installed, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


NAME = "tests.otel.place_order"


def attrs(**kw: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted({k.replace("_", "."): v for k, v in kw.items()}.items()))


def tree(spans: list[ReadableSpan]) -> list[tuple[str, ...]]:
    """Each span as (parent name or '-', name, phase, attempt, outcome, status), in start order."""
    by_id = {s.context.span_id: s for s in spans}
    rows = []
    for s in sorted(spans, key=lambda s: s.start_time or 0):
        parent = by_id[s.parent.span_id].name if s.parent is not None and s.parent.span_id in by_id else "-"
        a = s.attributes or {}
        rows.append((parent, s.name, str(a.get("saga.phase", "")), str(a.get("saga.attempt", "")),
                     str(a["saga.outcome"]), s.status.status_code.name))
    return rows


# -- completed ----------------------------------------------------------------------


def test_completed_saga_is_one_span_with_a_child_per_step(engine: SagaEngine, telemetry: Telemetry) -> None:
    engine.run(PlaceOrder, Order("o-1"), saga_id="o-1", idempotency_key="k-1")
    assert tree(telemetry.finished()) == [
        ("-", f"saga {NAME}", "", "", "completed", "UNSET"),
        (f"saga {NAME}", "step reserve", "forward", "1", "completed", "UNSET"),
        (f"saga {NAME}", "step charge", "forward", "1", "completed", "UNSET"),
        (f"saga {NAME}", "step ship", "forward", "1", "completed", "UNSET"),
    ]


def test_step_span_carries_saga_step_phase_attempt_and_idempotency_key(
        engine: SagaEngine, telemetry: Telemetry) -> None:
    engine.run(PlaceOrder, Order("o-1"), saga_id="o-1", idempotency_key="k-1")
    (charge,) = [s for s in telemetry.finished() if s.name == "step charge"]
    assert dict(charge.attributes or {}) == {
        "saga.id": "o-1", "saga.name": NAME, "saga.step": "charge", "saga.phase": "forward",
        "saga.attempt": 1, "saga.idempotency_key": "charge-o-1", "saga.outcome": "completed",
    }
    (root,) = [s for s in telemetry.finished() if s.parent is None]
    assert dict(root.attributes or {}) == {
        "saga.id": "o-1", "saga.name": NAME, "saga.resumed": False, "saga.outcome": "completed"}
    assert {s.context.trace_id for s in telemetry.finished()} == {root.context.trace_id}


def test_completed_saga_metrics(engine: SagaEngine, telemetry: Telemetry) -> None:
    engine.run(PlaceOrder, Order("o-1"), saga_id="o-1", idempotency_key="k-1")
    assert telemetry.points("sagadsl.sagas.started") == {attrs(saga_name=NAME, saga_resumed=False): 1}
    assert telemetry.points("sagadsl.sagas.completed") == {attrs(saga_name=NAME): 1}
    assert telemetry.points("sagadsl.sagas.failed") == {}
    assert telemetry.points("sagadsl.step.duration") == {
        attrs(saga_name=NAME, saga_step=name, saga_phase="forward", saga_outcome="completed"): 1
        for name in ("reserve", "charge", "ship")}


def test_run_inside_a_span_makes_the_saga_its_child(engine: SagaEngine, telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("POST /orders") as request:
        engine.run(PlaceOrder, Order("o-1"), saga_id="o-1", idempotency_key="k-1")
    (saga,) = [s for s in telemetry.finished() if s.name == f"saga {NAME}"]
    assert saga.parent is not None
    assert saga.parent.span_id == request.get_span_context().span_id


def test_step_code_runs_with_its_attempt_span_current(engine: SagaEngine, telemetry: Telemetry) -> None:
    engine.run(PlaceOrder, Order("o-1"), saga_id="o-1", idempotency_key="k-1")
    spans = {s.name: s.context.span_id for s in telemetry.finished()}
    # reserve and ship are sync (run on the step thread pool); charge is async.
    assert seen_spans["reserve"].span_id == spans["step reserve"]
    assert seen_spans["charge"].span_id == spans["step charge"]
    assert seen_spans["ship"].span_id == spans["step ship"]


def test_retried_step_has_a_span_per_attempt_and_counts_a_retry(
        engine: SagaEngine, telemetry: Telemetry) -> None:
    flaked.clear()
    engine.run(PlaceOrder, Order("o-1", flaky=True), saga_id="o-1", idempotency_key="k-1")
    charges = [row for row in tree(telemetry.finished()) if row[1] == "step charge"]
    assert charges == [
        (f"saga {NAME}", "step charge", "forward", "1", "retried", "ERROR"),
        (f"saga {NAME}", "step charge", "forward", "2", "completed", "UNSET"),
    ]
    (first,) = [s for s in telemetry.finished() if s.name == "step charge" and s.status.is_ok is False]
    assert first.status.description == "ConnectionError: payment gateway reset"
    assert [e.name for e in first.events] == ["exception"]
    assert telemetry.points("sagadsl.step.retries") == {
        attrs(saga_name=NAME, saga_step="charge", saga_phase="forward"): 1}


# -- compensated --------------------------------------------------------------------


def test_compensated_saga_spans(engine: SagaEngine, telemetry: Telemetry) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(PlaceOrder, Order("o-2", fail_at="ship"), saga_id="o-2", idempotency_key="k-2")
    assert tree(telemetry.finished()) == [
        ("-", f"saga {NAME}", "", "", "failed", "ERROR"),
        (f"saga {NAME}", "step reserve", "forward", "1", "completed", "UNSET"),
        (f"saga {NAME}", "step charge", "forward", "1", "completed", "UNSET"),
        (f"saga {NAME}", "step ship", "forward", "1", "failed", "ERROR"),
        (f"saga {NAME}", "compensate charge", "compensate", "1", "compensated", "UNSET"),
        (f"saga {NAME}", "compensate reserve", "compensate", "1", "compensated", "UNSET"),
    ]
    (root,) = [s for s in telemetry.finished() if s.parent is None]
    assert root.status.description == "ValueError: ship declined"
    assert (root.attributes or {})["saga.step"] == "ship"
    (release,) = [s for s in telemetry.finished() if s.name == "compensate reserve"]
    assert (release.attributes or {})["saga.idempotency_key"] == "reserve-o-2"


def test_compensated_saga_metrics(engine: SagaEngine, telemetry: Telemetry) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(PlaceOrder, Order("o-2", fail_at="ship"), saga_id="o-2", idempotency_key="k-2")
    assert telemetry.points("sagadsl.sagas.failed") == {attrs(saga_name=NAME): 1}
    assert telemetry.points("sagadsl.sagas.completed") == {}
    assert telemetry.points("sagadsl.compensations") == {
        attrs(saga_name=NAME, saga_step="charge", saga_outcome="compensated"): 1,
        attrs(saga_name=NAME, saga_step="reserve", saga_outcome="compensated"): 1,
    }
    durations = telemetry.points("sagadsl.step.duration")
    assert durations[attrs(saga_name=NAME, saga_step="ship", saga_phase="forward", saga_outcome="failed")] == 1
    assert durations[attrs(saga_name=NAME, saga_step="reserve", saga_phase="compensate",
                           saga_outcome="compensated")] == 1


# -- resumed ------------------------------------------------------------------------


def test_resumed_saga_is_a_new_execution_span_linked_to_the_interrupted_one(
        engine: SagaEngine, telemetry: Telemetry) -> None:
    crashed.clear()
    with pytest.raises(Crash):
        engine.run(PlaceOrder, Order("o-3", crash_at="charge"), saga_id="o-3", idempotency_key="k-3")
    engine.run(PlaceOrder, Order("o-3", crash_at="charge"), saga_id="o-3", idempotency_key="k-3")
    spans = telemetry.finished()
    first, second = sorted((s for s in spans if s.parent is None), key=lambda s: s.start_time or 0)
    assert tree(spans) == [
        ("-", f"saga {NAME}", "", "", "interrupted", "ERROR"),
        (f"saga {NAME}", "step reserve", "forward", "1", "completed", "UNSET"),
        (f"saga {NAME}", "step charge", "forward", "1", "interrupted", "ERROR"),
        ("-", f"saga {NAME}", "", "", "completed", "UNSET"),
        (f"saga {NAME}", "step charge", "forward", "1", "completed", "UNSET"),
        (f"saga {NAME}", "step ship", "forward", "1", "completed", "UNSET"),
    ]
    assert (first.attributes or {})["saga.resumed"] is False
    assert (second.attributes or {})["saga.resumed"] is True
    assert (second.attributes or {})["saga.id"] == "o-3"
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    assert [(e.name, dict(e.attributes or {})) for e in second.events] == [
        ("step skipped", {"saga.step": "reserve"})]
    resumed_children = [s for s in spans if s.parent is not None
                        and s.parent.span_id == second.context.span_id]
    assert {s.name for s in resumed_children} == {"step charge", "step ship"}


def test_resumed_saga_metrics(engine: SagaEngine, telemetry: Telemetry) -> None:
    crashed.clear()
    with pytest.raises(Crash):
        engine.run(PlaceOrder, Order("o-3", crash_at="charge"), saga_id="o-3", idempotency_key="k-3")
    engine.run(PlaceOrder, Order("o-3", crash_at="charge"), saga_id="o-3", idempotency_key="k-3")
    assert telemetry.points("sagadsl.sagas.started") == {
        attrs(saga_name=NAME, saga_resumed=False): 1, attrs(saga_name=NAME, saga_resumed=True): 1}
    assert telemetry.points("sagadsl.sagas.completed") == {attrs(saga_name=NAME): 1}


def test_resume_by_another_process_is_marked_resumed_without_a_link(clock: FakeClock) -> None:
    """A fresh ``OpenTelemetryEvents`` stands in for the worker process that takes the saga over."""
    crashed.clear()
    storage = InMemoryStorage()
    with SagaEngine(storage, clock=clock) as first, pytest.raises(Crash):
        first.run(PlaceOrder, Order("o-4", crash_at="reserve"), saga_id="o-4", idempotency_key="k-4")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with SagaEngine(storage, clock=clock) as worker:
        instrument(worker, tracer_provider=provider, meter_provider=MeterProvider())
        worker.resume("o-4")
    (root,) = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert dict(root.attributes or {}) == {
        "saga.id": "o-4", "saga.name": NAME, "saga.resumed": True, "saga.outcome": "completed"}
    assert list(root.links) == []


# -- dead letter --------------------------------------------------------------------


def test_dead_lettered_saga_spans(engine: SagaEngine, telemetry: Telemetry) -> None:
    with pytest.raises(CompensationFailedError):
        engine.run(PlaceOrder, Order("o-5", fail_at="charge", release_breaks=True), saga_id="o-5",
                   idempotency_key="k-5")
    assert tree(telemetry.finished()) == [
        ("-", f"saga {NAME}", "", "", "dead_letter", "ERROR"),
        (f"saga {NAME}", "step reserve", "forward", "1", "completed", "UNSET"),
        (f"saga {NAME}", "step charge", "forward", "1", "retried", "ERROR"),
        (f"saga {NAME}", "step charge", "forward", "2", "failed", "ERROR"),
        (f"saga {NAME}", "compensate reserve", "compensate", "1", "retried", "ERROR"),
        (f"saga {NAME}", "compensate reserve", "compensate", "2", "retried", "ERROR"),
        (f"saga {NAME}", "compensate reserve", "compensate", "3", "failed", "ERROR"),
    ]
    (root,) = [s for s in telemetry.finished() if s.parent is None]
    assert root.status.description == "RuntimeError: inventory service down"
    assert (root.attributes or {})["error.type"] == "RuntimeError"


def test_dead_lettered_saga_metrics(engine: SagaEngine, telemetry: Telemetry) -> None:
    with pytest.raises(CompensationFailedError):
        engine.run(PlaceOrder, Order("o-5", fail_at="charge", release_breaks=True), saga_id="o-5",
                   idempotency_key="k-5")
    assert telemetry.points("sagadsl.sagas.dead_lettered") == {attrs(saga_name=NAME): 1}
    assert telemetry.points("sagadsl.sagas.failed") == {}
    assert telemetry.points("sagadsl.compensations") == {
        attrs(saga_name=NAME, saga_step="reserve", saga_outcome="failed"): 1}
    assert telemetry.points("sagadsl.step.retries") == {
        attrs(saga_name=NAME, saga_step="charge", saga_phase="forward"): 1,
        attrs(saga_name=NAME, saga_step="reserve", saga_phase="compensate"): 2}
    assert telemetry.points("sagadsl.dead_letter.depth") == {(): 1}


def test_dead_letter_depth_gauge_follows_retry(engine: SagaEngine, telemetry: Telemetry) -> None:
    assert telemetry.points("sagadsl.dead_letter.depth") == {(): 0}
    with pytest.raises(CompensationFailedError):
        engine.run(PlaceOrder, Order("o-5", fail_at="charge", release_breaks=True), saga_id="o-5",
                   idempotency_key="k-5")
    assert telemetry.points("sagadsl.dead_letter.depth") == {(): 1}
    engine.retry("o-5")
    assert telemetry.points("sagadsl.dead_letter.depth") == {(): 0}


def test_stuck_gauge_counts_sagas_without_progress(engine: SagaEngine, telemetry: Telemetry,
                                                   clock: FakeClock) -> None:
    engine.submit(PlaceOrder, Order("o-6"), saga_id="o-6", idempotency_key="k-6")
    assert telemetry.points("sagadsl.sagas.stuck") == {(): 0}
    clock.advance(timedelta(minutes=17))  # past the 15-minute limit and the grace
    assert telemetry.points("sagadsl.sagas.stuck") == {(): 1}


# -- wiring -------------------------------------------------------------------------


def test_instrument_keeps_the_engines_own_events(clock: FakeClock) -> None:
    from sagadsl import SagaEvents

    kinds: list[str] = []
    with SagaEngine(InMemoryStorage(), clock=clock,
                    events=SagaEvents(on_saga_complete=lambda e: kinds.append(e.kind))) as eng:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        instrument(eng, tracer_provider=provider, meter_provider=MeterProvider())
        eng.run(PlaceOrder, Order("o-7"), saga_id="o-7", idempotency_key="k-7")
    assert kinds == ["saga_complete"]
    assert len(exporter.get_finished_spans()) == 4


def test_observing_a_second_engine_is_refused(engine: SagaEngine, telemetry: Telemetry) -> None:
    with pytest.raises(ValueError, match="already observes"):
        telemetry.events.observe(engine)


def test_importing_sagadsl_does_not_import_opentelemetry() -> None:
    code = ("import sys, sagadsl, sagadsl.observability; "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_opentelemetry_names_the_extra() -> None:
    code = ("import sys; sys.modules['opentelemetry'] = None\n"
            "try:\n    from sagadsl.observability import OpenTelemetryEvents\n"
            "except ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("sagadsl.observability needs OpenTelemetry; install it with "
                                 "`pip install 'sagadsl[otel]'`")


# -- docs ---------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _timeline_rows(text: str) -> list[tuple[str, str, str]]:
    """(span label, status, outcome) of each bar row; the durations differ from run to run."""
    rows = []
    for line in text.splitlines():
        if line.count("|") == 2:
            label, _, tail = line.partition("|")
            _ms, _unit, status, outcome = tail.rsplit("|", 1)[1].split()
            rows.append((label.rstrip(), status, outcome))
    return rows


def test_trace_picture_in_the_docs_is_drawn_from_a_real_run(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(DOCS / "snippets" / "render_trace.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    drawn = (tmp_path / "observability-trace.txt").read_text(encoding="utf-8")
    assert _timeline_rows(drawn) == [
        ("saga docs.observability.place_order", "ERROR", "failed"),
        ("  step reserve #1", "ok", "completed"),
        ("  step charge #1", "ERROR", "retried"),
        ("  step charge #2", "ok", "completed"),
        ("  step ship #1", "ERROR", "failed"),
        ("  compensate charge #1", "ok", "compensated"),
        ("  compensate reserve #1", "ok", "compensated"),
    ]
    committed = (DOCS / "how-to" / "observability-trace.txt").read_text(encoding="utf-8")
    assert _timeline_rows(committed) == _timeline_rows(drawn)
    assert (tmp_path / "observability-trace.svg").read_text(encoding="utf-8").startswith("<svg ")
