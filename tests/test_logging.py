"""Structured logs: one ``sagadsl.*`` line per state change, with ``saga_id`` and ``step`` extras."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from sagadsl import (
    CompensationFailedError,
    CompensationPolicy,
    Saga,
    SagaEngine,
    SagaFailedError,
    compensates,
    step,
)


class Crash(BaseException):
    """Stands in for the process dying in the middle of a step."""


@dataclass
class Trip:
    trip_id: str
    fail_at: str = ""
    crash_at: str = ""
    cancel_breaks: bool = False


crashed: set[str] = set()


class BookTrip(Saga[Trip], name="tests.logging.book_trip"):
    @step(idempotency_key="flight-{trip_id}")
    def flight(self) -> str:
        return "FL-1"

    @compensates(flight)
    def cancel_flight(self, booking: str) -> None:
        if self.input.cancel_breaks:
            raise RuntimeError("airline offline")

    @step(idempotency_key="hotel-{trip_id}")
    async def hotel(self) -> str:
        if self.input.crash_at == "hotel" and self.saga_id not in crashed:
            crashed.add(self.saga_id)
            raise Crash()
        if self.input.fail_at == "hotel":
            raise ValueError("no rooms")
        return "H-1"


Line = tuple[str, str, str, object, object]


def lines(caplog: pytest.LogCaptureFixture, logger: str = "sagadsl.executor") -> list[Line]:
    """(logger, level, message, saga_id extra, step extra) of each record from ``logger``."""
    return [(r.name, r.levelname, r.getMessage(), getattr(r, "saga_id", "<missing>"),
             getattr(r, "step", "<missing>"))
            for r in caplog.records if r.name == logger]


@pytest.fixture(autouse=True)
def _debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sagadsl")


def test_successful_saga_logs_nothing_at_info_or_above(engine: SagaEngine,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    engine.run(BookTrip, Trip("t-1"), saga_id="t-1", idempotency_key="k-1")
    assert [r.getMessage() for r in caplog.records
            if r.name.startswith("sagadsl") and r.levelno >= logging.INFO] == []


def test_successful_saga_logs_each_state_change_at_debug(engine: SagaEngine,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    engine.run(BookTrip, Trip("t-1"), saga_id="t-1", idempotency_key="k-1")
    assert lines(caplog) == [
        ("sagadsl.executor", "DEBUG", "saga t-1 started", "t-1", None),
        ("sagadsl.executor", "DEBUG", "saga t-1 step flight completed", "t-1", "flight"),
        ("sagadsl.executor", "DEBUG", "saga t-1 step hotel completed", "t-1", "hotel"),
        ("sagadsl.executor", "DEBUG", "saga t-1 completed", "t-1", None),
    ]


def test_failed_step_and_its_compensation_are_logged(engine: SagaEngine,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(BookTrip, Trip("t-2", fail_at="hotel"), saga_id="t-2", idempotency_key="k-2")
    assert lines(caplog) == [
        ("sagadsl.executor", "DEBUG", "saga t-2 started", "t-2", None),
        ("sagadsl.executor", "DEBUG", "saga t-2 step flight completed", "t-2", "flight"),
        ("sagadsl.executor", "ERROR", "saga t-2 step hotel failed: ValueError: no rooms", "t-2", "hotel"),
        ("sagadsl.executor", "DEBUG", "saga t-2 step flight compensated", "t-2", "flight"),
        ("sagadsl.executor", "INFO",
         "saga t-2 failed at step hotel; every completed step was compensated", "t-2", None),
    ]


def test_a_failing_step_is_logged_with_its_traceback(engine: SagaEngine,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(BookTrip, Trip("t-6", fail_at="hotel"), saga_id="t-6", idempotency_key="k-6")
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    assert "in hotel" in caplog.text and "ValueError: no rooms" in caplog.text


def test_failed_compensation_is_an_error_and_dead_letter_a_warning(engine: SagaEngine,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(CompensationFailedError):
        engine.run(BookTrip, Trip("t-3", fail_at="hotel", cancel_breaks=True), saga_id="t-3",
                   idempotency_key="k-3")
    warnings = [line for line in lines(caplog) if line[1] in ("WARNING", "ERROR")]
    assert warnings == [
        ("sagadsl.executor", "ERROR", "saga t-3 step hotel failed: ValueError: no rooms", "t-3", "hotel"),
        ("sagadsl.executor", "ERROR",
         "saga t-3 step flight could not be compensated: RuntimeError: airline offline", "t-3", "flight"),
        ("sagadsl.executor", "WARNING",
         "saga t-3 moved to dead letter: cancel_flight (compensating flight): RuntimeError: airline offline",
         "t-3", None),
    ]
    compensation_failure = [r for r in caplog.records if r.getMessage().startswith("saga t-3 step flight could")]
    assert compensation_failure[0].exc_info is not None


def test_resumed_saga_says_so(engine: SagaEngine, caplog: pytest.LogCaptureFixture) -> None:
    crashed.clear()
    with pytest.raises(Crash):
        engine.run(BookTrip, Trip("t-4", crash_at="hotel"), saga_id="t-4", idempotency_key="k-4")
    caplog.clear()
    engine.run(BookTrip, Trip("t-4", crash_at="hotel"), saga_id="t-4", idempotency_key="k-4")
    assert lines(caplog) == [
        ("sagadsl.executor", "DEBUG", "saga t-4 resumed", "t-4", None),
        ("sagadsl.executor", "DEBUG", "saga t-4 step hotel completed", "t-4", "hotel"),
        ("sagadsl.executor", "DEBUG", "saga t-4 completed", "t-4", None),
    ]


def test_a_format_string_can_name_the_extras(engine: SagaEngine) -> None:
    """The setup the docs recommend: ``defaults`` fill the extras on records that lack them."""
    formatter = logging.Formatter("%(levelname)s %(name)s saga=%(saga_id)s step=%(step)s %(message)s",
                                  defaults={"saga_id": "-", "step": "-"})
    rendered: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            rendered.append(self.format(record))

    handler = Collect()
    handler.setFormatter(formatter)
    root = logging.getLogger("sagadsl")
    root.addHandler(handler)
    try:
        with pytest.raises(SagaFailedError):
            engine.run(BookTrip, Trip("t-5", fail_at="hotel"), saga_id="t-5", idempotency_key="k-5")
    finally:
        root.removeHandler(handler)
    assert "ERROR sagadsl.executor saga=t-5 step=hotel saga t-5 step hotel failed: ValueError: no rooms" \
        in [line.splitlines()[0] for line in rendered]


def test_compensation_policy_retries_are_not_logged_per_attempt(engine: SagaEngine,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Only the final outcome of a compensation is a state change; its attempts are not."""
    assert CompensationPolicy().max_attempts == 3
    with pytest.raises(CompensationFailedError):
        engine.run(BookTrip, Trip("t-6", fail_at="hotel", cancel_breaks=True), saga_id="t-6",
                   idempotency_key="k-6")
    assert [line[2] for line in lines(caplog) if line[4] == "flight"] == [
        "saga t-6 step flight completed",
        "saga t-6 step flight could not be compensated: RuntimeError: airline offline",
    ]
