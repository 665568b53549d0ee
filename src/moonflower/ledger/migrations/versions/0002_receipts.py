"""Create receipts: each job's verified provider receipt (hashes and counts only).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

Written by hand, and frozen, like 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "receipts",
        sa.Column("job_id", sa.String(128), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("provider_id", sa.String(128), nullable=False),
        sa.Column("receipt_json", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("signing_public_key", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_receipts")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_receipts_account_id_accounts")
        ),
    )
    op.create_index(op.f("ix_receipts_account_id"), "receipts", ["account_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_receipts_account_id"), table_name="receipts")
    op.drop_table("receipts")
