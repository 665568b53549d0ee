"""Device logins: a code is single-use and expires, and each approval yields exactly one
provider token, even when polls race (on PostgreSQL, from many connections at once)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from moonflower.ledger import device_logins, keys, users
from moonflower.ledger.database import Database
from moonflower.ledger.device_logins import Issued

PASSWORD = "correct horse battery staple"
LIFETIME = timedelta(minutes=10)


async def _user(db: Database, email: str = "ada@example.org") -> users.User:
    return await users.create_user(db, email, PASSWORD)


async def test_approval_yields_one_provider_token_for_the_approvers_account(
    ledger_db: Database,
) -> None:
    user = await _user(ledger_db)
    started = await device_logins.start(ledger_db, "studio mac", lifetime=LIFETIME, interval_s=5)
    assert started.user_code[4] == "-"
    assert set(started.user_code.replace("-", "")) <= set(device_logins.USER_CODE_ALPHABET)
    assert await device_logins.poll(ledger_db, started.device_code) == "authorization_pending"

    looked = await device_logins.look(
        ledger_db, started.user_code.lower().replace("-", " "), viewer=user
    )
    assert looked is not None
    assert (looked.machine_name, looked.status) == ("studio mac", "pending")
    assert [login.status for login in await device_logins.for_user(ledger_db, user)] == ["pending"]
    decided = await device_logins.decide(ledger_db, started.user_code, user, approve=True)
    assert decided is not None
    assert decided.status == "approved"

    issued = await device_logins.poll(ledger_db, started.device_code)
    assert isinstance(issued, Issued)
    assert issued.account_id == user.provider_account_id
    caller = await keys.authenticate_provider(ledger_db, issued.token)
    assert caller is not None
    assert caller.account_id == user.provider_account_id
    # Used: every later poll is refused, and no second token exists.
    assert await device_logins.poll(ledger_db, started.device_code) == "invalid_grant"
    tokens = [key for key in await keys.list_keys(ledger_db) if key.purpose == "provider"]
    assert [key.name for key in tokens] == ["studio mac"]
    assert (await device_logins.for_user(ledger_db, user))[0].status == "issued"


async def test_racing_polls_after_approval_get_one_token(ledger_db: Database) -> None:
    user = await _user(ledger_db)
    started = await device_logins.start(ledger_db, "m", lifetime=LIFETIME, interval_s=5)
    await device_logins.decide(ledger_db, started.user_code, user, approve=True)
    outcomes = await asyncio.gather(
        *(device_logins.poll(ledger_db, started.device_code) for _ in range(12)),
        return_exceptions=True,
    )
    issued = [outcome for outcome in outcomes if isinstance(outcome, Issued)]
    assert len(issued) == 1
    assert all(outcome == "invalid_grant" for outcome in outcomes if outcome not in issued)
    assert len([key for key in await keys.list_keys(ledger_db) if key.purpose == "provider"]) == 1


async def test_a_denied_login_gets_no_token(ledger_db: Database) -> None:
    user = await _user(ledger_db)
    started = await device_logins.start(ledger_db, "m", lifetime=LIFETIME, interval_s=5)
    await device_logins.decide(ledger_db, started.user_code, user, approve=False)
    assert await device_logins.poll(ledger_db, started.device_code) == "access_denied"
    again = await device_logins.decide(ledger_db, started.user_code, user, approve=True)
    assert again is not None
    assert again.status == "denied"  # a decision is final
    assert await device_logins.poll(ledger_db, started.device_code) == "access_denied"


async def test_an_expired_code_can_be_neither_approved_nor_redeemed(ledger_db: Database) -> None:
    user = await _user(ledger_db)
    started = await device_logins.start(
        ledger_db, "m", lifetime=timedelta(seconds=-1), interval_s=5
    )
    decided = await device_logins.decide(ledger_db, started.user_code, user, approve=True)
    assert decided is not None
    assert decided.status == "expired"
    assert await device_logins.poll(ledger_db, started.device_code) == "expired_token"


async def test_an_approved_login_that_expires_uncollected_yields_nothing(
    ledger_db: Database,
) -> None:
    user = await _user(ledger_db)
    started = await device_logins.start(ledger_db, "m", lifetime=timedelta(seconds=1), interval_s=1)
    await device_logins.decide(ledger_db, started.user_code, user, approve=True)
    while (await device_logins.look(ledger_db, started.user_code)).status != "expired":  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
    assert await device_logins.poll(ledger_db, started.device_code) == "expired_token"


async def test_polling_faster_than_the_interval_is_told_to_slow_down(ledger_db: Database) -> None:
    started = await device_logins.start(ledger_db, "m", lifetime=LIFETIME, interval_s=30)
    assert await device_logins.poll(ledger_db, started.device_code) == "authorization_pending"
    assert await device_logins.poll(ledger_db, started.device_code) == "slow_down"


async def test_unknown_codes(ledger_db: Database) -> None:
    assert await device_logins.poll(ledger_db, "not-a-device-code") == "invalid_grant"
    assert await device_logins.look(ledger_db, "BCDF-GHJK") is None
    user = await _user(ledger_db)
    assert await device_logins.decide(ledger_db, "BCDF-GHJK", user, approve=True) is None


async def test_the_device_code_is_stored_only_as_a_hash(ledger_db: Database) -> None:
    started = await device_logins.start(ledger_db, "m", lifetime=LIFETIME, interval_s=5)
    async with ledger_db.reads() as session:
        from sqlalchemy import select

        from moonflower.ledger.tables import DeviceLogin

        stored = (await session.scalars(select(DeviceLogin.device_code_hash))).all()
    assert started.device_code not in stored
    assert len(stored) == 1
