"""The double-entry book: deposits, balanced posting, and the database refusing overdrafts.

`assert_books_balance` states the book's invariants against the database itself; the other
money tests call it too.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError

from moonflower.errors import InvalidRequest
from moonflower.ledger.accounts import (
    EXTERNAL_ACCOUNT_ID,
    PLATFORM_ACCOUNT_ID,
    create_account,
    get_account,
    list_accounts,
)
from moonflower.ledger.book import (
    MAX_DEPOSIT_MICRO_USD,
    Entry,
    UnbalancedTransaction,
    deposit,
    post,
)
from moonflower.ledger.database import Database
from moonflower.ledger.tables import Account, Hold, LedgerEntry, LedgerTransaction


async def assert_books_balance(db: Database) -> None:
    """Every transaction sums to zero, so do all balances; each balance is the sum of its
    account's entries and each `held` the sum of its open holds; no one but `external` is
    below zero or holds more than it has."""
    amount = LedgerEntry.amount_micro_usd
    async with db.sessions() as session:
        unbalanced = await session.execute(
            select(LedgerEntry.transaction_id, func.sum(amount))
            .group_by(LedgerEntry.transaction_id)
            .having(func.sum(amount) != 0)
        )
        entry_sums = await session.execute(
            select(LedgerEntry.account_id, func.sum(amount)).group_by(LedgerEntry.account_id)
        )
        open_holds = await session.execute(
            select(Hold.account_id, func.sum(Hold.amount_micro_usd))
            .where(Hold.status == "held")
            .group_by(Hold.account_id)
        )
        accounts = (await session.execute(select(Account))).scalars().all()
        assert unbalanced.all() == []
        by_entries = {account_id: int(total) for account_id, total in entry_sums.all()}
        by_holds = {account_id: int(total) for account_id, total in open_holds.all()}
    assert sum(a.balance_micro_usd for a in accounts) == 0
    for account in accounts:
        assert account.balance_micro_usd == by_entries.get(account.id, 0), account.name
        assert account.held_micro_usd == by_holds.get(account.id, 0), account.name
        if account.kind != "external":
            assert 0 <= account.held_micro_usd <= account.balance_micro_usd, account.name


async def _balances(db: Database) -> dict[str, int]:
    return {a.id: a.balance_micro_usd for a in await list_accounts(db)}


async def _row_count(db: Database, table: type[LedgerEntry] | type[LedgerTransaction]) -> int:
    async with db.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(table)) or 0)


async def test_a_deposit_moves_money_in_from_outside(ledger_db: Database) -> None:
    alice = await create_account(ledger_db, "alice")
    first = await deposit(ledger_db, alice.id, 2_500_000, memo="card payment")
    await deposit(ledger_db, alice.id, 1)

    balances = await _balances(ledger_db)
    assert balances[alice.id] == 2_500_001
    assert balances[EXTERNAL_ACCOUNT_ID] == -2_500_001
    assert balances[PLATFORM_ACCOUNT_ID] == 0
    async with ledger_db.sessions() as session:
        transaction = await session.get(LedgerTransaction, first)
        entries = await session.execute(
            select(LedgerEntry.account_id, LedgerEntry.kind, LedgerEntry.amount_micro_usd)
            .where(LedgerEntry.transaction_id == first)
            .order_by(LedgerEntry.amount_micro_usd)
        )
        assert transaction is not None
        assert (transaction.kind, transaction.memo, transaction.job_id) == (
            "deposit",
            "card payment",
            None,
        )
        assert entries.all() == [
            (EXTERNAL_ACCOUNT_ID, "funding", -2_500_000),
            (alice.id, "deposit", 2_500_000),
        ]
    await assert_books_balance(ledger_db)


async def test_the_largest_deposit_is_exact(ledger_db: Database) -> None:
    provider = await create_account(ledger_db, "provider", kind="provider")
    await deposit(ledger_db, provider.id, MAX_DEPOSIT_MICRO_USD)
    await deposit(ledger_db, provider.id, MAX_DEPOSIT_MICRO_USD)

    assert (await get_account(ledger_db, provider.id)).balance_micro_usd == 2 * 10**15
    await assert_books_balance(ledger_db)


@pytest.mark.parametrize("amount", [0, -1, MAX_DEPOSIT_MICRO_USD + 1])
async def test_deposits_out_of_range_are_refused(ledger_db: Database, amount: int) -> None:
    alice = await create_account(ledger_db, "alice")
    with pytest.raises(InvalidRequest) as refused:
        await deposit(ledger_db, alice.id, amount)
    assert refused.value.param == "amount"
    assert await _row_count(ledger_db, LedgerTransaction) == 0


@pytest.mark.parametrize("account_id", [PLATFORM_ACCOUNT_ID, EXTERNAL_ACCOUNT_ID, "nobody"])
async def test_deposits_go_only_to_people(ledger_db: Database, account_id: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await deposit(ledger_db, account_id, 1_000)
    assert refused.value.param == "account"
    assert set((await _balances(ledger_db)).values()) == {0}
    assert await _row_count(ledger_db, LedgerTransaction) == 0


async def test_an_unbalanced_transaction_writes_nothing(ledger_db: Database) -> None:
    alice = await create_account(ledger_db, "alice")
    entries = [Entry(EXTERNAL_ACCOUNT_ID, "funding", -10), Entry(alice.id, "deposit", 11)]
    with pytest.raises(UnbalancedTransaction):
        async with ledger_db.sessions.begin() as session:
            await post(session, "deposit", entries)

    assert await _row_count(ledger_db, LedgerTransaction) == 0
    assert set((await _balances(ledger_db)).values()) == {0}


async def test_post_skips_zero_entries_and_moves_holds(ledger_db: Database) -> None:
    alice = await create_account(ledger_db, "alice")
    await deposit(ledger_db, alice.id, 1_000)
    entries = [
        Entry(alice.id, "charge", -400),
        Entry(PLATFORM_ACCOUNT_ID, "platform_fee", 400),
        Entry(EXTERNAL_ACCOUNT_ID, "payout", 0),
    ]
    async with ledger_db.sessions.begin() as session:
        await post(session, "settlement", entries, job_id="job-1", held_changes={alice.id: 500})

    after = await get_account(ledger_db, alice.id)
    assert (after.balance_micro_usd, after.held_micro_usd) == (600, 500)
    assert (await get_account(ledger_db, PLATFORM_ACCOUNT_ID)).balance_micro_usd == 400
    assert await _row_count(ledger_db, LedgerEntry) == 4  # two for the deposit, two here


async def test_overdrawing_through_the_book_is_refused(ledger_db: Database) -> None:
    alice = await create_account(ledger_db, "alice")
    await deposit(ledger_db, alice.id, 1_000)
    entries = [Entry(alice.id, "charge", -1_001), Entry(PLATFORM_ACCOUNT_ID, "platform_fee", 1_001)]
    with pytest.raises(IntegrityError):
        async with ledger_db.sessions.begin() as session:
            await post(session, "settlement", entries, job_id="job-1")

    assert (await get_account(ledger_db, alice.id)).balance_micro_usd == 1_000
    assert await _row_count(ledger_db, LedgerTransaction) == 1
    await assert_books_balance(ledger_db)


@pytest.mark.parametrize(
    ("balance", "held"), [(-1, 0), (100, 101), (100, -1)], ids=["negative", "over", "held<0"]
)
async def test_the_database_refuses_an_uncovered_account(
    ledger_db: Database, balance: int, held: int
) -> None:
    for kind in ("consumer", "provider"):
        account = await create_account(ledger_db, kind, kind=kind)
        with pytest.raises(IntegrityError, match=r"(?i)check"):
            async with ledger_db.sessions.begin() as session:
                await session.execute(
                    update(Account)
                    .where(Account.id == account.id)
                    .values(balance_micro_usd=balance, held_micro_usd=held)
                )
        assert (await get_account(ledger_db, account.id)).balance_micro_usd == 0
    with pytest.raises(IntegrityError, match=r"(?i)check"):
        async with ledger_db.sessions.begin() as session:
            await session.execute(
                text("UPDATE accounts SET balance_micro_usd = -5 WHERE id = :id"),
                {"id": PLATFORM_ACCOUNT_ID},
            )
    async with ledger_db.sessions.begin() as session:  # the world outside may owe us
        await session.execute(
            text("UPDATE accounts SET balance_micro_usd = -5 WHERE id = :id"),
            {"id": EXTERNAL_ACCOUNT_ID},
        )
    assert (await get_account(ledger_db, EXTERNAL_ACCOUNT_ID)).balance_micro_usd == -5
