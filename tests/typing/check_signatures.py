"""Type-checked, never run: decorated saga methods keep their signatures.

tests/test_typing.py runs ``mypy --strict`` on this file. ``assert_type``
fails the check if a decorator erased a signature to ``Any``; each
``# type: ignore[...]`` is a call that must stay an error (``--strict``
reports an ignore that is no longer needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Literal

from typing_extensions import assert_type

from sagadsl import (
    CompensationPolicy,
    QueryResult,
    RetryPolicy,
    Saga,
    SagaEngine,
    SagaResult,
    WorkflowRecord,
    WorkflowStatus,
    compensates,
    step,
)


@dataclass
class Order:
    order_id: str
    cents: int


@dataclass
class Reservation:
    id: str


class PlaceOrder(Saga[Order], name="typing.place_order"):
    @step(idempotency_key="reserve-{order_id}")
    def reserve(self) -> Reservation:
        return Reservation(self.input.order_id)

    @compensates("reserve")
    def release(self, reservation: Reservation) -> None:
        pass

    @step(idempotency_key="charge-{order_id}", retry=RetryPolicy(max_attempts=3, backoff=0.2),
          timeout=10.0, compensation=CompensationPolicy(max_attempts=5))
    async def charge(self, reserve: Reservation) -> str:
        return f"{self.step_key}:{self.attempt}:{reserve.id}"

    @compensates(charge)
    async def refund(self, payment: str) -> None:
        pass


def check_saga_members(saga: PlaceOrder) -> None:
    assert_type(saga.input, Order)
    assert_type(saga.saga_id, str)
    assert_type(saga.step_key, str)
    assert_type(saga.attempt, int)
    assert_type(saga.reserve(), Reservation)
    assert_type(saga.release(Reservation("r")), None)
    charging = assert_type(saga.charge(Reservation("r")), Coroutine[Any, Any, str])
    refunding = assert_type(saga.refund("p"), Coroutine[Any, Any, None])
    charging.close()
    refunding.close()


def check_decorated_methods_keep_their_signatures() -> None:
    reserve: Callable[[PlaceOrder], Reservation] = PlaceOrder.reserve
    charge: Callable[[PlaceOrder, Reservation], Coroutine[Any, Any, str]] = PlaceOrder.charge
    release: Callable[[PlaceOrder, Reservation], None] = PlaceOrder.release
    del reserve, charge, release


def check_wrong_calls_are_still_errors(saga: PlaceOrder) -> None:
    saga.reserve(1)  # type: ignore[call-arg]
    saga.charge("not a reservation").close()  # type: ignore[arg-type]
    saga.release()  # type: ignore[call-arg]


class Transfer(Saga[Order], name="typing.transfer", locks=("order:{order_id}",)):
    @step(idempotency_key=lambda saga: f"insert-{saga.saga_id}", transactional=True)
    def insert(self) -> int:
        return 1

    @compensates(insert, transactional=True)
    def delete(self, row: int) -> None:
        pass

    @step(idempotency_key="charge-{order_id}", pivot=True, after=(insert,))
    async def charge(self, insert: int) -> str:
        return str(insert)


def check_business_transaction_options(saga: Transfer) -> None:
    assert_type(saga.insert(), int)
    assert_type(saga.delete(1), None)
    saga.charge(1).close()
    assert_type(Transfer.definition.step("charge").kind, Literal["compensatable", "pivot", "retriable"])
    assert_type(Transfer.definition.pivot, str | None)
    assert_type(Transfer.definition.locks, tuple[str, ...])
    assert_type(Transfer.definition.descendants["insert"], frozenset[str])


# Each wrong way to call a decorator is a type error (the overloads), and a
# SagaDefinitionError with the correct usage at run time.
def check_wrong_decorator_calls() -> None:
    step()  # type: ignore[call-overload]
    step(retry=RetryPolicy())  # type: ignore[call-overload]
    step(idempotency_key="a-{order_id}", retry=3)  # type: ignore[call-overload]
    step(idempotency_key=42)  # type: ignore[call-overload]
    compensates()  # type: ignore[call-overload]
    compensates(3)  # type: ignore[call-overload]

    def method(self: Any) -> None: ...

    step(method)  # type: ignore[call-overload]


def check_engine(engine: SagaEngine) -> None:
    result = engine.run(PlaceOrder, Order("o-1", 100), saga_id="o-1", idempotency_key="k")
    assert_type(result, SagaResult)
    assert_type(result.status, WorkflowStatus)
    assert_type(result.results, dict[str, Any])
    assert_type(engine.get("o-1"), WorkflowRecord | None)
    assert_type(engine.query(status="dead_letter", limit=10), QueryResult)
    assert_type(engine.count("completed", WorkflowStatus.FAILED), int)
    assert_type(engine.retry("o-1"), int)
    assert_type(engine.submit(PlaceOrder, Order("o-2", 1), saga_id="o-2", idempotency_key="k"),
                WorkflowRecord | None)
    engine.run(PlaceOrder, "not an order", saga_id="o-1", idempotency_key="k")  # type: ignore[misc]


async def check_engine_async(engine: SagaEngine) -> None:
    result = await engine.run_async(PlaceOrder, Order("o-1", 100), saga_id="o-1", idempotency_key="k")
    assert_type(result, SagaResult)
