"""The settler on a real database (SQLite and PostgreSQL): concurrent settlements are written
in batches, each job exactly as alone and once however often it is ordered; a batch the
database refuses is split and retried, one it cannot reach is retried whole, and neither
loses or doubles a charge."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest
from sqlalchemy import delete, make_url

from moonflower.coordinator.billing import Pricing
from moonflower.coordinator.leases import HoldLeases
from moonflower.coordinator.limits import RateLimits
from moonflower.coordinator.settlement import Decision, Verdict
from moonflower.coordinator.settler import MAX_BATCH, RETRY_FIRST_S, SettlementOrder, Settler
from moonflower.generation import Usage
from moonflower.ledger import billing
from moonflower.ledger.accounts import PLATFORM_ACCOUNT_ID, create_account, get_account
from moonflower.ledger.billing import Settlement, reserve
from moonflower.ledger.book import deposit
from moonflower.ledger.database import Database, default_database_url
from moonflower.ledger.jobs import list_jobs
from moonflower.ledger.keys import CreatedKey, create_key
from moonflower.ledger.receipts import ReceiptRecord, store_receipt
from moonflower.ledger.tables import StoredReceipt
from moonflower.settings import CoordinatorSettings
from tests.ledger.test_billing import finished_job
from tests.ledger.test_book import assert_books_balance

DEPOSIT = 10_000_000
SETTINGS = CoordinatorSettings()


@dataclasses.dataclass
class Rig:
    db: Database
    leases: HoldLeases
    batches: list[int]
    """The size of every batch written, in order."""
    landed: set[str] = dataclasses.field(default_factory=set)
    """The jobs of every batch that was written down."""
    progress: asyncio.Condition = dataclasses.field(default_factory=asyncio.Condition)

    async def until_landed(self, job_ids: set[str]) -> None:
        async with self.progress:
            await asyncio.wait_for(self.progress.wait_for(lambda: job_ids <= self.landed), 30)

    def settler(
        self,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_batch: int = MAX_BATCH,
    ) -> Settler:
        pricing = Pricing(self.db, SETTINGS)
        limits = RateLimits(None, None)
        return Settler(self.db, pricing, self.leases, limits, sleep=sleep, max_batch=max_batch)


def watched(db: Database, monkeypatch: pytest.MonkeyPatch) -> Rig:
    """A rig on `db` that sees every batch the settler writes."""
    rig = Rig(db, HoldLeases(db, 120.0), [])
    settle_all = billing.settle_all

    async def counted(db: Database, bills: Sequence[billing.JobBill]) -> list[Settlement]:
        rig.batches.append(len(bills))
        settled = await settle_all(db, bills)
        async with rig.progress:
            rig.landed.update(s.job_id for s in settled)
            rig.progress.notify_all()
        return settled

    monkeypatch.setattr(billing, "settle_all", counted)
    return rig


@pytest.fixture
def rig(ledger_db: Database, monkeypatch: pytest.MonkeyPatch) -> Rig:
    return watched(ledger_db, monkeypatch)


async def payers(db: Database, count: int) -> list[CreatedKey]:
    keys = [await create_key(db, account_name=f"payer-{n}") for n in range(count)]
    for key in keys:
        await deposit(db, key.account_id, DEPOSIT)
    return keys


def order(
    payer: CreatedKey,
    job_id: str,
    billed: Usage | None,
    provider_account_id: str | None,
    receipt: ReceiptRecord | None = None,
) -> SettlementOrder:
    decision = Decision(billed, Verdict.SERVED if billed else Verdict.NONE, "test")
    record = finished_job(payer.account_id, payer.key_id, job_id)
    return SettlementOrder(record, decision, provider_account_id, receipt)


def expected(job_id: str, hold: int, billed: Usage | None, paid: bool) -> Settlement:
    """What one job settles for alone, worked out from the price list by hand."""
    prices = SETTINGS.default_price
    cost = 0
    if billed is not None:
        exact = billed.prompt_tokens * prices.input + billed.completion_tokens * prices.output
        cost = max(exact // 1_000_000, SETTINGS.minimum_charge_micro_usd)
    charged = min(cost, hold)
    fee = charged * 500 // 10_000 if paid else charged  # 5 %; unpaid: the platform's
    return Settlement(job_id, hold, charged, charged - fee, fee)


async def balance(db: Database, account_id: str) -> tuple[int, int]:
    account = await get_account(db, account_id)
    return account.balance_micro_usd, account.held_micro_usd


@pytest.mark.parametrize("max_batch", [MAX_BATCH, 7])
async def test_concurrent_settlements_are_batched_and_each_is_exact(
    rig: Rig, max_batch: int
) -> None:
    keys = await payers(rig.db, 5)
    providers = [(await create_account(rig.db, f"p{n}", kind="provider")).id for n in range(3)]
    orders, settlements = [], []
    for n in range(120):
        payer, job_id = keys[n % 5], f"job-{n}"
        hold = 1_000 + 997 * n
        billed = None if n % 11 == 0 else Usage(prompt_tokens=3 * n, completion_tokens=n * n)
        provider = None if n % 13 == 0 else providers[n % 3]
        await reserve(rig.db, job_id, payer.account_id, hold)
        rig.leases.keep(job_id)
        orders.append(order(payer, job_id, billed, provider))
        settlements.append(expected(job_id, hold, billed, provider is not None))
    settler = rig.settler(max_batch=max_batch)

    results = await asyncio.gather(*(settler.settle(o) for o in orders))

    assert list(results) == settlements
    assert sum(rig.batches) == 120 and len(rig.batches) < 120
    assert 1 < max(rig.batches) <= max_batch
    assert (settler.pending, len(rig.leases)) == (0, 0)
    for n, key in enumerate(keys):
        charged = sum(s.charged_micro_usd for s in settlements[n::5])
        assert await balance(rig.db, key.account_id) == (DEPOSIT - charged, 0)
    for n, provider in enumerate(providers):
        mine = [
            s for o, s in zip(orders, settlements, strict=True) if o.provider_account_id == provider
        ]
        earned = sum(s.provider_share_micro_usd for s in mine)
        assert await balance(rig.db, provider) == (earned, 0), n
    fees = sum(s.platform_fee_micro_usd for s in settlements)
    assert await balance(rig.db, PLATFORM_ACCOUNT_ID) == (fees, 0)
    jobs = {job.id: job.charged_micro_usd for job in await list_jobs(rig.db, limit=1000)}
    assert jobs == {s.job_id: s.charged_micro_usd for s in settlements}
    await assert_books_balance(rig.db)  # every transaction sums to zero, so does all money


async def test_a_job_ordered_twice_in_a_batch_across_batches_or_settlers_is_charged_once(
    rig: Rig,
) -> None:
    [payer] = await payers(rig.db, 1)
    provider = (await create_account(rig.db, "p", kind="provider")).id
    billed = Usage(prompt_tokens=1_000, completion_tokens=2_000)
    for job_id in ("before", "twice", "fresh"):
        await reserve(rig.db, job_id, payer.account_id, 100_000)
    settler = rig.settler()
    before = await settler.settle(order(payer, "before", billed, provider))
    cheaper = order(payer, "twice", Usage(prompt_tokens=1, completion_tokens=1), None)

    first = await asyncio.gather(
        settler.settle(order(payer, "twice", billed, provider)),
        settler.settle(cheaper),
        settler.settle(order(payer, "before", billed, None)),
        settler.settle(order(payer, "fresh", billed, provider)),
    )
    elsewhere = rig.settler()  # another coordinator, or this one after a restart
    again = await asyncio.gather(
        elsewhere.settle(order(payer, "fresh", billed, None)),
        elsewhere.settle(cheaper),
        settler.settle(order(payer, "before", billed, provider)),
    )

    one = expected("", 100_000, billed, paid=True)
    assert one.charged_micro_usd == 450  # 1,000 at 0.05 and 2,000 at 0.2
    twice, fresh = (Settlement(j, *dataclass_values(one)) for j in ("twice", "fresh"))
    assert before == Settlement("before", *dataclass_values(one))
    assert list(first) == [twice, twice, before, fresh]
    assert list(again) == [fresh, twice, before]
    # The duplicate never reached the database; each settler wrote its own batch.
    assert rig.batches[:2] == [1, 3] and sorted(rig.batches[2:]) == [1, 2]
    assert await balance(rig.db, payer.account_id) == (DEPOSIT - 3 * 450, 0)
    assert await balance(rig.db, provider) == (3 * one.provider_share_micro_usd, 0)
    assert await balance(rig.db, PLATFORM_ACCOUNT_ID) == (3 * one.platform_fee_micro_usd, 0)
    assert len(await list_jobs(rig.db)) == 3
    await assert_books_balance(rig.db)


def dataclass_values(settlement: Settlement) -> tuple[int, int, int, int]:
    return (
        settlement.reserved_micro_usd,
        settlement.charged_micro_usd,
        settlement.provider_share_micro_usd,
        settlement.platform_fee_micro_usd,
    )


class HeldSleep:
    """A stand-in for `asyncio.sleep` that records each wait and returns at once, until a
    wait reaches `hold_at_s`: that one parks (setting `parked`) until `resume` is set."""

    def __init__(self, hold_at_s: float) -> None:
        self.waits: list[float] = []
        self.hold_at_s = hold_at_s
        self.parked = asyncio.Event()
        self.resume = asyncio.Event()

    async def __call__(self, delay_s: float) -> None:
        self.waits.append(delay_s)
        if delay_s >= self.hold_at_s:
            self.parked.set()
            await self.resume.wait()
        await asyncio.sleep(0)


async def test_a_refused_batch_is_split_and_retried_without_losing_or_doubling_a_charge(
    rig: Rig,
) -> None:
    [payer] = await payers(rig.db, 1)
    provider = (await create_account(rig.db, "p", kind="provider")).id
    billed = Usage(prompt_tokens=1_000, completion_tokens=2_000)
    job_ids = [f"job-{n}" for n in range(5)]
    for job_id in job_ids:
        await reserve(rig.db, job_id, payer.account_id, 100_000)
        rig.leases.keep(job_id)
    # Another coordinator already stored a receipt for job-2: its insert is refused.
    receipt = ReceiptRecord("job-2", payer.account_id, "provider-1", "{}", "sig", "key")
    await store_receipt(rig.db, receipt)
    orders = [order(payer, j, billed, provider, receipt if j == "job-2" else None) for j in job_ids]
    sleep = HeldSleep(hold_at_s=4 * RETRY_FIRST_S)
    settler = rig.settler(sleep=sleep)

    first = await asyncio.gather(*(settler.settle(o) for o in orders))

    assert list(first) == [None] * 5  # their first attempt failed; callers wait no longer
    await asyncio.wait_for(sleep.parked.wait(), 30)
    await rig.until_landed({"job-0", "job-1", "job-3", "job-4"})
    # The others landed one by one; job-2 was refused twice more and waits its third turn.
    assert rig.batches[0] == 5 and rig.batches[1:] == [1] * 6
    assert (settler.pending, len(rig.leases), "job-2" in rig.leases) == (1, 1, True)
    assert await balance(rig.db, payer.account_id) == (DEPOSIT - 4 * 450, 100_000)
    async with rig.db.sessions.begin() as session:  # the conflict goes away
        await session.execute(delete(StoredReceipt))
    sleep.resume.set()
    await settler.drain(30)

    assert settler.pending == 0
    assert sorted(sleep.waits) == [RETRY_FIRST_S] * 5 + [2 * RETRY_FIRST_S, 4 * RETRY_FIRST_S]
    one = expected("job-0", 100_000, billed, paid=True)
    assert await settler.settle(orders[2]) == Settlement("job-2", *dataclass_values(one))
    assert await balance(rig.db, payer.account_id) == (DEPOSIT - 5 * 450, 0)
    assert await balance(rig.db, provider) == (5 * one.provider_share_micro_usd, 0)
    assert await balance(rig.db, PLATFORM_ACCOUNT_ID) == (5 * one.platform_fee_micro_usd, 0)
    assert sorted(job.id for job in await list_jobs(rig.db)) == job_ids
    await assert_books_balance(rig.db)


async def test_a_batch_that_cannot_reach_the_database_is_retried_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database_url = default_database_url(tmp_path / "data")
    async with await Database.open(database_url, timeout_s=0.2) as db:
        rig = watched(db, monkeypatch)
        [payer] = await payers(db, 1)
        billed = Usage(prompt_tokens=1_000, completion_tokens=2_000)
        for n in range(4):
            await reserve(db, f"job-{n}", payer.account_id, 100_000)
        database = make_url(database_url).database
        assert database is not None
        other = sqlite3.connect(database, isolation_level=None)  # another writer holds the lock
        other.execute("BEGIN IMMEDIATE")
        waits: list[float] = []

        async def sleep(delay_s: float) -> None:
            waits.append(delay_s)
            if len(waits) == 2:
                other.execute("ROLLBACK")  # the lock is free again
            await asyncio.sleep(0)

        settler = rig.settler(sleep=sleep)
        try:
            first = await asyncio.gather(
                *(settler.settle(order(payer, f"job-{n}", billed, None)) for n in range(4))
            )
            await settler.drain(30)
        finally:
            other.close()

        assert list(first) == [None] * 4
        assert (rig.batches, waits) == ([4, 4, 4], [RETRY_FIRST_S, 2 * RETRY_FIRST_S])
        assert settler.pending == 0
        assert await balance(db, payer.account_id) == (DEPOSIT - 4 * 450, 0)
        assert await balance(db, PLATFORM_ACCOUNT_ID) == (4 * 450, 0)
        await assert_books_balance(db)
