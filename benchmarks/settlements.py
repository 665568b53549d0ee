"""Settlements per second on the ledger: SQLite (a file, WAL) and a real PostgreSQL server.

Two measurements per backend and concurrency level, each on a freshly migrated database:
"reserve + settle" (a job's whole money path: take a hold, then pay provider and platform)
and "settle" alone (holds taken beforehand, untimed). `--concurrency` asyncio tasks share
the work; each task bills its own consumer account and every job pays the same provider and
platform accounts, as a busy coordinator would. Each measurement stops after `--jobs` jobs or
`--max-seconds`, whichever comes first, and the books are checked afterwards.

Then batching, side by side on each backend at each `--batch-concurrency` level: settling
held jobs one transaction each (`billing.settle`, that many at once), through the
coordinator's `Settler` with batching disabled (`max_batch=1`), and through the `Settler`
batching (the orders that arrive while a write is in flight go in the next transaction).
Every caller waits for its own settlement, as a finishing request does. Each stops after
`--batch-jobs` jobs or `--batch-max-seconds`.

Results are printed as tables and written to `benchmarks/results/settlements.json`. Usage:

    .venv/bin/python -m benchmarks.settlements [--jobs 1000] [--concurrency 1 8]
        [--batch-jobs 3000] [--batch-concurrency 1 8 64 256]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, update

from benchmarks.results import Run
from moonflower.coordinator.billing import Pricing
from moonflower.coordinator.leases import HoldLeases
from moonflower.coordinator.limits import RateLimits
from moonflower.coordinator.settlement import Decision, Verdict
from moonflower.coordinator.settler import MAX_BATCH, SettlementOrder, Settler
from moonflower.generation import Usage
from moonflower.ledger.accounts import PLATFORM_ACCOUNT_ID, create_account, get_account
from moonflower.ledger.billing import reserve, settle
from moonflower.ledger.book import deposit
from moonflower.ledger.database import Database, default_database_url
from moonflower.ledger.jobs import JobRecord
from moonflower.ledger.keys import CreatedKey, create_key
from moonflower.ledger.tables import Account, Hold
from moonflower.settings import CoordinatorSettings
from tests.support.postgres import running_postgres

HOLD = 10_000
COST = 7_000
FEE_BPS = 500
FEE = COST * FEE_BPS // 10_000
BILLED = Usage(prompt_tokens=0, completion_tokens=35_000)
"""What the Settler's orders bill: COST at the default price list (0.2 micro-USD a token)."""
SETTLING = ("one_per_transaction", "settler_unbatched", "settler_batched")


@dataclass(frozen=True, slots=True)
class Ledger:
    db: Database
    payers: list[CreatedKey]
    provider_id: str


def job_record(payer: CreatedKey, job_id: str) -> JobRecord:
    return JobRecord(
        id=job_id,
        account_id=payer.account_id,
        key_id=payer.key_id,
        model="bench",
        provider_id="bench-provider",
        status="completed",
        finish_reason="stop",
        prompt_tokens=100,
        completion_tokens=200,
        created_at=datetime.now(UTC),
        first_token_ms=10,
        duration_ms=100,
        error_code=None,
    )


async def open_ledger(url: str, payers: int) -> Ledger:
    db = await Database.open(url)
    keys = [await create_key(db, account_name=f"payer-{n}") for n in range(payers)]
    for key in keys:
        await deposit(db, key.account_id, 10**12)
    provider = await create_account(db, "provider", kind="provider")
    return Ledger(db, keys, provider.id)


async def pay(ledger: Ledger, payer: CreatedKey, job_id: str) -> None:
    await settle(
        ledger.db,
        job_record(payer, job_id),
        cost_micro_usd=COST,
        platform_fee_bps=FEE_BPS,
        provider_account_id=ledger.provider_id,
    )


async def run_workers(
    ledger: Ledger,
    jobs: int,
    max_seconds: float,
    work: Callable[[CreatedKey, int], Awaitable[None]],
) -> tuple[int, float]:
    """Run `work` for job numbers 0.. on one task per payer; return (jobs done, seconds)."""
    numbers = itertools.count()
    deadline = time.perf_counter() + max_seconds
    done = 0

    async def worker(payer: CreatedKey) -> None:
        nonlocal done
        while (n := next(numbers)) < jobs and time.perf_counter() < deadline:
            await work(payer, n)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(payer) for payer in ledger.payers))
    return done, time.perf_counter() - start


async def measure(url: str, concurrency: int, jobs: int, max_seconds: float) -> tuple[float, float]:
    """(reserve+settle per second, settle per second) on the database at `url`."""
    ledger = await open_ledger(url, concurrency)
    try:

        async def reserve_and_settle(payer: CreatedKey, n: int) -> None:
            await reserve(ledger.db, f"pair-{n}", payer.account_id, HOLD)
            await pay(ledger, payer, f"pair-{n}")

        pairs, pair_seconds = await run_workers(ledger, jobs, max_seconds, reserve_and_settle)
        for n in range(jobs):  # untimed: the holds the second measurement settles
            await reserve(ledger.db, f"only-{n}", ledger.payers[n % concurrency].account_id, HOLD)

        async def settle_only(_worker: CreatedKey, n: int) -> None:
            await pay(ledger, ledger.payers[n % concurrency], f"only-{n}")

        settled, settle_seconds = await run_workers(ledger, jobs, max_seconds, settle_only)
        platform = await get_account(ledger.db, PLATFORM_ACCOUNT_ID)
        provider = await get_account(ledger.db, ledger.provider_id)
        assert platform.balance_micro_usd == (pairs + settled) * FEE
        assert provider.balance_micro_usd == (pairs + settled) * (COST - FEE)
    finally:
        await ledger.db.close()
    return pairs / pair_seconds, settled / settle_seconds


