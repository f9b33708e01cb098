"""Semantic locks between sagas (DESIGN §7).

A saga holds its lock keys from the commit that creates it (run) or that
starts it (a worker, for a submitted one) until it ends completed, failed or
cancelled; in dead letter it keeps them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from sagadsl import ResourceLockedError, Saga, SagaEngine, SagaFailedError, SagaError, compensates, step
from sagadsl.storage import SqlStorage
from sagadsl.worker import Worker

HERE = Path(__file__).parent
ran: list[str] = []


@pytest.fixture(autouse=True)
def _fresh() -> None:
    ran.clear()


@dataclass
class Transfer:
    src: str
    dst: str
    cents: int = 100
    fail: bool = False
    break_undo: bool = False


class Move(Saga[Transfer], name="tests.locks.move", locks=("account:{src}", "account:{dst}")):
    @step(idempotency_key="debit-{src}-{dst}-{cents}")
    def debit(self) -> str:
        ran.append(f"debit {self.saga_id}")
        return "d"

    @compensates(debit)
    def refund(self) -> None:
        ran.append(f"refund {self.saga_id}")
        if self.input.break_undo:
            raise RuntimeError("bank offline")

    @step(idempotency_key="credit-{src}-{dst}-{cents}")
    def credit(self, debit: str) -> str:
        ran.append(f"credit {self.saga_id}")
        if self.input.fail:
            raise RuntimeError("account closed")
        return "c"


gate = threading.Event()
inside = threading.Event()


class Slow(Saga[Transfer], name="tests.locks.slow", locks=("account:{src}",)):
    @step(idempotency_key="hold-{src}-{cents}")
    def hold(self) -> None:
        inside.set()
        gate.wait(30)


def test_a_saga_holds_its_rendered_keys_and_shows_them(engine: SagaEngine) -> None:
    engine.submit(Move, Transfer("b", "a"), saga_id="t-1", idempotency_key="k")
    record = engine.get("t-1")
    assert record is not None and record.locks == ("account:a", "account:b")
    waiting = engine.storage.locks()
    assert [(r.key, r.saga_id, r.held) for r in waiting] == [("account:a", "t-1", False),
                                                             ("account:b", "t-1", False)]


def test_run_of_a_saga_whose_key_is_held_is_refused_and_writes_nothing(engine: SagaEngine) -> None:
    gate.clear()
    inside.clear()
    holder = threading.Thread(target=engine.run, args=(Slow, Transfer("a", "-")),
                              kwargs={"saga_id": "holder", "idempotency_key": "k"})
    holder.start()
    try:
        assert inside.wait(10)
        with pytest.raises(ResourceLockedError) as refused:
            engine.run(Move, Transfer("x", "a"), saga_id="t-2", idempotency_key="k")
        assert refused.value.key == "account:a" and refused.value.holder == "holder"
        assert refused.value.code == "RESOURCE_LOCKED"
        assert "'account:a' is held by saga 'holder'" in str(refused.value)
        assert engine.get("t-2") is None
        assert ran == []
        assert [(r.key, r.saga_id, r.held) for r in engine.storage.locks()] == [("account:a", "holder", True)]
    finally:
        gate.set()
        holder.join(10)
    # Released by the holder's completion: now it runs.
    assert engine.run(Move, Transfer("x", "a"), saga_id="t-2", idempotency_key="k").status == "completed"
    assert engine.storage.locks() == []


def test_a_failed_saga_releases_its_keys(engine: SagaEngine) -> None:
    with pytest.raises(SagaFailedError):
        engine.run(Move, Transfer("a", "b", fail=True), saga_id="t-1", idempotency_key="k")
    assert engine.storage.locks() == []
    assert engine.run(Move, Transfer("a", "b"), saga_id="t-2", idempotency_key="k").status == "completed"


def test_a_dead_lettered_saga_keeps_its_keys_until_it_is_resolved(engine: SagaEngine) -> None:
    with pytest.raises(SagaError):
        engine.run(Move, Transfer("a", "b", fail=True, break_undo=True), saga_id="t-1", idempotency_key="k")
    assert engine.get("t-1").status == "dead_letter"  # type: ignore[union-attr]
    with pytest.raises(ResourceLockedError, match="held by saga 't-1'"):
        engine.run(Move, Transfer("b", "c"), saga_id="t-2", idempotency_key="k")
    assert {r.key for r in engine.storage.locks() if r.held} == {"account:a", "account:b"}
    engine.retry("t-1")
    with pytest.raises(SagaError):  # the bank is still offline: dead letter again, keys still held
        engine.resume("t-1")
    assert {r.saga_id for r in engine.storage.locks()} == {"t-1"}


def test_submitted_sagas_wait_and_start_in_submission_order_per_key(engine: SagaEngine) -> None:
    gate.clear()
    inside.clear()
    holder = threading.Thread(target=engine.run, args=(Slow, Transfer("a", "-")),
                              kwargs={"saga_id": "holder", "idempotency_key": "k"})
    holder.start()
    try:
        assert inside.wait(10)
        engine.submit(Move, Transfer("a", "b"), saga_id="first", idempotency_key="k")
        engine.clock.advance(1)  # type: ignore[attr-defined]
        engine.submit(Move, Transfer("b", "a", cents=5), saga_id="second", idempotency_key="k")
        stats = Worker(engine, concurrency=2, poll_interval=0.01, stop_when_idle=True).run()
        # Both wait for account:a, and a worker does not even look at them while it is held.
        assert stats.completed == 0 and stats.waiting == 0 and stats.claimed == 0
        assert engine.get("first").status == "pending" and ran == []  # type: ignore[union-attr]
        # A waiting saga holds none of its keys: account:b is free for a saga that runs now.
        assert engine.run(Move, Transfer("b", "z", cents=7), saga_id="other", idempotency_key="k").status \
            == "completed"
    finally:
        gate.set()
        holder.join(10)
    ran.clear()
    for _ in range(200):  # "second" waits a poll interval each time it finds its key taken
        Worker(engine, concurrency=2, poll_interval=0.01, stop_when_idle=True).run()
        if engine.get("second").status == "completed":  # type: ignore[union-attr]
            break
    assert ran == ["debit first", "credit first", "debit second", "credit second"]
    assert engine.storage.locks() == []


# -- no two holders of one key, ever: racing processes -----------------------------------


def test_racing_processes_never_hold_one_key_together(durable_url: tuple[str, str | None],
                                                      tmp_path: Path) -> None:
    url, schema = durable_url
    procs = [subprocess.Popen([sys.executable, str(HERE / "lock_racers.py"), url, schema or "-", str(tmp_path),
                               str(n), "15"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for n in range(4)]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    spans = []
    for line in (tmp_path / "ledger").read_text().splitlines():
        saga_id, start, end = line.split()
        spans.append((float(start), float(end), saga_id))
    assert len(spans) == 4 * 15  # every saga ran once it got the key
    spans.sort()
    for (s1, e1, a), (s2, _, b) in zip(spans, spans[1:]):
        assert s2 >= e1, f"{a} and {b} held account:shared together"
    refused = sum(int(o.split("refused=")[1].split()[0]) for o in outputs if "refused=" in o)
    assert refused > 0, "the racers never contended; the test proves nothing"
    with SagaEngine(SqlStorage(url, schema=schema)) as engine:
        assert engine.storage.locks() == []
        assert engine.count("completed") == 60
