"""Sagas with transactional steps for tests/test_transactional.py, and a child process that runs one.

Run as a script::

    python tests/transactional_sagas.py DATABASE_URL SCHEMA|- SAGA_ID WORKDIR KILL_IN

KILL_IN is ``step`` or ``compensation``: that transactional method inserts
(or deletes) its row, flushes it to the database, creates WORKDIR/<KILL_IN>
and sleeps until the parent kills the process.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Column, MetaData, String, Table, delete, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sagadsl import RetryPolicy, Saga, SagaEngine, compensates, step
from sagadsl.storage import SqlStorage


class AppBase(DeclarativeBase):
    """The service's own ORM models (not sagadsl's)."""


class OrderRow(AppBase):
    __tablename__ = "app_orders"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(32))


#: The service's outbox, a Core table: a relay reads it and publishes each message.
app_metadata = AppBase.metadata
outbox = Table("app_outbox", app_metadata, Column("id", String(64), primary_key=True),
               Column("topic", String(64)), Column("body", String(255)))


@dataclass
class NewOrder:
    order_id: str
    #: Attempts of insert_order that raise after inserting (each is rolled back).
    fail_times: int = 0
    fail_charge: bool = False
    workdir: str = ""
    kill_in: str = ""
    #: Seconds the first attempt of insert_order sleeps after inserting (its timeout is 1 s).
    stall: float = 0.0


def _hang_if(saga: Saga[NewOrder], where: str) -> None:
    if os.environ.get("TX_CHILD") == "1" and saga.input.kill_in == where:
        saga.db.flush()  # the row is in the database, inside the open transaction
        Path(saga.input.workdir, where).touch()
        time.sleep(120)  # the parent kills us here


class PlaceOrder(Saga[NewOrder], name="tests.transactional.place_order"):
    @step(idempotency_key="order-{order_id}", transactional=True,
          retry=RetryPolicy(max_attempts=4, backoff=0), timeout=1.0)
    def insert_order(self) -> str:
        self.db.add(OrderRow(id=self.input.order_id, state="placed"))
        self.db.flush()
        _hang_if(self, "step")
        if self.attempt <= self.input.fail_times:
            raise ConnectionError(f"attempt {self.attempt} lost the inventory service")
        if self.input.stall and self.attempt == 1:
            time.sleep(self.input.stall)
        return self.input.order_id

    @compensates(insert_order, transactional=True)
    def cancel_order(self) -> None:
        self.db.execute(delete(OrderRow).where(OrderRow.id == self.input.order_id))
        _hang_if(self, "compensation")

    @step(idempotency_key="charge-{order_id}", retry=RetryPolicy(max_attempts=1))
    def charge(self, insert_order: str) -> str:
        if self.input.fail_charge:
            raise RuntimeError("card declined")
        return "ch-1"

    @step(idempotency_key="announce-{order_id}", transactional=True)
    def announce(self, charge: str) -> None:
        self.db.execute(insert(outbox).values(id=f"placed-{self.input.order_id}", topic="orders.placed",
                                              body=self.input.order_id))


if __name__ == "__main__":
    url, schema, saga_id, workdir, kill_in = sys.argv[1:6]
    os.environ["TX_CHILD"] = "1"
    with SagaEngine(SqlStorage(url, schema=None if schema == "-" else schema)) as engine:
        fail_charge = kill_in == "compensation"
        engine.run(PlaceOrder, NewOrder(saga_id, workdir=workdir, kill_in=kill_in, fail_charge=fail_charge),
                   saga_id=saga_id, idempotency_key=saga_id)
