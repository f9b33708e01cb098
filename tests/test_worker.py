"""The recovery worker: submitted, crashed and retried sagas all reach an end."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from sagadsl import SagaEngine, WorkflowStatus
from sagadsl.registry import _by_name
from sagadsl.storage import SqlStorage
from sagadsl.testing import FakeClock
from sagadsl.worker import Worker

from .worker_sagas import Job, ThreeSteps

ROOT = Path(__file__).resolve().parent.parent


class Crash(BaseException):
    """Stands in for the death of the process inside a step."""


def effects(ledger: Path) -> list[str]:
    path = ledger / "effects.log"
    if not path.exists():
        return []
    return [" ".join(line.split()[1:-1]) for line in path.read_text().splitlines()]


def drain(engine: SagaEngine) -> Worker:
    worker = Worker(engine, concurrency=2, poll_interval=0.05, stop_when_idle=True)
    worker.run()
    return worker


def test_submit_commits_pending_and_a_worker_completes_it(engine: SagaEngine, tmp_path: Path) -> None:
    assert engine.submit(ThreeSteps, Job("j1", str(tmp_path)), saga_id="j1", idempotency_key="k") is None
    record = engine.get("j1")
    assert record is not None and record.status == "pending"
    assert [s.status for s in record.steps] == ["pending"] * 3
    assert effects(tmp_path) == []

    worker = drain(engine)

    assert engine.get("j1").status == "completed"  # type: ignore[union-attr]
    assert effects(tmp_path) == ["do a", "do b", "do c"]
    assert worker.stats.completed == 1 and worker.stats.claimed == 1


def test_submitting_again_is_idempotent(engine: SagaEngine, tmp_path: Path) -> None:
    job = Job("j1", str(tmp_path))
    engine.submit(ThreeSteps, job, saga_id="j1", idempotency_key="k")
    again = engine.submit(ThreeSteps, job, saga_id="j1", idempotency_key="k")
    assert again is not None and again.id == "j1"
    assert engine.count() == 1


def crash_in_step_b(engine: SagaEngine, job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``job`` until its executor "dies" inside step b; the saga stays pending."""
    def dying_b(self: ThreeSteps, a: str) -> str:
        raise Crash()

    with monkeypatch.context() as patch:
        patch.setattr(ThreeSteps, "b", dying_b)
        with pytest.raises(Crash):
            engine.run(ThreeSteps, job, saga_id=job.job_id, idempotency_key="k")
    assert engine.get(job.job_id).status == "pending"  # type: ignore[union-attr]


