"""Holds and settlement: exact charges and shares, one at a time and in batches, idempotent
settling, released holds."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.exc import IntegrityError

from moonflower.errors import InsufficientFunds
from moonflower.ledger.accounts import (
    EXTERNAL_ACCOUNT_ID,
    PLATFORM_ACCOUNT_ID,
    AccountInfo,
    create_account,
    get_account,
)
from moonflower.ledger.billing import (
    JobBill,
    Settlement,
    release,
    release_expired,
    renew_leases,
    reserve,
    settle,
    settle_all,
)
from moonflower.ledger.book import deposit
from moonflower.ledger.database import Database
from moonflower.ledger.jobs import JobRecord, list_jobs
from moonflower.ledger.keys import create_key
from moonflower.ledger.receipts import ReceiptRecord, find_receipt, store_receipt
from moonflower.ledger.tables import Hold, Job, LedgerEntry, LedgerTransaction, StoredReceipt
from tests.ledger.test_book import assert_books_balance

FEE_BPS = 500  # 5 %


def finished_job(
    account_id: str, key_id: str, job_id: str | None = None, status: str = "completed"
) -> JobRecord:
    return JobRecord(
        id=job_id or f"job-{uuid.uuid4().hex}",
        account_id=account_id,
        key_id=key_id,
        model="smollm2-135m",
        provider_id="provider-1",
        status=status,
        finish_reason="stop" if status == "completed" else None,
        prompt_tokens=10,
        completion_tokens=20,
        created_at=datetime.now(UTC),
        first_token_ms=5,
        duration_ms=50,
        error_code=None if status == "completed" else "provider_error",
    )


@dataclass(frozen=True)
class Parties:
    consumer: str
    key_id: str
    provider: str

    def job(self, job_id: str | None = None, status: str = "completed") -> JobRecord:
        return finished_job(self.consumer, self.key_id, job_id, status)


@pytest.fixture
async def parties(ledger_db: Database) -> Parties:
    key = await create_key(ledger_db, account_name="consumer")
    provider = await create_account(ledger_db, "provider", kind="provider")
    await deposit(ledger_db, key.account_id, 1_000_000)
    return Parties(key.account_id, key.key_id, provider.id)


async def _account(db: Database, account_id: str) -> AccountInfo:
    return await get_account(db, account_id)


async def _counts(db: Database) -> tuple[int, ...]:
    tables = (LedgerTransaction, LedgerEntry, Job, Hold, StoredReceipt)
    async with db.sessions() as session:
        return tuple(
            [int(await session.scalar(select(func.count()).select_from(t)) or 0) for t in tables]
        )


async def _hold_status(db: Database, job_id: str) -> str | None:
    async with db.sessions() as session:
        hold = await session.get(Hold, job_id)
    return None if hold is None else hold.status


async def test_reserve_holds_exactly_the_amount(ledger_db: Database, parties: Parties) -> None:
    await reserve(ledger_db, "job-1", parties.consumer, 300_000)
    await reserve(ledger_db, "job-2", parties.consumer, 700_000)

    consumer = await _account(ledger_db, parties.consumer)
    assert (consumer.balance_micro_usd, consumer.held_micro_usd) == (1_000_000, 1_000_000)
    assert consumer.available_micro_usd == 0
    assert await _hold_status(ledger_db, "job-1") == "held"
    await assert_books_balance(ledger_db)


async def test_an_unaffordable_hold_says_why_and_holds_nothing(
    ledger_db: Database, parties: Parties
) -> None:
    await reserve(ledger_db, "job-1", parties.consumer, 600_000)
    with pytest.raises(InsufficientFunds) as refused:
        await reserve(ledger_db, "job-2", parties.consumer, 400_001)

    assert (refused.value.needed_micro_usd, refused.value.available_micro_usd) == (400_001, 400_000)
    assert (await _account(ledger_db, parties.consumer)).held_micro_usd == 600_000
    assert await _hold_status(ledger_db, "job-2") is None
    await reserve(ledger_db, "job-3", parties.consumer, 400_000)  # exactly what is left


async def test_an_empty_account_cannot_reserve(ledger_db: Database) -> None:
    empty = await create_account(ledger_db, "empty")
    with pytest.raises(InsufficientFunds) as refused:
        await reserve(ledger_db, "job-1", empty.id, 1)
    assert (refused.value.needed_micro_usd, refused.value.available_micro_usd) == (1, 0)
    with pytest.raises(ValueError, match="negative"):
        await reserve(ledger_db, "job-2", empty.id, -1)
    assert await _counts(ledger_db) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("account_id", [PLATFORM_ACCOUNT_ID, EXTERNAL_ACCOUNT_ID, "nobody"])
async def test_only_people_can_reserve(ledger_db: Database, account_id: str) -> None:
    with pytest.raises(InsufficientFunds):
        await reserve(ledger_db, "job-1", account_id, 0)
    assert await _hold_status(ledger_db, "job-1") is None


async def test_a_provider_may_reserve_its_own_money(ledger_db: Database, parties: Parties) -> None:
    await deposit(ledger_db, parties.provider, 50_000)
    await reserve(ledger_db, "job-1", parties.provider, 50_000)

    provider = await _account(ledger_db, parties.provider)
    assert (provider.held_micro_usd, provider.withdrawable_micro_usd) == (50_000, 0)


async def test_settling_pays_provider_and_platform_exactly(
    ledger_db: Database, parties: Parties
) -> None:
    await reserve(ledger_db, "job-1", parties.consumer, 300_000)
    receipt = ReceiptRecord("job-1", parties.consumer, "provider-1", "{}", "sig", "key")
    settled = await settle(
        ledger_db,
        parties.job("job-1"),
        cost_micro_usd=123_457,
        platform_fee_bps=FEE_BPS,
        provider_account_id=parties.provider,
        receipt=receipt,
    )

    assert settled == Settlement("job-1", 300_000, 123_457, 117_285, 6_172)
    consumer = await _account(ledger_db, parties.consumer)
    assert (consumer.balance_micro_usd, consumer.held_micro_usd) == (876_543, 0)
    assert (await _account(ledger_db, parties.provider)).balance_micro_usd == 117_285
    assert (await _account(ledger_db, PLATFORM_ACCOUNT_ID)).balance_micro_usd == 6_172
    assert await find_receipt(ledger_db, "job-1", account_id=parties.consumer) == receipt
    [job] = await list_jobs(ledger_db)
    assert (job.id, job.charged_micro_usd) == ("job-1", 123_457)
    assert await _hold_status(ledger_db, "job-1") == "settled"
    await assert_books_balance(ledger_db)


async def test_a_charge_never_exceeds_the_hold(ledger_db: Database, parties: Parties) -> None:
    await reserve(ledger_db, "job-1", parties.consumer, 200_000)
    settled = await settle(
        ledger_db,
        parties.job("job-1"),
        cost_micro_usd=999_999,
        platform_fee_bps=1_234,
        provider_account_id=parties.provider,
    )

    assert settled == Settlement("job-1", 200_000, 200_000, 175_320, 24_680)
    assert (await _account(ledger_db, parties.consumer)).balance_micro_usd == 800_000
    await assert_books_balance(ledger_db)


async def test_without_a_provider_the_platform_keeps_everything(
    ledger_db: Database, parties: Parties
) -> None:
    await reserve(ledger_db, "job-1", parties.consumer, 10_000)
    settled = await settle(
        ledger_db,
        parties.job("job-1"),
        cost_micro_usd=9_999,
        platform_fee_bps=FEE_BPS,
        provider_account_id=None,
    )

    assert settled == Settlement("job-1", 10_000, 9_999, 0, 9_999)
    assert (await _account(ledger_db, PLATFORM_ACCOUNT_ID)).balance_micro_usd == 9_999
    assert (await _account(ledger_db, parties.provider)).balance_micro_usd == 0
    again = await settle(
        ledger_db,
        parties.job("job-1"),
        cost_micro_usd=1,
        platform_fee_bps=0,
        provider_account_id=parties.provider,
    )
    assert again == settled
    await assert_books_balance(ledger_db)


@pytest.mark.parametrize("status", ["completed", "cancelled", "failed"])
async def test_a_zero_cost_settlement_releases_the_whole_hold(
    ledger_db: Database, parties: Parties, status: str
) -> None:
    await reserve(ledger_db, "job-1", parties.consumer, 250_000)
    before = await _counts(ledger_db)
    settled = await settle(
        ledger_db,
        parties.job("job-1", status),
        cost_micro_usd=0,
        platform_fee_bps=FEE_BPS,
        provider_account_id=parties.provider,
    )

    assert settled == Settlement("job-1", 250_000, 0, 0, 0)
    assert await _hold_status(ledger_db, "job-1") == "settled"  # by this settlement, for 0
    consumer = await _account(ledger_db, parties.consumer)
    assert (consumer.balance_micro_usd, consumer.held_micro_usd) == (1_000_000, 0)
    assert await _counts(ledger_db) == (before[0], before[1], 1, 1, 0)  # no money moved
    assert [job.status for job in await list_jobs(ledger_db)] == [status]
    await assert_books_balance(ledger_db)


async def test_a_second_settlement_changes_nothing(ledger_db: Database, parties: Parties) -> None:
    await reserve(ledger_db, "job-1", parties.consumer, 300_000)
    first = await settle(
        ledger_db,
        parties.job("job-1"),
        cost_micro_usd=100_000,
        platform_fee_bps=FEE_BPS,
        provider_account_id=parties.provider,
    )
    counts, consumer = await _counts(ledger_db), await _account(ledger_db, parties.consumer)
    again = await settle(
        ledger_db,
        parties.job("job-1"),
        cost_micro_usd=300_000,
        platform_fee_bps=0,
        provider_account_id=parties.provider,
        receipt=ReceiptRecord("job-1", parties.consumer, "provider-1", "{}", "sig", "key"),
    )

    assert again == first == Settlement("job-1", 300_000, 100_000, 95_000, 5_000)
    assert await _counts(ledger_db) == counts
    assert await _account(ledger_db, parties.consumer) == consumer
    await assert_books_balance(ledger_db)


async def test_settling_without_a_hold_charges_nothing_and_stores_the_job_once(
    ledger_db: Database, parties: Parties
) -> None:
    for cost in (50_000, 70_000):
        settled = await settle(
            ledger_db,
            parties.job("job-1"),
            cost_micro_usd=cost,
            platform_fee_bps=FEE_BPS,
            provider_account_id=parties.provider,
        )
        assert settled == Settlement("job-1", 0, 0, 0, 0)

    assert [(j.id, j.charged_micro_usd) for j in await list_jobs(ledger_db)] == [("job-1", 0)]
    assert (await _account(ledger_db, parties.consumer)).balance_micro_usd == 1_000_000
    await assert_books_balance(ledger_db)


async def test_a_failed_receipt_undoes_the_whole_settlement(
    ledger_db: Database, parties: Parties
) -> None:
    receipt = ReceiptRecord("job-1", parties.consumer, "provider-1", "{}", "sig", "key")
    await store_receipt(ledger_db, receipt)  # a second receipt for the job cannot be stored
    await reserve(ledger_db, "job-1", parties.consumer, 300_000)
    before = await _counts(ledger_db)
    with pytest.raises(IntegrityError):
        await settle(
            ledger_db,
            parties.job("job-1"),
            cost_micro_usd=100_000,
            platform_fee_bps=FEE_BPS,
            provider_account_id=parties.provider,
            receipt=receipt,
        )

    assert await _counts(ledger_db) == before
    assert await _hold_status(ledger_db, "job-1") == "held"
    consumer = await _account(ledger_db, parties.consumer)
    assert (consumer.balance_micro_usd, consumer.held_micro_usd) == (1_000_000, 300_000)
    assert (await _account(ledger_db, parties.provider)).balance_micro_usd == 0


async def test_bad_settlement_arguments_are_refused(ledger_db: Database, parties: Parties) -> None:
    await reserve(ledger_db, "job-1", parties.consumer, 1_000)
    for cost, bps in ((-1, 0), (1, -1), (1, 10_001)):
        with pytest.raises(ValueError, match="fee"):
            await settle(
                ledger_db,
                parties.job("job-1"),
                cost_micro_usd=cost,
                platform_fee_bps=bps,
                provider_account_id=parties.provider,
            )
    assert await _hold_status(ledger_db, "job-1") == "held"


async def test_a_released_hold_is_given_back_and_then_charges_nothing(
    ledger_db: Database, parties: Parties
) -> None:
    await reserve(ledger_db, "job-1", parties.consumer, 400_000)
    assert await release(ledger_db, "job-1") is True
    assert await release(ledger_db, "job-1") is False
    assert await release(ledger_db, "never-reserved") is False
    consumer = await _account(ledger_db, parties.consumer)
    assert (consumer.balance_micro_usd, consumer.held_micro_usd) == (1_000_000, 0)

    for attempt in range(2):
        settled = await settle(
            ledger_db,
            parties.job("job-1"),
            cost_micro_usd=100_000,
            platform_fee_bps=FEE_BPS,
            provider_account_id=parties.provider,
        )
        assert settled == Settlement("job-1", 0, 0, 0, 0), attempt
    assert (await _account(ledger_db, parties.consumer)).balance_micro_usd == 1_000_000
    assert await _hold_status(ledger_db, "job-1") == "released"
    await assert_books_balance(ledger_db)


async def test_only_holds_whose_lease_ran_out_are_released(
    ledger_db: Database, parties: Parties
) -> None:
    for job_id in ("gone-1", "gone-2", "live"):
        await reserve(ledger_db, job_id, parties.consumer, 100_000, lease_s=60)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    async with ledger_db.sessions.begin() as session:  # old, yet leased: age alone is nothing
        await session.execute(update(Hold).values(created_at=an_hour_ago - timedelta(days=9)))
        await session.execute(
            update(Hold).where(Hold.job_id.like("gone-%")).values(lease_expires_at=an_hour_ago)
        )

    assert await release_expired(ledger_db) == 2
    assert await release_expired(ledger_db) == 0
    assert [await _hold_status(ledger_db, j) for j in ("gone-1", "gone-2", "live")] == [
        "released",
        "released",
        "held",
    ]
    await assert_books_balance(ledger_db)


async def test_a_renewed_lease_keeps_its_hold(ledger_db: Database, parties: Parties) -> None:
    await reserve(ledger_db, "long-job", parties.consumer, 100_000, lease_s=1)
    await reserve(ledger_db, "settled", parties.consumer, 100_000, lease_s=1)
    await settle(
        ledger_db,
        parties.job("settled"),
        cost_micro_usd=0,
        platform_fee_bps=FEE_BPS,
        provider_account_id=parties.provider,
    )
    assert await renew_leases(ledger_db, ["long-job", "settled"], lease_s=3600) == 1
    later = datetime.now(UTC) + timedelta(minutes=30)
    assert await release_expired(ledger_db, now=later) == 0
    assert await _hold_status(ledger_db, "long-job") == "held"
    assert await release_expired(ledger_db, now=later + timedelta(hours=1)) == 1
    assert await _hold_status(ledger_db, "long-job") == "released"
    assert await _hold_status(ledger_db, "settled") == "settled"
    assert (await _account(ledger_db, parties.consumer)).held_micro_usd == 0
    await assert_books_balance(ledger_db)


async def test_concurrent_holds_never_overdraw(ledger_db: Database, parties: Parties) -> None:
    async def attempt(n: int) -> bool:
        try:
            await reserve(ledger_db, f"job-{n}", parties.consumer, 300_000)
        except InsufficientFunds:
            return False
        return True

    taken = await asyncio.gather(*(attempt(n) for n in range(8)))

    assert sum(taken) == 3
    assert (await _account(ledger_db, parties.consumer)).held_micro_usd == 900_000
    await assert_books_balance(ledger_db)


def count_account_updates(db: Database) -> list[Any]:
    """The parameters of every UPDATE of an account row `db` runs from now on: one entry
    per row updated (a statement run for several rows at once counts each)."""
    updated: list[Any] = []

    def seen(
        _conn: object,
        _cursor: object,
        statement: str,
        parameters: Any,
        _context: object,
        many: bool,
    ) -> None:
        if statement.lstrip().upper().startswith("UPDATE ACCOUNTS"):
            updated.extend(parameters if many else [parameters])

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    return updated


async def test_a_batch_settles_each_job_exactly_and_moves_each_account_once(
    ledger_db: Database, parties: Parties
) -> None:
    other = await create_key(ledger_db, account_name="other consumer")
    await deposit(ledger_db, other.account_id, 1_000_000)
    costs = [0, 1, 19, 20, 21, 99_999, 123_457, 300_001]
    bills = []
    for n, cost in enumerate(costs):
        payer = (parties.consumer, parties.key_id) if n % 2 else (other.account_id, other.key_id)
        await reserve(ledger_db, f"job-{n}", payer[0], 100_000 + n)
        provider = None if n == 3 else parties.provider
        bills.append(JobBill(finished_job(*payer, f"job-{n}"), cost, 1_234, provider))
    bills.append(JobBill(parties.job("no-hold"), 5_000, 1_234, parties.provider))
    updates = count_account_updates(ledger_db)

    settled = await settle_all(ledger_db, bills)

    expected = []
    for n, cost in enumerate(costs):
        charged = min(cost, 100_000 + n)
        fee = charged if n == 3 else charged * 1_234 // 10_000
        expected.append(Settlement(f"job-{n}", 100_000 + n, charged, charged - fee, fee))
    assert settled == [*expected, Settlement("no-hold", 0, 0, 0, 0)]
    # Two consumers, the provider and the platform: one UPDATE each for the whole batch.
    assert len(updates) == 4
    charged_by = {parties.consumer: 0, other.account_id: 0}
    for n, s in enumerate(expected):
        charged_by[parties.consumer if n % 2 else other.account_id] += s.charged_micro_usd
    for account_id, charged in charged_by.items():
        account = await _account(ledger_db, account_id)
        assert (account.balance_micro_usd, account.held_micro_usd) == (1_000_000 - charged, 0)
    provider_total = sum(s.provider_share_micro_usd for s in expected)
    platform_total = sum(s.platform_fee_micro_usd for s in expected)
    assert (await _account(ledger_db, parties.provider)).balance_micro_usd == provider_total
    assert (await _account(ledger_db, PLATFORM_ACCOUNT_ID)).balance_micro_usd == platform_total
    assert provider_total + platform_total == sum(charged_by.values())
    jobs = {j.id: j.charged_micro_usd for j in await list_jobs(ledger_db)}
    assert jobs == {s.job_id: s.charged_micro_usd for s in [*expected, settled[-1]]}
    async with ledger_db.sessions() as session:  # one ledger transaction per charged job
        rows = await session.scalars(
            select(LedgerTransaction.job_id).where(LedgerTransaction.kind == "settlement")
        )
        assert sorted(rows.all()) == sorted(s.job_id for s in expected if s.charged_micro_usd)
    await assert_books_balance(ledger_db)


async def test_a_job_twice_in_a_batch_or_settled_before_it_is_charged_once(
    ledger_db: Database, parties: Parties
) -> None:
    for job_id in ("earlier", "twice", "fresh"):
        await reserve(ledger_db, job_id, parties.consumer, 100_000)
    first = await settle(
        ledger_db,
        parties.job("earlier"),
        cost_micro_usd=40_000,
        platform_fee_bps=FEE_BPS,
        provider_account_id=parties.provider,
    )
    receipt = ReceiptRecord("twice", parties.consumer, "provider-1", "{}", "sig", "key")

    settled = await settle_all(
        ledger_db,
        [
            JobBill(parties.job("twice"), 30_000, FEE_BPS, parties.provider, receipt),
            JobBill(parties.job("earlier"), 90_000, 0, parties.provider),
            JobBill(parties.job("twice"), 70_000, 0, None, receipt),
            JobBill(parties.job("fresh"), 10_000, FEE_BPS, parties.provider),
        ],
    )

    twice = Settlement("twice", 100_000, 30_000, 28_500, 1_500)
    fresh = Settlement("fresh", 100_000, 10_000, 9_500, 500)
    assert first == Settlement("earlier", 100_000, 40_000, 38_000, 2_000)
    assert settled == [twice, first, twice, fresh]
    consumer = await _account(ledger_db, parties.consumer)
    assert (consumer.balance_micro_usd, consumer.held_micro_usd) == (920_000, 0)
    assert (await _account(ledger_db, parties.provider)).balance_micro_usd == 76_000
    assert (await _account(ledger_db, PLATFORM_ACCOUNT_ID)).balance_micro_usd == 4_000
    assert await find_receipt(ledger_db, "twice", account_id=parties.consumer) == receipt
    again = await settle_all(ledger_db, [JobBill(parties.job("fresh"), 1, 0, None)])
    assert again == [fresh]
    assert (await _account(ledger_db, parties.consumer)).balance_micro_usd == 920_000
    await assert_books_balance(ledger_db)


async def test_one_refused_job_undoes_its_whole_batch(
    ledger_db: Database, parties: Parties
) -> None:
    receipt = ReceiptRecord("job-2", parties.consumer, "provider-1", "{}", "sig", "key")
    await store_receipt(ledger_db, receipt)
    for job_id in ("job-1", "job-2"):
        await reserve(ledger_db, job_id, parties.consumer, 100_000)
    before = await _counts(ledger_db)

    with pytest.raises(IntegrityError):
        await settle_all(
            ledger_db,
            [
                JobBill(parties.job("job-1"), 50_000, FEE_BPS, parties.provider),
                JobBill(parties.job("job-2"), 50_000, FEE_BPS, parties.provider, receipt),
            ],
        )

    assert await _counts(ledger_db) == before
    assert [await _hold_status(ledger_db, j) for j in ("job-1", "job-2")] == ["held", "held"]
    consumer = await _account(ledger_db, parties.consumer)
    assert (consumer.balance_micro_usd, consumer.held_micro_usd) == (1_000_000, 200_000)
    assert await settle_all(ledger_db, []) == []
