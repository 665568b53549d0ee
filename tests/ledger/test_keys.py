"""API keys and provider tokens: issued once, stored only as a hash, authenticated each for
its own purpose, listed and revoked."""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import make_url, update

from moonflower.errors import InvalidRequest
from moonflower.ledger.accounts import create_account, find_account, list_accounts
from moonflower.ledger.database import Database
from moonflower.ledger.keys import (
    Caller,
    KeyPurpose,
    authenticate,
    authenticate_provider,
    create_key,
    list_keys,
    note_use,
    revoke_key,
)
from moonflower.ledger.tables import ApiKey
from tests.support.ledger_rows import all_rows_as_text


async def test_created_key_authenticates_as_its_account(ledger_db: Database) -> None:
    created = await create_key(ledger_db, name="laptop")

    assert created.key.startswith("mf-")
    assert len(created.key) == 46
    assert created.display_prefix == created.key[:11] + "…"
    caller = await authenticate(ledger_db, created.key)
    assert caller == Caller(account_id=created.account_id, key_id=created.key_id)


async def test_keys_share_an_account_by_name(ledger_db: Database) -> None:
    first = await create_key(ledger_db)
    second = await create_key(ledger_db, account_name="default")
    other = await create_key(ledger_db, account_name="team")

    assert first.account_id == second.account_id != other.account_id
    assert first.key != second.key


async def test_api_key_for_a_new_account_creates_a_consumer_account(
    ledger_db: Database,
) -> None:
    created = await create_key(ledger_db, account_name="alice")

    assert created.purpose == "api"
    account = await find_account(ledger_db, "alice")
    assert account is not None
    assert (account.id, account.kind, account.balance_micro_usd) == (
        created.account_id,
        "consumer",
        0,
    )


async def test_provider_token_for_a_new_account_creates_a_provider_account(
    ledger_db: Database,
) -> None:
    created = await create_key(ledger_db, account_name="rig", name="mac", purpose="provider")

    assert created.key.startswith("mfp-")
    assert len(created.key) == 47
    assert created.display_prefix == created.key[:12] + "…"
    assert created.purpose == "provider"
    account = await find_account(ledger_db, "rig")
    assert account is not None
    assert (account.id, account.kind) == (created.account_id, "provider")


async def test_provider_tokens_join_an_existing_provider_account(ledger_db: Database) -> None:
    account = await create_account(ledger_db, "farm", "provider")
    first = await create_key(ledger_db, account_name="farm", purpose="provider")
    second = await create_key(ledger_db, account_name="farm", purpose="provider")

    assert first.account_id == second.account_id == account.id
    assert first.key != second.key
    assert [a.name for a in await list_accounts(ledger_db) if a.kind == "provider"] == ["farm"]


async def test_provider_token_for_a_consumer_account_is_refused(ledger_db: Database) -> None:
    api_key = await create_key(ledger_db, account_name="alice")

    with pytest.raises(InvalidRequest, match="consumer account") as refused:
        await create_key(ledger_db, account_name="alice", purpose="provider")
    assert refused.value.param == "account_name"
    assert [info.key_id for info in await list_keys(ledger_db)] == [api_key.key_id]
    account = await find_account(ledger_db, "alice")
    assert account is not None
    assert account.kind == "consumer"


async def test_provider_account_may_also_hold_api_keys(ledger_db: Database) -> None:
    token = await create_key(ledger_db, account_name="rig", purpose="provider")
    api_key = await create_key(ledger_db, account_name="rig")

    assert api_key.account_id == token.account_id
    assert await authenticate(ledger_db, api_key.key) == Caller(
        account_id=token.account_id, key_id=api_key.key_id
    )
    account = await find_account(ledger_db, "rig")
    assert account is not None
    assert account.kind == "provider"


@pytest.mark.parametrize("purpose", ["api", "provider"])
@pytest.mark.parametrize("system_account", ["platform", "external"])
async def test_system_accounts_hold_no_keys(
    ledger_db: Database, purpose: KeyPurpose, system_account: str
) -> None:
    with pytest.raises(InvalidRequest, match="cannot hold keys"):
        await create_key(ledger_db, account_name=system_account, purpose=purpose)
    assert await list_keys(ledger_db) == []


async def test_unknown_purpose_is_refused(ledger_db: Database) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await create_key(ledger_db, purpose="admin")  # type: ignore[arg-type]
    assert refused.value.param == "purpose"
    assert await list_keys(ledger_db) == []
    assert await find_account(ledger_db, "default") is None


