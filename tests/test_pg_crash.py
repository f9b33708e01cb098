"""A real executor process killed with SIGKILL in the middle of a step (DESIGN §2.1-2.3, §2.6).

The child runs ``pg_sagas.Ledgered`` against PostgreSQL; step ``b`` records that
it started and blocks, and the test kills the child there. The parent then
shows that the claim died with the child's connection, that ``a`` is not run
again, that ``b`` is, and that a later failure compensates ``a`` too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sagadsl import SagaEngine, SagaFailedError, SqlStorage, StepStatus, WorkflowStatus
from tests import pg_sagas
from tests.pg_sagas import Job, Ledgered

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parent.parent


def _wait_for(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def crashed(pg_schema: tuple[str, str]) -> tuple[str, str, str, int]:
    """Run saga ``crash-1`` in a child, kill it with SIGKILL inside step ``b``.

    Returns ``(url, schema, saga_id, backend pid that held the claim)``.
    """
    url, schema = pg_schema
    SqlStorage(url, schema=schema, auto_migrate=True).close()
    pg_sagas.create_ledger(url, schema)
    saga_id = "crash-1"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c",
         f"from tests import pg_sagas; pg_sagas.run_one({url!r}, {schema!r}, {saga_id!r}, 'b=hang')"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: [r[1] for r in pg_sagas.ledger(url, schema, saga_id)] == ["a", "b"]
                  or child.poll() is not None, "the child to enter step b")
        assert child.poll() is None, child.communicate()[0].decode()
        holder = pg_sagas.lock_holder(url, schema, saga_id)
        assert holder is not None, "the child should hold the saga's advisory lock while in step b"
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        assert child.stdout is not None
        child.stdout.close()
    return url, schema, saga_id, holder


def test_a_killed_executor_leaves_its_committed_steps_and_nothing_else(
        crashed: tuple[str, str, str, int]) -> None:
    url, schema, saga_id, _ = crashed
    storage = SqlStorage(url, schema=schema)
    try:
        record = storage.get(saga_id)
    finally:
        storage.close()
    assert record is not None
    assert record.status == WorkflowStatus.PENDING
    assert [(s.name, s.status) for s in record.steps] == [
        ("a", StepStatus.COMPLETED), ("b", StepStatus.PENDING), ("c", StepStatus.PENDING)]
    assert record.steps[0].result == "a-done"


def test_the_claim_dies_with_the_killed_executors_connection(crashed: tuple[str, str, str, int]) -> None:
    url, schema, saga_id, holder = crashed
    # The server notices the closed socket on its own; no lease has to expire.
    _wait_for(lambda: not pg_sagas.backend_alive(url, holder), "the killed child's backend to end", 10)
    assert pg_sagas.lock_holder(url, schema, saga_id) is None


def test_rerun_skips_completed_steps_and_reruns_the_interrupted_one(
        crashed: tuple[str, str, str, int]) -> None:
    url, schema, saga_id, holder = crashed
    _wait_for(lambda: not pg_sagas.backend_alive(url, holder), "the killed child's backend to end", 10)
    engine = SagaEngine(url, schema=schema)
    try:
        result = engine.run(Ledgered, Job(saga_id, url, schema), saga_id=saga_id,
                            idempotency_key=f"key-{saga_id}")
    finally:
        engine.close()
    assert result.status == "completed"
    assert result.results == {"a": "a-done", "b": "b-done", "c": "c-done"}
    assert [r[1] for r in pg_sagas.ledger(url, schema, saga_id)] == ["a", "b", "b", "c"]


def test_a_later_failure_compensates_the_steps_completed_before_the_crash(
        crashed: tuple[str, str, str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    url, schema, saga_id, holder = crashed
    _wait_for(lambda: not pg_sagas.backend_alive(url, holder), "the killed child's backend to end", 10)
    # The stored input cannot change on resume; make ``c`` fail in this process.
    monkeypatch.setitem(pg_sagas.BEHAVIOUR, "c", "fail")
    engine = SagaEngine(url, schema=schema)
    try:
        with pytest.raises(SagaFailedError) as info:
            engine.run(Ledgered, Job(saga_id, url, schema), saga_id=saga_id, idempotency_key=f"key-{saga_id}")
    finally:
        engine.close()
    assert str(info.value.__cause__) == "c failed on purpose"
    assert [r[1] for r in pg_sagas.ledger(url, schema, saga_id)] == [
        "a", "b", "b", "c", "undo_b:b-done", "undo_a:a-done"]
    storage = SqlStorage(url, schema=schema)
    try:
        record = storage.get(saga_id)
    finally:
        storage.close()
    assert record is not None and record.status == WorkflowStatus.FAILED
    assert [s.status for s in record.steps] == [StepStatus.COMPENSATED, StepStatus.COMPENSATED,
                                                StepStatus.FAILED]
