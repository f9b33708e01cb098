"""Small sagas that put rows in every state, for the ``saga-admin`` tests and docs.

The CLI imports this module with ``--import tests.cli_sagas`` (run from the
repository root); the tests import it under the same name so that the saga
is registered once.
"""

from __future__ import annotations

import os
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

__all__ = ["Parcel", "Shipping", "populate", "refunds"]


@dataclass
class Parcel:
    """What to ship; ``outcome`` says how the run goes: ``ok``, ``lost`` or ``jammed``."""

    parcel_id: str
    grams: int
    outcome: str = "ok"


class RefundDesk:
    """A fake payment service whose refunds fail while it is ``down``.

    It starts down unless ``$CLI_SAGAS_REFUNDS`` is ``up``, so a ``saga-admin``
    process can be told that the service is back.
    """

    def __init__(self) -> None:
        self.down = os.environ.get("CLI_SAGAS_REFUNDS", "down") != "up"

    def refund(self, charge_id: str) -> None:
        if self.down:
            raise ConnectionError(f"refund of {charge_id} refused: payments service unavailable")


refunds = RefundDesk()


class Shipping(Saga[Parcel], name="demo.shipping"):
    """Reserve a slot, charge, then hand the parcel to the carrier."""

    @step(idempotency_key="slot-{parcel_id}")
    def reserve_slot(self) -> str:
        return f"slot-{self.input.parcel_id}"

    @compensates(reserve_slot)
    def free_slot(self, slot: str) -> None:
        pass

    @step(idempotency_key="charge-{parcel_id}", compensation=CompensationPolicy(max_attempts=1))
    def charge(self) -> dict[str, int | str]:
        return {"charge_id": f"ch-{self.input.parcel_id}", "cents": self.input.grams * 2}

    @compensates(charge)
    def refund(self, receipt: dict[str, int | str]) -> None:
        if self.input.outcome == "jammed":
            refunds.refund(str(receipt["charge_id"]))

    @step(idempotency_key="ship-{parcel_id}")
    def hand_to_carrier(self) -> str:
        if self.input.outcome != "ok":
            raise RuntimeError(f"carrier rejected parcel {self.input.parcel_id}: over the weight limit")
        return f"track-{self.input.parcel_id}"


def populate(url: str, schema: str | None = None) -> None:
    """Create one saga in each state: completed, failed, dead letter and stuck pending.

    ``ship-ok`` completed, ``ship-lost`` failed and compensated,
    ``ship-jammed`` in dead letter (its refund failed), ``ship-waiting``
    pending and stuck (submitted two hours ago and never run; its 15-minute
    budget starts when a worker takes it).
    """
    engine = SagaEngine(url, schema=schema, clock=FakeClock(datetime.now(timezone.utc)))
    try:
        refunds.down = True
        engine.run(Shipping, Parcel("ok", 500), saga_id="ship-ok", idempotency_key="k-ok")
        for parcel in (Parcel("lost", 900, "lost"), Parcel("jammed", 1200, "jammed")):
            try:
                engine.run(Shipping, parcel, saga_id=f"ship-{parcel.parcel_id}",
                           idempotency_key=f"k-{parcel.parcel_id}")
            except (SagaFailedError, CompensationFailedError):
                pass  # the point: leave the saga failed, or in dead letter
    finally:
        engine.close()
    past = SagaEngine(url, schema=schema,
                      clock=FakeClock(datetime.now(timezone.utc) - timedelta(hours=2)))
    try:
        past.submit(Shipping, Parcel("waiting", 300), saga_id="ship-waiting", idempotency_key="k-waiting")
    finally:
        past.close()
