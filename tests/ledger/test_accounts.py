"""Accounts: created empty, names unique, the system accounts reserved to the migrations."""

from __future__ import annotations

import pytest

from moonflower.errors import InvalidRequest
from moonflower.ledger.accounts import (
    EXTERNAL_ACCOUNT_ID,
    PLATFORM_ACCOUNT_ID,
    create_account,
    ensure_account,
    find_account,
    get_account,
    list_accounts,
)
from moonflower.ledger.billing import reserve
from moonflower.ledger.book import deposit
from moonflower.ledger.database import Database


async def test_migrations_create_the_platform_and_external_accounts(ledger_db: Database) -> None:
    accounts = {a.id: a for a in await list_accounts(ledger_db)}

    assert set(accounts) == {PLATFORM_ACCOUNT_ID, EXTERNAL_ACCOUNT_ID}
    assert accounts[PLATFORM_ACCOUNT_ID].kind == "platform"
    assert accounts[EXTERNAL_ACCOUNT_ID].kind == "external"
    assert all(a.balance_micro_usd == a.held_micro_usd == 0 for a in accounts.values())


async def test_created_account_is_empty_and_can_be_found(ledger_db: Database) -> None:
    alice = await create_account(ledger_db, "alice")
    earner = await create_account(ledger_db, "earner", kind="provider")

    assert (alice.kind, earner.kind) == ("consumer", "provider")
    assert alice.balance_micro_usd == alice.held_micro_usd == alice.available_micro_usd == 0
    assert alice.created_at.tzinfo is not None
    assert await get_account(ledger_db, alice.id) == alice
    assert await find_account(ledger_db, "alice") == alice
    assert await find_account(ledger_db, earner.id) == earner
    assert await find_account(ledger_db, "nobody") is None
    assert {a.id for a in await list_accounts(ledger_db)} >= {alice.id, earner.id}
    with pytest.raises(LookupError):
        await get_account(ledger_db, "no-such-id")


async def test_an_id_match_wins_over_a_name_match(ledger_db: Database) -> None:
    first = await create_account(ledger_db, "first")
    impostor = await create_account(ledger_db, first.id)

    assert await find_account(ledger_db, first.id) == first
    assert await find_account(ledger_db, impostor.id) == impostor


async def test_a_taken_name_is_refused(ledger_db: Database) -> None:
    await create_account(ledger_db, "alice")
    with pytest.raises(InvalidRequest, match="already exists") as refused:
        await create_account(ledger_db, "alice", kind="provider")

    assert refused.value.param == "name"
    assert [a.name for a in await list_accounts(ledger_db)].count("alice") == 1


@pytest.mark.parametrize("kind", ["platform", "external", "admin"])
async def test_only_consumer_and_provider_accounts_can_be_created(
    ledger_db: Database, kind: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await create_account(ledger_db, "sneaky", kind=kind)  # type: ignore[arg-type]

    assert refused.value.param == "kind"
    assert await find_account(ledger_db, "sneaky") is None


@pytest.mark.parametrize("name", ["", " padded", "padded ", "x" * 201])
async def test_bad_names_are_refused(ledger_db: Database, name: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await create_account(ledger_db, name)
    assert refused.value.param == "name"
    with pytest.raises(InvalidRequest):
        await ensure_account(ledger_db, name)
    assert len(await list_accounts(ledger_db)) == 2


async def test_ensure_account_creates_once(ledger_db: Database) -> None:
    created = await ensure_account(ledger_db, "bob", kind="provider")
    again = await ensure_account(ledger_db, "bob", kind="provider")

    assert created == again
    assert created.kind == "provider"
    assert [a.name for a in await list_accounts(ledger_db)].count("bob") == 1


async def test_ensure_account_never_hands_out_an_account_of_another_kind(
    ledger_db: Database,
) -> None:
    consumer = await create_account(ledger_db, "provider:abc")
    for name in ("provider:abc", PLATFORM_ACCOUNT_ID, EXTERNAL_ACCOUNT_ID):
        with pytest.raises(InvalidRequest, match="not a provider") as refused:
            await ensure_account(ledger_db, name, kind="provider")
        assert refused.value.param == "name"
    assert await ensure_account(ledger_db, "provider:abc") == consumer


@pytest.mark.parametrize("kind", ["platform", "external"])
async def test_ensure_account_refuses_the_system_kinds(ledger_db: Database, kind: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await ensure_account(ledger_db, "second-platform", kind=kind)  # type: ignore[arg-type]

    assert refused.value.param == "kind"
    assert await find_account(ledger_db, "second-platform") is None


async def test_available_and_withdrawable_follow_balance_and_holds(ledger_db: Database) -> None:
    consumer = await create_account(ledger_db, "consumer")
    provider = await create_account(ledger_db, "provider", kind="provider")
    for account in (consumer, provider):
        await deposit(ledger_db, account.id, 5_000_000)
        await reserve(ledger_db, f"job-{account.name}", account.id, 1_250_000)

    consumer = await get_account(ledger_db, consumer.id)
    provider = await get_account(ledger_db, provider.id)
    assert (consumer.balance_micro_usd, consumer.held_micro_usd) == (5_000_000, 1_250_000)
    assert consumer.available_micro_usd == 3_750_000
    assert consumer.withdrawable_micro_usd == 0
    assert provider.available_micro_usd == 3_750_000
    assert provider.withdrawable_micro_usd == 3_750_000
