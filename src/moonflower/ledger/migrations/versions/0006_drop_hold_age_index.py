"""Holds lose their (status, created_at) index: nothing looks holds up by age any more.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

Since holds are leased (0005), expired holds are found by `(status, lease_expires_at)`; the
age index only cost every hold written and every hold closed one more index update.
Written by hand, and frozen, like 0001.
"""

from __future__ import annotations

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.drop_index("ix_holds_status_created_at", table_name="holds")


def downgrade() -> None:
    op.create_index("ix_holds_status_created_at", "holds", ["status", "created_at"])
