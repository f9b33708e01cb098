"""Admin queries on a million synthetic saga rows.

The rows are bulk-loaded with ``INSERT ... SELECT generate_series`` into a
dedicated schema, once: a comment on the schema records what was loaded, and a
later run reuses the schema when the comment matches.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from sagadsl import SagaEngine, migrate
from sagadsl.storage import SqlStorage
from sagadsl.storage.schema import head_revision, recount_statuses

ADMIN_SCHEMA = "sagadsl_bench_admin"
STEPS_PER_SAGA = 3

#: Share of each status in the synthetic rows, per 100 sagas: a production
#: table is mostly finished sagas with a thin layer of the ones people look at.
STATUS_MIX = (("dead_letter", 1), ("failed", 2), ("pending", 2), ("compensating", 1), ("completed", 94))


def _marker(rows: int) -> str:
    return f"sagadsl benchmark data: rows={rows} steps={STEPS_PER_SAGA} revision={head_revision()}"


def _status_case() -> str:
    arms, upper = [], 0
    for status, share in STATUS_MIX:
        upper += share
        arms.append(f"WHEN mod(g, 100) < {upper} THEN '{status}'")
    return "CASE " + " ".join(arms) + " END"


def ensure_loaded(url: str, rows: int, log: Callable[[str], None]) -> bool:
    """Load ``rows`` synthetic sagas into :data:`ADMIN_SCHEMA` unless already there.

    Returns:
        True when the cached schema was reused.
    """
    admin = create_engine(url)
    try:
        with admin.connect() as conn:
            comment = conn.execute(text("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace "
                                        "WHERE nspname = :s"), {"s": ADMIN_SCHEMA}).scalar()
        if comment == _marker(rows):
            return True
        log(f"loading {rows:,} synthetic sagas into schema {ADMIN_SCHEMA} (cached for later runs)...")
        started = time.perf_counter()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{ADMIN_SCHEMA}" CASCADE')
        migrate(admin, schema=ADMIN_SCHEMA)
        _load(admin, rows)
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # The visibility map makes count-by-status an index-only scan.
            conn.exec_driver_sql(f'VACUUM ANALYZE "{ADMIN_SCHEMA}".sagadsl_workflows')
            conn.exec_driver_sql(f'VACUUM ANALYZE "{ADMIN_SCHEMA}".sagadsl_steps')
            conn.exec_driver_sql(f"COMMENT ON SCHEMA \"{ADMIN_SCHEMA}\" IS '{_marker(rows)}'")
        log(f"loaded in {time.perf_counter() - started:.0f} s")
        return False
    finally:
        admin.dispose()


def _load(admin: Engine, rows: int) -> None:
    wf = f'"{ADMIN_SCHEMA}".sagadsl_workflows'
    st = f'"{ADMIN_SCHEMA}".sagadsl_steps'
    with admin.begin() as conn:
        # A bulk load: count once at the end instead of a trigger per row.
        conn.exec_driver_sql(f"ALTER TABLE {wf} DISABLE TRIGGER USER")
        conn.exec_driver_sql(f"""
            INSERT INTO {wf} (id, saga_name, status, input, idempotency_key, fingerprint, retry_count,
                              version, current_step, error_step, error, created_at, updated_at,
                              started_at, stuck_after)
            SELECT 'saga-' || g,
                   'bench.saga_' || (mod(g, 7)),
                   {_status_case()},
                   jsonb_build_object('order_id', 'o-' || g, 'cents', mod(g, 10000)),
                   'key-' || g,
                   'f00dfeed',
                   0,
                   4,
                   'step_' || (mod(g, {STEPS_PER_SAGA})),
                   CASE WHEN mod(g, 100) < 3 THEN 'step_1' END,
                   CASE WHEN mod(g, 100) < 3 THEN 'ValueError: declined' END,
                   timestamptz '2026-01-01 00:00:00+00' + g * interval '2 seconds',
                   timestamptz '2026-01-01 00:00:00+00' + g * interval '2 seconds' + interval '3 seconds',
                   timestamptz '2026-01-01 00:00:00+00' + g * interval '2 seconds',
                   NULL
            FROM generate_series(1, {rows}) AS g
        """)
        conn.exec_driver_sql(f"""
            INSERT INTO {st} (workflow_id, name, position, idempotency_key, status, result, attempts,
                              started_at, finished_at)
            SELECT w.id, 'step_' || p, p, w.id || '-step-' || p, 'completed', to_jsonb(p), 1,
                   w.created_at, w.updated_at
            FROM {wf} AS w CROSS JOIN generate_series(0, {STEPS_PER_SAGA - 1}) AS p
        """)
        conn.exec_driver_sql(f"ALTER TABLE {wf} ENABLE TRIGGER USER")
        recount_statuses(conn, ADMIN_SCHEMA)


@dataclass
class AdminTimings:
    """Median milliseconds of each admin query, keyed by a readable name."""

    rows: int
    reused: bool
    medians_ms: dict[str, float]
    status_rows: dict[str, int]


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm the plan and buffer caches
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def measure(url: str, rows: int, runs: int, log: Callable[[str], None]) -> AdminTimings:
    """Time ``engine.query(status=..., limit=100)`` and ``engine.count(status)``."""
    reused = ensure_loaded(url, rows, log)
    engine = SagaEngine(SqlStorage(url, schema=ADMIN_SCHEMA))
    try:
        medians: dict[str, float] = {}
        status_rows: dict[str, int] = {}
        # The rarest status people page through, and the biggest one.
        for status in ("dead_letter", "completed"):
            status_rows[status] = engine.count(status)
            medians[f"query(status={status!r}, limit=100)"] = _median_ms(
                functools.partial(engine.query, status, limit=100), runs)
            medians[f"count({status!r})"] = _median_ms(functools.partial(engine.count, status), runs)
        return AdminTimings(rows=rows, reused=reused, medians_ms=medians, status_rows=status_rows)
    finally:
        engine.close()
