"""Saga classes for tests/test_adversarial.py, importable by child processes.

A child is started as::

    python -c "from tests.adversarial_sagas import main; main()" MODE URL SCHEMA|- SAGA_ID LEDGER [fail-c]

with the working directory at the repository root. MODE is ``run`` (create or
resume by ``engine.run``), ``resume`` (``engine.resume``) or ``worker``
(``engine.run_worker(stop_when_idle=True)``).

``$ADV_KILL`` says where the child kills itself with SIGKILL, as
``WHEN:WHAT`` items separated by commas:

* ``end:b``   - at the end of step/compensation ``b``'s body, after its effect
  is in the ledger and before its commit (once: a marker file disarms it);
* ``start:c`` - at the start of ``c``'s body, i.e. after the commits of the
  steps it depends on (once);
* ``always:b`` - at the end of ``b``'s body, every time (a poison saga);
* ``n2:b``    - at the end of ``b``'s body, on its first 2 runs only.

Every step and compensation appends ``<what> <step_key> <pid>`` to
``LEDGER/effects.log`` before the kill point, so the parent can count effects.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sagadsl import CompensationPolicy, Saga, SagaEngine, compensates, step


@dataclass
class Ledger:
    ledger: str
    fail_c: bool = False
    #: When set, step b waits (asynchronously) until this file exists.
    hold_file: str = ""


def effect(saga: Saga, what: str) -> None:
    path = Path(saga.input.ledger) / "effects.log"
    line = f"{what} {getattr(saga, 'step_key', '-')} {os.getpid()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def _spec() -> list[tuple[str, str]]:
    raw = os.environ.get("ADV_KILL", "")
    return [tuple(item.split(":", 1)) for item in raw.split(",") if ":" in item]  # type: ignore[misc]


def maybe_die(saga: Saga, when: str, what: str) -> None:
    for w, name in _spec():
        if name != what:
            continue
        if w == "always" and when == "end":
            os.kill(os.getpid(), signal.SIGKILL)
        if w.startswith("n") and w[1:].isdigit() and when == "end":
            # kill on the first N runs only
            done = len(list(Path(saga.input.ledger).glob(f"killed-n-{name}-*")))
            if done < int(w[1:]):
                (Path(saga.input.ledger) / f"killed-n-{name}-{done}").touch()
                os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(5)
            continue
        if w == when:
            marker = Path(saga.input.ledger) / f"killed-{w}-{name}"
            if marker.exists():
                continue
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(5)


class Chain(Saga[Ledger], name="adv.crash.chain"):
    @step(idempotency_key="a-{saga_id}")
    def a(self) -> str:
        maybe_die(self, "start", "a")
        effect(self, "do_a")
        maybe_die(self, "end", "a")
        return "A"

    @compensates(a)
    def undo_a(self, value: str) -> None:
        maybe_die(self, "start", "undo_a")
        effect(self, f"undo_a:{value}")
        maybe_die(self, "end", "undo_a")

    @step(idempotency_key="b-{saga_id}", compensation=CompensationPolicy(max_attempts=1))
    async def b(self, a: str) -> str:
        maybe_die(self, "start", "b")
        if self.input.hold_file:
            import asyncio
            (Path(self.input.ledger) / f"entered-b-{self.saga_id}").touch()
            deadline = time.monotonic() + 60
            while not Path(self.input.hold_file).exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        effect(self, "do_b")
        maybe_die(self, "end", "b")
        return a + "B"

    @compensates(b)
    def undo_b(self, value: str) -> None:
        maybe_die(self, "start", "undo_b")
        effect(self, f"undo_b:{value}")
        maybe_die(self, "end", "undo_b")

    @step(idempotency_key="c-{saga_id}")
    def c(self, b: str) -> str:
        maybe_die(self, "start", "c")
        effect(self, "do_c")
        if self.input.fail_c:
            raise RuntimeError("c refused")
        maybe_die(self, "end", "c")
        return b + "C"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    mode, url, schema, saga_id, ledger = args[:5]
    fail_c = "fail-c" in args[5:]
    engine = SagaEngine(url, schema=None if schema == "-" else schema)
    try:
        if mode == "run":
            engine.run(Chain, Ledger(ledger, fail_c), saga_id=saga_id, idempotency_key=f"key-{saga_id}")
        elif mode == "resume":
            engine.resume(saga_id)
        elif mode == "worker":
            engine.run_worker(concurrency=1, poll_interval=0.05, stop_when_idle=True)
        else:
            raise SystemExit(f"unknown mode {mode}")
    finally:
        engine.close()


if __name__ == "__main__":
    main()
