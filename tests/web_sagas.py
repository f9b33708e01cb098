"""Sagas for the web console's tests and screenshots: every state, a fan-out graph, hostile text.

``saga-admin serve --import tests.web_sagas`` (run from the repository root)
registers the same classes as the tests, like ``tests.cli_sagas`` does for
the CLI tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sagadsl import (
    CompensationFailedError,
    CompensationPolicy,
    Saga,
    SagaEngine,
    SagaFailedError,
    compensates,
    step,
)
from sagadsl.testing import FakeClock
from tests import cli_sagas
from tests.cli_sagas import Parcel, Shipping

__all__ = ["HOSTILE", "HOSTILE_ID", "Booking", "Hostile", "Trip", "populate"]

#: Markup that runs script if a page ever shows it unescaped: it would set the title or open a dialog.
HOSTILE = "<script>document.title='pwned'</script>\"><img src=x onerror=alert(1)>"
#: An id with markup and every character that is special in a URL.
HOSTILE_ID = f"evil/{HOSTILE}?a=1&b=2#frag 100%"


@dataclass
class Trip:
    """A trip to book: flight and hotel are booked side by side, then paid."""

    trip_id: str
    city: str
    nights: int
    fail_payment: bool = False
    hotel_down: bool = False


class Booking(Saga[Trip], name="demo.booking"):
    """Book a flight and a hotel concurrently, charge the card, then send the confirmation."""

    @step(idempotency_key="flight-{trip_id}", after=())
    def book_flight(self) -> str:
        return f"FL-{self.input.trip_id}"

    @compensates(book_flight)
    def cancel_flight(self, flight: str) -> None:
        pass

    @step(idempotency_key="hotel-{trip_id}", after=(), compensation=CompensationPolicy(max_attempts=1))
    def book_hotel(self) -> dict[str, object]:
        return {"hotel": f"H-{self.input.city}", "nights": self.input.nights}

    @compensates(book_hotel)
    def cancel_hotel(self, hotel: dict[str, object]) -> None:
        if self.input.hotel_down:
            raise ConnectionError(f"hotel API timed out cancelling booking {hotel['hotel']}")

    @step(idempotency_key="pay-{trip_id}", after=(book_flight, book_hotel))
    def charge_card(self) -> int:
        if self.input.fail_payment:
            raise RuntimeError(f"card declined for trip {self.input.trip_id}")
        return 120 * self.input.nights

    @step(idempotency_key="mail-{trip_id}")
    def send_confirmation(self) -> str:
        return f"sent to traveller of {self.input.trip_id}"


@dataclass
class Payload:
    """Input whose text is markup."""

    note: str


class Hostile(Saga[Payload], name="demo.hostile"):
    """A saga whose input, errors and tracebacks are markup; it ends in dead letter."""

    @step(idempotency_key="grab-{note}")
    def grab(self) -> str:
        return HOSTILE

    @compensates(grab)
    def ungrab(self, grabbed: str) -> None:
        raise ValueError(f"compensation says {HOSTILE}")

    @step(idempotency_key="explode-{note}", compensation=CompensationPolicy(max_attempts=1))
    def explode(self) -> None:
        raise RuntimeError(f"step says {HOSTILE}")


def populate(url: str, schema: str | None = None, *, hostile: bool = True, trips: int = 3) -> None:
    """The CLI's four sagas (``ship-ok``, ``ship-lost``, ``ship-jammed`` in dead letter,
    ``ship-waiting`` stuck), ``trips`` bookings (the last one's payment fails), the
    booking ``trip-jammed`` in dead letter (its hotel could not be cancelled) and,
    with ``hostile``, the dead-lettered saga :data:`HOSTILE_ID`.
    """
    cli_sagas.populate(url, schema)
    # Each reading of the clock moves it on, so that steps have durations to draw.
    clock = FakeClock(datetime.now(timezone.utc) - timedelta(minutes=5), auto_advance=0.04)
    engine = SagaEngine(url, schema=schema, clock=clock)
    try:
        for n in range(trips):
            trip = Trip(f"t-{n + 1}", ["Lisbon", "Oslo", "Kyoto"][n % 3], 2 + n, fail_payment=n == trips - 1)
            try:
                engine.run(Booking, trip, saga_id=f"trip-{n + 1}", idempotency_key=f"k-trip-{n + 1}")
            except SagaFailedError:
                pass
        try:
            engine.run(Booking, Trip("t-jammed", "Porto", 3, fail_payment=True, hotel_down=True),
                       saga_id="trip-jammed", idempotency_key="k-trip-jammed")
        except CompensationFailedError:
            pass
        if hostile:
            try:
                engine.run(Hostile, Payload(HOSTILE), saga_id=HOSTILE_ID, idempotency_key="k-hostile")
            except CompensationFailedError:
                pass
    finally:
        engine.close()


def populate_many(url: str, count: int, schema: str | None = None) -> None:
    """``count`` completed bookings created over the last day, for paging and load."""
    gap = min(30.0, 86400 / max(count, 1))
    clock = FakeClock(datetime.now(timezone.utc) - timedelta(days=1))
    engine = SagaEngine(url, schema=schema, clock=clock)
    try:
        for n in range(count):
            engine.run(Booking, Trip(f"bulk-{n:05d}", "Oslo", 1), saga_id=f"bulk-{n:05d}",
                       idempotency_key=f"k-bulk-{n}")
            clock.advance(gap)
    finally:
        engine.close()


__all__ += ["Parcel", "Payload", "Shipping", "populate_many"]
