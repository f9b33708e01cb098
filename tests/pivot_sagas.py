"""A saga with a pivot, run in a child process by tests/test_pivot.py and killed in the step after it.

Run as a script::

    python tests/pivot_sagas.py DATABASE_URL SCHEMA|- SAGA_ID WORKDIR

Each step appends its name to WORKDIR/ledger. In the child's first run, the
step after the pivot creates WORKDIR/in-ship and sleeps until it is killed.
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
class Job:
    workdir: str


def note(saga: Saga[Job], what: str) -> None:
    with open(Path(saga.input.workdir) / "ledger", "a", encoding="utf-8") as out:
        out.write(what + "\n")


class PivotJob(Saga[Job], name="tests.pivot.child_job"):
    @step(idempotency_key="reserve-{saga_id}")
    def reserve(self) -> str:
        note(self, "reserve")
        return "r"

    @compensates(reserve)
    def release(self) -> None:
        note(self, "release")

    @step(idempotency_key="charge-{saga_id}", pivot=True)
    def charge(self, reserve: str) -> str:
        note(self, "charge")
        return "c"

    @step(idempotency_key="ship-{saga_id}")
    def ship(self, charge: str) -> str:
        note(self, "ship")
        marker = Path(self.input.workdir) / "in-ship"
        if os.environ.get("PIVOT_CHILD") == "1" and not marker.exists():
            marker.touch()
            time.sleep(120)  # the parent kills us here
        return "s"


if __name__ == "__main__":
    url, schema, saga_id, workdir = sys.argv[1:5]
    os.environ["PIVOT_CHILD"] = "1"
    with SagaEngine(SqlStorage(url, schema=None if schema == "-" else schema)) as engine:
        engine.run(PivotJob, Job(workdir), saga_id=saga_id, idempotency_key=f"{saga_id}-v1")
