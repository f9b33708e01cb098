"""Run one real saga with tracing on and draw its trace (docs/how-to/observability.md).

The saga reserves stock, charges a card (the first attempt hits a reset
connection and is retried) and fails to ship, so both completed steps are
compensated. Spans go to the OpenTelemetry SDK's in-memory exporter; this
script turns them into a text timeline and an SVG:

    python docs/snippets/render_trace.py [OUT_DIR]   # default: docs/how-to

writes ``observability-trace.txt`` and ``observability-trace.svg``.
"""

from __future__ import annotations

import asyncio
import html
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from sagadsl import RetryPolicy, Saga, SagaEngine, SagaFailedError, compensates, step
from sagadsl.observability import instrument


@dataclass
class Order:
    order_id: str
    sku: str
    cents: int


class PlaceOrder(Saga[Order], name="docs.observability.place_order"):
    @step(idempotency_key="reserve-{order_id}")
    def reserve(self) -> str:
        time.sleep(0.020)
        return f"r-{self.input.order_id}"

    @compensates(reserve)
    def release(self, reservation: str) -> None:
        time.sleep(0.008)

    @step(idempotency_key="charge-{order_id}", retry=RetryPolicy(max_attempts=3, backoff=0.01))
    async def charge(self) -> str:
        await asyncio.sleep(0.012)
        if self.attempt == 1:
            raise ConnectionError("payment gateway reset the connection")
        return f"pay-{self.step_key}"

    @compensates(charge)
    async def refund(self, payment: str) -> None:
        await asyncio.sleep(0.010)

    @step(idempotency_key="ship-{order_id}")
    def ship(self) -> str:
        time.sleep(0.006)
        raise ValueError("carrier rejected the address")


def record_trace() -> list[ReadableSpan]:
    """Run the saga once on a fresh SQLite file; return its finished spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tempfile.TemporaryDirectory() as tmp, SagaEngine(f"sqlite:///{tmp}/shop.db") as engine:
        instrument(engine, tracer_provider=provider, meter_provider=MeterProvider())
        try:
            engine.run(PlaceOrder, Order("o-1001", "sku-9", 1200), saga_id="order-o-1001",
                       idempotency_key="order-o-1001-v1")
        except SagaFailedError:
            pass
    provider.shutdown()
    return list(exporter.get_finished_spans())


@dataclass
class Row:
    depth: int
    span: ReadableSpan

    @property
    def label(self) -> str:
        attempt = (self.span.attributes or {}).get("saga.attempt")
        suffix = f" #{attempt}" if attempt is not None else ""
        return "  " * self.depth + self.span.name + suffix

    @property
    def failed(self) -> bool:
        return self.span.status.status_code is StatusCode.ERROR

    @property
    def outcome(self) -> str:
        return str((self.span.attributes or {}).get("saga.outcome", ""))


def rows(spans: list[ReadableSpan]) -> list[Row]:
    """Spans depth first, children in start order."""
    children: dict[int | None, list[ReadableSpan]] = {}
    ids = {s.context.span_id for s in spans}
    for s in spans:
        parent = s.parent.span_id if s.parent is not None and s.parent.span_id in ids else None
        children.setdefault(parent, []).append(s)
    out: list[Row] = []

    def walk(parent: int | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda s: s.start_time or 0):
            out.append(Row(depth, s))
            walk(s.context.span_id, depth + 1)

    walk(None, 0)
    return out


def _bounds(spans: list[ReadableSpan]) -> tuple[int, int]:
    return min(s.start_time or 0 for s in spans), max(s.end_time or 0 for s in spans)


def text_timeline(spans: list[ReadableSpan], width: int = 48) -> str:
    """A fixed-width timeline: one line per span, the bar placed on a shared time axis."""
    start, end = _bounds(spans)
    total = max(end - start, 1)
    table = rows(spans)
    label_width = max(len(r.label) for r in table) + 2
    root = table[0].span
    lines = [f"trace {root.context.trace_id:032x}  saga.id={(root.attributes or {}).get('saga.id')}",
             f"{'':{label_width}}0 ms{'':{width - 10}}{total / 1e6:6.1f} ms"]
    for r in table:
        s0 = ((r.span.start_time or 0) - start) * width // total
        s1 = max(s0 + 1, ((r.span.end_time or 0) - start) * width // total)
        bar = " " * s0 + ("░" if r.failed else "█") * (s1 - s0)
        ms = ((r.span.end_time or 0) - (r.span.start_time or 0)) / 1e6
        status = "ERROR" if r.failed else "ok"
        lines.append(f"{r.label:{label_width}}|{bar:{width}}| {ms:6.1f} ms  {status:5}  {r.outcome}")
    lines.append("")
    lines.append("█ ok   ░ status ERROR; the last column is saga.outcome")
    return "\n".join(lines) + "\n"


def svg_timeline(spans: list[ReadableSpan]) -> str:
    """The same timeline as a self-contained SVG."""
    start, end = _bounds(spans)
    total = max(end - start, 1)
    table = rows(spans)
    label_w, bar_w, row_h, top = 250, 520, 24, 40
    width, height = label_w + bar_w + 150, top + row_h * len(table) + 20
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="monospace" font-size="12">'),
           f'<rect width="{width}" height="{height}" fill="white"/>']
    for i in range(5):
        x = label_w + bar_w * i / 4
        out.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{height - 16}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{top - 14}" text-anchor="middle" fill="#555">'
                   f'{total * i / 4 / 1e6:.0f} ms</text>')
    for n, r in enumerate(table):
        y = top + n * row_h
        x0 = label_w + bar_w * ((r.span.start_time or 0) - start) / total
        w = max(2.0, bar_w * ((r.span.end_time or 0) - (r.span.start_time or 0)) / total)
        colour = "#e4572e" if r.failed else "#17a398"
        ms = ((r.span.end_time or 0) - (r.span.start_time or 0)) / 1e6
        out.append(f'<text x="8" y="{y + 15}" fill="#222">{html.escape(r.label).replace(" ", "&#160;")}</text>')
        out.append(f'<rect x="{x0:.1f}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" rx="3" '
                   f'fill="{colour}"><title>{html.escape(r.span.name)}: {ms:.1f} ms, '
                   f'{html.escape(r.outcome)}</title></rect>')
        out.append(f'<text x="{label_w + bar_w + 10}" y="{y + 15}" fill="#222">{ms:5.1f} ms '
                   f'{html.escape(r.outcome)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(out_dir: Path) -> None:
    spans = record_trace()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "observability-trace.txt").write_text(text_timeline(spans), encoding="utf-8")
    (out_dir / "observability-trace.svg").write_text(svg_timeline(spans), encoding="utf-8")
    print(text_timeline(spans), end="")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "how-to")
