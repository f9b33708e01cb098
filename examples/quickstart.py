"""Quickstart: an order saga (reserve -> charge -> ship) on the embedded SQLite database.

Run it with ``python examples/quickstart.py``. It shows three orders:

1. one that succeeds;
2. one whose payment is declined, so the reservation is released again;
3. one whose process is killed (SIGKILL) in the middle, then resumed.

The state lives in ``./quickstart.db``; afterwards, look at it with
``saga-admin list --database-url sqlite:///quickstart.db``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sagadsl import Saga, SagaEngine, SagaFailedError, compensates, step

DB_FILE = Path("quickstart.db")
DB_URL = f"sqlite:///{DB_FILE}"


@dataclass
class Order:
    order_id: str
    sku: str
    cents: int


@dataclass
class Reservation:
    reservation_id: str
    sku: str


class PlaceOrder(Saga[Order], name="quickstart.place_order"):
    """Reserve stock, charge the card, ship; undo the first two if a later step fails."""

    @step(idempotency_key="reserve-{order_id}")
    def reserve(self) -> Reservation:
        # A real service would receive self.step_key and ignore a second call with it.
        print(f"   reserve: holding one {self.input.sku} (key {self.step_key})")
        return Reservation(f"r-{self.input.order_id}", self.input.sku)

    @compensates(reserve)
    def release(self, reservation: Reservation) -> None:
        print(f"   release: giving back {reservation.sku} ({reservation.reservation_id})")

    @step(idempotency_key="charge-{order_id}")
    def charge(self, reserve: Reservation) -> str:
        if self.input.cents > 10_000:
            raise ValueError(f"card declined for {self.input.cents} cents")
        print(f"   charge: {self.input.cents} cents for {reserve.reservation_id}")
        return f"pay-{self.input.order_id}"

    @compensates(charge)
    def refund(self, payment: str) -> None:
        print(f"   refund: {payment}")

    @step(idempotency_key="ship-{order_id}")
    def ship(self, reserve: Reservation) -> str:
        if os.environ.get("QUICKSTART_KILL_IN_SHIP") == "1":
            print("   ship: the process is killed right now (SIGKILL)", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        print(f"   ship: parcel for {reserve.reservation_id}")
        return f"parcel-{self.input.order_id}"


def place(engine: SagaEngine, order: Order) -> None:
    engine.run(PlaceOrder, order, saga_id=order.order_id, idempotency_key=f"{order.order_id}-v1")


def main() -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{DB_FILE}{suffix}").unlink(missing_ok=True)
    engine = SagaEngine(DB_URL)

    print("1. An order that goes through:")
    result = engine.run(PlaceOrder, Order("order-1", "sku-42", 1200),
                        saga_id="order-1", idempotency_key="order-1-v1")
    print(f"=> order-1 {result.status.value}: shipped {result.results['ship']}")

    print("2. An order whose payment is declined:")
    try:
        place(engine, Order("order-2", "sku-42", 50_000))
    except SagaFailedError as exc:
        print(f"=> order-2 failed at step {exc.step_name!r} ({exc.__cause__}); "
              "the reservation was released")

    print("3. An order whose process dies while shipping:")
    child = subprocess.run([sys.executable, __file__, "--place", "order-3"],
                           env={**os.environ, "QUICKSTART_KILL_IN_SHIP": "1"})
    print(f"=> the process running order-3 was killed (exit code {child.returncode})")
    record = engine.get("order-3")
    assert record is not None
    done = [s.name for s in record.steps if s.status == "completed"]
    print(f"=> stored: order-3 is {record.status.value}, committed steps: {', '.join(done)}")
    result = engine.resume("order-3")  # what a worker does for sagas whose process died
    print(f"=> order-3 resumed and {result.status.value}: reserve and charge were not run "
          f"again, ship ran once more and produced {result.results['ship']}")
    engine.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--place"]:
        with SagaEngine(DB_URL) as child_engine:
            place(child_engine, Order(sys.argv[2], "sku-7", 900))
    else:
        main()
