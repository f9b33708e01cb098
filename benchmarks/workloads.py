"""What the benchmark runs: the plain-driver baselines and the saga workloads.

Every function here runs one measurement and returns a rate; ``run.py``
repeats them, interleaved, and compares each with its baseline.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from sagadsl import Saga, SagaEngine, compensates, migrate, step
from sagadsl.storage import InMemoryStorage, SqlStorage

BENCH_SCHEMA = "sagadsl_bench"


@dataclass
class Order:
    order_id: str
    cents: int


class ThreeSteps(Saga[Order], name="benchmarks.three_steps"):
    """The saga of DESIGN §1 without the remote calls: reserve, charge, ship."""

    @step(idempotency_key="reserve-{order_id}")
    def reserve(self) -> str:
        return f"res-{self.input.order_id}"

    @compensates(reserve)
    def release(self, reservation: str) -> None:
        pass

    @step(idempotency_key="charge-{order_id}")
    def charge(self, reserve: str) -> int:
        return self.input.cents

    @step(idempotency_key="ship-{order_id}")
    def ship(self, charge: int) -> str:
        return "shipped"


class ThreeAsyncSteps(Saga[Order], name="benchmarks.three_async_steps"):
    """The same saga with ``async def`` steps: no hand-off to the step thread pool."""

    @step(idempotency_key="reserve-{order_id}")
    async def reserve(self) -> str:
        return f"res-{self.input.order_id}"

    @compensates(reserve)
    async def release(self, reservation: str) -> None:
        pass

    @step(idempotency_key="charge-{order_id}")
    async def charge(self, reserve: str) -> int:
        return self.input.cents

    @step(idempotency_key="ship-{order_id}")
    async def ship(self, charge: int) -> str:
        return "shipped"


def _numbered_step(i: int) -> Callable[..., int]:
    def run(self: Saga[Order]) -> int:
        return i

    run.__name__ = run.__qualname__ = f"step_{i:03d}"
    return step(idempotency_key=f"step{i}-{{order_id}}")(run)


#: A chain of 100 steps, each after the previous one.
HundredSteps: type[Saga[Order]] = types.new_class(
    "HundredSteps", (Saga[Order],), {"name": "benchmarks.hundred_steps"},
    lambda ns: ns.update({f"step_{i:03d}": _numbered_step(i) for i in range(100)}, __module__=__name__),
)


# -- PostgreSQL -----------------------------------------------------------------


def libpq_dsn(url: str) -> str:
    """The SQLAlchemy URL as a libpq connection string for plain psycopg."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def prepare_pg(url: str) -> None:
    """A fresh benchmark schema: sagadsl's tables and the baseline's scratch table."""
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{BENCH_SCHEMA}" CASCADE')
        migrate(admin, schema=BENCH_SCHEMA)
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE TABLE "{BENCH_SCHEMA}".baseline '
                                 "(id bigserial PRIMARY KEY, payload text NOT NULL)")
            # Autovacuum would hand freed space back mid-run and blur the
            # bytes-per-step figures; the schema is dropped afterwards anyway.
            for table in ("sagadsl_workflows", "sagadsl_steps", "baseline"):
                conn.exec_driver_sql(f'ALTER TABLE "{BENCH_SCHEMA}".{table} SET (autovacuum_enabled = false)')
    finally:
        admin.dispose()


def drop_pg(url: str) -> None:
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{BENCH_SCHEMA}" CASCADE')
    finally:
        admin.dispose()


