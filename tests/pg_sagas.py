"""Sagas and helpers for the PostgreSQL tests that cross process boundaries.

Child processes (``subprocess`` and ``multiprocessing`` with ``spawn``) import
this module by name, so the saga classes are registered under the same names
in the parent and in every child. Each step and compensation writes one row to
a ledger table in the test's schema, on its own autocommitted connection: the
ledger is what actually happened, whatever the saga rows say.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, text

from sagadsl import Saga, SagaEngine, SagaFailedError, SagaLockedError, compensates, step
from sagadsl.storage.sql import advisory_lock_key


@dataclass
class Job:
    job_id: str
    url: str
    schema: str
    #: Step that raises (the saga then compensates); "" for none.
    fail_at: str = ""


_engines: dict[str, Engine] = {}

#: What a step does besides recording itself, set per process: ``{"b": "hang"}``
#: makes step ``b`` record that it started and then block until killed,
#: ``{"c": "fail"}`` makes ``c`` raise (the stored input cannot change on resume).
BEHAVIOUR: dict[str, str] = {}
#: Seconds each step sleeps, so that concurrent executors really overlap.
STEP_SECONDS = 0.0


def _engine(url: str) -> Engine:
    if url not in _engines:
        _engines[url] = create_engine(url, pool_size=2, isolation_level="AUTOCOMMIT")
    return _engines[url]


def create_ledger(url: str, schema: str) -> None:
    """Create the ledger table (one row per step or compensation execution)."""
    with _engine(url).connect() as conn:
        conn.execute(text(f'CREATE TABLE "{schema}".ledger (id serial PRIMARY KEY, saga_id text NOT NULL, '
                          'action text NOT NULL, pid int NOT NULL)'))


def record(job: Job, saga_id: str, action: str) -> None:
    """Append one execution of ``action`` to the ledger."""
    with _engine(job.url).connect() as conn:
        conn.execute(text(f'INSERT INTO "{job.schema}".ledger (saga_id, action, pid) VALUES (:s, :a, :p)'),
                     {"s": saga_id, "a": action, "p": os.getpid()})


def ledger(url: str, schema: str, saga_id: str | None = None) -> list[tuple[str, str, int]]:
    """``(saga_id, action, pid)`` rows in execution order."""
    sql = f'SELECT saga_id, action, pid FROM "{schema}".ledger'
    params: dict[str, Any] = {}
    if saga_id is not None:
        sql += " WHERE saga_id = :s"
        params["s"] = saga_id
    with _engine(url).connect() as conn:
        return [(r.saga_id, r.action, r.pid) for r in conn.execute(text(sql + " ORDER BY id"), params)]


def lock_holder(url: str, schema: str, saga_id: str) -> int | None:
    """Backend pid holding the saga's advisory lock, or None."""
    key = advisory_lock_key(saga_id, schema) & 0xFFFFFFFFFFFFFFFF
    with _engine(url).connect() as conn:
        return conn.execute(
            text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                 "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                 "AND classid::bigint = :hi AND objid::bigint = :lo AND objsubid = 1"),
            {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).scalar()


def backend_alive(url: str, pid: int) -> bool:
    """Whether the server still has a backend with this pid."""
    with _engine(url).connect() as conn:
        alive: int = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"),
                                  {"p": pid}).scalar_one()
        return alive == 1


def terminate(url: str, pid: int) -> None:
    """Kill one server backend, as a failover or a network cut would."""
    with _engine(url).connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()


class Ledgered(Saga[Job], name="tests.pg.ledgered"):
    """Three steps in a chain, ``a`` and ``b`` with compensations."""

    def _act(self, name: str) -> str:
        record(self.input, self.saga_id, name)
        if BEHAVIOUR.get(name) == "hang":
            time.sleep(3600)  # killed from outside
        if STEP_SECONDS:
            time.sleep(STEP_SECONDS)
        if self.input.fail_at == name or BEHAVIOUR.get(name) == "fail":
            raise RuntimeError(f"{name} failed on purpose")
        return f"{name}-done"

    @step(idempotency_key="a-{job_id}")
    def a(self) -> str:
        return self._act("a")

    @compensates(a)
    def undo_a(self, result: str) -> None:
        record(self.input, self.saga_id, f"undo_a:{result}")

    @step(idempotency_key="b-{job_id}")
    def b(self, a: str) -> str:
        return self._act("b")

    @compensates(b)
    def undo_b(self, result: str) -> None:
        record(self.input, self.saga_id, f"undo_b:{result}")

    @step(idempotency_key="c-{job_id}")
    def c(self, b: str) -> str:
        return self._act("c")


def run_one(url: str, schema: str, saga_id: str, behaviour: str) -> None:
    """Child process entry point: run one ``Ledgered`` saga (``behaviour`` like ``b=hang``)."""
    for item in filter(None, behaviour.split(",")):
        name, action = item.split("=")
        BEHAVIOUR[name] = action
    engine = SagaEngine(url, schema=schema)
    engine.run(Ledgered, Job(saga_id, url, schema), saga_id=saga_id, idempotency_key=f"key-{saga_id}")


def contend(url: str, schema: str, saga_ids: list[str], failing: set[str], start: Any,
            results: Any, worker: int) -> None:
    """Multiprocessing target: drive every saga id once, reporting each attempt's outcome."""
    global STEP_SECONDS
    STEP_SECONDS = 0.01
    engine = SagaEngine(url, schema=schema)
    outcomes: list[tuple[str, str]] = []
    start.wait(60)
    for saga_id in saga_ids:
        job = Job(saga_id, url, schema, fail_at="c" if saga_id in failing else "")
        try:
            result = engine.run(Ledgered, job, saga_id=saga_id, idempotency_key=f"key-{saga_id}")
            outcomes.append((saga_id, str(result.status)))
        except SagaLockedError:
            outcomes.append((saga_id, "locked"))
        except SagaFailedError:
            outcomes.append((saga_id, "failed"))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            outcomes.append((saga_id, f"unexpected {type(exc).__name__}: {exc}"))
    engine.close()
    results.put((worker, os.getpid(), outcomes))

