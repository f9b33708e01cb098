"""Semantic locks: two transfers on one account never interleave.

Run it with ``python examples/transfer.py``. On the embedded SQLite database
(``./transfer.db``) it shows:

1. a transfer holding accounts A and B; a second transfer touching B is
   refused by ``run`` with ``ResourceLockedError``, and nothing is written;
2. the second transfer submitted instead: it waits in ``pending``, holding
   nothing, and a worker starts it once the first one has finished.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from sagadsl import ResourceLockedError, Saga, SagaEngine, compensates, step

DB_FILE = Path("transfer.db")
balances = {"A": 100, "B": 0, "C": 0}
debited = threading.Event()
may_credit = threading.Event()


@dataclass
class Move:
    src: str
    dst: str
    amount: int


class Transfer(Saga[Move], name="examples.transfer", locks=("account:{src}", "account:{dst}")):
    @step(idempotency_key="debit-{src}-{dst}-{amount}")
    def debit(self) -> None:
        balances[self.input.src] -= self.input.amount
        debited.set()
        may_credit.wait(10)  # another transfer would see the money in flight here

    @compensates(debit)
    def refund(self) -> None:
        balances[self.input.src] += self.input.amount

    @step(idempotency_key="credit-{src}-{dst}-{amount}")
    def credit(self) -> None:
        balances[self.input.dst] += self.input.amount


def main() -> None:
    DB_FILE.unlink(missing_ok=True)
    with SagaEngine(f"sqlite:///{DB_FILE}") as engine:
        first = threading.Thread(target=engine.run, args=(Transfer, Move("A", "B", 60)),
                                 kwargs={"saga_id": "t-1", "idempotency_key": "t-1"})
        first.start()
        debited.wait(10)
        print("1. t-1 moves 60 from A to B and holds both accounts:")
        try:
            engine.run(Transfer, Move("B", "C", 10), saga_id="t-2", idempotency_key="t-2")
        except ResourceLockedError as exc:
            print(f"=> t-2 refused: {exc.code}, key {exc.key!r} held by {exc.holder!r}; "
                  f"stored: {engine.get('t-2') is not None}")
        print("2. t-2 submitted instead, waiting for its keys:")
        engine.submit(Transfer, Move("B", "C", 10), saga_id="t-2", idempotency_key="t-2")
        holders = [(r.key, r.saga_id, "holds" if r.held else "waits") for r in engine.storage.locks()]
        for key, saga_id, what in holders:
            print(f"   {key}: {saga_id} {what}")
        may_credit.set()
        first.join()
        engine.run_worker(stop_when_idle=True, poll_interval=0.05)
        while engine.get("t-2").status != "completed":  # type: ignore[union-attr]
            engine.run_worker(stop_when_idle=True, poll_interval=0.05)
        print(f"=> both completed; balances {balances}; locks held: {len(engine.storage.locks())}")


if __name__ == "__main__":
    main()
