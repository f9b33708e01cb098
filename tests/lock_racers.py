"""A process that races others for one semantic lock key; run by tests/test_locks.py.

Run as a script::

    python tests/lock_racers.py DATABASE_URL SCHEMA|- WORKDIR RACER COUNT

Runs COUNT sagas that all need the key ``account:shared``, each retried
while the key is held elsewhere. While it holds the key, each saga's step
appends ``saga start end`` (monotonic clock, shared by all processes on one
host) to WORKDIR/ledger.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sagadsl import ResourceLockedError, Saga, SagaEngine, step
from sagadsl.storage import SqlStorage


@dataclass
class Use:
    workdir: str
    account: str = "shared"


class UseAccount(Saga[Use], name="tests.locks.racer", locks=("account:{account}",)):
    @step(idempotency_key="use-{saga_id}")
    def use(self) -> None:
        start = time.monotonic()
        time.sleep(0.005)
        end = time.monotonic()
        with open(Path(self.input.workdir) / "ledger", "a", encoding="utf-8") as out:
            out.write(f"{self.saga_id} {start:.6f} {end:.6f}\n")


if __name__ == "__main__":
    url, schema, workdir, racer, count = sys.argv[1:6]
    refused = 0
    with SagaEngine(SqlStorage(url, schema=None if schema == "-" else schema)) as engine:
        for i in range(int(count)):
            saga_id = f"r{racer}-{i}"
            while True:
                try:
                    engine.run(UseAccount, Use(workdir), saga_id=saga_id, idempotency_key="k")
                    break
                except ResourceLockedError:
                    refused += 1
                    time.sleep(0.001)
    print(f"refused={refused}")
