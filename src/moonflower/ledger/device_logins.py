"""Device logins (RFC 8628): how a provider machine gets a provider token without anyone
pasting one on a command line.

The machine asks for a device code and a short user code (`start`); a person signed in to the
console types the user code, sees which machine asks, and approves or denies it (`decide`);
the machine polls with its device code (`redeem`). The first poll after an approval mints
exactly one provider token, for the approver's provider account, in the same transaction that
marks the login `issued`, so no second poll (nor a concurrent one, on any replica) gets
another. Codes expire; a device code is kept only as its SHA-256, and the minted token only
in the poll's answer. Knows nothing of HTTP: the route turns outcomes into RFC 8628 errors.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from moonflower.ledger.database import Database
from moonflower.ledger.keys import add_key
from moonflower.ledger.tables import DeviceLogin
from moonflower.ledger.tables import User as UserRow
from moonflower.ledger.users import User

USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
"""RFC 8628 §6.1's example: consonants only, so no words and no 0/O or 1/I mix-ups."""
USER_CODE_LENGTH = 8
SLOW_DOWN_STEP_S = 5
"""What a machine that polls too fast adds to its interval (RFC 8628 §3.5)."""
MAX_MACHINE_NAME = 200
KEPT_AFTER_EXPIRY = timedelta(days=7)
"""How long an expired login stays listed before `start` deletes it."""

Status = Literal["pending", "approved", "denied", "issued", "expired"]
Refusal = Literal[
    "authorization_pending", "slow_down", "access_denied", "expired_token", "invalid_grant"
]


@dataclass(frozen=True, slots=True)
class Started:
    device_code: str
    user_code: str
    expires_at: datetime
    interval_s: int


@dataclass(frozen=True, slots=True)
class LoginInfo:
    user_code: str
    machine_name: str
    status: Status
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Issued:
    token: str
    account_id: str
    key_id: str


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def normalize_user_code(code: str) -> str:
    """A user code as typed (any case, with or without the dash or spaces) as stored."""
    letters = "".join(ch for ch in code.upper() if ch.isalnum())
    return f"{letters[:4]}-{letters[4:]}" if len(letters) == USER_CODE_LENGTH else letters


def _new_user_code() -> str:
    letters = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
    return normalize_user_code(letters)


def _status(row: DeviceLogin, now: datetime) -> Status:
    if row.status in ("pending", "approved") and row.expires_at <= now:
        return "expired"
    return row.status  # type: ignore[return-value]


def _info(row: DeviceLogin, now: datetime) -> LoginInfo:
    return LoginInfo(
        user_code=row.user_code,
        machine_name=row.machine_name,
        status=_status(row, now),
        created_at=row.created_at,
        expires_at=row.expires_at,
    )


async def start(
    db: Database, machine_name: str, *, lifetime: timedelta, interval_s: int
) -> Started:
    """A new pending login for the named machine, with fresh codes."""
    name = " ".join(machine_name.split())[:MAX_MACHINE_NAME] or "provider"
    now = datetime.now(UTC)
    for _ in range(5):  # a clash of user codes is rare; try again with new ones
        device_code = secrets.token_urlsafe(32)
        user_code = _new_user_code()
        try:
            async with db.sessions.begin() as session:
                await session.execute(
                    delete(DeviceLogin).where(
                        DeviceLogin.expires_at < now - KEPT_AFTER_EXPIRY,
                        DeviceLogin.status != "issued",
                    )
                )
                session.add(
                    DeviceLogin(
                        device_code_hash=_digest(device_code),
                        user_code=user_code,
                        machine_name=name,
                        status="pending",
                        created_at=now,
                        expires_at=now + lifetime,
                        interval_s=interval_s,
                    )
                )
        except IntegrityError:
            continue
        return Started(device_code, user_code, now + lifetime, interval_s)
    raise RuntimeError("could not find a free user code")


