"""A worker's poll reads the active sagas in order of when they became due.

The poll asked for active sagas ``ORDER BY updated_at``, which no index
serves since sagadsl_0007: PostgreSQL read and sorted every active saga on
every poll, about 23 ms with 20,000 sagas waiting, growing with the backlog.
``ix_sagadsl_workflows_due`` holds only active sagas (``pending``,
``compensating``), by ``coalesce(start_after, created_at)``; the poll reads
it in order, oldest first, and stops after the few it needs. Neither column
changes after a saga is created, so step commits stay HOT; the terminal
commit takes the saga out of the index.

Building it reads the whole table once (while holding off writes to it);
only the active sagas are indexed.

Revision ID: sagadsl_0009
Revises: sagadsl_0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "sagadsl_0009"
down_revision = "sagadsl_0008"
branch_labels = None
depends_on = None

ACTIVE = "status IN ('pending', 'compensating')"  # as models.ACTIVE_STATUS_SQL


def _schema() -> str | None:
    schema = op.get_context().version_table_schema
    return str(schema) if schema else None


def upgrade() -> None:
    op.create_index("ix_sagadsl_workflows_due", "sagadsl_workflows", [sa.text("coalesce(start_after, created_at)")],
                    schema=_schema(), postgresql_where=sa.text(ACTIVE), sqlite_where=sa.text(ACTIVE))


def downgrade() -> None:
    op.drop_index("ix_sagadsl_workflows_due", table_name="sagadsl_workflows", schema=_schema())