def test_worker_resumes_a_saga_whose_executor_died(engine: SagaEngine, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    crash_in_step_b(engine, Job("j1", str(tmp_path)), monkeypatch)

    drain(engine)

    assert engine.get("j1").status == "completed"  # type: ignore[union-attr]
    assert effects(tmp_path) == ["do a", "do b", "do c"]


def test_worker_finishes_compensation_after_a_dead_letter_retry(engine: SagaEngine, tmp_path: Path) -> None:
    job = Job("j1", str(tmp_path), fail_at="c", fail_compensation=True)
    with pytest.raises(Exception):
        engine.run(ThreeSteps, job, saga_id="j1", idempotency_key="k")
    assert engine.get("j1").status == "dead_letter"  # type: ignore[union-attr]
    drain(engine)  # nothing to do: dead letter waits for a person
    assert engine.get("j1").status == "dead_letter"  # type: ignore[union-attr]

    (tmp_path / "fixed").touch()
    assert engine.retry("j1") == 1
    worker = drain(engine)

    record = engine.get("j1")
    assert record is not None and record.status == "failed" and record.retry_count == 1
    assert record.error is not None and record.error.step_name == "c"
    assert record.error.compensation_error is None  # the retry compensated everything
    assert effects(tmp_path) == ["do a", "do b", "undo a A", "undo b AB"]
    assert worker.stats.failed == 1


def test_a_saga_held_by_a_live_executor_is_left_alone(engine: SagaEngine, tmp_path: Path) -> None:
    job = Job("j1", str(tmp_path), block_at="b")
    runner = threading.Thread(target=engine.run, args=(ThreeSteps, job),
                              kwargs={"saga_id": "j1", "idempotency_key": "k"})
    runner.start()
    try:
        for _ in range(500):
            if (tmp_path / "entered-j1-b").exists():
                break
            time.sleep(0.01)
        worker = Worker(engine, concurrency=2, poll_interval=0.02)
        stopper = threading.Timer(0.3, worker.stop)
        stopper.start()
        worker.run()
        assert worker.stats.claimed == 0
    finally:
        (tmp_path / "release").touch()
        runner.join(10)
    assert effects(tmp_path) == ["do a", "do b", "do c"]


def test_unknown_saga_class_is_reported_and_not_retried_in_a_hot_loop(
        engine: SagaEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine.submit(ThreeSteps, Job("j1", str(tmp_path)), saga_id="j1", idempotency_key="k")
    monkeypatch.delitem(_by_name, ThreeSteps.saga_name)
    worker = Worker(engine, concurrency=1, poll_interval=0.01)

    def stop_once_parked() -> None:
        # Not a fixed timer from the start: a slow first poll on a busy
        # machine would stop the worker before it looked at the saga at all.
        deadline = time.monotonic() + 30
        while worker.stats.unknown == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # about 30 more polls: a hot loop would look again
        worker.stop()

    threading.Thread(target=stop_once_parked, daemon=True).start()
    with caplog.at_level(logging.ERROR, logger="sagadsl.worker"):
        worker.run()
    assert worker.stats.unknown == 1  # looked at once, then parked while it kept polling
    assert "tests.worker.three_steps" in worker.stats.unknown_sagas["j1"]
    assert any("cannot resume saga j1" in r.getMessage() for r in caplog.records)
    assert engine.get("j1").status == "pending"  # type: ignore[union-attr]


def test_stuck_sagas_are_visible_in_queries(engine: SagaEngine, clock: FakeClock, tmp_path: Path) -> None:
    engine.submit(ThreeSteps, Job("j1", str(tmp_path)), saga_id="j1", idempotency_key="k")
    assert engine.query(stuck=True).total == 0
    clock.advance(timedelta(minutes=30))
    stuck = engine.query(stuck=True)
    assert [w.id for w in stuck.workflows] == ["j1"]


def test_the_deadline_counts_time_spent_dead(engine: SagaEngine, clock: FakeClock, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    crash_in_step_b(engine, Job("j1", str(tmp_path)), monkeypatch)
    clock.advance(timedelta(minutes=16))

    drain(engine)

    record = engine.get("j1")
    assert record is not None and record.status == "failed"
    assert record.error is not None and record.error.error is not None
    assert record.error.error.startswith("ExecutionTimeoutError")
    assert effects(tmp_path) == ["do a", "undo a A"]


def _worker_process(url: str, schema: str | None, *extra: str) -> subprocess.Popen[bytes]:
    code = (
        "import sys, logging; logging.basicConfig(level=logging.WARNING);"
        "import tests.worker_sagas; from sagadsl import SagaEngine;"
        f"e = SagaEngine({url!r}, schema={schema!r});"
        "e.run_worker(concurrency=2, poll_interval=0.05, install_signal_handlers=True)"
    )
    return subprocess.Popen([sys.executable, "-c", code, *extra], cwd=ROOT)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, "worker process exited early"
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.02)


def test_a_killed_worker_s_saga_is_finished_by_another(durable_url: tuple[str, str | None],
                                                        tmp_path: Path) -> None:
    url, schema = durable_url
    engine = SagaEngine(SqlStorage(url, schema=schema))
    engine.submit(ThreeSteps, Job("j1", str(tmp_path), block_at="b"), saga_id="j1", idempotency_key="k")
    first = _worker_process(url, schema)
    try:
        _wait_for(tmp_path / "entered-j1-b", first)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        (tmp_path / "release").touch()
        second = _worker_process(url, schema)
        try:
            deadline = time.monotonic() + 30
            while engine.get("j1").status != "completed":  # type: ignore[union-attr]
                assert time.monotonic() < deadline, engine.get("j1")
                time.sleep(0.05)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0
    finally:
        if first.poll() is None:
            first.kill()
        engine.close()
    assert effects(tmp_path) == ["do a", "do b", "do c"]


def test_sigterm_lets_the_running_saga_finish(durable_url: tuple[str, str | None], tmp_path: Path) -> None:
    url, schema = durable_url
    engine = SagaEngine(SqlStorage(url, schema=schema))
    engine.submit(ThreeSteps, Job("j1", str(tmp_path), block_at="b"), saga_id="j1", idempotency_key="k")
    proc = _worker_process(url, schema)
    try:
        _wait_for(tmp_path / "entered-j1-b", proc)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert proc.poll() is None, "the worker must finish its running saga first"
        (tmp_path / "release").touch()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert engine.get("j1").status == WorkflowStatus.COMPLETED  # type: ignore[union-attr]
    engine.close()


def test_a_submitted_saga_s_budget_starts_when_a_worker_takes_it(engine: SagaEngine, clock: FakeClock,
                                                                  tmp_path: Path) -> None:
    engine.submit(ThreeSteps, Job("j1", str(tmp_path)), saga_id="j1", idempotency_key="k")
    record = engine.get("j1")
    assert record is not None and record.started_at is None and record.deadline is None
    clock.advance(timedelta(minutes=20))  # waited in the queue longer than the budget

    drain(engine)

    record = engine.get("j1")
    assert record is not None and record.status == "completed"
    assert record.started_at == record.created_at + timedelta(minutes=20)
    assert effects(tmp_path) == ["do a", "do b", "do c"]


def test_a_worker_that_stops_when_idle_drains_many_more_sagas_than_its_slots(engine: SagaEngine,
                                                                             tmp_path: Path) -> None:
    for i in range(40):
        engine.submit(ThreeSteps, Job(f"m{i}", str(tmp_path)), saga_id=f"m{i}", idempotency_key="k")
    # All its slots busy is not idle: it must not stop while sagas wait (it
    # used to, after the first few). With slots full it polls again as soon
    # as one frees up, so the long poll interval does not slow the drain.
    worker = Worker(engine, concurrency=2, poll_interval=2.0, stop_when_idle=True)
    stats = worker.run()
    assert engine.count(WorkflowStatus.PENDING) == 0
    assert stats.completed == 40
