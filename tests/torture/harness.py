"""The crash-torture harness: sagas driven by workers that keep being killed.

Shared by the test (bounded, in CI) and ``scripts/soak.py`` (long runs by hand).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psycopg

from sagadsl import InvalidStateError, SagaEngine, StorageError, WorkflowStatus, migrate

from .cluster import ThrowawayCluster
from .sagas import FAMILIES, LEDGER_SQL, PIVOT, SAGAS, Plan

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Report:
    """What a torture run did and what the checker found."""

    sagas: int = 0
    completed: int = 0
    failed: int = 0
    dead_letter: int = 0
    not_terminal: int = 0
    kills: int = 0
    server_restarts: int = 0
    executions: int = 0
    #: Sagas whose steps ran in more than one worker process: taken over after a kill.
    resumes: int = 0
    #: Step executions beyond one per effect: a kill landed between a step's
    #: effect and its commit, and the step ran again with the same key.
    reruns: int = 0
    duplicates: int = 0
    lost: int = 0
    #: Pairs of sagas that ran while both holding one semantic lock key (must be 0).
    lock_overlaps: int = 0
    past_pivot: int = 0
    #: Sagas the supervisor asked to cancel while they ran, and whose cancel was accepted.
    cancelled: int = 0
    #: Sagas that ended ``cancelled``.
    cancelled_at_end: int = 0
    #: Transactional steps whose rows were checked: one per completed step, none otherwise.
    tx_steps: int = 0
    orphans: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"sagas={self.sagas} completed={self.completed} failed={self.failed} "
                f"dead_letter={self.dead_letter} not_terminal={self.not_terminal} kills={self.kills} "
                f"server_restarts={self.server_restarts} executions={self.executions} "
                f"resumes={self.resumes} reruns={self.reruns} duplicates={self.duplicates} lost={self.lost} "
                f"orphans={self.orphans} past_pivot={self.past_pivot} lock_overlaps={self.lock_overlaps} "
                f"cancelled={self.cancelled} tx_steps={self.tx_steps} "
                f"seconds={self.seconds:.1f}")


#: The accounts locked sagas hold: few, so that sagas queue for them.
ACCOUNTS = 6


def _plan(rng: random.Random, saga_id: str, url: str, steps: int, family: str) -> Plan:
    account = f"a{rng.randrange(ACCOUNTS)}" if family == "locked" else "none"
    roll = rng.random()
    if roll < 0.6:
        return Plan(saga_id, url, account=account)
    # Past the pivot nothing fails for good: only the pivot and the steps before it do.
    fail_step = rng.randrange(1, PIVOT + 1) if family == "pivot" else rng.randrange(1, steps)
    # A locked saga in dead letter keeps its key for good, so that every saga
    # queued behind it would wait past the run: locked sagas fail cleanly.
    if roll < 0.9 or family == "locked":
        return Plan(saga_id, url, fail_step=fail_step, account=account)
    return Plan(saga_id, url, fail_step=fail_step, fail_compensation=rng.randrange(0, fail_step),
                account=account)


class Torture:
    """Submit sagas, run workers, kill them at random, restart the server once."""

    def __init__(self, *, sagas: int, workers: int = 4, kill_every: tuple[float, float] = (0.3, 0.8),
                 restart_server: bool = True, seed: int = 7, minutes: float = 3.0,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.n = sagas
        self.workers = workers
        self.kill_every = kill_every
        self.restart_server = restart_server
        self.rng = random.Random(seed)
        self.budget = minutes * 60
        self.progress = progress
        self.report = Report(sagas=sagas)
        self._cancelled: set[str] = set()

    def run(self) -> Report:
        cluster = ThrowawayCluster().start()
        try:
            return self._run(cluster)
        finally:
            cluster.stop()

    def _spawn(self, url: str) -> subprocess.Popen[bytes]:
        logs = os.environ.get("SAGADSL_TORTURE_LOGS")  # a folder for the workers' stderr, when debugging
        if not logs:
            return subprocess.Popen([sys.executable, "-m", "tests.torture.worker", url, "4"], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(Path(logs) / "workers.log", "ab") as stderr:
            return subprocess.Popen([sys.executable, "-m", "tests.torture.worker", url, "4"], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=stderr)

    def _terminal(self, url: str) -> int:
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=5) as c:
            row = c.execute("SELECT count(*) FROM sagadsl_workflows WHERE status IN "
                            "('completed', 'failed', 'dead_letter', 'cancelled')").fetchone()
            return int(row[0]) if row else 0

    def _run(self, cluster: ThrowawayCluster) -> Report:
        url = cluster.url
        migrate(url)
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as c:
            c.execute(LEDGER_SQL)
        engine = SagaEngine(url)
        for i in range(self.n):
            steps = self.rng.randrange(3, 7)
            family = FAMILIES[i % len(FAMILIES)]
            saga_id = f"t-{i:05d}"
            engine.submit(SAGAS[family, steps], _plan(self.rng, saga_id, url, steps, family), saga_id=saga_id,
                          idempotency_key=f"{saga_id}-k")

        started = time.monotonic()
        procs = [self._spawn(url) for _ in range(self.workers)]
        restart_at = 0.35
        done = 0
        try:
            while time.monotonic() - started < self.budget:
                time.sleep(self.rng.uniform(*self.kill_every))
                try:
                    done = self._terminal(url)
                except psycopg.OperationalError:
                    continue
                if self.progress:
                    self.progress(done, self.n)
                if done >= self.n:
                    break
                self._cancel_some(engine)
                victim = self.rng.randrange(len(procs))
                os.kill(procs[victim].pid, signal.SIGKILL)
                procs[victim].wait()
                self.report.kills += 1
                procs[victim] = self._spawn(url)
                if self.restart_server and not self.report.server_restarts and done >= self.n * restart_at:
                    cluster.restart()
                    self.report.server_restarts += 1
            # Let the last workers drain whatever the final kills left behind.
            drain_until = time.monotonic() + 60
            while self._terminal(url) < self.n and time.monotonic() < drain_until:
                time.sleep(0.2)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        engine.close()
        self.report.seconds = time.monotonic() - started
        self._check(url)
        return self.report

    def _cancel_some(self, engine: SagaEngine) -> None:
        """Cancel a plain saga that is running now; a cancel it refuses is as fine as one it takes."""
        running = [w.id for w in engine.query(WorkflowStatus.PENDING, limit=50).workflows
                   if w.started_at is not None and w.saga_name.startswith("torture.plain.")]
        if not running:
            return
        saga_id = self.rng.choice(running)
        try:
            engine.cancel(saga_id, "the torture supervisor")
        except (InvalidStateError, StorageError):
            return
        self._cancelled.add(saga_id)
        self.report.cancelled = len(self._cancelled)

    def _check(self, url: str) -> None:
        r = self.report
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as c:
            statuses = dict(c.execute("SELECT status, count(*) FROM sagadsl_workflows GROUP BY status").fetchall())
            r.completed = statuses.get("completed", 0)
            r.failed = statuses.get("failed", 0)
            r.dead_letter = statuses.get("dead_letter", 0)
            cancelled_at_end = r.cancelled_at_end = statuses.get("cancelled", 0)
            asked = c.execute("SELECT count(*) FROM sagadsl_workflows WHERE cancel_reason IS NOT NULL "
                              "AND status NOT IN ('cancelled', 'dead_letter')").fetchone()[0]  # type: ignore[index]
            if asked:
                r.problems.append(f"{asked} sagas were asked to cancel and ended neither cancelled nor in "
                                  "dead letter")
            if cancelled_at_end > r.cancelled:
                r.problems.append(f"{cancelled_at_end} sagas cancelled, but only {r.cancelled} cancels accepted")
            r.not_terminal = statuses.get("pending", 0) + statuses.get("compensating", 0)
            if r.not_terminal:
                r.problems.append(f"{r.not_terminal} sagas are not terminal")
            r.executions = c.execute("SELECT count(*) FROM torture_executions").fetchone()[0]  # type: ignore[index]
            effects = c.execute("SELECT count(*), count(DISTINCT (saga_id, step, kind)) "
                                "FROM torture_effects").fetchone()
            assert effects is not None
            r.duplicates = effects[0] - effects[1]
            r.reruns = r.executions - effects[1]
            r.resumes = c.execute(
                "SELECT count(*) FROM (SELECT saga_id FROM torture_executions GROUP BY saga_id "
                "HAVING count(DISTINCT pid) > 1) AS taken_over").fetchone()[0]  # type: ignore[index]
            r.orphans = c.execute(
                "SELECT count(*) FROM torture_effects e WHERE NOT EXISTS "
                "(SELECT 1 FROM sagadsl_workflows w WHERE w.id = e.saga_id)").fetchone()[0]  # type: ignore[index]
            tx_rows = c.execute(
                "SELECT s.workflow_id, s.name, s.status, "
                "  (SELECT count(*) FROM torture_tx_rows t WHERE t.saga_id = s.workflow_id AND t.step = s.name) "
                "FROM sagadsl_steps s JOIN sagadsl_workflows w ON w.id = s.workflow_id "
                "WHERE w.saga_name LIKE 'torture.transactional.%'").fetchall()
            rows = c.execute(
                "SELECT w.id, w.status, w.compensation_error, s.name, s.status, "
                "  EXISTS (SELECT 1 FROM torture_effects e WHERE e.saga_id = w.id AND e.step = s.name "
                "          AND e.kind = 'do'), "
                "  EXISTS (SELECT 1 FROM torture_effects e WHERE e.saga_id = w.id AND e.step = s.name "
                "          AND e.kind = 'undo') "
                "FROM sagadsl_workflows w JOIN sagadsl_steps s ON s.workflow_id = w.id "
                "WHERE w.saga_name NOT LIKE 'torture.transactional.%'").fetchall()
            r.past_pivot = c.execute("SELECT count(*) FROM sagadsl_workflows WHERE past_pivot").fetchone()[0]  # type: ignore[index]
            spans = c.execute(
                "SELECT w.locks ->> 0, e.saga_id, min(e.at), max(e.at) FROM torture_executions e "
                "JOIN sagadsl_workflows w ON w.id = e.saga_id WHERE jsonb_typeof(w.locks) = 'array' "
                "GROUP BY 1, 2 ORDER BY 1, 3").fetchall()
            released = c.execute(
                "SELECT count(*) FROM sagadsl_locks l JOIN sagadsl_workflows w ON w.id = l.workflow_id "
                "WHERE w.status IN ('completed', 'failed')").fetchone()[0]  # type: ignore[index]
            if released:
                r.problems.append(f"{released} lock rows of finished sagas were not released")
        # No two sagas executed steps while holding the same key: per key, in
        # order of their first execution, each starts after all before it ended.
        last: dict[str, tuple[str, object]] = {}
        for key, saga_id, start, end in spans:
            if key in last and start < last[key][1]:  # type: ignore[operator]
                r.lock_overlaps += 1
                r.problems.append(f"{last[key][0]} and {saga_id} both ran holding {key}")
            if key not in last or end > last[key][1]:  # type: ignore[operator]
                last[key] = (saga_id, end)
        for saga_id, step_name, step_status, count in tx_rows:
            r.tx_steps += 1
            expected = 1 if step_status in ("completed", "compensation_failed") else 0
            if count != expected:
                r.lost += count < expected
                r.duplicates += count > expected
                r.problems.append(f"{saga_id} transactional step {step_name} ({step_status}): {count} rows, "
                                  f"expected {expected}")
        for saga_id, status, comp_error, step_name, step_status, done, undone in rows:
            expected_do, expected_undo = _expected(status, step_status)
            if done != expected_do or undone != expected_undo:
                r.lost += 1
                r.problems.append(f"{saga_id} ({status}) step {step_name} ({step_status}): "
                                  f"effect={done} undo={undone}")
            if status == "dead_letter" and step_status == "compensation_failed":
                if not comp_error or f"undo_{step_name}" not in comp_error:
                    r.problems.append(f"{saga_id}: dead letter does not name undo_{step_name}: {comp_error}")


def _expected(saga_status: str, step_status: str) -> tuple[bool, bool]:
    """Whether a step of a terminal saga should have its effect, and its undo."""
    if step_status == "completed":
        return True, False
    if step_status == "compensated":
        return True, True
    if step_status == "compensation_failed":
        return True, False
    return False, False  # pending or failed: never took effect
