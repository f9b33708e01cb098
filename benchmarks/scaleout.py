"""Scale-out (DESIGN §6): submitted 3-step sagas drained by 1, 2 and 4 worker processes.

Each round submits ``n`` sagas with ``engine.submit`` and then starts the
worker processes: each one (``python scaleout.py URL SCHEMA CONCURRENCY``)
builds its engine, says it is ready, waits for the go line on stdin, runs a
:class:`sagadsl.worker.Worker` until no saga is left pending and prints what
it did, as JSON, with its start and end on the wall clock. The rate is the sagas completed
over the time from the first worker's start to the last one's end, so
process start-up and imports are left out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import workloads as w
from sqlalchemy import create_engine

from sagadsl import SagaEngine, migrate
from sagadsl.storage import SqlStorage
from sagadsl.worker import Worker

SCHEMA = "sagadsl_bench_scaleout"
#: Sagas each worker process drives at once (the Worker's default).
CONCURRENCY = 4
#: The shortest ``saga-admin worker --poll-interval``. A worker whose slots
#: are all busy waits a poll interval before it looks again, so with the
#: default of 1 s one process drains about CONCURRENCY sagas a second.
POLL_INTERVAL = 0.01


def prepare(url: str) -> None:
    """A fresh schema for the submitted sagas."""
    drop(url)
    engine = create_engine(url)
    try:
        migrate(engine, schema=SCHEMA)
    finally:
        engine.dispose()


def drop(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    finally:
        engine.dispose()


def engine(url: str) -> SagaEngine:
    """An engine on the scale-out schema."""
    return SagaEngine(SqlStorage(url, schema=SCHEMA))


def submit(engine: SagaEngine, prefix: str, n: int) -> None:
    """Commit ``n`` 3-step sagas as pending, for the workers."""
    for i in range(n):
        saga_id = f"{prefix}-{i}"
        engine.submit(w.ThreeSteps, w.Order(saga_id, 1200), saga_id=saga_id, idempotency_key=saga_id)


def _start_worker(url: str, log: IO[str]) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), url, SCHEMA, str(CONCURRENCY)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        child.kill()
        log.seek(0)
        raise RuntimeError(f"a scale-out worker did not start:\n{log.read()[-3000:]}")
    return child


def drain(url: str, processes: int) -> tuple[float, int, float]:
    """Start ``processes`` workers together on the pending sagas; seconds until the last one ended.

    Also the sagas the workers say they completed (a saga that another worker
    finished just before this one resumed it counts for both), and the CPU
    seconds the workers spent draining, all together.
    """
    with tempfile.TemporaryFile("w+") as log:
        children = [_start_worker(url, log) for _ in range(processes)]
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        reports = []
        for child in children:
            out, _ = child.communicate(timeout=600)
            if child.returncode != 0:
                log.seek(0)
                raise RuntimeError(f"a scale-out worker failed ({child.returncode}):\n{log.read()[-3000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    return elapsed, sum(r["completed"] for r in reports), sum(r["cpu"] for r in reports)


def pending(engine: SagaEngine) -> int:
    """Sagas not yet driven to their end."""
    return engine.count("pending", "compensating")


def worker_main(url: str, schema: str, concurrency: int) -> None:
    """One worker process: ready, wait for go, drain, report."""
    engine = SagaEngine(SqlStorage(url, schema=schema))
    try:
        engine.count("pending")  # connect before the clock starts
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return
        worker = Worker(engine, concurrency=concurrency, poll_interval=POLL_INTERVAL)
        # Not stop_when_idle: that returns as soon as one poll finds every slot
        # busy and the sagas in them finish meanwhile, with others still pending.
        worker.on_idle = lambda: worker.stop() if pending(engine) == 0 else None
        start, cpu = time.time(), os.times()
        stats = worker.run()
        end, after = time.time(), os.times()
        print(json.dumps({"completed": stats.completed, "locked": stats.locked, "errors": stats.errors,
                          "start": start, "end": end,
                          "cpu": after.user - cpu.user + after.system - cpu.system}), flush=True)
    finally:
        engine.close()


if __name__ == "__main__":
    worker_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
