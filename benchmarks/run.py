"""sagadsl benchmarks: every figure beside the database's own commit rate, measured in the same run.

Usage::

    python benchmarks/run.py                       # full run (a few minutes; first run loads 1M rows)
    python benchmarks/run.py --quick               # under three minutes
    python benchmarks/run.py --json out.json       # also write the figures for comparison across commits
    python benchmarks/run.py --database-url postgresql+psycopg://user@host/db --skip-admin

Each round measures a baseline and then the workload compared with it, so a
machine that gets busier halfway through slows both; the report shows the
median over the rounds and the ratio of the medians. Targets are DESIGN §6.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Run as a script, this file's directory is on sys.path: the modules beside it import as is.
import admin
import peer_dbos
import pgstats
import scaleout
import tracing
import workloads as w
from sqlalchemy.engine import make_url

DEFAULT_URL = "postgresql+psycopg://root@127.0.0.1/test"
ADMIN_ROWS = 1_000_000
ADMIN_LIMIT_MS = 20.0


@dataclass(frozen=True)
class Sizes:
    """How much work one round does."""

    baseline_commits: int
    sequential_sagas: int
    baseline_per_thread: int
    sagas_per_thread: int
    hundred_step_sagas: int
    sqlite_commits: int
    sqlite_sagas: int
    dbos_workflows: int
    dbos_per_thread: int
    scaleout_sagas: int


FULL = Sizes(baseline_commits=1000, sequential_sagas=300, baseline_per_thread=250, sagas_per_thread=60,
             hundred_step_sagas=6, sqlite_commits=500, sqlite_sagas=200, dbos_workflows=300, dbos_per_thread=60,
             scaleout_sagas=600)
QUICK = Sizes(baseline_commits=400, sequential_sagas=150, baseline_per_thread=100, sagas_per_thread=25,
              hundred_step_sagas=3, sqlite_commits=200, sqlite_sagas=80, dbos_workflows=100, dbos_per_thread=15,
              scaleout_sagas=200)
#: DESIGN §6: sagadsl's 3-step saga against DBOS's 3-step workflow.
DBOS_THROUGHPUT = 5.0
DBOS_CPU = 0.1
DBOS_WAL = 0.5


@dataclass
class Figure:
    """One reported number, its samples, and how it compares with its baseline."""

    name: str
    unit: str
    samples: list[float]
    baseline: str | None = None
    ratio: float | None = None
    #: The ratio (or, without a baseline, the value) the target asks for.
    target: str | None = None
    passed: bool | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass
class Report:
    meta: dict[str, Any]
    figures: dict[str, Figure] = field(default_factory=dict)

    def add(self, figure: Figure) -> Figure:
        self.figures[figure.name] = figure
        return figure

    def __getitem__(self, name: str) -> Figure:
        return self.figures[name]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], check=False,
                               capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class DbosSide:
    """The DBOS peer of one run: its child process, its database and what it measured."""

    def __init__(self, python: Path, url: str) -> None:
        self.server = w.libpq_dsn(url)
        self.dsn = peer_dbos.create_database(self.server)
        self.peer = peer_dbos.DbosPeer(python, self.dsn)
        self.version = self.peer.info["dbos"]
        self.peer.request("warm_up", n=20)

    def close(self) -> None:
        self.peer.close()

    def drop(self) -> None:
        peer_dbos.drop_database(self.server)


def _wal_around(meter: pgstats.WalMeter, owned: frozenset[str], run: Callable[[], Any], units: int,
                into: dict[str, list[float]], by_relation: dict[str, list[int]], key: str) -> Any:
    """Run ``run()``, recording WAL bytes and records per unit under ``key``, and by relation.

    ``{key}_wal_bytes`` and ``{key}_wal_records`` are the workload's own (its
    ``owned`` relations and their transactions' commits); ``{key}_wal_bytes_cluster``
    is everything the cluster wrote meanwhile.
    """
    before = meter.mark()
    result = run()
    delta = meter.since(before, owned)
    into[f"{key}_wal_bytes"].append(delta.own_bytes / units)
    into[f"{key}_wal_records"].append(delta.own_records / units)
    into[f"{key}_wal_bytes_cluster"].append(delta.bytes / units)
    pgstats.add_relations(by_relation, delta)
    return result


def measure_postgres(url: str, sizes: Sizes, rounds: int, report: Report,
                     dbos_python: Path | None = None) -> None:
    w.prepare_pg(url)
    engine = w.pg_engine(url)
    runner = w.SagaRunner(engine)
    meter = w.PgBytes(url)
    wal = pgstats.WalMeter(w.libpq_dsn(url), w.BENCH_SCHEMA)
    samples: dict[str, list[float]] = defaultdict(list)
    stored = {3: [0, 0], 100: [0, 0]}  # steps -> [bytes, steps]
    wal_steps = {3: [0, 0], 100: [0, 0]}
    hot: dict[str, list[pgstats.TableUpdates]] = {}
    by_relation: dict[str, dict[str, list[int]]] = {"sagadsl": {}, "dbos": {}}
    replay = None
    dbos = None
    try:
        if dbos_python is not None:
            _log("starting the DBOS peer")
            dbos = DbosSide(dbos_python, url)
            report.meta["dbos"] = dbos.version
        w.warm_up(runner, w.ThreeSteps, w.ThreeAsyncSteps, w.HundredSteps)
        replay = w.SqlReplay(url, engine, w.ThreeSteps)
        replay.sequential(10)  # psycopg prepares the statements
        wal.learn_relations(w.libpq_dsn(url))
        ours = wal.owned(str(make_url(url).database), w.BENCH_SCHEMA)
        if dbos is not None:
            wal.learn_relations(dbos.dsn)
        theirs = wal.owned(peer_dbos.DATABASE)

        def sagadsl_sequential() -> None:
            before = meter.snapshot()
            rate, cpu = _wal_around(wal, ours,
                                    lambda: runner.sequential_with_cpu(w.ThreeSteps, sizes.sequential_sagas),
                                    sizes.sequential_sagas, samples, by_relation["sagadsl"], "seq")
            samples["seq"].append(rate)
            samples["seq_cpu"].append(cpu * 1e6)
            grew, wrote = meter.delta(before)
            stored[3][0] += grew
            wal_steps[3][0] += wrote
            stored[3][1] += 3 * sizes.sequential_sagas
            wal_steps[3][1] += 3 * sizes.sequential_sagas

        def dbos_sequential() -> None:
            assert dbos is not None
            rate, cpu = _wal_around(wal, theirs, lambda: dbos.peer.sequential(sizes.dbos_workflows),
                                    sizes.dbos_workflows, samples, by_relation["dbos"], "dbos_seq")
            samples["dbos_seq"].append(rate)
            samples["dbos_seq_cpu"].append(cpu * 1e6)

        def sagadsl_threads() -> None:
            samples["threads"].append(runner.threads(w.ThreeSteps, 8, sizes.sagas_per_thread))

        def dbos_threads() -> None:
            assert dbos is not None
            samples["dbos_threads"].append(dbos.peer.threads(8, sizes.dbos_per_thread))

        for r in range(1, rounds + 1):
            _log(f"PostgreSQL round {r}/{rounds}")
            base, base_cpu = w.pg_baseline_with_cpu(url, 1, sizes.baseline_commits)
            samples["base1"].append(base)
            samples["base1_cpu"].append(base_cpu * 1e6)
            # Alternate who goes first, so drift within a round favours neither.
            pair = [sagadsl_sequential] + ([dbos_sequential] if dbos else [])
            for run in pair if r % 2 else pair[::-1]:
                run()
            rate, cpu = replay.sequential_with_cpu(sizes.sequential_sagas)
            samples["replay"].append(rate)
            samples["replay_cpu"].append(cpu * 1e6)
            samples["memory_cpu"].append(w.memory_engine_cpu(sizes.sequential_sagas) * 1e6)
            rate, cpu = runner.sequential_with_cpu(w.ThreeAsyncSteps, sizes.sequential_sagas)
            samples["seq_async"].append(rate)
            samples["seq_async_cpu"].append(cpu * 1e6)
            before = meter.snapshot()
            samples["hundred"].append(runner.sequential(w.HundredSteps, sizes.hundred_step_sagas))
            grew, wrote = meter.delta(before)
            stored[100][0] += grew
            wal_steps[100][0] += wrote
            stored[100][1] += 100 * sizes.hundred_step_sagas
            wal_steps[100][1] += 100 * sizes.hundred_step_sagas
            samples["base8"].append(w.pg_baseline(url, 8, sizes.baseline_per_thread))
            pair = [sagadsl_threads] + ([dbos_threads] if dbos else [])
            for run in pair if r % 2 else pair[::-1]:
                run()
            samples["tasks"].append(runner.tasks(w.ThreeSteps, 8, sizes.sagas_per_thread))

        # A backend flushes its table counters when its connection closes: close them, then read.
        replay.close()
        engine.close()
        if dbos is not None:
            dbos.close()
        time.sleep(1.0)
        hot = {"pg": pgstats.table_updates(w.libpq_dsn(url), (w.BENCH_SCHEMA,)),
               "dbos": pgstats.table_updates(dbos.dsn, ("dbos",)) if dbos else []}
        report.meta["wal_by_relation"] = {
            "sagadsl 3-step saga": pgstats.per_unit(pgstats.named(wal, by_relation["sagadsl"]),
                                                    rounds * sizes.sequential_sagas),
            **({"DBOS 3-step workflow": pgstats.per_unit(pgstats.named(wal, by_relation["dbos"]),
                                                         rounds * sizes.dbos_workflows)} if dbos else {}),
        }
    finally:
        if replay is not None:
            replay.close()
        if dbos is not None:
            dbos.close()
            dbos.drop()
        wal.close()
        meter.close()
        engine.close()
        w.drop_pg(url)

    base1 = report.add(Figure("pg.baseline.1_thread", "commits/s", samples["base1"],
                              note="plain psycopg, INSERT + COMMIT"))
    report.add(Figure("pg.baseline.cpu_us", "us/commit", samples["base1_cpu"],
                      note="this process's CPU per baseline commit, for reference"))
    base8 = report.add(Figure("pg.baseline.8_threads", "commits/s", samples["base8"],
                              note="plain psycopg, 8 connections"))
    seq = report.add(Figure("pg.saga3.sequential", "sagas/s", samples["seq"], baseline=base1.name,
                            target=">= 0.60", note="ratio = sagas/s / (baseline / 4)"))
    seq.ratio = seq.median / (base1.median / 4)
    seq.passed = seq.ratio >= 0.60
    floor = report.add(Figure("pg.saga3.statements_alone", "sagas/s", samples["replay"], baseline=base1.name,
                              note=f"the saga's {len(replay.statements) if replay else '?'} statements "
                                   "replayed by plain psycopg, no engine: the database's share; no target"))
    floor.ratio = floor.median / (base1.median / 4)
    report.add(Figure("pg.saga3.sequential_cpu_us", "us/saga", samples["seq_cpu"],
                      note="this process's CPU per sequential saga: the engine's share; no target"))
    report.add(Figure("pg.saga3.statements_alone_cpu_us", "us/saga", samples["replay_cpu"],
                      note="this process's CPU to send the same statements by plain psycopg: the driver's share"))
    report.add(Figure("memory.saga3.cpu_us", "us/saga", samples["memory_cpu"],
                      note="the same saga on the in-memory storage: the engine with no SQL"))
    _add_wal_figures(report, "pg.saga3", "saga", samples, "seq", wal)
    seq_async = report.add(Figure("pg.saga3.sequential_async_steps", "sagas/s", samples["seq_async"],
                                  baseline=base1.name, note="the same with async def steps; no target"))
    seq_async.ratio = seq_async.median / (base1.median / 4)
    report.add(Figure("pg.saga3.sequential_async_steps_cpu_us", "us/saga", samples["seq_async_cpu"],
                      note="this process's CPU per saga of async def steps: no hand-off to the step thread pool"))
    for key, name in (("threads", "pg.saga3.8_threads"), ("tasks", "pg.saga3.8_asyncio_tasks")):
        fig = report.add(Figure(name, "sagas/s", samples[key], baseline=base8.name, target=">= 0.35",
                                note="ratio = sagas/s / (8-thread baseline / 4)"))
        fig.ratio = fig.median / (base8.median / 4)
        fig.passed = fig.ratio >= 0.35

    per_step3 = [1000 / (s * 3) for s in samples["seq"]]
    per_step100 = [1000 / (s * 100) for s in samples["hundred"]]
    step3 = report.add(Figure("pg.per_step_ms.3_steps", "ms/step", per_step3, note="3-step saga"))
    step100 = report.add(Figure("pg.per_step_ms.100_steps", "ms/step", per_step100, baseline=step3.name,
                                target="<= 1.20", note="ratio = 100-step / 3-step"))
    step100.ratio = step100.median / step3.median
    step100.passed = step100.ratio <= 1.20

    b3 = report.add(Figure("pg.stored_bytes_per_step.3_steps", "bytes/step", [stored[3][0] / stored[3][1]],
                           note="growth of sagadsl tables + indexes"))
    b100 = report.add(Figure("pg.stored_bytes_per_step.100_steps", "bytes/step",
                             [stored[100][0] / stored[100][1]], baseline=b3.name, target="<= 1.20",
                             note="ratio = 100-step / 3-step"))
    b100.ratio = b100.median / b3.median
    b100.passed = b100.ratio <= 1.20
    w3 = report.add(Figure("pg.wal_bytes_per_step.3_steps", "bytes/step", [wal_steps[3][0] / wal_steps[3][1]],
                           note="cluster-wide WAL: includes other sessions"))
    w100 = report.add(Figure("pg.wal_bytes_per_step.100_steps", "bytes/step",
                             [wal_steps[100][0] / wal_steps[100][1]],
                             baseline=w3.name, note="cluster-wide WAL: includes other sessions"))
    w100.ratio = w100.median / w3.median
    if dbos is not None:
        _add_dbos_figures(report, samples, dbos.version, wal)
    for prefix, tables in hot.items():
        _add_hot_figures(report, prefix, tables)


def _add_wal_figures(report: Report, prefix: str, unit: str, samples: dict[str, list[float]], key: str,
                     wal: pgstats.WalMeter) -> None:
    """WAL bytes and records per sequential run of one workload: its own, and the whole cluster's."""
    if wal.inspect:
        own = "its own relations' records and their transactions' commits (pg_walinspect)"
        records = "WAL records of the same (pg_walinspect)"
    else:
        own = "flush LSN diff, whole cluster: pg_walinspect is not available"
        records = "pg_stat_wal, whole cluster: other backends flush it up to 1 s late"
    report.add(Figure(f"{prefix}.wal_bytes", f"bytes/{unit}", samples[f"{key}_wal_bytes"],
                      note=f"WAL per sequential {unit}: {own}"))
    report.add(Figure(f"{prefix}.wal_records", f"records/{unit}", samples[f"{key}_wal_records"], note=records))
    report.add(Figure(f"{prefix}.wal_bytes_cluster", f"bytes/{unit}", samples[f"{key}_wal_bytes_cluster"],
                      note="flush LSN diff around the same runs: everything the cluster wrote meanwhile"))


