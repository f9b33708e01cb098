"""Transactional steps and the outbox: the order row and its messages commit with each step.

Each ``transactional=True`` step writes to the service's own tables through
``self.db``, in the same database transaction as the step's checkpoint: the
order row and the outbox message exist exactly when the step is recorded as
done, never twice, never without it. A relay (here a function; in
production a loop of its own) publishes the outbox in order and marks each
message sent.

    python examples/outbox.py
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import DateTime, Integer, String, create_engine, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sagadsl import RetryPolicy, Saga, SagaEngine, SagaFailedError, compensates, step


class Base(DeclarativeBase):
    pass


class OrderRow(Base):
    __tablename__ = "orders"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cents: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))


class OutboxMessage(Base):
    __tablename__ = "outbox"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(64))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass
class Checkout:
    order_id: str
    cents: int


class PlaceOrder(Saga[Checkout], name="examples.outbox.place_order"):
    @step(idempotency_key="create-{order_id}", transactional=True)
    def create_order(self) -> str:
        self.db.add(OrderRow(id=self.input.order_id, cents=self.input.cents, state="pending"))
        self.db.add(OutboxMessage(topic="order.created", key=self.input.order_id))
        return self.input.order_id

    @compensates(create_order, transactional=True)
    def void_order(self) -> None:
        self.db.execute(update(OrderRow).where(OrderRow.id == self.input.order_id).values(state="voided"))
        self.db.add(OutboxMessage(topic="order.voided", key=self.input.order_id))

    @step(idempotency_key="charge-{order_id}", retry=RetryPolicy(max_attempts=1))
    def charge(self, create_order: str) -> str:
        if self.input.cents > 10_000:  # the payment provider, an external system
            raise RuntimeError(f"card declined for {self.input.cents} cents")
        return f"ch-{create_order}"

    @step(idempotency_key="confirm-{order_id}", transactional=True)
    def confirm_order(self, charge: str) -> None:
        self.db.execute(update(OrderRow).where(OrderRow.id == self.input.order_id).values(state="confirmed"))
        self.db.add(OutboxMessage(topic="order.confirmed", key=self.input.order_id))


def relay_once(app: Engine) -> int:
    """Publish every unsent outbox message in order, marking each sent; the number published.

    On PostgreSQL, add ``.with_for_update(skip_locked=True)`` to the select so
    that several relays share the work.
    """
    with Session(app) as session, session.begin():
        pending = session.scalars(select(OutboxMessage).where(OutboxMessage.sent_at.is_(None))
                                  .order_by(OutboxMessage.seq)).all()
        for message in pending:
            print(f"  relay: published {message.topic} {message.key}")  # a broker's send() in real life
            message.sent_at = datetime.now(timezone.utc)
        return len(pending)


def main(database_url: str) -> None:
    app = create_engine(database_url)
    Base.metadata.create_all(app)  # the service's tables, in the same database as the sagas
    with SagaEngine(database_url) as engine:
        engine.run(PlaceOrder, Checkout("A1", 2_500), saga_id="order-A1", idempotency_key="A1")
        print("order-A1 completed")
        try:
            engine.run(PlaceOrder, Checkout("A2", 99_000), saga_id="order-A2", idempotency_key="A2")
        except SagaFailedError as exc:
            print(f"order-A2 failed at {exc.step_name}; its order row was voided in the compensation's commit")
        engine.run(PlaceOrder, Checkout("A1", 2_500), saga_id="order-A1", idempotency_key="A1")
        print("order-A1 run again: its stored outcome, no second row, no second message")
    print(f"relayed {relay_once(app)} messages")
    print(f"relayed {relay_once(app)} messages on the next pass")
    with app.connect() as conn:
        for order_id, state in conn.execute(select(OrderRow.id, OrderRow.state).order_by(OrderRow.id)):
            print(f"orders: {order_id} {state}")
    app.dispose()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(f"sqlite:///{Path(tmp) / 'shop.db'}")
