"""Writing settlement decisions down: durably, exactly once per job, many jobs at a time.

`Settler.settle` turns a job's `settlement.Decision` into its ledger transaction (charge the
consumer, pay the provider and the platform, record the job and its receipt). Orders that
arrive while a write is in flight are written together by the next one, as one database
transaction (`billing.settle_all`) that moves the platform's account once: every settlement
touches that one row, so one transaction per job caps the network at a few hundred
settlements a second. Nothing waits to fill a batch: a lone order is written at once.

The write is idempotent per job id and retried, with back-off, until it lands: a database
that is down for a while delays a settlement, it never makes a job free or leaves its
provider unpaid. A batch that fails for another reason is split into its orders, each
retried on its own, so one order the database refuses cannot hold the others back.
Meanwhile the job's hold stays leased (`leases.HoldLeases`), so nobody releases it. Callers
wait for the first attempt of their own order only (bounded by the database's own
time-out): when it fails, a stream's receipt event carries no cost, and the write goes on
in the background.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from moonflower import errors
from moonflower.coordinator.billing import Pricing
from moonflower.coordinator.leases import HoldLeases
from moonflower.coordinator.limits import RateLimiter
from moonflower.coordinator.metrics import Metrics
from moonflower.coordinator.settlement import Decision
from moonflower.ledger import billing
from moonflower.ledger.database import Database
from moonflower.ledger.jobs import JobRecord
from moonflower.ledger.receipts import ReceiptRecord

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.1
RETRY_MAX_S = 30.0
WRITERS = 2
"""Batches written at once: while one waits for the database, the next is prepared and
sent (their accounts are locked in one order, so they cannot deadlock)."""
MAX_BATCH = 500
"""The most orders one transaction writes: far more than arrive during one write at a few
thousand a second, few enough to keep its statements and row locks short."""


@dataclasses.dataclass(frozen=True, slots=True)
class SettlementOrder:
    """What to write for one job."""

    record: JobRecord
    decision: Decision
    provider_account_id: str | None
    receipt: ReceiptRecord | None


@dataclasses.dataclass(eq=False, slots=True)
class _Pending:
    """An order not yet written down, and what its callers wait for."""

    order: SettlementOrder
    landed: asyncio.Future[billing.Settlement]
    tried: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    """Set once its first attempt has ended."""


class Settler:
    def __init__(
        self,
        db: Database,
        pricing: Pricing,
        leases: HoldLeases,
        limits: RateLimiter,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_batch: int = MAX_BATCH,
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("a batch holds at least one order")
        self._db = db
        self._pricing = pricing
        self._leases = leases
        self._limits = limits
        self._sleep = sleep
        self._max_batch = max_batch
        self._metrics = metrics
        self._pending: dict[str, _Pending] = {}
        """Every order not yet written down, by job id."""
        self._queue: list[_Pending] = []
        """Orders waiting for their first attempt."""
        self._writers: set[asyncio.Task[None]] = set()
        self._retries: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Settlements still being written."""
        return len(self._pending)

    async def settle(self, order: SettlementOrder) -> billing.Settlement | None:
        """Write `order` (once per job id, however often asked) and return its settlement,
        or None if its first attempt failed (it keeps being retried in the background). The
        first attempt is waited for whole: it is bounded by the database's own time-out."""
        job_id = order.record.id
        pending = self._pending.get(job_id)
        if pending is None:
            landed = asyncio.get_running_loop().create_future()
            pending = self._pending[job_id] = _Pending(order, landed)
            self._queue.append(pending)
            # Done, not yet forgotten: a done callback would run only after this call.
            self._writers = {writer for writer in self._writers if not writer.done()}
            if len(self._writers) < WRITERS:
                self._writers.add(asyncio.create_task(self._write_queue()))
            await self._record_tokens(order)
        await asyncio.shield(pending.tried.wait())
        if pending.landed.done():
            return pending.landed.result()
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

    async def drain(self, deadline_s: float) -> None:
        """At shutdown: give the settlements still being written up to `deadline_s`."""
        if self._pending:
            landing = [pending.landed for pending in self._pending.values()]
            await asyncio.wait(landing, timeout=deadline_s)

    async def _write_queue(self) -> None:
        """Give every queued order its first attempt, up to `max_batch` per transaction:
        the orders that arrive while one batch is written make up the next."""
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            try:
                failure = await self._attempt(batch)
            finally:  # its callers wait for this attempt, however it ends
                for pending in batch:
                    pending.tried.set()
            if failure is not None:
                self._start(self._retry(batch, failure, RETRY_FIRST_S))

    def _start(self, retry: Awaitable[None]) -> None:
        task = asyncio.ensure_future(retry)
        self._retries.add(task)  # a task nobody references may be collected mid-flight
        task.add_done_callback(self._retries.discard)

    async def _retry(self, batch: Sequence[_Pending], failure: Exception, delay_s: float) -> None:
        """Write `batch` again after `delay_s`, doubling the wait each time, until it
        lands. An unavailable database is no order's fault: the batch is retried whole.
        Any other failure may be one order's (a job another coordinator stored first), so
        the batch splits and each order is retried on its own."""
        while True:
            if len(batch) > 1 and not isinstance(failure, errors.StoreUnavailable):
                for pending in batch:
                    self._start(self._retry([pending], failure, delay_s))
                return
            await self._sleep(delay_s)
            delay_s = min(delay_s * 2, RETRY_MAX_S)
            retried = await self._attempt(batch)
            if retried is None:
                return
            failure = retried

    async def _attempt(self, batch: Sequence[_Pending]) -> Exception | None:
        """Write `batch` in one transaction; the failure, or None once it has landed."""
        started = time.perf_counter()
        try:
            settlements = await self._write([pending.order for pending in batch])
        except errors.StoreUnavailable as error:
            log.warning("settling %d jobs: the database is unavailable; retrying", len(batch))
            self._failed()
            return error
        except Exception as error:
            jobs = ", ".join(pending.order.record.id for pending in batch)
            log.exception("could not settle jobs %s; retrying", jobs)
            self._failed()
            return error
        if self._metrics is not None:
            self._metrics.settled(len(batch), time.perf_counter() - started)
        for pending, settlement in zip(batch, settlements, strict=True):
            job_id = pending.order.record.id
            self._leases.drop(job_id)
            del self._pending[job_id]
            pending.landed.set_result(settlement)
        return None

    def _failed(self) -> None:
        if self._metrics is not None:
            self._metrics.settlement_failed()

    async def _write(self, orders: Sequence[SettlementOrder]) -> list[billing.Settlement]:
        prices = await self._pricing.current()
        bills = []
        for order in orders:
            billed, record = order.decision.billed, order.record
            cost = 0
            if billed is not None:
                cost = prices.cost(record.model, billed.prompt_tokens, billed.completion_tokens)
            bills.append(
                billing.JobBill(
                    record,
                    cost_micro_usd=cost,
                    platform_fee_bps=prices.platform_fee_bps,
                    provider_account_id=order.provider_account_id,
                    receipt=order.receipt,
                )
            )
        return await billing.settle_all(self._db, bills)