def _add_hot_figures(report: Report, prefix: str, tables: list[pgstats.TableUpdates]) -> None:
    """One figure per table that was updated (migration bookkeeping aside): the share of HOT updates."""
    for t in tables:
        if t.updates and not t.table.endswith(("alembic_version", "dbos_migrations")):
            report.add(Figure(f"{prefix}.hot_share.{t.table.split('.', 1)[-1]}", "% HOT", [100 * t.hot_share],
                              note=f"{t.hot_updates:,} of {t.updates:,} updates HOT ({t.inserts:,} inserts), "
                                   "whole run"))


def _add_dbos_figures(report: Report, samples: dict[str, list[float]], version: str,
                      wal: pgstats.WalMeter) -> None:
    """DBOS's figures, and the DESIGN §6 targets that compare sagadsl with them."""
    peer = f"DBOS {version}, 3 @DBOS.step in a @DBOS.workflow"
    seq = report.add(Figure("dbos.wf3.sequential", "wf/s", samples["dbos_seq"],
                            note=f"{peer}, one after another"))
    threads = report.add(Figure("dbos.wf3.8_threads", "wf/s", samples["dbos_threads"],
                                note=f"{peer}, 8 threads"))
    cpu = report.add(Figure("dbos.wf3.sequential_cpu_us", "us/wf", samples["dbos_seq_cpu"],
                            note="the DBOS process's CPU (user + system) per sequential workflow"))
    _add_wal_figures(report, "dbos.wf3", "wf", samples, "dbos_seq", wal)
    for name, ours, theirs, op, limit in (
            ("pg.saga3.vs_dbos.sequential", "pg.saga3.sequential", seq, ">=", DBOS_THROUGHPUT),
            ("pg.saga3.vs_dbos.8_threads", "pg.saga3.8_threads", threads, ">=", DBOS_THROUGHPUT),
            ("pg.saga3.vs_dbos.cpu_us", "pg.saga3.sequential_cpu_us", cpu, "<=", DBOS_CPU),
            ("pg.saga3.vs_dbos.wal_bytes", "pg.saga3.wal_bytes", report["dbos.wf3.wal_bytes"], "<=", DBOS_WAL)):
        mine = report[ours]
        fig = report.add(Figure(name, mine.unit, mine.samples, baseline=theirs.name, target=f"{op} {limit:.2f}",
                                note=f"ratio = {ours} / DBOS's {_fmt(theirs.median)} {theirs.unit}"))
        fig.ratio = fig.median / theirs.median
        fig.passed = fig.ratio >= limit if op == ">=" else fig.ratio <= limit


