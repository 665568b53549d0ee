"""A replica that dies mid-job: the tally it kept beside the job's hold lease is settled
exactly once by a survivor once the lease runs out, on SQLite and PostgreSQL, while holds
of jobs that left no tally are given back whole, and a renewed (live) hold is left alone."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from moonflower.coordinator.billing import Pricing
from moonflower.coordinator.leases import HoldLeases
from moonflower.coordinator.limits import RateLimits
from moonflower.coordinator.lost_jobs import LOST_CODE, LeaseTally, settle_lost
from moonflower.coordinator.settler import Settler
from moonflower.ledger.accounts import create_account, get_account
from moonflower.ledger.billing import reserve
from moonflower.ledger.book import deposit
from moonflower.ledger.database import Database
from moonflower.ledger.jobs import JobRecord
from moonflower.ledger.keys import create_key
from moonflower.ledger.tables import Hold, Job
from moonflower.settings import CoordinatorSettings, PriceSetting
from tests.ledger.test_book import assert_books_balance

SETTINGS = CoordinatorSettings(
    default_price=PriceSetting(input=1_000_000, output=2_000_000),
    minimum_charge_micro_usd=0,
    platform_fee_percent=10,
)
"""A prompt token costs 1 µUSD, a completion token 2 µUSD; the platform keeps 10 %."""


def survivor(db: Database) -> tuple[HoldLeases, functools.partial[object]]:
    """Another replica's leases and the settling it sweeps with."""
    leases = HoldLeases(db, lease_s=60)
    settler = Settler(db, Pricing(db, SETTINGS), leases, RateLimits(None, None))
    return leases, functools.partial(settle_lost, settler)


async def expire_every_lease(db: Database) -> None:
    async with db.sessions.begin() as session:
        await session.execute(
            update(Hold).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def tally(job_id: str, account_id: str, key_id: str, provider: str) -> LeaseTally:
    record = JobRecord(
        id=job_id,
        account_id=account_id,
        key_id=key_id,
        model="m",
        provider_id="provider-session",
        status="failed",
        finish_reason=None,
        prompt_tokens=30,
        completion_tokens=50,
        created_at=datetime.now(UTC),
        first_token_ms=12,
        duration_ms=900,
        error_code=LOST_CODE,
        billed_prompt_tokens=30,
        billed_completion_tokens=40,
    )
    return LeaseTally(record, provider)


async def test_a_dead_replicas_job_is_settled_once_from_its_last_tally(
    ledger_db: Database,
) -> None:
    key = await create_key(ledger_db, account_name="consumer")
    provider = await create_account(ledger_db, "provider", kind="provider")
    await deposit(ledger_db, key.account_id, 1_000_000)
    owner = HoldLeases(ledger_db, lease_s=60)
    for job_id in ("running", "queued"):
        await reserve(ledger_db, job_id, key.account_id, 500_000, lease_s=60)
        owner.keep(job_id)
    text = tally("running", key.account_id, key.key_id, provider.id).to_text()
    owner.follow("running", lambda: text)
    owner.follow("queued", lambda: None)  # no output yet: nothing to pay for
    assert await owner.renew() == 2
    await expire_every_lease(ledger_db)  # the owner died: nobody renews

    cost = 30 * 1 + 40 * 2
    for _ in range(2):  # two survivors sweeping: the job is settled once
        leases, settle = survivor(ledger_db)
        await leases.release_expired(settle)

    async with ledger_db.sessions() as session:
        holds = {h.job_id: h.status for h in (await session.scalars(select(Hold))).all()}
        job = await session.get(Job, "running")
    assert holds == {"running": "settled", "queued": "released"}
    assert job is not None and job.error_code == LOST_CODE and job.status == "failed"
    assert (job.billed_prompt_tokens, job.billed_completion_tokens) == (30, 40)
    assert job.charged_micro_usd == cost
    consumer = await get_account(ledger_db, key.account_id)
    assert (consumer.balance_micro_usd, consumer.held_micro_usd) == (1_000_000 - cost, 0)
    earned = await get_account(ledger_db, provider.id)
    assert earned.balance_micro_usd == cost - cost // 10
    await assert_books_balance(ledger_db)


async def test_a_live_replicas_renewed_hold_is_not_settled_by_others(
    ledger_db: Database,
) -> None:
    key = await create_key(ledger_db, account_name="consumer")
    provider = await create_account(ledger_db, "provider", kind="provider")
    await deposit(ledger_db, key.account_id, 1_000_000)
    owner = HoldLeases(ledger_db, lease_s=60)
    await reserve(ledger_db, "alive", key.account_id, 500_000, lease_s=60)
    owner.keep("alive")
    text = tally("alive", key.account_id, key.key_id, provider.id).to_text()
    owner.follow("alive", lambda: text)
    await owner.renew()
    leases, settle = survivor(ledger_db)
    await leases.release_expired(settle)
    async with ledger_db.sessions() as session:
        hold = await session.get(Hold, "alive")
    assert hold is not None and hold.status == "held" and hold.tally == text


def test_a_tally_reads_back_as_written() -> None:
    written = tally("j", "a", "k", "p")
    assert LeaseTally.from_text(written.to_text()) == written
