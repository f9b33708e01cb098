"""A saga whose second step kills its own process; tests/test_never_stranded.py runs it.

Run as a script::

    python tests/poison_sagas.py DATABASE_URL SCHEMA|- SAGA_ID LEDGER

Each step appends its name to LEDGER before it acts, so the parent can count
how often each effect happened.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass

from sagadsl import Saga, SagaEngine, compensates, step
from sagadsl.storage import SqlStorage


@dataclass
class Job:
    ledger: str


def note(saga: Saga[Job], what: str) -> None:
    with open(saga.input.ledger, "a", encoding="utf-8") as out:
        out.write(what + "\n")


class KillsItsProcess(Saga[Job], name="tests.poison.kills_its_process"):
    @step(idempotency_key="prepare-{saga_id}")
    def prepare(self) -> str:
        note(self, "prepare")
        return "ready"

    @compensates(prepare)
    def unprepare(self) -> None:
        note(self, "unprepare")

    @step(idempotency_key="explode-{saga_id}")
    def explode(self, prepare: str) -> str:
        note(self, "explode")
        if os.environ.get("POISON_FIXED") != "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return "done"


if __name__ == "__main__":
    url, schema, saga_id, ledger = sys.argv[1:5]
    engine = SagaEngine(SqlStorage(url, schema=None if schema == "-" else schema))
    try:
        engine.run(KillsItsProcess, Job(ledger), saga_id=saga_id, idempotency_key=f"{saga_id}-v1")
    except Exception as exc:  # the parent reads the outcome from the output
        print(f"{type(exc).__name__}: {exc}")
        sys.exit(3)
    print("completed")
