"""Dead letter, step by step: a compensation fails, a person fixes the cause, the saga finishes.

1. ``book_hotel`` fails, so ``book_flight`` must be undone, but the airline's
   cancellation endpoint is down: ``cancel_flight`` fails on every attempt and
   the saga is parked in ``dead_letter`` (``run`` raises ``CompensationFailedError``).
2. An operator inspects it (``engine.get``, or ``saga-admin show``).
3. The airline is back; the operator retries it (``engine.retry``, or
   ``saga-admin retry``): the saga goes back to ``pending``.
4. A worker (here: ``engine.resume``) continues the compensation; the saga ends ``failed``,
   with everything undone.

Run it with ``python examples/dead_letter.py``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from sagadsl import (
    CompensationFailedError,
    CompensationPolicy,
    Saga,
    SagaEngine,
    SagaFailedError,
    compensates,
    step,
)


@dataclass
class Trip:
    trip_id: str


class Airline:
    """A stand-in for the airline's API, with an outage switch."""

    cancellations_down = True

    def cancel(self, booking: str) -> None:
        if self.cancellations_down:
            raise ConnectionError("airline API: 503 Service Unavailable")
        print(f"   cancel_flight: {booking} cancelled")


airline = Airline()


class BookTrip(Saga[Trip], name="examples.dead_letter.book_trip"):
    @step(idempotency_key="flight-{trip_id}",
          compensation=CompensationPolicy(max_attempts=2, backoff=0.05))
    def book_flight(self) -> str:
        print("   book_flight: seat booked")
        return f"FL-{self.input.trip_id}"

    @compensates(book_flight)
    def cancel_flight(self, booking: str) -> None:
        airline.cancel(booking)

    @step(idempotency_key="hotel-{trip_id}")
    def book_hotel(self) -> str:
        raise RuntimeError("hotel fully booked")


def main(directory: Path) -> None:
    engine = SagaEngine(f"sqlite:///{directory / 'trips.db'}")

    print("1. The hotel fails and the flight cannot be cancelled:")
    try:
        engine.run(BookTrip, Trip("t-1"), saga_id="trip-t-1", idempotency_key="trip-t-1")
    except CompensationFailedError as exc:
        print(f"=> {exc.code}: the saga is parked in dead letter")

    print("2. Inspect it:")
    record = engine.get("trip-t-1")
    assert record is not None and record.error is not None
    print(f"   status: {record.status.value}")
    print(f"   failed step: {record.error.step_name} ({record.error.error})")
    print(f"   compensation error: {record.error.compensation_error}")
    for s in record.steps:
        print(f"   step {s.name}: {s.status.value}")
    print(f"   dead-letter sagas: {engine.count('dead_letter')}")

    print("3. The airline is back; retry the saga:")
    airline.cancellations_down = False
    retries = engine.retry("trip-t-1")
    record = engine.get("trip-t-1")
    assert record is not None
    print(f"=> retry #{retries}: status is now {record.status.value}")

    print("4. A worker resumes it and the compensation finishes:")
    try:
        engine.resume("trip-t-1")
    except SagaFailedError as exc:
        print(f"=> {exc.code}: every completed step is undone")
    record = engine.get("trip-t-1")
    assert record is not None
    print(f"   status: {record.status.value}; steps: "
          + ", ".join(f"{s.name} {s.status.value}" for s in record.steps))
    engine.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
