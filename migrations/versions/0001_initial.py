"""Create sagadsl_workflows and sagadsl_steps.

Revision ID: sagadsl_0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sagadsl.storage.models import JSONDocument, UTCDateTime

revision = "sagadsl_0001"
down_revision = None
branch_labels = ("sagadsl",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sagadsl_workflows",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("saga_name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("input", JSONDocument, nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("current_step", sa.String(255), nullable=True),
        sa.Column("error_step", sa.String(255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("compensation_error", sa.Text(), nullable=True),
        sa.Column("error_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("stuck_after", UTCDateTime(), nullable=True),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sagadsl_workflows"),
    )
    op.create_index("ix_sagadsl_workflows_status_created_at", "sagadsl_workflows", ["status", "created_at"])
    op.create_index("ix_sagadsl_workflows_status_updated_at", "sagadsl_workflows", ["status", "updated_at"])
    op.create_index("ix_sagadsl_workflows_saga_name_created_at", "sagadsl_workflows", ["saga_name", "created_at"])
    op.create_index("ix_sagadsl_workflows_created_at", "sagadsl_workflows", ["created_at"])
    op.create_index("ix_sagadsl_workflows_updated_at", "sagadsl_workflows", ["updated_at"])
    op.create_table(
        "sagadsl_steps",
        sa.Column("workflow_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("result", JSONDocument, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("compensation_error", sa.Text(), nullable=True),
        sa.Column("compensated_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["sagadsl_workflows.id"],
            name="fk_sagadsl_steps_workflow_id_sagadsl_workflows", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workflow_id", "name", name="pk_sagadsl_steps"),
    )


def downgrade() -> None:
    op.drop_table("sagadsl_steps")
    op.drop_index("ix_sagadsl_workflows_updated_at", table_name="sagadsl_workflows")
    op.drop_index("ix_sagadsl_workflows_created_at", table_name="sagadsl_workflows")
    op.drop_index("ix_sagadsl_workflows_saga_name_created_at", table_name="sagadsl_workflows")
    op.drop_index("ix_sagadsl_workflows_status_updated_at", table_name="sagadsl_workflows")
    op.drop_index("ix_sagadsl_workflows_status_created_at", table_name="sagadsl_workflows")
    op.drop_table("sagadsl_workflows")
