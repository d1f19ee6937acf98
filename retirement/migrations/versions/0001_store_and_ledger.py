"""Retirements with versioned rows, the per-model claim, flow runs, the ledger and its head."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retirements",
        sa.Column("id", sa.String(120), primary_key=True),
        sa.Column("model_key", sa.String(400), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("ix_retirements_model_key", "retirements", ["model_key"])
    op.create_index("ix_retirements_status", "retirements", ["status"])
    op.create_table(
        "claims",
        sa.Column("model_key", sa.String(400), primary_key=True),
        sa.Column("retirement_id", sa.String(120), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "flow_runs",
        sa.Column("flow_run_id", sa.String(64), primary_key=True),
        sa.Column("retirement_id", sa.String(120), nullable=False),
    )
    op.create_index("ix_flow_runs_retirement_id", "flow_runs", ["retirement_id"])
    op.create_table(
        "ledger",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("retirement_id", sa.String(120), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("action", sa.String(120), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reference", sa.String(400)),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_ledger_retirement_action", "ledger", ["retirement_id", "action", "kind", "seq"])
    op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(
        sa.table("ledger_head", sa.column("id", sa.Integer), sa.column("seq", sa.Integer), sa.column("hash")),
        [{"id": 1, "seq": 0, "hash": "0" * 64}],
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for name in ("meta", "ledger_head", "ledger", "flow_runs", "claims", "retirements"):
        op.drop_table(name)