def _timed_threads(threads: int, work: Callable[[int], None]) -> float:
    """Run ``work(i)`` on ``threads`` threads started together; the wall time."""
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised after the join
            errors.append(exc)

    pool = [threading.Thread(target=body, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def pg_baseline(url: str, threads: int, per_thread: int) -> float:
    """Commits/s of plain psycopg: one single-row INSERT + COMMIT per iteration."""
    return pg_baseline_with_cpu(url, threads, per_thread)[0]


def pg_baseline_with_cpu(url: str, threads: int, per_thread: int) -> tuple[float, float]:
    """Commits/s of plain psycopg, and this process's CPU seconds per commit (connecting left out)."""
    dsn = libpq_dsn(url)
    conns = [psycopg.connect(dsn) for _ in range(threads)]
    sql = f'INSERT INTO "{BENCH_SCHEMA}".baseline (payload) VALUES (%s)'
    try:
        def work(i: int) -> None:
            conn = conns[i]
            for _ in range(per_thread):
                conn.execute(sql, ("payload",))
                conn.commit()

        cpu = os.times()
        elapsed = _timed_threads(threads, work)
        after = os.times()
        commits = threads * per_thread
        return commits / elapsed, (after.user - cpu.user + after.system - cpu.system) / commits
    finally:
        for conn in conns:
            conn.close()


class SagaRunner:
    """Runs benchmark sagas on one engine, with ids unique across rounds."""

    def __init__(self, engine: SagaEngine) -> None:
        self.engine = engine
        self._prefix = uuid.uuid4().hex[:8]
        self._counter = 0
        self._lock = threading.Lock()

    def _ids(self, n: int) -> list[str]:
        with self._lock:
            start = self._counter
            self._counter += n
        return [f"{self._prefix}-{i}" for i in range(start, start + n)]

    def sequential(self, saga: type[Saga[Order]], n: int) -> float:
        """Sagas/s of ``n`` sagas run one after another in this thread."""
        return self.sequential_with_cpu(saga, n)[0]

    def sequential_with_cpu(self, saga: type[Saga[Order]], n: int) -> tuple[float, float]:
        """Sagas/s of ``n`` sagas run one after another, and this process's CPU seconds per saga."""
        ids = self._ids(n)
        cpu = os.times()
        started = time.perf_counter()
        for saga_id in ids:
            self.engine.run(saga, Order(saga_id, 1200), saga_id=saga_id, idempotency_key=saga_id)
        elapsed = time.perf_counter() - started
        after = os.times()
        return n / elapsed, (after.user - cpu.user + after.system - cpu.system) / n

    def threads(self, saga: type[Saga[Order]], threads: int, per_thread: int) -> float:
        """Sagas/s with ``threads`` threads each running ``per_thread`` sagas."""
        ids = [self._ids(per_thread) for _ in range(threads)]

        def work(i: int) -> None:
            for saga_id in ids[i]:
                self.engine.run(saga, Order(saga_id, 1200), saga_id=saga_id, idempotency_key=saga_id)

        return threads * per_thread / _timed_threads(threads, work)

    def tasks(self, saga: type[Saga[Order]], tasks: int, per_task: int) -> float:
        """Sagas/s with ``tasks`` asyncio tasks on one loop, each running ``per_task`` sagas."""
        ids = [self._ids(per_task) for _ in range(tasks)]

        async def work(mine: list[str]) -> None:
            for saga_id in mine:
                await self.engine.run_async(saga, Order(saga_id, 1200), saga_id=saga_id,
                                            idempotency_key=saga_id)

        async def main() -> float:
            started = time.perf_counter()
            await asyncio.gather(*(work(mine) for mine in ids))
            return time.perf_counter() - started

        return tasks * per_task / asyncio.run(main())


def pg_engine(url: str) -> SagaEngine:
    return SagaEngine(SqlStorage(url, schema=BENCH_SCHEMA))


class SqlReplay:
    """The statements one saga sends, replayed through plain psycopg with no engine.

    Recorded from a real run of ``saga`` on ``engine`` (SQLAlchemy's
    ``before_cursor_execute`` sees the SQL and the parameters as the driver
    gets them), then sent again for fresh saga ids on one connection in
    autocommit mode, as the engine sends them. What the database alone allows
    for sagadsl's statements: the engine's own cost is the gap between this
    and the engine's rate.
    """

    _TEMPLATE = "sagadsl-replay-template"

    def __init__(self, url: str, engine: SagaEngine, saga: type[Saga[Order]]) -> None:
        storage = engine.storage
        assert isinstance(storage, SqlStorage)
        recorded: list[tuple[str, Any]] = []

        def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
            recorded.append((statement, parameters))

        event.listen(storage.engine, "before_cursor_execute", record)
        try:
            engine.run(saga, Order(self._TEMPLATE, 1200), saga_id=self._TEMPLATE,
                       idempotency_key=self._TEMPLATE)
        finally:
            event.remove(storage.engine, "before_cursor_execute", record)
        self.statements = recorded
        self._conn = psycopg.connect(libpq_dsn(url), autocommit=True)
        self._counter = 0

    def _for(self, value: Any, saga_id: str) -> Any:
        if isinstance(value, str):
            return value.replace(self._TEMPLATE, saga_id)
        if isinstance(value, dict):
            return {k: self._for(v, saga_id) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._for(v, saga_id) for v in value)
        return value

    def sequential(self, n: int) -> float:
        """Replayed sagas/s of ``n`` sagas, one after another."""
        return self.sequential_with_cpu(n)[0]

    def sequential_with_cpu(self, n: int) -> tuple[float, float]:
        """Replayed sagas/s of ``n`` sagas, and this process's CPU seconds per saga: psycopg's alone."""
        batches = []
        for _ in range(n):
            self._counter += 1
            saga_id = f"replay-{self._counter}"
            batches.append([(sql, self._for(params, saga_id)) for sql, params in self.statements])
        cpu = os.times()
        started = time.perf_counter()
        for batch in batches:
            for sql, params in batch:
                self._conn.execute(sql, params)
        elapsed = time.perf_counter() - started
        after = os.times()
        return n / elapsed, (after.user - cpu.user + after.system - cpu.system) / n

    def close(self) -> None:
        self._conn.close()


class PgBytes:
    """Bytes the benchmark schema's tables grew by, and WAL the cluster wrote."""

    def __init__(self, url: str) -> None:
        self._engine = create_engine(url)
        self._tables = [f'"{BENCH_SCHEMA}".sagadsl_workflows', f'"{BENCH_SCHEMA}".sagadsl_steps']

    def snapshot(self) -> tuple[int, str]:
        sizes = " + ".join(f"pg_total_relation_size('{t}')" for t in self._tables)
        with self._engine.connect() as conn:
            row = conn.execute(text(f"SELECT {sizes}, pg_current_wal_lsn()::text")).one()
        return int(row[0]), str(row[1])

    def delta(self, before: tuple[int, str]) -> tuple[int, int]:
        size, lsn = self.snapshot()
        with self._engine.connect() as conn:
            wal = conn.execute(text("SELECT pg_wal_lsn_diff(:a, :b)"), {"a": lsn, "b": before[1]}).scalar_one()
        return size - before[0], int(wal)

    def close(self) -> None:
        self._engine.dispose()


def pg_version(url: str) -> str:
    admin = create_engine(url)
    try:
        with admin.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar_one())
    finally:
        admin.dispose()


# -- SQLite ---------------------------------------------------------------------


def sqlite_baseline(path: str, n: int) -> float:
    """Commits/s of plain sqlite3 with the engine's pragmas: BEGIN IMMEDIATE, INSERT, COMMIT."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute("CREATE TABLE IF NOT EXISTS baseline (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        started = time.perf_counter()
        for _ in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO baseline (payload) VALUES (?)", ("payload",))
            conn.execute("COMMIT")
        return n / (time.perf_counter() - started)
    finally:
        conn.close()


def memory_engine_cpu(n: int) -> float:
    """This process's CPU seconds per 3-step saga on the in-memory storage: the engine with no SQL at all."""
    runner = SagaRunner(SagaEngine(InMemoryStorage()))
    try:
        runner.sequential(ThreeSteps, 20)
        return runner.sequential_with_cpu(ThreeSteps, n)[1]
    finally:
        runner.engine.close()


def sqlite_engine(directory: str) -> SagaEngine:
    return SagaEngine(f"sqlite:///{os.path.join(directory, 'sagadsl.db')}")


def warm_up(runner: SagaRunner, *sagas: type[Saga[Any]]) -> None:
    """Fill the pool, statement caches and server-side prepared statements."""
    for saga in sagas:
        runner.sequential(saga, 10)
