from dataclasses import dataclass

from sagadsl import RetryPolicy, Saga, SagaEngine, compensates, step


@dataclass
class Order:
    order_id: str
    sku: str
    cents: int


class PlaceOrder(Saga[Order], name="shop.place_order"):
    @step(idempotency_key="reserve-{order_id}")
    def reserve(self) -> str:
        return f"reservation-for-{self.input.sku}"   # call your inventory service here

    @compensates(reserve)
    def release(self, reservation: str) -> None:
        print("released", reservation)

    @step(idempotency_key="charge-{order_id}", retry=RetryPolicy(max_attempts=3, backoff=0.2))
    def charge(self, reserve: str) -> str:
        return f"payment-{self.step_key}"            # pass step_key to the payment API


engine = SagaEngine("sqlite:///shop.db")
result = engine.run(PlaceOrder, Order("o-1", "sku-9", 1200),
                    saga_id="order-o-1", idempotency_key="order-o-1-v1")
print(result.status, result.results["charge"])    # completed payment-charge-o-1
