"""Pivot steps and semantic locks.

- ``sagadsl_workflows.past_pivot``: set by the commit of the pivot step's
  completion; the saga then only goes forward.
- ``sagadsl_workflows.locks``: the lock keys a saga holds or waits for.
- ``sagadsl_locks``: one row per key a saga holds (``held``) or waits for, in
  ``requested_at`` order per key; a unique index over the held rows makes
  two holders of one key impossible, whatever writes the table.

Revision ID: sagadsl_0004
Revises: sagadsl_0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sagadsl.storage.models import JSONDocument, UTCDateTime

revision = "sagadsl_0004"
down_revision = "sagadsl_0003"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    schema = op.get_context().version_table_schema
    return str(schema) if schema else None


def upgrade() -> None:
    schema = _schema()
    # Plain ADD COLUMN: SQLite's batch mode would rebuild the table without its triggers.
    op.add_column("sagadsl_workflows", sa.Column("past_pivot", sa.Boolean(), nullable=False,
                                                 server_default=sa.false()), schema=schema)
    op.add_column("sagadsl_workflows", sa.Column("locks", JSONDocument, nullable=True), schema=schema)
    op.create_table(
        "sagadsl_locks",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("workflow_id", sa.String(255), nullable=False),
        sa.Column("held", sa.Boolean(), nullable=False),
        sa.Column("requested_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["workflow_id"], ["sagadsl_workflows.id"],
                                name="fk_sagadsl_locks_workflow_id_sagadsl_workflows", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key", "workflow_id", name="pk_sagadsl_locks"),
        schema=schema,
    )
    op.create_index("uq_sagadsl_locks_key_held", "sagadsl_locks", ["key"], unique=True, schema=schema,
                    sqlite_where=sa.text("held"), postgresql_where=sa.text("held"))
    op.create_index("ix_sagadsl_locks_workflow_id", "sagadsl_locks", ["workflow_id"], schema=schema)


def downgrade() -> None:
    schema = _schema()
    op.drop_index("ix_sagadsl_locks_workflow_id", table_name="sagadsl_locks", schema=schema)
    op.drop_index("uq_sagadsl_locks_key_held", table_name="sagadsl_locks", schema=schema)
    op.drop_table("sagadsl_locks", schema=schema)
    op.drop_column("sagadsl_workflows", "locks", schema=schema)
    op.drop_column("sagadsl_workflows", "past_pivot", schema=schema)
