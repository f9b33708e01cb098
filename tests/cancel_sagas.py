"""Sagas for tests/test_cancel.py, and a child process that runs one.

Run as a script::

    python tests/cancel_sagas.py DATABASE_URL SCHEMA|- SAGA_ID WORKDIR MODE

Each step and compensation appends its name to WORKDIR/ledger. The second
step creates WORKDIR/in-pack, then waits: with MODE ``wait`` until
WORKDIR/go exists (the parent cancels meanwhile), with MODE ``hang`` until the
parent kills the process.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sagadsl import Saga, SagaEngine, compensates, step
from sagadsl.storage import SqlStorage


@dataclass
class Parcel:
    workdir: str
    mode: str = "wait"


def note(workdir: str, what: str) -> None:
    with open(Path(workdir) / "ledger", "a", encoding="utf-8") as out:
        out.write(what + "\n")


class Shipment(Saga[Parcel], name="tests.cancel.shipment"):
    @step(idempotency_key="reserve-{saga_id}")
    def reserve(self) -> str:
        note(self.input.workdir, "reserve")
        return "r-1"

    @compensates(reserve)
    def release(self) -> None:
        note(self.input.workdir, "release")

    @step(idempotency_key="pack-{saga_id}")
    def pack(self, reserve: str) -> str:
        note(self.input.workdir, "pack")
        work = Path(self.input.workdir)
        (work / "in-pack").touch()
        deadline = time.monotonic() + 60
        while self.input.mode != "quick" and not (work / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return "p-1"

    @compensates(pack)
    def unpack(self) -> None:
        note(self.input.workdir, "unpack")

    @step(idempotency_key="ship-{saga_id}")
    def ship(self, pack: str) -> str:
        note(self.input.workdir, "ship")
        return "s-1"

    @compensates(ship)
    def recall(self) -> None:
        note(self.input.workdir, "recall")


if __name__ == "__main__":
    url, schema, saga_id, workdir, mode = sys.argv[1:6]
    with SagaEngine(SqlStorage(url, schema=None if schema == "-" else schema)) as engine:
        try:
            engine.run(Shipment, Parcel(workdir, mode), saga_id=saga_id, idempotency_key=saga_id)
        except Exception as exc:  # the parent reads the outcome from the database
            print(f"{type(exc).__name__}: {exc}", flush=True)
    sys.exit(0)
