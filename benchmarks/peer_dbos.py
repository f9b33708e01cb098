"""The DBOS Transact peer of DESIGN §6: a 3-step ``@DBOS.workflow`` of ``@DBOS.step`` s.

DBOS lives in its own virtual environment, ``benchmarks/.venv-dbos``, made on
first use (``python3 -m venv`` + ``pip install dbos``), so that its
dependencies never enter sagadsl's. The workflow runs in a child process of
that environment, started once per benchmark run and kept for all rounds:

* parent side (``run.py``, sagadsl's venv): :func:`ensure_venv`,
  :func:`create_database` / :func:`drop_database` and :class:`DbosPeer`,
  which sends one JSON request a line to the child's stdin and reads one
  JSON answer a line from its stdout;
* child side (``python peer_dbos.py SYSTEM_DATABASE_URL``, DBOS's venv):
  :func:`serve`, which launches DBOS on its own database and answers
  ``warm_up``, ``sequential`` and ``threads`` requests with rates and the
  child's process CPU.

This module imports nothing outside the standard library at the top, so the
same file works in both environments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-dbos"
REQUIREMENT = "dbos>=2.0"
DATABASE = "sagadsl_bench_dbos"
APP_NAME = "sagadsl-bench"


# -- parent side ----------------------------------------------------------------


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def _has_dbos(python: Path) -> bool:
    if not python.exists():
        return False
    check = subprocess.run([str(python), "-c", "import dbos"], check=False, capture_output=True, timeout=120)
    return check.returncode == 0


def ensure_venv(log: Callable[[str], None], venv: Path = VENV) -> Path:
    """The Python of DBOS's own virtual environment, created and filled on first use."""
    python = venv_python(venv)
    if _has_dbos(python):
        return python
    log(f"creating {venv} and installing {REQUIREMENT} (first use only)")
    for command in ([sys.executable, "-m", "venv", str(venv)],
                    [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                     REQUIREMENT]):
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return python


def dbos_version(python: Path) -> str:
    done = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('dbos'))"],
                          check=False, capture_output=True, text=True, timeout=120)
    return done.stdout.strip() or "?"


def _server_dsn(libpq_dsn: str, database: str) -> str:
    """``libpq_dsn`` pointed at ``database`` (a URL of the ``postgresql://`` form)."""
    from sqlalchemy.engine import make_url

    return make_url(libpq_dsn).set(database=database).render_as_string(hide_password=False)


