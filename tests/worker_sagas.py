"""Saga classes for the worker tests, importable by worker subprocesses."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from sagadsl import CompensationPolicy, Saga, compensates, step


@dataclass
class Job:
    job_id: str
    #: Folder where steps record what they did (one file line per effect).
    ledger: str
    #: Step that blocks until the file `<ledger>/release` exists.
    block_at: str = ""
    fail_at: str = ""
    fail_compensation: bool = False


def record(job: Job, what: str) -> None:
    with open(Path(job.ledger) / "effects.log", "a") as fh:
        fh.write(f"{job.job_id} {what} {os.getpid()}\n")


def maybe_block(job: Job, name: str) -> None:
    if job.block_at != name:
        return
    Path(job.ledger, f"entered-{job.job_id}-{name}").touch()
    release = Path(job.ledger) / "release"
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


class ThreeSteps(Saga[Job], name="tests.worker.three_steps"):
    @step(idempotency_key="a-{job_id}")
    def a(self) -> str:
        maybe_block(self.input, "a")
        record(self.input, "do a")
        return "A"

    @compensates(a)
    def undo_a(self, value: str) -> None:
        record(self.input, f"undo a {value}")

    @step(idempotency_key="b-{job_id}", compensation=CompensationPolicy(max_attempts=1))
    def b(self, a: str) -> str:
        maybe_block(self.input, "b")
        record(self.input, "do b")
        return a + "B"

    @compensates(b)
    def undo_b(self, value: str) -> None:
        if self.input.fail_compensation and not Path(self.input.ledger, "fixed").exists():
            raise RuntimeError("refund service down")
        record(self.input, f"undo b {value}")

    @step(idempotency_key="c-{job_id}")
    def c(self, b: str) -> str:
        maybe_block(self.input, "c")
        if self.input.fail_at == "c":
            raise ValueError("c failed")
        record(self.input, "do c")
        return b + "C"
