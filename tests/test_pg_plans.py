"""The hot path's statements keep key lookups in PostgreSQL's generic plans.

psycopg prepares a statement after a few executions, and PostgreSQL then
settles on a generic plan, made without the parameter values and often while
the tables were still small. A statement whose generic plan scans instead of
looking its rows up by key gets slower with every saga stored (a step commit
that joined the step row to the fenced saga row searched the steps' primary
key by its second column alone: fifteen times slower after 3,000 sagas).
Each statement is prepared here by hand and its generic plan read; not timed.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.dialects import postgresql

from sagadsl.storage import SqlStorage
from sagadsl.storage.statements import UPDATE_WORKFLOW, create_saga_postgresql, update_workflow_and_step


@pytest.fixture
def conn(pg_schema: tuple[str, str]) -> Iterator[Connection]:
    url, schema = pg_schema
    SqlStorage(url, schema=schema, auto_migrate=True).close()
    engine = create_engine(url)
    with engine.connect() as connection:
        connection.execute(text(f'SET search_path TO "{schema}"'))
        connection.execute(text("SET plan_cache_mode = force_generic_plan"))
        yield connection
    engine.dispose()


def generic_plan(conn: Connection, statement: Any) -> str:
    """EXPLAIN of ``statement``'s generic plan, prepared with positional parameters."""
    sql = str(statement.compile(dialect=postgresql.dialect()))
    positions: dict[str, int] = {}

    def positional(match: re.Match[str]) -> str:
        return f"${positions.setdefault(match.group(1), len(positions) + 1)}"

    sql = re.sub(r"%\((\w+)\)s", positional, sql)
    conn.exec_driver_sql(f"PREPARE hot AS {sql}")
    try:
        nulls = ", ".join(["NULL"] * len(positions))
        rows = conn.exec_driver_sql(f"EXPLAIN EXECUTE hot({nulls})").all()
    finally:
        conn.exec_driver_sql("DEALLOCATE hot")
    return "\n".join(row[0] for row in rows)


def scans(plan: str) -> list[tuple[str, str]]:
    """(scan line, its index condition) for every scan in ``plan``."""
    lines = plan.splitlines()
    found = []
    for i, line in enumerate(lines):
        if "Scan on" in line or "Scan using" in line:
            cond = lines[i + 1].strip() if i + 1 < len(lines) else ""
            found.append((line.strip(), cond if cond.startswith("Index Cond") else ""))
    return found


def table_scans(plan: str) -> list[tuple[str, str]]:
    return [(line, cond) for line, cond in scans(plan) if "CTE Scan" not in line and "Function Scan" not in line]


def test_a_step_commit_looks_up_both_rows_by_their_whole_key(conn: Connection) -> None:
    plan = generic_plan(conn, update_workflow_and_step(("version", "updated_at", "current_step"),
                                                        ("status", "result", "finished_at")))

    found = table_scans(plan)
    assert [line.split(" using ")[1].split()[0] for line, _ in found] == ["pk_sagadsl_workflows",
                                                                           "pk_sagadsl_steps"], plan
    workflow_cond, step_cond = (cond for _, cond in found)
    assert "(id)" in workflow_cond, plan
    assert "(workflow_id)" in step_cond and "(name)" in step_cond, plan


def test_a_saga_row_update_looks_its_row_up_by_key(conn: Connection) -> None:
    plan = generic_plan(conn, UPDATE_WORKFLOW.values(status="completed"))

    ((line, cond),) = table_scans(plan)
    assert "pk_sagadsl_workflows" in line and "(id)" in cond, plan


@pytest.mark.parametrize("claim", [True, False], ids=["claiming", "not-claiming"])
def test_creating_a_saga_scans_no_table(conn: Connection, claim: bool) -> None:
    columns = ("id", "saga_name", "status", "input", "idempotency_key", "fingerprint", "retry_count",
               "version", "created_at", "updated_at", "started_at", "stuck_after", "owner",
               "lease_expires_at")
    plan = generic_plan(conn, create_saga_postgresql(columns, claim))

    assert table_scans(plan) == [], plan


def test_a_worker_poll_reads_the_due_index_in_order_without_sorting(conn: Connection) -> None:
    # Sorting every active saga on every poll made a poll's cost grow with
    # the backlog (23 ms with 20,000 sagas waiting).
    from sagadsl.storage.claims import _ADVISORY_POLL

    conn.exec_driver_sql(
        "INSERT INTO sagadsl_workflows (id, saga_name, status, idempotency_key, fingerprint, retry_count, version,"
        " created_at, updated_at, claims) SELECT 'w-' || g, 'plans', CASE WHEN mod(g, 10) = 0 THEN 'completed'"
        " ELSE 'pending' END, 'k', 'f', 0, 1, now() - g * interval '1 s', now(), 0"
        " FROM generate_series(1, 20000) AS g")
    conn.exec_driver_sql("ANALYZE sagadsl_workflows")
    plan = generic_plan(conn, _ADVISORY_POLL)

    # Read in order of the index; ties on the due time (rare) sorted as they come.
    assert "Index Scan using ix_sagadsl_workflows_due" in plan, plan
    assert not re.search(r"^\s*(->\s+)?Sort\s+\(", plan, re.MULTILINE), plan
