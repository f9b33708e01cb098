"""Retention goes by the ``(status, created_at)`` index; one index fewer.

``prune`` looked sagas up by ``ix_sagadsl_workflows_status_finished_at``
(sagadsl_0007). A saga ends after it starts, so ``created_at < cutoff``
holds for every saga that ended before the cutoff: retention now bounds the
scan of ``ix_sagadsl_workflows_status_created_at`` by ``created_at`` and
checks ``finished_at`` on the rows it finds. Dropping the index saves the
two entries every saga wrote into it (at its creation and at its end) and
their WAL.

Revision ID: sagadsl_0008
Revises: sagadsl_0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "sagadsl_0008"
down_revision = "sagadsl_0007"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    schema = op.get_context().version_table_schema
    return str(schema) if schema else None


def upgrade() -> None:
    op.drop_index("ix_sagadsl_workflows_status_finished_at", table_name="sagadsl_workflows", schema=_schema())


def downgrade() -> None:
    op.create_index("ix_sagadsl_workflows_status_finished_at", "sagadsl_workflows", ["status", "finished_at"],
                    schema=_schema())
