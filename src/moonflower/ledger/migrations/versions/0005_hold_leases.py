"""Holds get a lease: the time until which the coordinator running the job vouches for it.

Revision ID: 0005
Revises: 0004_provider_identities
Create Date: 2026-12-03

A hold is released only once its lease has run out; the coordinator running a job renews
it. Holds written before this revision get a lease that ends when the old age rule would
have released them (created_at plus the longest job and its margin), so an upgrade under
live jobs releases nothing early. Written by hand, and frozen, like 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004_provider_identities"
branch_labels: str | None = None
depends_on: str | None = None

# The old rule: the longest job (3600 s) plus a margin (600 s).


def upgrade() -> None:
    with op.batch_alter_table("holds") as batch:
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(
            "UPDATE holds SET lease_expires_at = created_at + interval '4200 seconds' "
            "WHERE status = 'held'"
        )
    else:
        op.execute(
            "UPDATE holds SET lease_expires_at = datetime(created_at, '+4200 seconds') "
            "WHERE status = 'held'"
        )
    op.create_index("ix_holds_status_lease", "holds", ["status", "lease_expires_at"])


def downgrade() -> None:
    op.drop_index("ix_holds_status_lease", table_name="holds")
    with op.batch_alter_table("holds") as batch:
        batch.drop_column("lease_expires_at")
