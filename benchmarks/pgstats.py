"""What a workload cost the database: WAL written, and how many of its updates were HOT.

The WAL between two points comes from ``pg_current_wal_flush_lsn()``,
which is exact but cluster-wide: a test suite running on the same server
adds to it. ``pg_walinspect`` (PostgreSQL 15+, contrib) reads the records of
the same LSN range, so a workload is charged only for the records that touched
its own relations and the commit records of the same transactions. The
extension is created in the benchmark's schema, so it goes when the schema is
dropped. Without it, the cluster-wide figures stand, and records come from
``pg_stat_wal``, whose counters other backends flush up to a second late.

HOT shares come from ``pg_stat_user_tables`` once the workload's
connections are closed (a backend flushes its table counters when it exits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg


@dataclass(frozen=True)
class WalMark:
    lsn: str
    records: int


@dataclass
class WalDelta:
    """WAL between two marks: the whole cluster's, and the share of the workload's own relations.

    ``own_*`` counts the records that touched an owned relation, and the
    records (commits) of the same transactions, each aligned to 8 bytes as
    WAL stores it; ``by_relation`` maps a relation key (or, for a record that
    touches none, its resource manager) and the record's kind, as
    ``"key|Heap/HOT_UPDATE"``, to [bytes, records] of those.
    Without pg_walinspect, ``own_*`` is the whole cluster's.
    """

    bytes: int
    records: int
    own_bytes: int
    own_records: int
    by_relation: dict[str, list[int]] = field(default_factory=dict)


def _aligned(length: int) -> int:
    return (length + 7) // 8 * 8


class WalMeter:
    """Marks the WAL position and tells what was written since, by relation where it can."""

    def __init__(self, dsn: str, schema: str) -> None:
        self._conn = psycopg.connect(dsn, autocommit=True)
        self.inspect = self._walinspect(schema)
        #: "database oid/relfilenode" -> (database, schema, relation), filled by :meth:`learn_relations`.
        self._relations: dict[str, tuple[str, str, str]] = {}

    def _walinspect(self, schema: str) -> str | None:
        """The schema holding pg_walinspect's functions, creating it in ``schema`` if it is missing."""
        found = self._conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                                   "ON n.oid = e.extnamespace WHERE e.extname = 'pg_walinspect'").fetchone()
        if found:
            return str(found[0])
        try:
            self._conn.execute(f'CREATE EXTENSION pg_walinspect SCHEMA "{schema}"')
        except psycopg.Error:
            return None
        return schema

    def learn_relations(self, dsn: str) -> None:
        """Learn the relations of the database of ``dsn``, to own and name them."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT (SELECT oid FROM pg_database WHERE datname = current_database())::text || '/' "
                "|| pg_relation_filenode(c.oid), current_database(), n.nspname, c.relname "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE pg_relation_filenode(c.oid) IS NOT NULL").fetchall()
        self._relations.update({key: (db, schema, rel) for key, db, schema, rel in rows})

    def owned(self, database: str, schema: str | None = None) -> frozenset[str]:
        """Keys of the known relations of ``database`` (and ``schema``, if given)."""
        return frozenset(key for key, (db, nsp, _) in self._relations.items()
                         if db == database and schema in (None, nsp))

    def label(self, key: str) -> str:
        """A readable name for a key of :attr:`WalDelta.by_relation`: relation, then record kind."""
        key, _, kind = key.partition("|")
        if key in self._relations:
            db, schema, relation = self._relations[key]
            name = f"{db}:{schema}.{relation}"
        else:
            name = key if key.startswith("(") else f"rel {key}"
        return f"{name} {kind}" if kind else name

    def mark(self) -> WalMark:
        row = self._conn.execute("SELECT pg_current_wal_flush_lsn()::text, wal_records FROM pg_stat_wal").fetchone()
        return WalMark(str(row[0]), int(row[1]))

    def since(self, before: WalMark, owned: frozenset[str] = frozenset()) -> WalDelta:
        """What the cluster wrote since ``before``, and how much of it was for ``owned`` relations."""
        after = self.mark()
        size = int(self._conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", (after.lsn, before.lsn)).fetchone()[0])
        if self.inspect is None:
            records = after.records - before.records
            return WalDelta(size, records, size, records)
        rows = self._conn.execute(
            "SELECT xid::text::bigint, resource_manager, record_type, record_length, "
            "substring(block_ref from 'rel \\d+/(\\d+/\\d+)') "
            f'FROM "{self.inspect}".pg_get_wal_records_info(%s, %s)', (before.lsn, after.lsn)).fetchall()
        ours = {xid for xid, _, _, _, key in rows if xid and key in owned}
        delta = WalDelta(size, len(rows), 0, 0)
        for xid, manager, kind, length, key in rows:
            if key in owned or (key is None and xid in ours):
                entry = delta.by_relation.setdefault(f"{key or f'({manager}, no relation)'}|{manager}/{kind}",
                                                     [0, 0])
                entry[0] += _aligned(length)
                entry[1] += 1
                delta.own_bytes += _aligned(length)
                delta.own_records += 1
        return delta

    def close(self) -> None:
        self._conn.close()


def add_relations(total: dict[str, list[int]], delta: WalDelta) -> None:
    """Add ``delta``'s per-relation bytes and records into ``total``."""
    for relation, (size, records) in delta.by_relation.items():
        entry = total.setdefault(relation, [0, 0])
        entry[0] += size
        entry[1] += records


@dataclass(frozen=True)
class TableUpdates:
    table: str
    inserts: int
    updates: int
    hot_updates: int

    @property
    def hot_share(self) -> float:
        return self.hot_updates / self.updates if self.updates else 0.0


def table_updates(dsn: str, schemas: tuple[str, ...]) -> list[TableUpdates]:
    """Inserts, updates and HOT updates of every table in ``schemas``, since the tables were made.

    Backends flush their counters when they exit, or about once a second
    while idle: read them once the workload's connections are closed.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        rows = conn.execute(
            "SELECT schemaname || '.' || relname, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE schemaname = ANY(%s) ORDER BY 1", (list(schemas),)).fetchall()
    return [TableUpdates(str(t), int(i), int(u), int(h)) for t, i, u, h in rows]


def per_unit(total: dict[str, list[int]], units: int) -> dict[str, list[float]]:
    """``total`` divided by ``units`` (sagas or workflows), biggest first."""
    ordered = sorted(total.items(), key=lambda item: -item[1][0])
    return {name: [size / units, records / units] for name, (size, records) in ordered}


def named(meter: WalMeter, total: dict[str, list[int]]) -> dict[str, list[int]]:
    """``total`` keyed by readable relation names."""
    return {meter.label(key): value for key, value in total.items()}
