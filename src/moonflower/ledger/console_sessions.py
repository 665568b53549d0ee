"""Console sessions and failed sign-ins, kept in the ledger's database so that every
replica knows who is signed in and how often a password was guessed wrong.

Owns the session token format and lifetime. A token is 32 random bytes, made here and only
here: the database holds its SHA-256, the browser holds the token in an HttpOnly cookie, and
a token that was not made by `open_session` (one an attacker planted in a victim's browser)
never names a session. Each sign-in opens a new session; signing out closes it. Knows
nothing of HTTP: cookies and CSRF are `coordinator/console_session`'s.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, update

from moonflower.ledger.database import Database
from moonflower.ledger.tables import ConsoleSession, SignInFailure
from moonflower.ledger.tables import User as UserRow
from moonflower.ledger.users import User, user_from_row

TOKEN_BYTES = 32
SEEN_RESOLUTION = timedelta(minutes=1)
"""A session's last-seen time is written at most once a minute."""


@dataclass(frozen=True, slots=True)
class SignedIn:
    user: User
    token: str
    """The raw session token (from the cookie); `csrf_token` derives from it."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(session_token: str) -> str:
    """The CSRF token for a session: derived from the session token, so it needs no
    storage; a page of ours reads it from `/console/api/me`, which another site's page
    cannot (the cookie is SameSite and the route sends no CORS headers)."""
    return hashlib.sha256(b"moonflower-csrf\x00" + session_token.encode()).hexdigest()


def is_csrf_token(session_token: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(
        csrf_token(session_token).encode(), presented.encode()
    )


async def open_session(db: Database, user_id: str, lifetime: timedelta) -> str:
    """A new session for the user; returns its raw token, for the cookie. The user's
    expired sessions are deleted meanwhile."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = datetime.now(UTC)
    async with db.sessions.begin() as session:
        await session.execute(
            delete(ConsoleSession).where(
                ConsoleSession.user_id == user_id, ConsoleSession.expires_at <= now
            )
        )
        session.add(
            ConsoleSession(
                token_hash=_digest(token),
                user_id=user_id,
                created_at=now,
                expires_at=now + lifetime,
                last_seen_at=now,
            )
        )
    return token


async def signed_in(db: Database, token: str) -> SignedIn | None:
    """Who the session with this token belongs to, or None if it is unknown, closed or
    expired. Notes the session seen (at most one write a minute)."""
    if not 0 < len(token) <= 100:
        return None
    now = datetime.now(UTC)
    query = (
        select(UserRow, ConsoleSession.last_seen_at)
        .join(ConsoleSession, ConsoleSession.user_id == UserRow.id)
        .where(ConsoleSession.token_hash == _digest(token), ConsoleSession.expires_at > now)
    )
    async with db.reads() as session:
        row = (await session.execute(query)).one_or_none()
    if row is None:
        return None
    user_row, last_seen = row
    if now - last_seen > SEEN_RESOLUTION:
        async with db.sessions.begin() as session:
            await session.execute(
                update(ConsoleSession)
                .where(ConsoleSession.token_hash == _digest(token))
                .values(last_seen_at=now)
            )
    return SignedIn(user=user_from_row(user_row), token=token)


async def close_session(db: Database, token: str) -> None:
    async with db.sessions.begin() as session:
        await session.execute(
            delete(ConsoleSession).where(ConsoleSession.token_hash == _digest(token))
        )


async def note_failure(db: Database, email_hash: str, address: str, window: timedelta) -> None:
    """Count one failed sign-in; failures older than `window` are forgotten meanwhile."""
    now = datetime.now(UTC)
    async with db.sessions.begin() as session:
        session.add(SignInFailure(email_hash=email_hash, address=address[:64], at=now))
        await session.execute(delete(SignInFailure).where(SignInFailure.at < now - window))


@dataclass(frozen=True, slots=True)
class Failures:
    for_email: int
    from_address: int
    oldest_at: datetime | None
    """When the oldest failure that counts was made: the limit lifts `window` after it."""


async def recent_failures(
    db: Database, email_hash: str, address: str, window: timedelta
) -> Failures:
    since = datetime.now(UTC) - window
    async with db.reads() as session:
        by_email = (
            await session.execute(
                select(func.count(), func.min(SignInFailure.at)).where(
                    SignInFailure.email_hash == email_hash, SignInFailure.at >= since
                )
            )
        ).one()
        by_address = await session.scalar(
            select(func.count()).where(
                SignInFailure.address == address[:64], SignInFailure.at >= since
            )
        )
    return Failures(for_email=by_email[0], from_address=by_address or 0, oldest_at=by_email[1])


async def forget_failures(db: Database, email_hash: str) -> None:
    """After a successful sign-in, the email's earlier failures no longer count."""
    async with db.sessions.begin() as session:
        await session.execute(delete(SignInFailure).where(SignInFailure.email_hash == email_hash))
