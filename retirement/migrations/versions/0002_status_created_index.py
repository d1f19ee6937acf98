"""Retirements listed by status newest first read an index in order instead of sorting every match."""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_retirements_status_created", "retirements", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_retirements_status_created", table_name="retirements")