def measure_scaleout(url: str, sizes: Sizes, rounds: int, report: Report) -> None:
    """Submitted sagas drained by 1, 2 and 4 worker processes, interleaved per round."""
    scaleout.prepare(url)
    engine = scaleout.engine(url)
    counts = (1, 2, 4)
    rates: dict[int, list[float]] = {p: [] for p in counts}
    cpu: dict[int, list[float]] = {p: [] for p in counts}
    submitted: list[float] = []
    try:
        for r in range(1, rounds + 1):
            _log(f"scale-out round {r}/{rounds}")
            for processes in counts[r % 3:] + counts[:r % 3]:
                started = time.perf_counter()
                scaleout.submit(engine, f"r{r}p{processes}", sizes.scaleout_sagas)
                submitted.append(sizes.scaleout_sagas / (time.perf_counter() - started))
                elapsed, said, spent = scaleout.drain(url, processes)
                left = scaleout.pending(engine)
                if left or said < sizes.scaleout_sagas:
                    raise RuntimeError(f"{processes} workers completed {said} of {sizes.scaleout_sagas} "
                                       f"sagas; {left} left")
                rates[processes].append(sizes.scaleout_sagas / elapsed)
                cpu[processes].append(spent / sizes.scaleout_sagas * 1e6)
    finally:
        engine.close()
        scaleout.drop(url)
    report.add(Figure("pg.scaleout.submit", "sagas/s", submitted, note="engine.submit, one after another"))
    one = None
    for processes in counts:
        fig = report.add(Figure(f"pg.scaleout.{processes}_process{'es' if processes > 1 else ''}", "sagas/s",
                                rates[processes], baseline=one.name if one else None,
                                note=f"{sizes.scaleout_sagas} submitted sagas drained by {processes} worker "
                                     f"process(es), concurrency {scaleout.CONCURRENCY}, poll interval "
                                     f"{scaleout.POLL_INTERVAL} s"
                                     + ("; ratio = / 1 process" if one else "")))
        if one is None:
            one = fig
        else:
            fig.ratio = fig.median / one.median
    report.add(Figure("pg.scaleout.1_process_cpu_us", "us/saga", cpu[1],
                      note="the worker process's CPU per saga it drained: poll, claim, load and the saga"))