async def hold_all(ledger: Ledger, job_ids: list[str]) -> None:
    """Holds of HOLD for `job_ids`, on the payers in turn, written in one transaction: the
    setup of a measurement (untimed), as `reserve` would leave them."""
    now = datetime.now(UTC)
    payers = [ledger.payers[n % len(ledger.payers)].account_id for n in range(len(job_ids))]
    async with ledger.db.sessions.begin() as session:
        await session.execute(
            insert(Hold),
            [
                {
                    "job_id": job_id,
                    "account_id": payer,
                    "amount_micro_usd": HOLD,
                    "status": "held",
                    "created_at": now,
                    "lease_expires_at": now + timedelta(hours=1),
                }
                for job_id, payer in zip(job_ids, payers, strict=True)
            ],
        )
        for payer, count in sorted(Counter(payers).items()):
            await session.execute(
                update(Account)
                .where(Account.id == payer)
                .values(held_micro_usd=Account.held_micro_usd + count * HOLD)
            )


def settler(ledger: Ledger, max_batch: int) -> Settler:
    """The coordinator's settler on `ledger`, at the default prices, with no rate limits."""
    pricing = Pricing(ledger.db, CoordinatorSettings())
    leases = HoldLeases(ledger.db, 120.0)
    return Settler(ledger.db, pricing, leases, RateLimits(None, None), max_batch=max_batch)


def settling(ledger: Ledger, mode: str) -> Callable[[CreatedKey, int], Awaitable[None]]:
    """How `mode` (one of SETTLING) settles held job number n."""
    if mode == "one_per_transaction":
        return lambda payer, n: pay(ledger, payer, f"{mode}-{n}")
    writer = settler(ledger, 1 if mode == "settler_unbatched" else MAX_BATCH)
    decision = Decision(BILLED, Verdict.SERVED, "benchmark")

    async def through_settler(payer: CreatedKey, n: int) -> None:
        record = job_record(payer, f"{mode}-{n}")
        settled = await writer.settle(SettlementOrder(record, decision, ledger.provider_id, None))
        if settled is None or settled.charged_micro_usd != COST:
            raise AssertionError(f"job {n} settled as {settled}")

    return through_settler


async def compare_batching(
    url: str, concurrency: int, jobs: int, max_seconds: float
) -> dict[str, float]:
    """Settlements per second of each of SETTLING on the database at `url`."""
    ledger = await open_ledger(url, concurrency)
    rates: dict[str, float] = {}
    total = 0
    try:
        for mode in SETTLING:
            await hold_all(ledger, [f"{mode}-{n}" for n in range(jobs)])
            done, seconds = await run_workers(ledger, jobs, max_seconds, settling(ledger, mode))
            rates[mode] = done / seconds
            total += done
        platform = await get_account(ledger.db, PLATFORM_ACCOUNT_ID)
        provider = await get_account(ledger.db, ledger.provider_id)
        assert platform.balance_micro_usd == total * FEE
        assert provider.balance_micro_usd == total * (COST - FEE)
    finally:
        await ledger.db.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-seconds", type=float, default=30.0, help="per measurement")
    parser.add_argument("--batch-jobs", type=int, default=3000, help="jobs per batching run")
    parser.add_argument("--batch-concurrency", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--batch-max-seconds", type=float, default=10.0, help="per batching run")
    args = parser.parse_args()
    run = Run.start("settlements")

    rows = []
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        server = stack.enter_context(running_postgres())
        for concurrency in args.concurrency:
            urls = {
                "sqlite": default_database_url(scratch / f"c{concurrency}"),
                "postgresql": server.create_database(),
            }
            for backend, url in urls.items():
                rates = asyncio.run(measure(url, concurrency, args.jobs, args.max_seconds))
                rows.append((backend, concurrency, *rates))
        batching = []
        for concurrency in args.batch_concurrency:
            urls = {
                "sqlite": default_database_url(scratch / f"batch-c{concurrency}"),
                "postgresql": server.create_database(),
            }
            for backend, url in urls.items():
                compared = asyncio.run(
                    compare_batching(url, concurrency, args.batch_jobs, args.batch_max_seconds)
                )
                row = {f"{mode}_per_s": round(rate, 1) for mode, rate in compared.items()}
                batching.append({"backend": backend, "concurrency": concurrency, **row})

    print(f"{args.jobs} jobs per measurement (at most {args.max_seconds:g} s each)\n")
    print("| backend | concurrency | reserve + settle / s | settle / s |")
    print("|---|---|---|---|")
    for backend, concurrency, pairs, settles in rows:
        print(f"| {backend} | {concurrency} | {pairs:.0f} | {settles:.0f} |")
    print(f"\nsettle / s, {args.batch_jobs} held jobs per run ", end="")
    print(f"(at most {args.batch_max_seconds:g} s each)\n")
    print("| backend | concurrency | one transaction each | Settler unbatched | Settler batched |")
    print("|---|---|---|---|---|")
    for row in batching:
        rates = " | ".join(f"{row[f'{mode}_per_s']:.0f}" for mode in SETTLING)
        print(f"| {row['backend']} | {row['concurrency']} | {rates} |")
    run.write(
        {
            "jobs": args.jobs,
            "max_seconds": args.max_seconds,
            "rows": [
                {
                    "backend": backend,
                    "concurrency": concurrency,
                    "reserve_and_settle_per_s": round(pairs, 1),
                    "settle_per_s": round(settles, 1),
                }
                for backend, concurrency, pairs, settles in rows
            ],
            "batching": {
                "jobs": args.batch_jobs,
                "max_seconds": args.batch_max_seconds,
                "max_batch": MAX_BATCH,
                "rows": batching,
            },
        }
    )


if __name__ == "__main__":
    main()
