"""Counts by status come from a table the database keeps exact, whatever writes the sagas."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
from sqlalchemy import create_engine, text

from sagadsl import CompensationPolicy, Saga, SagaEngine, WorkflowStatus, compensates, step
from sagadsl.storage import SqlStorage


@dataclass
class Job:
    job_id: str
    fail: str = ""


class Counted(Saga[Job], name="tests.status_counts.counted"):
    @step(idempotency_key="a-{job_id}", compensation=CompensationPolicy(max_attempts=1))
    def a(self) -> str:
        return "A"

    @compensates(a)
    def undo_a(self, value: str) -> None:
        if self.input.fail == "undo":
            raise RuntimeError("undo refused")

    @step(idempotency_key="b-{job_id}")
    def b(self, a: str) -> str:
        if self.input.fail:
            raise ValueError("b refused")
        return "B"


def scanned(url: str, schema: str | None) -> dict[str, int]:
    """Counts by status the slow way, straight from the workflows table."""
    table = f'"{schema}".sagadsl_workflows' if schema else "sagadsl_workflows"
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT status, count(*) FROM {table} GROUP BY status")).all()
    finally:
        engine.dispose()
    return {status: int(n) for status, n in rows}


def kept(engine: SagaEngine) -> dict[str, int]:
    return {status.value: n for status, n in engine.storage.count_by_status().items() if n}


def test_counts_follow_every_status_change_and_outside_deletes(durable_url: tuple[str, str | None]) -> None:
    url, schema = durable_url
    engine = SagaEngine(SqlStorage(url, schema=schema))
    try:
        for i in range(3):
            engine.run(Counted, Job(f"ok{i}"), saga_id=f"ok{i}", idempotency_key="k")
        for i in range(2):
            with pytest.raises(Exception):
                engine.run(Counted, Job(f"bad{i}", fail="b"), saga_id=f"bad{i}", idempotency_key="k")
        with pytest.raises(Exception):
            engine.run(Counted, Job("dl", fail="undo"), saga_id="dl", idempotency_key="k")
        engine.submit(Counted, Job("queued"), saga_id="queued", idempotency_key="k")
        assert kept(engine) == scanned(url, schema) == {
            "completed": 3, "failed": 2, "dead_letter": 1, "pending": 1}

        engine.retry("dl")  # dead_letter -> pending
        assert kept(engine) == scanned(url, schema) == {"completed": 3, "failed": 2, "pending": 2}

        table = f'"{schema}".sagadsl_workflows' if schema else "sagadsl_workflows"
        outside = create_engine(url)
        with outside.begin() as conn:  # a retention job deleting old sagas
            conn.execute(text(f"DELETE FROM {table} WHERE id IN ('ok0', 'bad0')"))
        outside.dispose()
        assert kept(engine) == scanned(url, schema) == {"completed": 2, "failed": 1, "pending": 2}
        assert engine.count("completed", "failed") == 3
        assert engine.count() == 5
        assert engine.query(status="pending", limit=1).total == 2
        assert engine.query(status=["completed", "failed"], limit=0).total == 3
        late = datetime(2100, 1, 1, tzinfo=timezone.utc)
        assert engine.query(status="completed", created_after=late).total == 0  # scanned, not kept
    finally:
        engine.close()


def test_counts_start_from_the_rows_already_there_when_the_table_is_added(
        durable_url: tuple[str, str | None]) -> None:
    from sagadsl.storage.schema import downgrade, migrate

    url, schema = durable_url
    engine = SagaEngine(SqlStorage(url, schema=schema))
    try:
        engine.run(Counted, Job("ok"), saga_id="ok", idempotency_key="k")
        engine.submit(Counted, Job("queued"), saga_id="queued", idempotency_key="k")
    finally:
        engine.close()
    downgrade(url, "sagadsl_0001", schema=schema)
    migrate(url, schema=schema)
    engine = SagaEngine(SqlStorage(url, schema=schema))
    try:
        assert kept(engine) == {"completed": 1, "pending": 1}
        assert engine.count(WorkflowStatus.PENDING) == 1
    finally:
        engine.close()


def test_truncate_resets_the_counts(pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    engine = SagaEngine(SqlStorage(url, schema=schema, auto_migrate=True))
    try:
        engine.run(Counted, Job("ok"), saga_id="ok", idempotency_key="k")
        outside = create_engine(url)
        with outside.begin() as conn:
            conn.execute(text(f'TRUNCATE "{schema}".sagadsl_workflows CASCADE'))
        outside.dispose()
        assert engine.count() == 0
    finally:
        engine.close()


def test_a_bulk_load_without_triggers_is_recounted(durable_url: tuple[str, str | None]) -> None:
    from sagadsl.storage.schema import recount_statuses

    url, schema = durable_url
    engine = SagaEngine(SqlStorage(url, schema=schema))
    try:
        engine.run(Counted, Job("ok"), saga_id="ok", idempotency_key="k")
        engine.submit(Counted, Job("queued"), saga_id="queued", idempotency_key="k")
        outside = create_engine(url)
        table = f'"{schema}".sagadsl_workflows' if schema else "sagadsl_workflows"
        with outside.begin() as conn:
            conn.execute(text(f"DELETE FROM {table} WHERE id = 'queued'"))
            conn.execute(text(f"UPDATE sagadsl_status_counts SET n = 99") if schema is None else
                         text(f'UPDATE "{schema}".sagadsl_status_counts SET n = 99'))
            recount_statuses(conn, schema)
        outside.dispose()
        assert kept(engine) == scanned(url, schema) == {"completed": 1}
    finally:
        engine.close()
