"""People who sign in to the console: create them, check their passwords, make them admins,
and invite new ones.

Owns the rules for emails and passwords and how passwords are kept: as argon2id hashes
(memory-hard, the parameters inside each hash), never as the password, which exists only in
the call that checks or sets it and is never logged. A user owns two accounts, made with it:
a consumer account its API keys spend from, and a provider account its machines earn for.
Knows nothing of HTTP or sessions (`console_sessions`).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from moonflower.errors import InvalidRequest
from moonflower.ledger.database import Database
from moonflower.ledger.tables import Account, Invite
from moonflower.ledger.tables import User as UserRow

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
"""Long enough for any passphrase, short enough that hashing one is not a way to load us."""
MAX_EMAIL_LENGTH = 254
INVITE_PREFIX = "mfi-"

# argon2id at OWASP's recommended minimum (19 MiB, 2 passes): about 30 ms here, in a thread.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_UNKNOWN_USER_HASH = _HASHER.hash("a password nobody has")
"""Checked against when the email is unknown, so a wrong email costs as long as a wrong
password and timing does not tell which emails have accounts."""


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    is_admin: bool
    consumer_account_id: str
    provider_account_id: str
    created_at: datetime


def user_from_row(row: UserRow) -> User:
    return User(
        id=row.id,
        email=row.email,
        is_admin=row.is_admin,
        consumer_account_id=row.consumer_account_id,
        provider_account_id=row.provider_account_id,
        created_at=row.created_at,
    )


def normalize_email(email: str) -> str:
    """The email as stored and compared: trimmed and lowercased; `InvalidRequest` unless
    it looks like an address (one @, something on both sides, no spaces)."""
    value = email.strip().lower()
    local, at, domain = value.partition("@")
    if (
        not at
        or not local
        or "." not in domain
        or "@" in domain
        or len(value) > MAX_EMAIL_LENGTH
        or any(ch.isspace() or ord(ch) < 32 for ch in value)
    ):
        raise InvalidRequest("Give a valid email address.", param="email", code="invalid_email")
    return value


def check_password(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidRequest(
            f"A password has {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters.",
            param="password",
            code="invalid_password",
        )


def email_digest(email: str) -> str:
    """The SHA-256 of a normalised email: how failed sign-ins are counted without storing
    whatever an attacker typed."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


async def hash_password(password: str) -> str:
    check_password(password)
    return await asyncio.to_thread(_HASHER.hash, password)


async def _matches(password_hash: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return _HASHER.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


async def create_user(
    db: Database,
    email: str,
    password: str,
    *,
    is_admin: bool = False,
    invite_code: str | None = None,
) -> User:
    """A new user with its consumer and provider accounts, in one transaction. With
    `invite_code`, the invitation is used up by this sign-up (`InvalidRequest` if it is
    unknown or used). `InvalidRequest` (code `email_taken`) if the email has a user."""
    address = normalize_email(email)
    password_hash = await hash_password(password)
    now = datetime.now(UTC)
    user_id = uuid.uuid4().hex
    row = UserRow(
        id=user_id,
        email=address,
        password_hash=password_hash,
        is_admin=is_admin,
        consumer_account_id=uuid.uuid4().hex,
        provider_account_id=uuid.uuid4().hex,
        created_at=now,
    )
    try:
        async with db.sessions.begin() as session:
            taken = await session.scalar(select(UserRow.id).where(UserRow.email == address))
            if taken is not None:
                raise _email_taken()
            session.add_all(
                [
                    Account(
                        id=row.consumer_account_id, name=address, kind="consumer", created_at=now
                    ),
                    Account(
                        id=row.provider_account_id,
                        name=f"{address} (provider)",
                        kind="provider",
                        created_at=now,
                    ),
                ]
            )
            await session.flush()
            session.add(row)
            await session.flush()
            if invite_code is not None:
                await _use_invite(session, invite_code, user_id, now)
    except IntegrityError as exc:  # the email (or an account of that name) was taken meanwhile
        raise _email_taken() from exc
    return user_from_row(row)


def _email_taken() -> InvalidRequest:
    return InvalidRequest(
        "An account with this email exists; sign in instead.", param="email", code="email_taken"
    )


async def _use_invite(session: AsyncSession, code: str, user_id: str, now: datetime) -> None:
    used = await session.execute(
        update(Invite)
        .where(Invite.code_hash == _digest(code.strip()), Invite.used_at.is_(None))
        .values(used_at=now, used_by=user_id)
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        raise InvalidRequest(
            "This invitation code is unknown or already used.",
            param="invite_code",
            code="invalid_invite",
        )


async def verify_password(db: Database, email: str, password: str) -> User | None:
    """The user whose email and password these are, or None; as slow for an unknown email
    as for a wrong password."""
    try:
        address = normalize_email(email)
    except InvalidRequest:
        address = ""
    row = None
    if address and len(password) <= MAX_PASSWORD_LENGTH:
        async with db.reads() as session:
            row = await session.scalar(select(UserRow).where(UserRow.email == address))
    if row is None:
        await _matches(_UNKNOWN_USER_HASH, password[:MAX_PASSWORD_LENGTH])
        return None
    return user_from_row(row) if await _matches(row.password_hash, password) else None


async def get_user(db: Database, user_id: str) -> User | None:
    async with db.reads() as session:
        row = await session.get(UserRow, user_id)
    return None if row is None else user_from_row(row)


async def find_user(db: Database, email: str) -> User | None:
    address = normalize_email(email)
    async with db.reads() as session:
        row = await session.scalar(select(UserRow).where(UserRow.email == address))
    return None if row is None else user_from_row(row)


async def set_admin(db: Database, email: str, is_admin: bool = True) -> User | None:
    """Make the user with this email an admin (or no longer one); None if there is none."""
    address = normalize_email(email)
    async with db.sessions.begin() as session:
        await session.execute(
            update(UserRow).where(UserRow.email == address).values(is_admin=is_admin)
        )
        row = await session.scalar(select(UserRow).where(UserRow.email == address))
    return None if row is None else user_from_row(row)


async def create_invite(db: Database) -> str:
    """A new single-use invitation code, returned raw once; the ledger keeps its SHA-256."""
    code = INVITE_PREFIX + secrets.token_urlsafe(18)
    async with db.sessions.begin() as session:
        session.add(Invite(code_hash=_digest(code), created_at=datetime.now(UTC)))
    return code


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
