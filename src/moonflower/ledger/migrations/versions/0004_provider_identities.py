"""Provider identities and account verdicts: lasting reputation for enrolled providers.

Revision ID: 0004_provider_identities
Revises: 0003
Create Date: 2026-12-03

Written by hand, and frozen, like 0001: `provider_identities` (one row per signing key a
provider proved it holds: its account, when seen, jobs and failures, and the verdict against
it) and `provider_account_verdicts` (each failed check held against a provider account until
an operator clears it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004_provider_identities"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "provider_identities",
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("jobs", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("failures", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("untrusted_reason", sa.String(200), nullable=True),
        sa.Column("untrusted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("fingerprint", name=op.f("pk_provider_identities")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_provider_identities_account_id_accounts"),
        ),
        sa.CheckConstraint(
            "jobs >= 0 AND failures >= 0", name=op.f("ck_provider_identities_non_negative")
        ),
    )
    op.create_index(
        op.f("ix_provider_identities_account_id"), "provider_identities", ["account_id"]
    )
    op.create_table(
        "provider_account_verdicts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("untrusted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_account_verdicts")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_provider_account_verdicts_account_id_accounts"),
        ),
    )
    op.create_index(
        "ix_provider_account_verdicts_account_id", "provider_account_verdicts", ["account_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_provider_account_verdicts_account_id", table_name="provider_account_verdicts")
    op.drop_table("provider_account_verdicts")
    op.drop_index(op.f("ix_provider_identities_account_id"), table_name="provider_identities")
    op.drop_table("provider_identities")
