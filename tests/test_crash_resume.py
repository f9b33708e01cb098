"""Resume after a real crash (DESIGN §2.1-2.3, §2.6).

A child ``python`` process runs tests/crashy_sagas.py against a durable
database, the parent kills it with SIGKILL while a step is running, then runs
the same saga id again. The run takes over at once (SQLite: the owner process
is gone; PostgreSQL: the advisory lock died with the child's connection),
skips the steps that completed, runs the interrupted step again with the same
key, and compensates steps completed before the crash if a later step fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from sagadsl import SagaEngine, SagaFailedError
from sagadsl.storage import SqlStorage

sys.path.insert(0, str(Path(__file__).parent))
from crashy_sagas import CrashOrder, CrashyOrder, Hold  # noqa: E402

pytestmark = pytest.mark.timeout(120)

SCRIPT = Path(__file__).parent / "crashy_sagas.py"


@pytest.fixture
def engine_on(durable_url: tuple[str, str | None]) -> Iterator[SagaEngine]:
    url, schema = durable_url
    engine = SagaEngine(SqlStorage(url, schema=schema))
    yield engine
    engine.close()


def kill_child_in(step: str, durable_url: tuple[str, str | None], workdir: Path, saga_id: str,
                  *extra: str) -> int:
    """Start the child, wait until it is inside ``step``, SIGKILL it; return its pid."""
    url, schema = durable_url
    env = {**os.environ, "CRASHY_HANG_IN": step}
    child = subprocess.Popen([sys.executable, str(SCRIPT), url, schema or "-", saga_id, str(workdir), *extra],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker = workdir / f"in-{step}"
    deadline = time.monotonic() + 60
    try:
        while not marker.exists():
            if child.poll() is not None:
                output = child.stdout.read().decode() if child.stdout else ""
                pytest.fail(f"the child exited with {child.returncode} before reaching {step}:\n{output}")
            if time.monotonic() > deadline:
                pytest.fail(f"the child did not reach {step} within 60 s")
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return child.pid


def log_lines(workdir: Path) -> list[str]:
    return (workdir / "log").read_text(encoding="utf-8").splitlines()


def test_run_after_a_kill_resumes_at_once_and_reruns_the_interrupted_step(
    durable_url: tuple[str, str | None], engine_on: SagaEngine, tmp_path: Path,
) -> None:
    child = kill_child_in("charge", durable_url, tmp_path, "crash-1")

    stored = engine_on.get("crash-1")
    assert stored is not None and stored.status == "pending"
    assert [(s.name, s.status) for s in stored.steps] == [
        ("reserve", "completed"), ("charge", "pending"), ("ship", "pending")]

    result = engine_on.run(CrashyOrder, CrashOrder(str(tmp_path)), saga_id="crash-1",
                           idempotency_key="key-crash-1")

    me = os.getpid()
    assert result.status == "completed"
    assert log_lines(tmp_path) == [
        f"reserve {child} reserve-crash-1",
        f"charge {child} charge-crash-1",
        f"charge {me} charge-crash-1",  # the same key on the re-run
        f"ship {me} Hold:paid-h-1",
    ]
    assert isinstance(result.results["reserve"], Hold)
    assert result.results["charge"] == "paid-h-1"
    record = engine_on.get("crash-1")
    assert record is not None
    assert [(s.name, s.status, s.attempts) for s in record.steps] == [
        ("reserve", "completed", 1), ("charge", "completed", 1), ("ship", "completed", 1)]


def test_steps_completed_before_the_crash_are_compensated_after_a_later_failure(
    durable_url: tuple[str, str | None], engine_on: SagaEngine, tmp_path: Path,
) -> None:
    child = kill_child_in("charge", durable_url, tmp_path, "crash-2", "fail-ship")

    with pytest.raises(SagaFailedError) as info:
        engine_on.run(CrashyOrder, CrashOrder(str(tmp_path), fail_ship=True), saga_id="crash-2",
                      idempotency_key="key-crash-2")

    me = os.getpid()
    assert str(info.value.__cause__) == "no courier"
    assert log_lines(tmp_path) == [
        f"reserve {child} reserve-crash-2",
        f"charge {child} charge-crash-2",
        f"charge {me} charge-crash-2",
        f"ship {me} Hold:paid-h-1",
        f"refund {me} paid-h-1",
        f"release {me} Hold:Decimal('12.50'):2030-05-01T12:00:00+00:00",
    ]
    record = engine_on.get("crash-2")
    assert record is not None and record.status == "failed"
    assert [s.status for s in record.steps] == ["compensated", "compensated", "failed"]


def test_a_crash_in_the_first_step_reruns_it(
    durable_url: tuple[str, str | None], engine_on: SagaEngine, tmp_path: Path,
) -> None:
    child = kill_child_in("reserve", durable_url, tmp_path, "crash-3")

    result = engine_on.resume("crash-3")

    me = os.getpid()
    assert result.status == "completed"
    assert log_lines(tmp_path) == [
        f"reserve {child} reserve-crash-3", f"reserve {me} reserve-crash-3",
        f"charge {me} charge-crash-3", f"ship {me} Hold:paid-h-1"]