async def look(db: Database, user_code: str, viewer: User | None = None) -> LoginInfo | None:
    """The login a user code names, or None. A pending login nobody opened yet is noted as
    opened by `viewer`, so it is listed among their pending logins (`for_user`)."""
    code = normalize_user_code(user_code)
    if viewer is not None:
        async with db.sessions.begin() as session:
            await session.execute(
                update(DeviceLogin)
                .where(
                    DeviceLogin.user_code == code,
                    DeviceLogin.status == "pending",
                    DeviceLogin.user_id.is_(None),
                )
                .values(user_id=viewer.id)
            )
    async with db.reads() as session:
        row = await session.scalar(select(DeviceLogin).where(DeviceLogin.user_code == code))
    return None if row is None else _info(row, datetime.now(UTC))


async def decide(db: Database, user_code: str, user: User, *, approve: bool) -> LoginInfo | None:
    """Approve or deny a pending, unexpired login as `user`; the login as it then stands,
    or None if the code names none. A login already decided, issued or expired is left
    as it is (the caller sees its status)."""
    now = datetime.now(UTC)
    code = normalize_user_code(user_code)
    async with db.sessions.begin() as session:
        await session.execute(
            update(DeviceLogin)
            .where(
                DeviceLogin.user_code == code,
                DeviceLogin.status == "pending",
                DeviceLogin.expires_at > now,
            )
            .values(status="approved" if approve else "denied", user_id=user.id)
        )
        row = await session.scalar(select(DeviceLogin).where(DeviceLogin.user_code == code))
    return None if row is None else _info(row, now)


async def poll(db: Database, device_code: str) -> Issued | Refusal:
    """A machine's poll: the provider token if its login was approved and nobody collected
    the token yet (exactly once), else why not."""
    now = datetime.now(UTC)
    async with db.sessions.begin() as session:
        row = await session.scalar(
            select(DeviceLogin).where(DeviceLogin.device_code_hash == _digest(device_code))
        )
        if row is None or row.status == "issued":
            return "invalid_grant"
        status = _status(row, now)
        if status == "expired":
            return "expired_token"
        if status == "denied":
            return "access_denied"
        if status == "pending":
            return _pending(row, now)
        account_id = await session.scalar(
            select(UserRow.provider_account_id).where(UserRow.id == row.user_id)
        )
        if account_id is None:
            return "access_denied"
        issued = await session.execute(
            update(DeviceLogin)
            .where(DeviceLogin.device_code_hash == row.device_code_hash)
            .where(DeviceLogin.status == "approved")
            .values(status="issued", last_polled_at=now)
        )
        if issued.rowcount != 1:  # type: ignore[attr-defined]
            return "invalid_grant"  # another poll collected it first
        key = add_key(session, account_id, purpose="provider", name=row.machine_name, now=now)
        await session.flush()
        row.key_id = key.key_id
    return Issued(token=key.key, account_id=account_id, key_id=key.key_id)


def _pending(row: DeviceLogin, now: datetime) -> Refusal:
    """authorization_pending, or slow_down (with a longer interval from now on) when this
    poll came sooner than the interval allows."""
    last = row.last_polled_at
    row.last_polled_at = now
    # A little early is fine (clocks and networks jitter); twice as often is not.
    if last is not None and now - last < timedelta(seconds=row.interval_s * 0.8):
        row.interval_s += SLOW_DOWN_STEP_S
        return "slow_down"
    return "authorization_pending"


async def for_user(db: Database, user: User, *, limit: int = 20) -> list[LoginInfo]:
    """The logins this user opened (pending ones included) or decided, newest first."""
    query = (
        select(DeviceLogin)
        .where(DeviceLogin.user_id == user.id)
        .order_by(DeviceLogin.created_at.desc())
        .limit(limit)
    )
    now = datetime.now(UTC)
    async with db.reads() as session:
        rows = (await session.scalars(query)).all()
    return [_info(row, now) for row in rows]
