"""Writing settlement decisions down: durably, exactly once per job.

`Settler.settle` turns a job's `settlement.Decision` into one ledger transaction (charge the
consumer, pay the provider and the platform, record the job and its receipt). The write is
idempotent per job id and retried, with back-off, until it lands: a database that is down
for a while delays a settlement, it never makes a job free or leaves its provider unpaid.
Meanwhile the job's hold stays leased (`leases.HoldLeases`), so nobody releases it. Callers
wait for the first attempt only (bounded by the database's own time-out): when it fails, a
stream's receipt event carries no cost, and the write goes on in the background.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from moonflower import errors
from moonflower.coordinator.billing import Pricing
from moonflower.coordinator.leases import HoldLeases
from moonflower.coordinator.limits import RateLimiter
from moonflower.coordinator.settlement import Decision
from moonflower.ledger import billing
from moonflower.ledger.database import Database
from moonflower.ledger.jobs import JobRecord
from moonflower.ledger.receipts import ReceiptRecord

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.1
RETRY_MAX_S = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class SettlementOrder:
    """What to write for one job."""

    record: JobRecord
    decision: Decision
    provider_account_id: str | None
    receipt: ReceiptRecord | None


class Settler:
    def __init__(
        self,
        db: Database,
        pricing: Pricing,
        leases: HoldLeases,
        limits: RateLimiter,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._db = db
        self._pricing = pricing
        self._leases = leases
        self._limits = limits
        self._sleep = sleep
        self._writing: dict[str, asyncio.Task[billing.Settlement]] = {}
        self._tried: dict[str, asyncio.Event] = {}
        """Per settlement being written: set once its first attempt has ended."""

    @property
    def pending(self) -> int:
        """Settlements still being written."""
        return len(self._writing)

    async def settle(self, order: SettlementOrder) -> billing.Settlement | None:
        """Write `order` (once per job id, however often asked) and return its settlement,
        or None if its first attempt failed (it keeps being retried in the background). The
        first attempt is waited for whole: it is bounded by the database's own time-out."""
        job_id = order.record.id
        task = self._writing.get(job_id)
        if task is None:
            tried = self._tried[job_id] = asyncio.Event()
            task = asyncio.create_task(self._write_until_landed(order, tried))
            self._writing[job_id] = task
            task.add_done_callback(lambda _t: self._forget(job_id))
            await self._record_tokens(order)
        else:
            tried = self._tried[job_id]
        await asyncio.shield(tried.wait())
        if task.done() and not task.cancelled():
            return task.result()
        log.warning("settlement of job %s is waiting for the database; it goes on", job_id)
        return None

    async def _record_tokens(self, order: SettlementOrder) -> None:
        """Count the job's tokens against its key's limit; a limit store that does not
        answer costs the count, never the settlement."""
        tokens = order.record.prompt_tokens + order.record.completion_tokens
        try:
            await self._limits.record_tokens(order.record.key_id, tokens)
        except errors.StoreUnavailable:
            log.warning(
                "job %s: its tokens were not counted against its rate limit", order.record.id
            )

    def _forget(self, job_id: str) -> None:
        self._writing.pop(job_id, None)
        self._tried.pop(job_id, None)

    async def drain(self, deadline_s: float) -> None:
        """At shutdown: give the settlements still being written up to `deadline_s`."""
        if self._writing:
            await asyncio.wait(set(self._writing.values()), timeout=deadline_s)

    async def _write_until_landed(
        self, order: SettlementOrder, tried: asyncio.Event
    ) -> billing.Settlement:
        delay_s = RETRY_FIRST_S
        while True:
            try:
                settlement = await self._write(order)
            except errors.StoreUnavailable:
                log.warning(
                    "settling job %s: the database is unavailable; retrying", order.record.id
                )
            except Exception:
                log.exception("could not settle job %s; retrying", order.record.id)
            else:
                self._leases.drop(order.record.id)
                return settlement
            finally:
                tried.set()
            await self._sleep(delay_s)
            delay_s = min(delay_s * 2, RETRY_MAX_S)

    async def _write(self, order: SettlementOrder) -> billing.Settlement:
        prices = await self._pricing.current()
        billed = order.decision.billed
        record = order.record
        cost = 0
        if billed is not None:
            cost = prices.cost(record.model, billed.prompt_tokens, billed.completion_tokens)
        return await billing.settle(
            self._db,
            record,
            cost_micro_usd=cost,
            platform_fee_bps=prices.platform_fee_bps,
            provider_account_id=order.provider_account_id,
            receipt=order.receipt,
        )
