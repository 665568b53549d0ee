"""Settlements per second on the ledger: SQLite (a file, WAL) and a real PostgreSQL server.

Two measurements per backend and concurrency level, each on a freshly migrated database:
"reserve + settle" (a job's whole money path: take a hold, then pay provider and platform)
and "settle" alone (holds taken beforehand, untimed). `--concurrency` asyncio tasks share
the work; each task bills its own consumer account and every job pays the same provider and
platform accounts, as a busy coordinator would. Each measurement stops after `--jobs` jobs or
`--max-seconds`, whichever comes first, and the books are checked afterwards. Results are
printed as a table and written to `benchmarks/results/settlements.json`. Usage:

    .venv/bin/python -m benchmarks.settlements [--jobs 1000] [--concurrency 1 8]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.results import Run
from moonflower.ledger.accounts import PLATFORM_ACCOUNT_ID, create_account, get_account
from moonflower.ledger.billing import reserve, settle
from moonflower.ledger.book import deposit
from moonflower.ledger.database import Database, default_database_url
from moonflower.ledger.jobs import JobRecord
from moonflower.ledger.keys import CreatedKey, create_key
from tests.support.postgres import running_postgres

HOLD = 10_000
COST = 7_000
FEE_BPS = 500
FEE = COST * FEE_BPS // 10_000


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-seconds", type=float, default=30.0, help="per measurement")
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

    print(f"{args.jobs} jobs per measurement (at most {args.max_seconds:g} s each)\n")
    print("| backend | concurrency | reserve + settle / s | settle / s |")
    print("|---|---|---|---|")
    for backend, concurrency, pairs, settles in rows:
        print(f"| {backend} | {concurrency} | {pairs:.0f} | {settles:.0f} |")
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
        }
    )


if __name__ == "__main__":
    main()
