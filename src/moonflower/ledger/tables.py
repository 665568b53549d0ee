"""The ledger's table definitions (SQLAlchemy 2 declarative, typed).

Owns the shape of stored data and nothing else: no queries, no sessions. Every schema change
here needs a matching Alembic revision in `migrations/versions/` (a test compares the two).
No table may ever hold prompt or completion text; jobs store only counts and timings.
Timestamps are timezone-aware UTC on the way in and on the way out, on every backend.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that refuses naive datetimes and always comes back aware, in UTC.

    SQLite has no time zones, so there it is stored as naive UTC text, which sorts correctly.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError("naive datetime given to the ledger; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012 (SQLAlchemy reads it)


MicroUSD = BigInteger
"""Money column type: whole micro-USD (1 USD = 1 000 000), never floats."""


class Account(Base):
    """Someone money can belong to. `balance` is the sum of the account's ledger entries,
    kept here so a hold can be taken with one conditional UPDATE; `held` is the sum of its
    open holds. Only the `external` account (the world outside) may go below zero."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("kind IN ('consumer', 'provider', 'platform', 'external')", name="kind"),
        CheckConstraint(
            "kind = 'external' OR (held_micro_usd >= 0 AND balance_micro_usd >= held_micro_usd)",
            name="covered",
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16), server_default="consumer")
    balance_micro_usd: Mapped[int] = mapped_column(MicroUSD, server_default="0")
    held_micro_usd: Mapped[int] = mapped_column(MicroUSD, server_default="0")
    created_at: Mapped[datetime]


class ApiKey(Base):
    """An API key, stored only as its SHA-256 and a short prefix for people to recognise."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    display_prefix: Mapped[str] = mapped_column(String(16))
    purpose: Mapped[str] = mapped_column(String(16), server_default="api")
    """"api" keys call the API; "provider" tokens connect providers that earn for the account."""
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Job(Base):
    """One finished generation: who asked, who served, how many tokens, how long. No text."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("status IN ('completed', 'cancelled', 'failed')", name="status"),
        CheckConstraint(
            "prompt_tokens >= 0 AND completion_tokens >= 0 AND duration_ms >= 0",
            name="non_negative",
        ),
        CheckConstraint(
            "charged_micro_usd >= 0 AND billed_prompt_tokens >= 0 "
            "AND billed_completion_tokens >= 0",
            name="billed_non_negative",
        ),
        Index("ix_jobs_account_id_created_at", "account_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id"))
    key_id: Mapped[str] = mapped_column(String(32), ForeignKey("api_keys.id"))
    model: Mapped[str] = mapped_column(String(256))
    provider_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int]
    completion_tokens: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(index=True)
    first_token_ms: Mapped[int | None]
    duration_ms: Mapped[int]
    error_code: Mapped[str | None] = mapped_column(String(64))
    billed_prompt_tokens: Mapped[int] = mapped_column(server_default="0")
    billed_completion_tokens: Mapped[int] = mapped_column(server_default="0")
    charged_micro_usd: Mapped[int] = mapped_column(MicroUSD, server_default="0")
    receipt_hash: Mapped[str | None] = mapped_column(String(64))


class ServedModel(Base):
    """Every model id any provider has ever registered, so unknown ≠ temporarily offline."""

    __tablename__ = "served_models"

    model_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]


