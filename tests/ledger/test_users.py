"""Users: passwords kept only as argon2id hashes, emails compared as typed, each user with a
consumer and a provider account, invitations used once; sessions made only here."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from moonflower.errors import InvalidRequest
from moonflower.ledger import console_sessions, users
from moonflower.ledger.accounts import get_account
from moonflower.ledger.database import Database
from tests.support.ledger_rows import all_rows_as_text

PASSWORD = "correct horse battery staple"


async def test_a_user_owns_a_consumer_and_a_provider_account(ledger_db: Database) -> None:
    user = await users.create_user(ledger_db, "  Ada@Example.ORG ", PASSWORD)
    assert user.email == "ada@example.org"
    consumer = await get_account(ledger_db, user.consumer_account_id)
    provider = await get_account(ledger_db, user.provider_account_id)
    assert (consumer.kind, provider.kind) == ("consumer", "provider")
    assert consumer.balance_micro_usd == provider.balance_micro_usd == 0


async def test_the_password_is_stored_only_as_an_argon2id_hash(ledger_db: Database) -> None:
    await users.create_user(ledger_db, "ada@example.org", PASSWORD)
    everything = await all_rows_as_text(ledger_db)
    assert PASSWORD not in everything
    assert "$argon2id$" in everything


async def test_sign_in_checks_the_password_and_ignores_the_emails_case(
    ledger_db: Database,
) -> None:
    created = await users.create_user(ledger_db, "ada@example.org", PASSWORD)
    assert await users.verify_password(ledger_db, "ADA@example.org", PASSWORD) == created
    assert await users.verify_password(ledger_db, "ada@example.org", PASSWORD + "!") is None
    assert await users.verify_password(ledger_db, "bob@example.org", PASSWORD) is None
    assert await users.verify_password(ledger_db, "not an email", PASSWORD) is None


async def test_an_email_has_one_user_even_when_two_sign_up_at_once(ledger_db: Database) -> None:
    results = await asyncio.gather(
        *(users.create_user(ledger_db, "ada@example.org", PASSWORD) for _ in range(4)),
        return_exceptions=True,
    )
    made = [result for result in results if isinstance(result, users.User)]
    refused = [result for result in results if isinstance(result, InvalidRequest)]
    assert len(made) == 1
    assert len(refused) == 3
    assert {error.code for error in refused} == {"email_taken"}


@pytest.mark.parametrize(
    ("email", "password", "code"),
    [
        ("no-at-sign", PASSWORD, "invalid_email"),
        ("a@b", PASSWORD, "invalid_email"),
        ("a b@example.org", PASSWORD, "invalid_email"),
        ("ada@example.org", "short", "invalid_password"),
        ("ada@example.org", "x" * 1025, "invalid_password"),
    ],
)
async def test_bad_emails_and_passwords_are_refused(
    ledger_db: Database, email: str, password: str, code: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await users.create_user(ledger_db, email, password)
    assert refused.value.code == code


async def test_an_invitation_is_used_once(ledger_db: Database) -> None:
    code = await users.create_invite(ledger_db)
    await users.create_user(ledger_db, "ada@example.org", PASSWORD, invite_code=code)
    with pytest.raises(InvalidRequest) as refused:
        await users.create_user(ledger_db, "bob@example.org", PASSWORD, invite_code=code)
    assert refused.value.code == "invalid_invite"
    assert await users.find_user(ledger_db, "bob@example.org") is None  # nothing half-made
    assert code not in await all_rows_as_text(ledger_db)


async def test_only_tokens_this_ledger_made_name_a_session(ledger_db: Database) -> None:
    user = await users.create_user(ledger_db, "ada@example.org", PASSWORD)
    token = await console_sessions.open_session(ledger_db, user.id, timedelta(hours=1))
    found = await console_sessions.signed_in(ledger_db, token)
    assert found is not None
    assert found.user.id == user.id
    assert token not in await all_rows_as_text(ledger_db)
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert await console_sessions.signed_in(ledger_db, altered) is None
    await console_sessions.close_session(ledger_db, token)
    assert await console_sessions.signed_in(ledger_db, token) is None


async def test_an_expired_session_is_no_session(ledger_db: Database) -> None:
    user = await users.create_user(ledger_db, "ada@example.org", PASSWORD)
    token = await console_sessions.open_session(ledger_db, user.id, timedelta(seconds=-1))
    assert await console_sessions.signed_in(ledger_db, token) is None


async def test_set_admin(ledger_db: Database) -> None:
    await users.create_user(ledger_db, "ada@example.org", PASSWORD)
    made = await users.set_admin(ledger_db, "Ada@example.org")
    assert made is not None
    assert made.is_admin
    unmade = await users.set_admin(ledger_db, "ada@example.org", False)
    assert unmade is not None
    assert not unmade.is_admin
    assert await users.set_admin(ledger_db, "nobody@example.org") is None
