"""Waiting for outcomes and delayed starts.

- ``sagadsl_workflows.start_after``: a submitted saga no worker takes before
  this time (NULL: at once).
- PostgreSQL: a row trigger sends ``NOTIFY sagadsl_done, '<schema>.<id>'``
  when a saga's status changes to a terminal one (``completed``, ``failed``,
  ``dead_letter``), so that ``engine.wait`` is woken by the terminal commit
  itself; the engine's hot path sends nothing extra. The notification goes
  out when the commit lands, never for a rolled-back one.

Revision ID: sagadsl_0005
Revises: sagadsl_0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sagadsl.storage.models import UTCDateTime

revision = "sagadsl_0005"
down_revision = "sagadsl_0004"
branch_labels = None
depends_on = None

#: The channel ``engine.wait`` listens on; the payload is ``<schema>.<saga id>``.
CHANNEL = "sagadsl_done"
TERMINAL = ("completed", "failed", "dead_letter")


def _schema() -> str | None:
    schema = op.get_context().version_table_schema
    return str(schema) if schema else None


def _pg_schema() -> str:
    schema = _schema()
    if schema:
        return schema
    return str(op.get_bind().exec_driver_sql("SELECT current_schema()").scalar())


def upgrade() -> None:
    schema = _schema()
    # Plain ADD COLUMN: SQLite's batch mode would rebuild the table without its triggers.
    op.add_column("sagadsl_workflows", sa.Column("start_after", UTCDateTime(), nullable=True), schema=schema)
    if op.get_bind().dialect.name != "postgresql":
        return
    q = f'"{_pg_schema()}"'
    terminal = ", ".join(f"'{s}'" for s in TERMINAL)
    op.execute(f"""
        CREATE FUNCTION {q}.sagadsl_notify_done() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', TG_TABLE_SCHEMA || '.' || NEW.id);
            RETURN NULL;
        END
        $body$
    """)
    op.execute(f"CREATE TRIGGER sagadsl_notify_done AFTER UPDATE OF status ON {q}.sagadsl_workflows "
               f"FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ({terminal})) "
               f"EXECUTE FUNCTION {q}.sagadsl_notify_done()")


def downgrade() -> None:
    schema = _schema()
    if op.get_bind().dialect.name == "postgresql":
        q = f'"{_pg_schema()}"'
        op.execute(f"DROP TRIGGER IF EXISTS sagadsl_notify_done ON {q}.sagadsl_workflows")
        op.execute(f"DROP FUNCTION IF EXISTS {q}.sagadsl_notify_done()")
    op.drop_column("sagadsl_workflows", "start_after", schema=schema)
