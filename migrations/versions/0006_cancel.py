"""Cancellation.

- The status ``cancelled`` (terminal): its rows in ``sagadsl_status_counts``
  (64 shards on PostgreSQL, one on SQLite), and the ``NOTIFY`` trigger of
  sagadsl_0005 now also fires when a saga ends ``cancelled``.
- ``sagadsl_workflows.cancel_reason``: set by ``engine.cancel``; every commit
  of the executor returns it, so a running saga notices a cancel without an
  extra round trip.
- ``sagadsl_workflows.pivot_started``: set by the commit just before the
  pivot step starts, unless a cancel came first; from then on a cancel is
  refused, so that the pivot's effect is never left uncompensated.

Revision ID: sagadsl_0006
Revises: sagadsl_0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "sagadsl_0006"
down_revision = "sagadsl_0005"
branch_labels = None
depends_on = None

PG_SHARDS = 64  # as in sagadsl_0002
CHANNEL = "sagadsl_done"  # as in sagadsl_0005


def _schema() -> str | None:
    schema = op.get_context().version_table_schema
    return str(schema) if schema else None


def _pg_schema() -> str:
    schema = _schema()
    if schema:
        return schema
    return str(op.get_bind().exec_driver_sql("SELECT current_schema()").scalar())


def _notify_trigger(q: str, terminal: tuple[str, ...]) -> None:
    listed = ", ".join(f"'{s}'" for s in terminal)
    op.execute(f"DROP TRIGGER IF EXISTS sagadsl_notify_done ON {q}.sagadsl_workflows")
    op.execute(f"CREATE TRIGGER sagadsl_notify_done AFTER UPDATE OF status ON {q}.sagadsl_workflows "
               f"FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ({listed})) "
               f"EXECUTE FUNCTION {q}.sagadsl_notify_done()")


def upgrade() -> None:
    schema = _schema()
    # Plain ADD COLUMN: SQLite's batch mode would rebuild the table without its triggers.
    op.add_column("sagadsl_workflows", sa.Column("cancel_reason", sa.Text(), nullable=True), schema=schema)
    op.add_column("sagadsl_workflows", sa.Column("pivot_started", sa.Boolean(), nullable=False,
                                                 server_default=sa.false()), schema=schema)
    if op.get_bind().dialect.name == "postgresql":
        q = f'"{_pg_schema()}"'
        op.execute(f"INSERT INTO {q}.sagadsl_status_counts (status, shard, n) "
                   f"SELECT 'cancelled', g.shard, 0 FROM generate_series(0, {PG_SHARDS - 1}) AS g(shard)")
        _notify_trigger(q, ("completed", "failed", "dead_letter", "cancelled"))
    else:
        op.execute("INSERT INTO sagadsl_status_counts (status, shard, n) VALUES ('cancelled', 0, 0)")


def downgrade() -> None:
    schema = _schema()
    bind = op.get_bind()
    q = f'"{_pg_schema()}".' if bind.dialect.name == "postgresql" else ""
    cancelled = bind.exec_driver_sql(
        f"SELECT count(*) FROM {q}sagadsl_workflows WHERE status = 'cancelled'").scalar()
    if cancelled:
        raise RuntimeError(f"{cancelled} sagas are cancelled, a status sagadsl_0005 does not know; "
                           "prune them (saga-admin prune --status cancelled) before downgrading")
    op.execute(f"DELETE FROM {q}sagadsl_status_counts WHERE status = 'cancelled'")
    if bind.dialect.name == "postgresql":
        _notify_trigger(q.rstrip("."), ("completed", "failed", "dead_letter"))
    op.drop_column("sagadsl_workflows", "pivot_started", schema=schema)
    op.drop_column("sagadsl_workflows", "cancel_reason", schema=schema)
