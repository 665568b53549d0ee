"""People who sign in to the console, their sessions, invitations and device logins.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

A user owns a consumer account (its API keys spend from it) and a provider account (its
machines earn for it). Sessions, invitation codes and device codes are stored only as
SHA-256 hashes; passwords only as argon2 hashes. Written by hand, and frozen, like 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("is_admin", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("consumer_account_id", sa.String(32), nullable=False),
        sa.Column("provider_account_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["consumer_account_id"],
            ["accounts.id"],
            name="fk_users_consumer_account_id_accounts",
        ),
        sa.ForeignKeyConstraint(
            ["provider_account_id"],
            ["accounts.id"],
            name="fk_users_provider_account_id_accounts",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("email", name="uq_users_email"),
    )
    op.create_table(
        "console_sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_console_sessions_user_id_users"
        ),
        sa.PrimaryKeyConstraint("token_hash", name="pk_console_sessions"),
    )
    op.create_index("ix_console_sessions_user_id", "console_sessions", ["user_id"])
    op.create_table(
        "sign_in_failures",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("email_hash", sa.String(64), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sign_in_failures"),
    )
    op.create_index("ix_sign_in_failures_email_hash_at", "sign_in_failures", ["email_hash", "at"])
    op.create_index("ix_sign_in_failures_address_at", "sign_in_failures", ["address", "at"])
    op.create_table(
        "invites",
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_by", sa.String(32), nullable=True),
        sa.ForeignKeyConstraint(["used_by"], ["users.id"], name="fk_invites_used_by_users"),
        sa.PrimaryKeyConstraint("code_hash", name="pk_invites"),
    )
    op.create_table(
        "device_logins",
        sa.Column("device_code_hash", sa.String(64), nullable=False),
        sa.Column("user_code", sa.String(16), nullable=False),
        sa.Column("machine_name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("last_polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("user_id", sa.String(32), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'denied', 'issued')",
            name="ck_device_logins_status",
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_device_logins_user_id_users"),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name="fk_device_logins_key_id_api_keys"
        ),
        sa.PrimaryKeyConstraint("device_code_hash", name="pk_device_logins"),
        sa.UniqueConstraint("user_code", name="uq_device_logins_user_code"),
    )
    op.create_index("ix_device_logins_user_id", "device_logins", ["user_id"])


def downgrade() -> None:
    op.drop_table("device_logins")
    op.drop_table("invites")
    op.drop_table("sign_in_failures")
    op.drop_table("console_sessions")
    op.drop_table("users")
