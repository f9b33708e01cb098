"""A pivot step: once the card is charged, the shipment is retried, never refunded.

Run it with ``python examples/order_pivot.py``. It places two orders on the
embedded SQLite database (``./order_pivot.db``):

1. the carrier fails twice after the charge: the shipment is retried until it
   goes through, and nothing is undone;
2. the card is declined (the pivot fails): the reservation is released, as in
   any saga.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sagadsl import RetryPolicy, Saga, SagaEngine, SagaFailedError, compensates, step

DB_FILE = Path("order_pivot.db")


@dataclass
class Order:
    order_id: str
    cents: int
    declined: bool = False


carrier_failures = {"o-1": 2}


class PlaceOrder(Saga[Order], name="examples.order_pivot"):
    @step(idempotency_key="reserve-{order_id}")
    def reserve(self) -> str:
        print(f"   reserve: stock held for {self.input.order_id}")
        return f"res-{self.input.order_id}"

    @compensates(reserve)
    def release(self, reservation: str) -> None:
        print(f"   release: {reservation} released")

    # The point of no return: once the money is taken, the order is kept.
    @step(idempotency_key="charge-{order_id}", pivot=True)
    def charge(self, reserve: str) -> str:
        if self.input.declined:
            raise RuntimeError("card declined")
        print(f"   charge: {self.input.cents} cents charged")
        return f"pay-{self.input.order_id}"

    # Retriable: after the pivot, a failure is retried with this backoff shape
    # until it succeeds (within the saga's 15-minute budget).
    @step(idempotency_key="ship-{order_id}", retry=RetryPolicy(backoff=0.05, max_backoff=0.5))
    def ship(self, charge: str) -> str:
        if carrier_failures.get(self.input.order_id, 0) >= self.attempt:
            print(f"   ship: carrier unreachable (attempt {self.attempt}), retrying")
            raise ConnectionError("carrier unreachable")
        print(f"   ship: label printed on attempt {self.attempt}")
        return f"ship-{self.input.order_id}"


def main() -> None:
    DB_FILE.unlink(missing_ok=True)
    with SagaEngine(f"sqlite:///{DB_FILE}") as engine:
        print("1. The carrier fails twice after the charge:")
        result = engine.run(PlaceOrder, Order("o-1", 1200), saga_id="o-1", idempotency_key="o-1")
        record = engine.get("o-1")
        assert record is not None
        print(f"=> {result.status}, past the pivot: {record.past_pivot}, shipment {result.results['ship']}")
        print("2. The card is declined (the pivot fails):")
        try:
            engine.run(PlaceOrder, Order("o-2", 900, declined=True), saga_id="o-2", idempotency_key="o-2")
        except SagaFailedError as exc:
            print(f"=> {exc.code}: the reservation was released")
        kinds = ", ".join(f"{s.name} {s.kind}" for s in PlaceOrder.definition.steps)
        print(f"   step kinds: {kinds}")


if __name__ == "__main__":
    main()