async def test_provider_token_authenticates_only_as_a_provider(ledger_db: Database) -> None:
    token = await create_key(ledger_db, account_name="rig", purpose="provider")
    api_key = await create_key(ledger_db, account_name="alice")

    assert await authenticate_provider(ledger_db, token.key) == Caller(
        account_id=token.account_id, key_id=token.key_id
    )
    assert await authenticate(ledger_db, token.key) is None
    assert await authenticate_provider(ledger_db, api_key.key) is None
    assert await authenticate(ledger_db, api_key.key) is not None


async def test_provider_token_with_an_api_key_prefix_is_refused(ledger_db: Database) -> None:
    """The purpose is checked in the database, not only by the prefix."""
    token = await create_key(ledger_db, account_name="rig", purpose="provider")
    async with ledger_db.sessions.begin() as session:
        await session.execute(update(ApiKey).values(purpose="api"))
    assert await authenticate_provider(ledger_db, token.key) is None
    async with ledger_db.sessions.begin() as session:
        await session.execute(update(ApiKey).values(purpose="provider"))
    assert await authenticate_provider(ledger_db, token.key) is not None


@pytest.mark.parametrize(
    "raw_token",
    [
        "",
        "mfp-",
        "mf-" + "a" * 43,
        "mfp-" + "a" * 42,
        "mfp-" + "a" * 44,
        "mfp-" + "!" * 43,
        "Bearer mfp-" + "a" * 43,
    ],
)
async def test_malformed_provider_tokens_are_refused(ledger_db: Database, raw_token: str) -> None:
    assert await authenticate_provider(ledger_db, raw_token) is None


async def test_unknown_and_revoked_provider_tokens_are_refused(ledger_db: Database) -> None:
    token = await create_key(ledger_db, account_name="rig", purpose="provider")
    assert await authenticate_provider(ledger_db, "mfp-" + secrets.token_urlsafe(32)) is None

    assert await revoke_key(ledger_db, token.display_prefix) is not None
    assert await authenticate_provider(ledger_db, token.key) is None


async def test_revoking_by_the_api_prefix_does_not_match_provider_tokens(
    ledger_db: Database,
) -> None:
    token = await create_key(ledger_db, account_name="rig", purpose="provider")
    api_key = await create_key(ledger_db, account_name="alice")

    assert await revoke_key(ledger_db, "mf-") is not None  # the one API key, not the token
    assert await authenticate(ledger_db, api_key.key) is None
    assert await authenticate_provider(ledger_db, token.key) is not None


@pytest.mark.parametrize(
    "raw_key",
    [
        "",
        "mf-",
        "Bearer mf-x",
        "sk-" + "a" * 43,
        "mf-" + "a" * 42,
        "mf-" + "a" * 44,
        "mf-" + "!" * 43,
    ],
)
async def test_malformed_keys_are_refused(ledger_db: Database, raw_key: str) -> None:
    assert await authenticate(ledger_db, raw_key) is None


async def test_unknown_well_formed_key_is_refused(ledger_db: Database) -> None:
    await create_key(ledger_db)
    assert await authenticate(ledger_db, "mf-" + secrets.token_urlsafe(32)) is None


async def test_revoked_key_is_refused_and_listed_as_revoked(ledger_db: Database) -> None:
    kept = await create_key(ledger_db, name="kept")
    gone = await create_key(ledger_db, name="gone")

    assert await revoke_key(ledger_db, gone.key_id) is not None
    assert await authenticate(ledger_db, gone.key) is None
    assert await authenticate(ledger_db, kept.key) is not None
    assert await revoke_key(ledger_db, gone.key_id) is None
    by_id = {info.key_id: info for info in await list_keys(ledger_db)}
    assert by_id[gone.key_id].revoked_at is not None
    assert by_id[kept.key_id].revoked_at is None


async def test_revoke_by_display_prefix_needs_exactly_one_match(ledger_db: Database) -> None:
    first = await create_key(ledger_db)
    second = await create_key(ledger_db)

    assert await revoke_key(ledger_db, "mf-") is None  # matches both
    assert await revoke_key(ledger_db, "nothing-like-it") is None
    assert await revoke_key(ledger_db, first.display_prefix) is not None
    other_case = "mf-" + second.display_prefix[3:].swapcase()
    if other_case != second.display_prefix:  # keys are case-sensitive, even on SQLite
        assert await revoke_key(ledger_db, other_case) is None
    assert await revoke_key(ledger_db, second.display_prefix[:9]) is not None
    assert await authenticate(ledger_db, first.key) is None
    assert await authenticate(ledger_db, second.key) is None


