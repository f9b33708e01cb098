"""The shortest path through the engine, on every backend."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sagadsl import SagaEngine, SagaFailedError, Saga, compensates, step


@dataclass
class Order:
    order_id: str
    cents: int


calls: list[str] = []


class Checkout(Saga[Order], name="tests.smoke.checkout"):
    @step(idempotency_key="reserve-{order_id}")
    def reserve(self) -> str:
        calls.append("reserve")
        return "r-1"

    @compensates(reserve)
    def release(self, reservation: str) -> None:
        calls.append(f"release:{reservation}")

    @step(idempotency_key="charge-{order_id}")
    async def charge(self, reserve: str) -> int:
        calls.append("charge")
        if self.input.cents > 100:
            raise ValueError("declined")
        return self.input.cents


def test_completes_and_compensates(engine: SagaEngine) -> None:
    calls.clear()
    result = engine.run(Checkout, Order("o-1", 50), saga_id="o-1", idempotency_key="k-1")
    assert result.status == "completed"
    assert result.results == {"reserve": "r-1", "charge": 50}
    with pytest.raises(SagaFailedError) as info:
        engine.run(Checkout, Order("o-2", 500), saga_id="o-2", idempotency_key="k-2")
    assert isinstance(info.value.__cause__, ValueError)
    assert calls == ["reserve", "charge", "reserve", "charge", "release:r-1"]
    record = engine.get("o-2")
    assert record is not None and record.status == "failed"
    assert [s.status for s in record.steps] == ["compensated", "failed"]
