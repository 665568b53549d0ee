"""Holds carry their running job's tally, written beside the lease.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

The coordinator running a job writes what the job would cost if it ended now (its counts,
model, provider and key, as JSON, never content) each time it renews the hold's lease. When
that coordinator dies, a surviving one settles the job from this tally once the lease has
run out, instead of giving the hold back whole. Written by hand, and frozen, like 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("holds") as batch:
        batch.add_column(sa.Column("tally", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("holds") as batch:
        batch.drop_column("tally")