async def test_revoke_by_the_raw_key_itself(ledger_db: Database) -> None:
    created = await create_key(ledger_db)
    revoked_hash = await revoke_key(ledger_db, created.key)
    assert revoked_hash == hashlib.sha256(created.key.encode()).hexdigest()
    assert await authenticate(ledger_db, created.key) is None


async def test_list_keys_describes_every_key(ledger_db: Database) -> None:
    before = datetime.now(UTC)
    created = await create_key(ledger_db, account_name="team", name="ci")

    [info] = await list_keys(ledger_db)
    assert (info.key_id, info.display_prefix) == (created.key_id, created.display_prefix)
    assert (info.account_id, info.account_name, info.name) == (created.account_id, "team", "ci")
    assert (info.account_kind, info.purpose) == ("consumer", "api")
    assert info.created_at.tzinfo is UTC
    assert before <= info.created_at <= datetime.now(UTC)
    assert info.last_used_at is None
    assert info.revoked_at is None


async def test_list_keys_tells_provider_tokens_from_api_keys(ledger_db: Database) -> None:
    api_key = await create_key(ledger_db, account_name="alice")
    token = await create_key(ledger_db, account_name="rig", purpose="provider")

    listed = [
        (info.key_id, info.display_prefix, info.account_name, info.account_kind, info.purpose)
        for info in await list_keys(ledger_db)
    ]
    assert sorted(listed) == sorted(
        [
            (api_key.key_id, api_key.display_prefix, "alice", "consumer", "api"),
            (token.key_id, token.display_prefix, "rig", "provider", "provider"),
        ]
    )


async def test_last_used_at_is_written_at_most_once_a_minute(ledger_db: Database) -> None:
    created = await create_key(ledger_db)

    async def last_used() -> datetime | None:
        [info] = await list_keys(ledger_db)
        return info.last_used_at

    async def use() -> None:
        caller = await authenticate(ledger_db, created.key)
        assert caller is not None
        await note_use(ledger_db, caller)

    await authenticate(ledger_db, created.key)
    assert await last_used() is None  # authenticating only reads
    await use()
    first_use = await last_used()
    assert first_use is not None
    await use()
    assert await last_used() == first_use

    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    async with ledger_db.sessions.begin() as session:
        await session.execute(update(ApiKey).values(last_used_at=long_ago))
    await use()
    refreshed = await last_used()
    assert refreshed is not None
    assert refreshed > first_use


async def test_a_provider_token_is_marked_used_when_it_authenticates(ledger_db: Database) -> None:
    created = await create_key(ledger_db, account_name="rig", purpose="provider")
    assert await authenticate_provider(ledger_db, created.key) is not None
    [info] = await list_keys(ledger_db)
    assert info.last_used_at is not None


@pytest.mark.parametrize("purpose", ["api", "provider"])
async def test_raw_key_is_never_stored_or_logged(
    ledger_db: Database,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    purpose: KeyPurpose,
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await create_key(ledger_db, account_name="owner", purpose=purpose)
    caller = await (authenticate if purpose == "api" else authenticate_provider)(
        ledger_db, created.key
    )
    assert caller is not None
    secret_part = created.key.split("-", 1)[1]
    assert len(secret_part) == 43

    rows = await all_rows_as_text(ledger_db)
    assert created.key_id in rows  # we are looking at the right data
    assert secret_part not in rows
    assert secret_part not in caplog.text
    if ledger_db.dialect_name == "sqlite":
        await ledger_db.close()  # checkpoints the WAL; its leftovers are read below anyway
        database_file = Path(str(make_url(database_url).database))
        stored = b"".join(path.read_bytes() for path in database_file.parent.iterdir())
        assert created.key_id.encode() in stored
        assert secret_part.encode() not in stored


async def test_bad_names_are_refused(ledger_db: Database) -> None:
    with pytest.raises(InvalidRequest):
        await create_key(ledger_db, account_name="")
    with pytest.raises(InvalidRequest):
        await create_key(ledger_db, name="x" * 201)
    with pytest.raises(InvalidRequest):
        await create_key(ledger_db, account_name=" spaced ", purpose="provider")
    assert await list_keys(ledger_db) == []
