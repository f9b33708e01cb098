"""Traces and metrics for sagas, on OpenTelemetry (``pip install sagadsl[otel]``).

Nothing here is imported by ``import sagadsl``: an application that does not
use OpenTelemetry never loads it, and an engine without events pays nothing.

Example::

    from sagadsl import SagaEngine
    from sagadsl.observability import OpenTelemetryEvents

    telemetry = OpenTelemetryEvents()          # the global tracer and meter providers
    engine = SagaEngine(url, events=telemetry.events)
    telemetry.observe(engine)                  # dead-letter depth and stuck-saga gauges

Logs need no setup here: sagadsl logs state changes on the standard
``logging`` loggers ``sagadsl.*`` (see ``docs/how-to/observability.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .otel import OpenTelemetryEvents, instrument

__all__ = ["OpenTelemetryEvents", "instrument"]


def __getattr__(name: str) -> Any:
    # Lazy, so that this package can be imported (and documented) without
    # OpenTelemetry, and the missing dependency is named when it is needed.
    if name in __all__:
        from . import otel

        return getattr(otel, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
