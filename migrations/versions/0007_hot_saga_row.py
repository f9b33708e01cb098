"""Saga-row updates that PostgreSQL can make HOT.

Every step commit updates the saga row's ``updated_at``. With that column in
two indexes, no such update could be HOT (heap-only: no new index entries),
so each step commit wrote an entry into all six indexes of the table. Now:

- ``sagadsl_workflows.finished_at``: set by the commit that ends a saga
  (``completed``, ``failed``, ``cancelled``, ``dead_letter``), cleared by a
  retry; indexed with ``status`` for retention (``prune``), which used the
  ``updated_at`` indexes. Filled from ``updated_at`` for sagas that ended.
- The indexes ``ix_sagadsl_workflows_updated_at`` and
  ``ix_sagadsl_workflows_status_updated_at`` are dropped. A step commit now
  changes no indexed column, and is HOT when its page has room.
- PostgreSQL: ``fillfactor = 80`` on ``sagadsl_workflows``, so that new pages
  keep room for those updates.

Revision ID: sagadsl_0007
Revises: sagadsl_0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sagadsl.storage.models import UTCDateTime

revision = "sagadsl_0007"
down_revision = "sagadsl_0006"
branch_labels = None
depends_on = None

_ENDED = "('completed', 'failed', 'cancelled', 'dead_letter')"


def _schema() -> str | None:
    schema = op.get_context().version_table_schema
    return str(schema) if schema else None


def _qualified() -> str:
    schema = _schema()
    return f'"{schema}".sagadsl_workflows' if schema else "sagadsl_workflows"


def upgrade() -> None:
    schema = _schema()
    # Plain ADD COLUMN: SQLite's batch mode would rebuild the table without its triggers.
    op.add_column("sagadsl_workflows", sa.Column("finished_at", UTCDateTime(), nullable=True), schema=schema)
    op.execute(f"UPDATE {_qualified()} SET finished_at = updated_at WHERE status IN {_ENDED}")
    op.create_index("ix_sagadsl_workflows_status_finished_at", "sagadsl_workflows", ["status", "finished_at"],
                    schema=schema)
    op.drop_index("ix_sagadsl_workflows_status_updated_at", table_name="sagadsl_workflows", schema=schema)
    op.drop_index("ix_sagadsl_workflows_updated_at", table_name="sagadsl_workflows", schema=schema)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {_qualified()} SET (fillfactor = 80)")


def downgrade() -> None:
    schema = _schema()
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {_qualified()} RESET (fillfactor)")
    op.create_index("ix_sagadsl_workflows_updated_at", "sagadsl_workflows", ["updated_at"], schema=schema)
    op.create_index("ix_sagadsl_workflows_status_updated_at", "sagadsl_workflows", ["status", "updated_at"],
                    schema=schema)
    op.drop_index("ix_sagadsl_workflows_status_finished_at", table_name="sagadsl_workflows", schema=schema)
    op.drop_column("sagadsl_workflows", "finished_at", schema=schema)