def measure_sqlite(sizes: Sizes, rounds: int, report: Report) -> None:
    base: list[float] = []
    sagas: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sagadsl-bench-") as directory:
        engine = w.sqlite_engine(directory)
        runner = w.SagaRunner(engine)
        try:
            w.warm_up(runner, w.ThreeSteps)
            for r in range(1, rounds + 1):
                _log(f"SQLite round {r}/{rounds}")
                base.append(w.sqlite_baseline(str(Path(directory) / "baseline.db"), sizes.sqlite_commits))
                sagas.append(runner.sequential(w.ThreeSteps, sizes.sqlite_sagas))
        finally:
            engine.close()
    b = report.add(Figure("sqlite.baseline", "commits/s", base,
                          note="plain sqlite3, WAL, synchronous=FULL, BEGIN IMMEDIATE"))
    s = report.add(Figure("sqlite.saga3.sequential", "sagas/s", sagas, baseline=b.name,
                          note="ratio = sagas/s / (baseline / 4); no target in DESIGN"))
    s.ratio = s.median / (b.median / 4)


def measure_tracing(url: str, sizes: Sizes, rounds: int, report: Report) -> None:
    cost = tracing.measure(url, max(rounds * 2, 7), sizes.sequential_sagas // 2, _log)
    report.add(Figure("tracing.pg_wall_ms_per_saga", "ms/saga", [t * 1000 for t in cost.pg_wall],
                      note="plain sequential 3-step saga on PostgreSQL: the denominator"))
    report.add(Figure("tracing.plain_cpu_us_per_saga", "us/saga", [c * 1e6 for c in cost.plain_cpu],
                      note="engine CPU per saga, in-memory storage, no events"))
    for name, cpu, overhead, limit in (
            ("tracing.disabled", cost.disabled_cpu, cost.disabled_overhead, 0.02),
            ("tracing.enabled", cost.enabled_cpu, cost.enabled_overhead, 0.15)):
        fig = report.add(Figure(f"{name}_cpu_us_per_saga", "us/saga", [c * 1e6 for c in cpu],
                                baseline="tracing.pg_wall_ms_per_saga", target=f"<= {limit:.2f}",
                                note="ratio = overhead: extra CPU per saga over plain / PostgreSQL wall per saga"))
        fig.ratio = overhead
        fig.passed = overhead <= limit


def measure_admin(url: str, runs: int, report: Report) -> None:
    timings = admin.measure(url, ADMIN_ROWS, runs, _log)
    report.meta["admin_rows"] = timings.rows
    report.meta["admin_schema_reused"] = timings.reused
    report.meta["admin_status_rows"] = timings.status_rows
    for name, ms in timings.medians_ms.items():
        fig = report.add(Figure(f"admin.{name}", "ms", [ms], target=f"< {ADMIN_LIMIT_MS:.0f} ms",
                                note=f"median of {runs} on {timings.rows:,} rows"))
        fig.passed = ms < ADMIN_LIMIT_MS


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def print_report(report: Report) -> None:
    meta = report.meta
    print()
    print(f"sagadsl benchmarks  commit {meta['commit']}  {meta['started']}  {'quick' if meta['quick'] else 'full'}"
          f", {meta['rounds']} rounds")
    print(f"PostgreSQL {meta.get('postgres', '-')} at {meta['database_url']}; Python {meta['python']}; "
          f"{meta['cpus']} CPUs, load {meta['load_before']} before the run")
    print()
    header = f"{'figure':40} {'median':>10} {'unit':11} {'min..max':>19} {'ratio':>7} {'target':>9}  result"
    print(header)
    print("-" * len(header))
    for fig in report.figures.values():
        spread = f"{_fmt(min(fig.samples))}..{_fmt(max(fig.samples))}" if len(fig.samples) > 1 else ""
        ratio = f"{fig.ratio:.2f}" if fig.ratio is not None else ""
        result = "" if fig.passed is None else ("PASS" if fig.passed else "FAIL")
        print(f"{fig.name:40} {_fmt(fig.median):>10} {fig.unit:11} {spread:>19} {ratio:>7} "
              f"{fig.target or '':>9}  {result}")
        if fig.note or fig.baseline:
            vs = f"vs {fig.baseline}; " if fig.baseline else ""
            print(f"{'':42}{vs}{fig.note}")
    _print_wal_by_relation(meta.get("wal_by_relation", {}))
    checked = [f for f in report.figures.values() if f.passed is not None]
    failed = [f.name for f in checked if not f.passed]
    print()
    print(f"{len(checked) - len(failed)}/{len(checked)} targets met" + (f"; FAILED: {', '.join(failed)}"
                                                                         if failed else ""))


#: Rows of the WAL breakdown below this many bytes per unit are summed into one.
_WAL_ROW_MIN = 10.0


def _print_wal_by_relation(breakdown: dict[str, dict[str, list[float]]]) -> None:
    """Where each workload's WAL went: bytes and records per saga or workflow, by relation and record."""
    for workload, relations in breakdown.items():
        print()
        print(f"WAL per {workload}, by relation and record (pg_walinspect; a record counts for the first "
              "block it touches)")
        width = max(map(len, relations), default=0)
        rest = [0.0, 0.0]
        for name, (size, records) in relations.items():
            if size >= _WAL_ROW_MIN:
                print(f"  {name:{width}} {_fmt(size):>8} bytes {records:6.2f} records")
            else:
                rest[0] += size
                rest[1] += records
        if rest[0]:
            label = f"(records under {_WAL_ROW_MIN:.0f} bytes each, together)"
            print(f"  {label:{width}} {_fmt(rest[0]):>8} bytes {rest[1]:6.2f} records")


def to_json(report: Report) -> dict[str, Any]:
    figures = {}
    for name, fig in report.figures.items():
        data = asdict(fig)
        data["median"] = fig.median
        figures[name] = data
    return {"meta": report.meta, "figures": figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL,
                        help=f"PostgreSQL URL (default {DEFAULT_URL}); the benchmark works in its own "
                             f"schemas {w.BENCH_SCHEMA} (dropped after) and {admin.ADMIN_SCHEMA} (kept)")
    parser.add_argument("--quick", action="store_true", help="smaller rounds: finishes in under three minutes")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="rounds per measurement (default 5, --quick 3)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the figures as JSON")
    parser.add_argument("--skip-admin", action="store_true", help="skip the 1,000,000-row admin queries")
    parser.add_argument("--skip-sqlite", action="store_true", help="skip the SQLite measurements")
    parser.add_argument("--skip-tracing", action="store_true",
                        help="skip the OpenTelemetry overhead (needs the otel and test extras)")
    parser.add_argument("--skip-dbos", action="store_true",
                        help=f"skip the DBOS peer (which installs DBOS into {peer_dbos.VENV} on first use)")
    parser.add_argument("--skip-scaleout", action="store_true",
                        help="skip draining submitted sagas with 1, 2 and 4 worker processes")
    args = parser.parse_args(argv)

    rounds = args.repeat or (3 if args.quick else 5)
    if rounds < 1:
        parser.error("--repeat must be at least 1")
    sizes = QUICK if args.quick else FULL
    from sagadsl.storage.sql import mask_url

    report = Report(meta={
        "commit": _git_commit(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": args.quick,
        "rounds": rounds, "sizes": asdict(sizes), "database_url": mask_url(args.database_url),
        "postgres": w.pg_version(args.database_url), "python": platform.python_version(),
        "cpus": _cpu_count(), "load_before": _load_average(),
    })
    started = time.perf_counter()
    dbos_python = None if args.skip_dbos else peer_dbos.ensure_venv(_log)
    measure_postgres(args.database_url, sizes, rounds, report, dbos_python)
    if not args.skip_scaleout:
        measure_scaleout(args.database_url, sizes, rounds, report)
    if not args.skip_sqlite:
        measure_sqlite(sizes, rounds, report)
    if not args.skip_tracing:
        measure_tracing(args.database_url, sizes, rounds, report)
    if not args.skip_admin:
        measure_admin(args.database_url, max(5, 2 * rounds + 1), report)
    report.meta["seconds"] = round(time.perf_counter() - started, 1)
    report.meta["load_after"] = _load_average()
    print_report(report)
    print(f"({report.meta['seconds']} s; load {report.meta['load_after']} after the run)")
    if args.json:
        args.json.write_text(json.dumps(to_json(report), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if all(f.passed is not False for f in report.figures.values()) else 1


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
