"""Retention on a big table: ``engine.prune`` next to sagas that keep running.

Loads ``--rows`` completed sagas (three steps each, last updated long ago)
into the schema ``sagadsl_bench_prune`` with ``INSERT ... SELECT
generate_series``, as ``admin.py`` does, then runs ``engine.prune`` while a
thread runs a 3-step saga in a loop, and prints:

- the prune rate (sagas deleted per second, their steps going by cascade);
- the concurrent sagas' median duration before and during the prune, and the
  longest one during it: the longest pause the prune caused.

The schema is reloaded on every run (pruning empties it) and dropped at the end.

    .venv/bin/python benchmarks/prune.py                      # 1,000,000 rows
    .venv/bin/python benchmarks/prune.py --rows 200000 --batch 1000
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import create_engine

from sagadsl import Saga, SagaEngine, migrate, step
from sagadsl.storage import SqlStorage
from sagadsl.storage.schema import recount_statuses

DEFAULT_URL = "postgresql+psycopg://root@127.0.0.1/test"
SCHEMA = "sagadsl_bench_prune"
STEPS_PER_SAGA = 3


@dataclass
class Tick:
    n: int


class Live(Saga[Tick], name="bench.prune.live"):
    @step(idempotency_key="a-{n}")
    def a(self) -> int:
        return 1

    @step(idempotency_key="b-{n}")
    def b(self, a: int) -> int:
        return a + 1

    @step(idempotency_key="c-{n}")
    def c(self, b: int) -> int:
        return b + 1


def load(url: str, rows: int) -> float:
    """(Re)create the schema with ``rows`` completed sagas that ended in 2026; returns the seconds taken."""
    started = time.perf_counter()
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
        migrate(admin, schema=SCHEMA)
        wf, st = f'"{SCHEMA}".sagadsl_workflows', f'"{SCHEMA}".sagadsl_steps'
        with admin.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE {wf} DISABLE TRIGGER USER")
            conn.exec_driver_sql(f"""
                INSERT INTO {wf} (id, saga_name, status, input, idempotency_key, fingerprint, retry_count,
                                  version, created_at, updated_at, started_at, finished_at)
                SELECT 'saga-' || g, 'bench.saga_' || mod(g, 7), 'completed',
                       jsonb_build_object('order_id', 'o-' || g), 'key-' || g, 'f00dfeed', 0, 4,
                       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
                       timestamptz '2026-01-01 00:00:03+00' + g * interval '1 second',
                       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
                       timestamptz '2026-01-01 00:00:03+00' + g * interval '1 second'
                FROM generate_series(1, {rows}) AS g
            """)
            conn.exec_driver_sql(f"""
                INSERT INTO {st} (workflow_id, name, position, idempotency_key, status, result, attempts)
                SELECT w.id, 'step_' || p, p, w.id || '-step-' || p, 'completed', to_jsonb(p), 1
                FROM {wf} AS w CROSS JOIN generate_series(0, {STEPS_PER_SAGA - 1}) AS p
            """)
            conn.exec_driver_sql(f"ALTER TABLE {wf} ENABLE TRIGGER USER")
            recount_statuses(conn, SCHEMA)
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM ANALYZE {wf}")
            conn.exec_driver_sql(f"VACUUM ANALYZE {st}")
    finally:
        admin.dispose()
    return time.perf_counter() - started


def drop(url: str) -> None:
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    finally:
        admin.dispose()


class SagaLoop(threading.Thread):
    """Runs ``Live`` sagas one after another and records each one's duration (seconds)."""

    def __init__(self, engine: SagaEngine) -> None:
        super().__init__(name="saga-loop", daemon=True)
        self.engine = engine
        self.durations: list[tuple[float, float]] = []  # (finished at, duration)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            started = time.perf_counter()
            try:
                self.engine.run(Live, Tick(n), saga_id=f"live-{n}", idempotency_key="k")
            except BaseException as exc:  # noqa: BLE001 - the main thread reports it
                self.error = exc
                return
            finished = time.perf_counter()
            self.durations.append((finished, finished - started))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--rows", type=int, default=1_000_000, help="completed sagas to load and prune")
    parser.add_argument("--batch", type=int, default=1000, help="sagas deleted per transaction")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of sagas before the prune")
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    args = parser.parse_args(argv)

    print(f"loading {args.rows:,} completed sagas ({STEPS_PER_SAGA} steps each) into {SCHEMA}...", flush=True)
    print(f"loaded in {load(args.database_url, args.rows):.0f} s", flush=True)
    engine = SagaEngine(SqlStorage(args.database_url, schema=SCHEMA))
    pruner = SagaEngine(SqlStorage(args.database_url, schema=SCHEMA))
    loop = SagaLoop(engine)
    try:
        loop.start()
        time.sleep(args.warmup)
        prune_started = time.perf_counter()
        deleted = pruner.prune(timedelta(days=1), batch=args.batch)
        prune_ended = time.perf_counter()
        time.sleep(0.5)
        loop.stop.set()
        loop.join(30)
        if loop.error is not None:
            raise loop.error
        counts = {s.value: n for s, n in engine.count_by_status().items() if n}
    finally:
        pruner.close()
        engine.close()
        if not args.keep:
            drop(args.database_url)

    seconds = prune_ended - prune_started
    before = [d for at, d in loop.durations if at < prune_started]
    # Every saga that overlapped the prune.
    during = [d for at, d in loop.durations if at - d < prune_ended and at > prune_started]
    print(f"pruned {deleted:,} sagas ({deleted * STEPS_PER_SAGA:,} step rows by cascade) in {seconds:.1f} s: "
          f"{deleted / seconds:,.0f} sagas/s, batches of {args.batch}")
    print(f"concurrent 3-step sagas: before the prune {len(before)} ran, median "
          f"{statistics.median(before) * 1000:.1f} ms; during it {len(during)} ran, median "
          f"{statistics.median(during) * 1000:.1f} ms, longest {max(during) * 1000:.1f} ms, p99 "
          f"{sorted(during)[int(len(during) * 0.99)] * 1000:.1f} ms")
    print(f"counts afterwards: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
