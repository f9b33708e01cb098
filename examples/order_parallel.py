"""An order saga with an async payment and two steps that run in parallel.

    charge (async, retried) --+--> reserve_stock --+--> confirm
                              +--> book_shipping --+

``reserve_stock`` and ``book_shipping`` both declare ``after=charge``, so they
start together once the payment is committed; ``confirm`` waits for both.
Run it with ``python examples/order_parallel.py``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sagadsl import RetryPolicy, Saga, SagaEngine, SagaFailedError, compensates, step


@dataclass
class Order:
    order_id: str
    cents: int
    address: str


@dataclass
class Services:
    """Stand-ins for the payment, stock and shipping services."""

    payment_failures_left: int = 1
    shipping_down: bool = False
    log: list[str] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    overlapped: bool = False

    async def call(self, name: str, seconds: float = 0.05) -> None:
        self.running.add(name)
        self.overlapped = self.overlapped or len(self.running) > 1
        await asyncio.sleep(seconds)
        self.running.discard(name)
        self.log.append(name)


services = Services()


class ParallelOrder(Saga[Order], name="examples.parallel_order"):
    @step(idempotency_key="charge-{order_id}",
          retry=RetryPolicy(max_attempts=3, backoff=0.05, retry_on=(ConnectionError,)),
          timeout=5.0)
    async def charge(self) -> str:
        if services.payment_failures_left:
            services.payment_failures_left -= 1
            print(f"   charge: attempt {self.attempt} lost its connection; retrying")
            raise ConnectionError("payment gateway unreachable")
        await services.call("charge")
        print(f"   charge: {self.input.cents} cents paid on attempt {self.attempt}")
        return f"pay-{self.input.order_id}"

    @compensates(charge)
    async def refund(self, payment: str) -> None:
        await services.call("refund")
        print(f"   refund: {payment}")

    @step(idempotency_key="stock-{order_id}", after=charge)
    async def reserve_stock(self) -> str:
        await services.call("reserve_stock", 0.2)
        print("   reserve_stock: done")
        return f"stock-{self.input.order_id}"

    @compensates(reserve_stock)
    async def release_stock(self, reservation: str) -> None:
        await services.call("release_stock")
        print(f"   release_stock: {reservation}")

    @step(idempotency_key="ship-{order_id}", after=charge)
    async def book_shipping(self) -> str:
        await services.call("book_shipping", 0.2)
        if services.shipping_down:
            raise RuntimeError("no courier available")
        print(f"   book_shipping: courier booked to {self.input.address}")
        return f"label-{self.input.order_id}"

    @step(idempotency_key="confirm-{order_id}", after=(reserve_stock, book_shipping))
    def confirm(self, charge: str, book_shipping: str) -> str:
        print(f"   confirm: payment {charge}, label {book_shipping}")
        return "confirmed"


async def main(directory: Path) -> None:
    engine = SagaEngine(f"sqlite:///{directory / 'orders.db'}")
    try:
        print("1. Payment retried, then stock and shipping in parallel:")
        started = time.perf_counter()
        result = await engine.run_async(ParallelOrder, Order("o-100", 2500, "1 Main St"),
                                        saga_id="o-100", idempotency_key="o-100")
        print(f"=> o-100 {result.status.value} in {time.perf_counter() - started:.2f}s: "
              f"{result.results['confirm']}")
        print(f"=> reserve_stock and book_shipping overlapped: {services.overlapped}")

        print("2. Shipping fails, so stock and payment are undone (dependents first):")
        services.shipping_down = True
        services.log.clear()
        try:
            await engine.run_async(ParallelOrder, Order("o-101", 900, "2 High St"),
                                   saga_id="o-101", idempotency_key="o-101")
        except SagaFailedError as exc:
            undo = [name for name in services.log if name in ("release_stock", "refund")]
            print(f"=> o-101 failed at {exc.step_name!r} ({exc.__cause__}); undone in this order: "
                  f"{', '.join(undo)}")
    finally:
        engine.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