def create_database(libpq_dsn: str, database: str = DATABASE) -> str:
    """A fresh, empty ``database`` on the server of ``libpq_dsn``; its URL."""
    drop_database(libpq_dsn, database)
    import psycopg

    with psycopg.connect(libpq_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    return _server_dsn(libpq_dsn, database)


def drop_database(libpq_dsn: str, database: str = DATABASE) -> None:
    import psycopg

    with psycopg.connect(libpq_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


class DbosPeer:
    """The child process that runs the DBOS workflow, driven one request at a time."""

    def __init__(self, python: Path, system_database_url: str, timeout: float = 600.0) -> None:
        self.timeout = timeout
        self._child = subprocess.Popen(
            [str(python), str(Path(__file__).resolve()), system_database_url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self._stderr: list[str] = []
        self._drain = threading.Thread(target=self._collect_stderr, daemon=True)
        self._drain.start()
        self.info = self._answer()  # {"ready": true, "dbos": version}

    def _collect_stderr(self) -> None:
        assert self._child.stderr is not None
        for line in self._child.stderr:
            self._stderr.append(line)
            del self._stderr[:-50]

    def _answer(self) -> dict[str, Any]:
        assert self._child.stdout is not None
        line = self._child.stdout.readline()
        if not line:
            self._child.wait(timeout=30)
            raise RuntimeError(f"the DBOS child exited ({self._child.returncode}):\n{''.join(self._stderr)}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the DBOS child failed: {answer['error']}\n{''.join(self._stderr)}")
        return answer

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send ``op`` with ``args`` and wait for its answer."""
        assert self._child.stdin is not None
        self._child.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self._child.stdin.flush()
        return self._answer()

    def sequential(self, n: int) -> tuple[float, float]:
        """Workflows/s of ``n`` workflows one after another, and the child's CPU seconds per workflow."""
        answer = self.request("sequential", n=n)
        return answer["rate"], answer["cpu"]

    def threads(self, threads: int, per_thread: int) -> float:
        """Workflows/s with ``threads`` threads each running ``per_thread`` workflows."""
        return self.request("threads", threads=threads, per_thread=per_thread)["rate"]

    def close(self) -> None:
        """Ask the child to shut DBOS down and exit; kill it if it does not."""
        if self._child.poll() is None:
            try:
                self.request("exit")
                self._child.wait(timeout=30)
            except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired):
                self._child.kill()
                self._child.wait(timeout=30)


# -- child side -----------------------------------------------------------------


def _workflow() -> Callable[[str, int], str]:
    """Register the 3-step workflow with DBOS: reserve, charge, ship, as ``workloads.ThreeSteps``."""
    from dbos import DBOS

    @DBOS.step()
    def reserve(order_id: str) -> str:
        return f"res-{order_id}"

    @DBOS.step()
    def charge(reservation: str, cents: int) -> int:
        return cents

    @DBOS.step()
    def ship(charged: int) -> str:
        return "shipped"

    @DBOS.workflow(name="benchmarks.three_steps")
    def three_steps(order_id: str, cents: int) -> str:
        return ship(charge(reserve(order_id), cents))

    return three_steps


class _Runner:
    """Runs the workflow with caller-chosen ids (DBOS's idempotency key), unique across rounds."""

    def __init__(self, workflow: Callable[[str, int], str]) -> None:
        self.workflow = workflow
        self._prefix = uuid.uuid4().hex[:8]
        self._counter = 0
        self._lock = threading.Lock()

    def _ids(self, n: int) -> list[str]:
        with self._lock:
            start = self._counter
            self._counter += n
        return [f"{self._prefix}-{i}" for i in range(start, start + n)]

    def _run(self, ids: list[str]) -> None:
        from dbos import SetWorkflowID

        for workflow_id in ids:
            with SetWorkflowID(workflow_id):
                if self.workflow(workflow_id, 1200) != "shipped":
                    raise AssertionError(f"workflow {workflow_id} returned the wrong result")

    def sequential(self, n: int) -> dict[str, float]:
        ids = self._ids(n)
        cpu = os.times()
        started = time.perf_counter()
        self._run(ids)
        elapsed = time.perf_counter() - started
        after = os.times()
        return {"rate": n / elapsed, "cpu": (after.user - cpu.user + after.system - cpu.system) / n}

    def threads(self, threads: int, per_thread: int) -> dict[str, float]:
        ids = [self._ids(per_thread) for _ in range(threads)]
        barrier = threading.Barrier(threads + 1)
        errors: list[BaseException] = []

        def body(mine: list[str]) -> None:
            barrier.wait()
            try:
                self._run(mine)
            except BaseException as exc:  # noqa: BLE001 - re-raised after the join
                errors.append(exc)

        pool = [threading.Thread(target=body, args=(mine,)) for mine in ids]
        for t in pool:
            t.start()
        barrier.wait()
        started = time.perf_counter()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - started
        if errors:
            raise errors[0]
        return {"rate": threads * per_thread / elapsed}


def serve(system_database_url: str) -> None:
    """Launch DBOS on ``system_database_url`` and answer requests from stdin until ``exit``."""
    # Answers go to the original stdout; anything else printed (DBOS's logs) to stderr.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def say(message: dict[str, Any]) -> None:
        answers.write(json.dumps(message) + "\n")

    import importlib.metadata

    from dbos import DBOS

    workflow = _workflow()
    DBOS(config={"name": APP_NAME, "system_database_url": system_database_url, "log_level": "WARNING"})
    DBOS.launch()
    runner = _Runner(workflow)
    say({"ready": True, "dbos": importlib.metadata.version("dbos")})
    try:
        for line in sys.stdin:
            request = json.loads(line)
            op = request.pop("op")
            if op == "exit":
                say({"bye": True})
                break
            try:
                if op == "warm_up":
                    say(runner.sequential(request.get("n", 10)))
                elif op in ("sequential", "threads"):
                    say(getattr(runner, op)(**request))
                else:
                    say({"error": f"unknown request {op!r}"})
            except Exception as exc:  # noqa: BLE001 - the parent raises it
                say({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    serve(sys.argv[1])
