"""Money: account kinds and balances, holds, the double-entry ledger, prices, and the
billing columns of jobs; the platform and external accounts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

Written by hand, and frozen, like 0001. SQLite cannot add a table CHECK constraint to an
existing table without rebuilding it (which foreign keys pointing at `accounts` forbid
inside a transaction), so there each check rides on the last column added, as a named
column constraint; PostgreSQL gets ordinary table constraints. Both enforce the same rule.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_CHECKED_COLUMNS = [
    # (table, column DDL without the check, check name, check expression)
    (
        "accounts",
        "kind VARCHAR(16) DEFAULT 'consumer' NOT NULL",
        "ck_accounts_kind",
        "kind IN ('consumer', 'provider', 'platform', 'external')",
    ),
    ("accounts", "balance_micro_usd BIGINT DEFAULT 0 NOT NULL", None, None),
    (
        "accounts",
        "held_micro_usd BIGINT DEFAULT 0 NOT NULL",
        "ck_accounts_covered",
        "kind = 'external' OR (held_micro_usd >= 0 AND balance_micro_usd >= held_micro_usd)",
    ),
    (
        "api_keys",
        "purpose VARCHAR(16) DEFAULT 'api' NOT NULL",
        "ck_api_keys_purpose",
        "purpose IN ('api', 'provider')",
    ),
    ("jobs", "billed_prompt_tokens INTEGER DEFAULT 0 NOT NULL", None, None),
    ("jobs", "billed_completion_tokens INTEGER DEFAULT 0 NOT NULL", None, None),
    ("jobs", "receipt_hash VARCHAR(64)", None, None),
    (
        "jobs",
        "charged_micro_usd BIGINT DEFAULT 0 NOT NULL",
        "ck_jobs_billed_non_negative",
        "charged_micro_usd >= 0 AND billed_prompt_tokens >= 0 AND billed_completion_tokens >= 0",
    ),
]


def _money(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=False)


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _add_columns() -> None:
    is_sqlite = op.get_bind().dialect.name == "sqlite"
    for table, column, check_name, check in _CHECKED_COLUMNS:
        if check is not None and is_sqlite:
            op.execute(
                f"ALTER TABLE {table} ADD COLUMN {column} CONSTRAINT {check_name} CHECK ({check})"
            )
        else:
            op.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    if not is_sqlite:
        for table, _column, check_name, check in _CHECKED_COLUMNS:
            if check is not None and check_name is not None:
                op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {check_name} CHECK ({check})")


def upgrade() -> None:
    _add_columns()
    op.create_table(
        "ledger_transactions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(128), nullable=True),
        sa.Column("memo", sa.String(200), nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_transactions")),
        sa.UniqueConstraint("job_id", name=op.f("uq_ledger_transactions_job_id")),
        sa.CheckConstraint(
            "kind IN ('deposit', 'settlement', 'withdrawal')",
            name=op.f("ck_ledger_transactions_kind"),
        ),
    )
    op.create_index(
        op.f("ix_ledger_transactions_created_at"), "ledger_transactions", ["created_at"]
    )
    op.create_table(
        "ledger_entries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("transaction_id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        _money("amount_micro_usd"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_ledger_entries_transaction_id_ledger_transactions"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_ledger_entries_account_id_accounts")
        ),
        sa.CheckConstraint(
            "kind IN ('deposit', 'funding', 'charge', 'provider_share', 'platform_fee', "
            "'withdrawal', 'payout')",
            name=op.f("ck_ledger_entries_kind"),
        ),
    )
    op.create_index(op.f("ix_ledger_entries_transaction_id"), "ledger_entries", ["transaction_id"])
    op.create_index("ix_ledger_entries_account_id_id", "ledger_entries", ["account_id", "id"])
    op.create_table(
        "holds",
        sa.Column("job_id", sa.String(128), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        _money("amount_micro_usd"),
        sa.Column("status", sa.String(16), nullable=False),
        _timestamp("created_at"),
        _timestamp("closed_at", nullable=True),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_holds")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_holds_account_id_accounts")
        ),
        sa.CheckConstraint(
            "status IN ('held', 'settled', 'released')", name=op.f("ck_holds_status")
        ),
        sa.CheckConstraint("amount_micro_usd >= 0", name=op.f("ck_holds_non_negative")),
    )
    op.create_index(op.f("ix_holds_account_id"), "holds", ["account_id"])
    op.create_index("ix_holds_status_created_at", "holds", ["status", "created_at"])
    op.create_table(
        "model_prices",
        sa.Column("model", sa.String(256), nullable=False),
        _money("input_micro_usd_per_mtok"),
        _money("output_micro_usd_per_mtok"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("model", name=op.f("pk_model_prices")),
        sa.CheckConstraint(
            "input_micro_usd_per_mtok >= 0 AND output_micro_usd_per_mtok >= 0",
            name=op.f("ck_model_prices_non_negative"),
        ),
    )
    op.create_table(
        "pricing_policy",
        sa.Column("id", sa.Integer(), nullable=False),
        _money("minimum_charge_micro_usd"),
        sa.Column("platform_fee_bps", sa.Integer(), nullable=False),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pricing_policy")),
        sa.CheckConstraint("id = 1", name=op.f("ck_pricing_policy_single_row")),
        sa.CheckConstraint(
            "minimum_charge_micro_usd >= 0 AND platform_fee_bps BETWEEN 0 AND 10000",
            name=op.f("ck_pricing_policy_in_range"),
        ),
    )
    accounts = sa.table(
        "accounts",
        sa.column("id", sa.String()),
        sa.column("name", sa.String()),
        sa.column("kind", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    now = datetime.now(UTC)
    if op.get_bind().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)
    op.bulk_insert(
        accounts,
        [
            {"id": "platform", "name": "platform", "kind": "platform", "created_at": now},
            {"id": "external", "name": "external", "kind": "external", "created_at": now},
        ],
    )


def downgrade() -> None:
    op.execute("DELETE FROM accounts WHERE id IN ('platform', 'external')")
    op.drop_table("pricing_policy")
    op.drop_table("model_prices")
    op.drop_index("ix_holds_status_created_at", table_name="holds")
    op.drop_index(op.f("ix_holds_account_id"), table_name="holds")
    op.drop_table("holds")
    op.drop_index("ix_ledger_entries_account_id_id", table_name="ledger_entries")
    op.drop_index(op.f("ix_ledger_entries_transaction_id"), table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_index(op.f("ix_ledger_transactions_created_at"), table_name="ledger_transactions")
    op.drop_table("ledger_transactions")
    is_sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_billed_non_negative"), type_="check")
        for column in (
            "charged_micro_usd",
            "receipt_hash",
            "billed_completion_tokens",
            "billed_prompt_tokens",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f("ck_api_keys_purpose"), type_="check")
        batch.drop_column("purpose")
    if is_sqlite:  # rebuilding `accounts` would break the foreign keys that point at it
        op.execute("PRAGMA defer_foreign_keys = ON")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_constraint(op.f("ck_accounts_covered"), type_="check")
        batch.drop_constraint(op.f("ck_accounts_kind"), type_="check")
        for column in ("held_micro_usd", "balance_micro_usd", "kind"):
            batch.drop_column(column)
