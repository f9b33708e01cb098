"""Sagas of 3 to 6 steps whose effects land in a ledger table, keyed by idempotency key.

Each step writes its effect idempotently (one row per key, whatever the number
of executions) and logs every execution, so the checker can tell at-least-once
execution from exactly-once effects. Failures are planned in the input.

Four families: plain sagas; sagas with a pivot (step 1), whose later steps
fail once on each attempt's first try and are retried until they succeed;
sagas holding the semantic lock ``acct:{account}`` over a few accounts, so
that they queue behind each other; and transactional sagas, whose steps
insert their row into ``torture_tx_rows`` through ``self.db`` (no
idempotency check: the transaction is what makes it exactly-once) and whose
compensations delete it the same way.
"""

from __future__ import annotations

import os
import random
import threading
import time
import types
from dataclasses import dataclass
from typing import Any, Callable

import psycopg
from sqlalchemy import text

from sagadsl import CompensationPolicy, RetryPolicy, Saga, compensates, step

LEDGER_SQL = """
CREATE TABLE IF NOT EXISTS torture_effects (
    key text NOT NULL, saga_id text NOT NULL, step text NOT NULL, kind text NOT NULL,
    pid int NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS torture_effects_key ON torture_effects (key);
CREATE TABLE IF NOT EXISTS torture_tx_rows (saga_id text NOT NULL, step text NOT NULL);
CREATE TABLE IF NOT EXISTS torture_executions (
    saga_id text NOT NULL, step text NOT NULL, kind text NOT NULL, pid int NOT NULL,
    at timestamptz NOT NULL DEFAULT now());
"""


@dataclass
class Plan:
    saga_id: str
    ledger_url: str
    #: Index of the step that fails (-1: none).
    fail_step: int = -1
    #: Index of the step whose compensation always fails (-1: none).
    fail_compensation: int = -1
    #: The account a locked saga holds (locked sagas only).
    account: str = "none"


#: The pivot of the pivot sagas.
PIVOT = 1


class Flaky(Exception):
    """A planned failure after the pivot, retried until the step succeeds."""


_local = threading.local()
DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


def _ledger(url: str) -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True,
                               connect_timeout=5)
        _local.conn = conn
    return conn


def _write(plan: Plan, key: str, step_name: str, kind: str) -> None:
    """Record one effect, riding out a server restart as a client library with retries would."""
    deadline = time.monotonic() + 30
    while True:
        try:
            _write_once(plan, key, step_name, kind)
            return
        except DB_ERRORS:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _write_once(plan: Plan, key: str, step_name: str, kind: str) -> None:
    try:
        conn = _ledger(plan.ledger_url)
        with conn.transaction():
            conn.execute("INSERT INTO torture_executions (saga_id, step, kind, pid) VALUES (%s, %s, %s, %s)",
                         (plan.saga_id, step_name, kind, os.getpid()))
            # The effect is idempotent by key: a second execution with the same key is a no-op.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))
            conn.execute(
                "INSERT INTO torture_effects (key, saga_id, step, kind, pid) "
                "SELECT %s, %s, %s, %s, %s WHERE NOT EXISTS (SELECT 1 FROM torture_effects WHERE key = %s)",
                (key, plan.saga_id, step_name, kind, os.getpid(), key))
    except DB_ERRORS:
        _local.conn = None
        raise


_TX_INSERT = text("INSERT INTO torture_tx_rows (saga_id, step) VALUES (:saga_id, :step)")
_TX_DELETE = text("DELETE FROM torture_tx_rows WHERE saga_id = :saga_id AND step = :step")


def _log_execution(plan: Plan, step_name: str, kind: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = _ledger(plan.ledger_url)
            conn.execute("INSERT INTO torture_executions (saga_id, step, kind, pid) VALUES (%s, %s, %s, %s)",
                         (plan.saga_id, step_name, kind, os.getpid()))
            return
        except DB_ERRORS:
            _local.conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _make_step(index: int, *, pivot: bool = False, retriable: bool = False,
               transactional: bool = False) -> Callable[..., Any]:
    name = f"s{index}"

    def run(self: Any) -> int:
        if transactional:
            _log_execution(self.input, name, "do")
            self.db.execute(_TX_INSERT, {"saga_id": self.saga_id, "step": name})
            self.db.flush()  # in the database, uncommitted: a kill now must leave no row
        time.sleep(random.uniform(0.002, 0.02))  # room for a SIGKILL to land mid-step
        if self.input.fail_step == index:
            raise ValueError(f"planned failure of {name}")
        if retriable and self.attempt == 1:
            raise Flaky(f"planned first-attempt failure of {name}")
        if not transactional:
            _write(self.input, self.step_key, name, "do")
        return index

    run.__name__ = run.__qualname__ = name
    # Short policies: the ledger write rides out outages itself, so a planned
    # compensation failure reaches dead letter quickly, before the next kill.
    return step(idempotency_key=f"{{saga_id}}-{name}", pivot=pivot, transactional=transactional,
                retry=RetryPolicy(max_attempts=3, backoff=0.05, max_backoff=0.2, retry_on=(*DB_ERRORS, Flaky)),
                compensation=CompensationPolicy(max_attempts=3, backoff=0.05, max_backoff=0.2))(run)


def _make_compensation(index: int, *, transactional: bool = False) -> Callable[..., Any]:
    name = f"s{index}"

    def undo(self: Any, value: int) -> None:
        if transactional:
            self.db.execute(_TX_DELETE, {"saga_id": self.saga_id, "step": name})
            time.sleep(random.uniform(0.002, 0.01))
        if self.input.fail_compensation == index:
            raise RuntimeError(f"planned failure of undo_{name}")
        if not transactional:
            _write(self.input, f"undo:{self.step_key}", name, "undo")

    undo.__name__ = undo.__qualname__ = f"undo_{name}"
    return compensates(name, transactional=transactional)(undo)


def _saga_class(steps: int, family: str) -> type[Saga[Plan]]:
    body: dict[str, Any] = {}
    for i in range(steps):
        if family == "pivot" and i >= PIVOT:
            # The pivot and the steps after it have no compensation.
            body[f"s{i}"] = _make_step(i, pivot=i == PIVOT, retriable=i > PIVOT)
            continue
        transactional = family == "transactional"
        body[f"s{i}"] = _make_step(i, transactional=transactional)
        body[f"undo_s{i}"] = _make_compensation(i, transactional=transactional)
    qualname = f"Torture{family.title()}{steps}"
    body["__module__"] = __name__
    body["__qualname__"] = qualname
    keywords: dict[str, Any] = {"name": f"torture.{family}.{steps}"}
    if family == "locked":
        keywords["locks"] = ("acct:{account}",)
    return types.new_class(qualname, (Saga[Plan],), keywords, lambda ns: ns.update(body))


FAMILIES = ("plain", "pivot", "locked", "transactional")
SAGAS: dict[tuple[str, int], type[Saga[Plan]]] = {
    (family, n): _saga_class(n, family) for family in FAMILIES for n in range(3, 7)}