class StoredReceipt(Base):
    """A provider's verified receipt for a job: hashes and counts, never text."""

    __tablename__ = "receipts"

    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id"), index=True)
    provider_id: Mapped[str] = mapped_column(String(128))
    receipt_json: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)
    signing_public_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class LedgerTransaction(Base):
    """One movement of money: its entries sum to zero. A settlement is unique per job."""

    __tablename__ = "ledger_transactions"
    __table_args__ = (
        CheckConstraint("kind IN ('deposit', 'settlement', 'withdrawal')", name="kind"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    memo: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(index=True)


class LedgerEntry(Base):
    """One account's side of a transaction: positive credits it, negative debits it."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('deposit', 'funding', 'charge', 'provider_share', 'platform_fee', "
            "'withdrawal', 'payout')",
            name="kind",
        ),
        Index("ix_ledger_entries_account_id_id", "account_id", "id"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    transaction_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("ledger_transactions.id"), index=True
    )
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id"))
    kind: Mapped[str] = mapped_column(String(16))
    amount_micro_usd: Mapped[int] = mapped_column(MicroUSD)


class Hold(Base):
    """Credit set aside for one job until it is settled or released."""

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("status IN ('held', 'settled', 'released')", name="status"),
        CheckConstraint("amount_micro_usd >= 0", name="non_negative"),
        Index("ix_holds_status_lease", "status", "lease_expires_at"),
    )

    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id"), index=True)
    amount_micro_usd: Mapped[int] = mapped_column(MicroUSD)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    """Until when the coordinator running the job vouches for it; it renews the lease while
    the job lives, and only a hold whose lease has run out may be released."""
    tally: Mapped[str | None] = mapped_column(Text, default=None)
    """What the running job would cost if it ended now (JSON, no content), written with each
    renewal: a survivor settles from it when the lease runs out (`ledger/lost_jobs.py`)."""


class ModelPrice(Base):
    """An admin's price for one model (or `*`: every model without its own), overriding
    the coordinator's settings. Micro-USD per million tokens."""

    __tablename__ = "model_prices"
    __table_args__ = (
        CheckConstraint(
            "input_micro_usd_per_mtok >= 0 AND output_micro_usd_per_mtok >= 0",
            name="non_negative",
        ),
    )

    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    input_micro_usd_per_mtok: Mapped[int] = mapped_column(MicroUSD)
    output_micro_usd_per_mtok: Mapped[int] = mapped_column(MicroUSD)
    updated_at: Mapped[datetime]


class PricingPolicy(Base):
    """The admin's minimum charge and platform fee, overriding settings. One row, id 1."""

    __tablename__ = "pricing_policy"
    __table_args__ = (
        CheckConstraint("id = 1", name="single_row"),
        CheckConstraint(
            "minimum_charge_micro_usd >= 0 AND platform_fee_bps BETWEEN 0 AND 10000",
            name="in_range",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    minimum_charge_micro_usd: Mapped[int] = mapped_column(MicroUSD)
    platform_fee_bps: Mapped[int]
    updated_at: Mapped[datetime]


class ProviderIdentity(Base):
    """A provider machine's lasting identity: the fingerprint of a signing key it proved it
    holds, the account that answers for it, when it was seen, how it served, and the verdict
    that keeps it out of routing, if any (cleared only by an operator)."""

    __tablename__ = "provider_identities"
    __table_args__ = (CheckConstraint("jobs >= 0 AND failures >= 0", name="non_negative"),)

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    """Lowercase hex SHA-256 of the 65-byte P-256 public point."""
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id"), index=True)
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    jobs: Mapped[int] = mapped_column(BigInteger, server_default="0")
    """Jobs that ended on its connections, as the coordinator counted them."""
    failures: Mapped[int] = mapped_column(BigInteger, server_default="0")
    """Of those, the ones that failed on the provider's side."""
    untrusted_reason: Mapped[str | None] = mapped_column(String(200))
    untrusted_at: Mapped[datetime | None]


class ProviderAccountVerdict(Base):
    """A check a provider failed, held against the account that answers for it: while one of
    an account's verdicts is not cleared, none of its machines is admitted, whatever key it
    presents. Kept after clearing, as the account's record."""

    __tablename__ = "provider_account_verdicts"
    __table_args__ = (Index("ix_provider_account_verdicts_account_id", "account_id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id"))
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    """The key the failing connection had proven it holds, if it had proven one."""
    reason: Mapped[str] = mapped_column(String(200))
    untrusted_at: Mapped[datetime]
    cleared_at: Mapped[datetime | None]


class User(Base):
    """A person who signs in to the console: an email, an argon2 hash of their password
    (never the password), and the two accounts they own: one that pays for their API keys,
    one that their provider machines earn for."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    """Lowercased; how the person signs in."""
    password_hash: Mapped[str] = mapped_column(String(200))
    is_admin: Mapped[bool] = mapped_column(Boolean, server_default="0")
    consumer_account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id"))
    provider_account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id"))
    created_at: Mapped[datetime]


class ConsoleSession(Base):
    """A signed-in browser, known by the SHA-256 of the token its cookie holds."""

    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]


class SignInFailure(Base):
    """One failed sign-in, counted against the email (as its SHA-256) and the address it
    came from, so guessing passwords slows down on every replica alike."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (
        Index("ix_sign_in_failures_email_hash_at", "email_hash", "at"),
        Index("ix_sign_in_failures_address_at", "address", "at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    email_hash: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]


class Invite(Base):
    """A single-use invitation to sign up, known by the SHA-256 of its code."""

    __tablename__ = "invites"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    used_by: Mapped[str | None] = mapped_column(String(32), ForeignKey("users.id"))


class DeviceLogin(Base):
    """A provider machine asking to be let in (RFC 8628): the machine holds the device code
    (stored as its SHA-256), a person types the user code into the console and approves,
    and the machine's next poll receives exactly one provider token."""

    __tablename__ = "device_logins"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'approved', 'denied', 'issued')", name="status"),
    )

    device_code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_code: Mapped[str] = mapped_column(String(16), unique=True)
    machine_name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    interval_s: Mapped[int]
    last_polled_at: Mapped[datetime | None]
    user_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("users.id"), index=True)
    """Who opened the code in the console, then approved or denied it."""
    key_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("api_keys.id"))
    """The provider token the approval yielded, once the machine has collected it."""
