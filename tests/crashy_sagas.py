"""A saga that tests/test_crash_resume.py runs in a child process and kills mid-step.

Run as a script::

    python tests/crashy_sagas.py DATABASE_URL SCHEMA|- SAGA_ID WORKDIR [fail-ship]

Each step and compensation appends ``<what> <pid> <detail>`` to ``WORKDIR/log``.
When ``$CRASHY_HANG_IN`` names a step, that step creates ``WORKDIR/in-<step>``
once it has started and then sleeps until the parent kills the process.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from sagadsl import Saga, SagaEngine, compensates, step

SAGA_NAME = "tests.crashy.order"


@dataclass
class CrashOrder:
    workdir: str
    fail_ship: bool = False


@dataclass
class Hold:
    hold_id: str
    amount: Decimal
    until: dt.datetime


def log(saga: CrashyOrder, what: str, detail: str = "") -> None:
    with open(Path(saga.input.workdir) / "log", "a", encoding="utf-8") as out:
        out.write(f"{what} {os.getpid()} {detail}".rstrip() + "\n")


def hang_if_asked(saga: CrashyOrder, name: str) -> None:
    if os.environ.get("CRASHY_HANG_IN") == name:
        (Path(saga.input.workdir) / f"in-{name}").touch()
        time.sleep(120)  # the parent kills us here


class CrashyOrder(Saga[CrashOrder], name=SAGA_NAME):
    @step(idempotency_key="reserve-{saga_id}")
    def reserve(self) -> Hold:
        log(self, "reserve", self.step_key)
        hang_if_asked(self, "reserve")
        return Hold("h-1", Decimal("12.50"), dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.timezone.utc))

    @compensates(reserve)
    def release(self, hold: Hold) -> None:
        log(self, "release", f"{type(hold).__name__}:{hold.amount!r}:{hold.until.isoformat()}")

    @step(idempotency_key="charge-{saga_id}")
    def charge(self, reserve: Hold) -> str:
        log(self, "charge", self.step_key)
        hang_if_asked(self, "charge")
        return f"paid-{reserve.hold_id}"

    @compensates(charge)
    def refund(self, payment: str) -> None:
        log(self, "refund", payment)

    @step(idempotency_key="ship-{saga_id}")
    def ship(self, reserve: Hold, charge: str) -> str:
        log(self, "ship", f"{type(reserve).__name__}:{charge}")
        if self.input.fail_ship:
            raise RuntimeError("no courier")
        return "shipped"


def main(argv: list[str]) -> None:
    url, schema, saga_id, workdir = argv[:4]
    fail_ship = argv[4:] == ["fail-ship"]
    engine = SagaEngine(url, schema=None if schema == "-" else schema)
    engine.run(CrashyOrder, CrashOrder(workdir, fail_ship), saga_id=saga_id, idempotency_key=f"key-{saga_id}")


if __name__ == "__main__":
    main(sys.argv[1:])
