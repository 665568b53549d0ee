"""Dispatch: reserve → pick → send → relay → settle.

`Dispatcher.start` returns only once a provider has accepted the prompt (or raises a domain
error), so a dialect can still answer with a clean 4xx/5xx before it commits to a 200 and a
stream. Before any output reaches the consumer, the consumer's credit for the worst case is
held; a job that never starts gives the hold back whole, and every started job is settled
exactly once when it ends (`Job.close`), with its metadata (never its text) recorded
alongside.

When the account's previous hold left enough credit (`KnownCredit`) and a provider is free,
the hold is written while the provider works on the prompt instead of before the job is
sent, so it adds nothing to the time to first token; the first output still waits for it,
and a refused hold cancels the job (nothing recorded, nothing charged) and answers 402 as
before. A request that must queue waits for its hold first, so the queue holds only
requests that can pay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import uuid
from dataclasses import dataclass

from moonflower import errors, wire
from moonflower.coordinator.billing import KnownCredit, Pricing, reservation
from moonflower.coordinator.job import Job
from moonflower.coordinator.limits import RateLimits
from moonflower.coordinator.queueing import ModelQueues
from moonflower.coordinator.registry import Registry
from moonflower.coordinator.session import ProviderSession
from moonflower.coordinator.trust import TrustLevel
from moonflower.generation import Failed, GenerationRequest
from moonflower.ledger import billing
from moonflower.ledger import jobs as job_ledger
from moonflower.ledger.database import Database
from moonflower.ledger.keys import Caller
from moonflower.ledger.receipts import ReceiptRecord
from moonflower.settings import CoordinatorSettings

log = logging.getLogger(__name__)


def worst_card(providers: list[ProviderSession], model: str) -> wire.ModelCard:
    """The card of `model` with the longest context among `providers`: the reservation
    must cover whichever of them ends up serving the request."""
    cards = [c for c in (p.card(model) for p in providers) if c is not None]
    return max(cards, key=lambda c: c.context_length)


MAX_ATTEMPTS = 3
"""A job whose provider vanishes before accepting it is retried on another provider."""


@dataclass
class Admission:
    """A request the dispatcher accepted and holds credit for, not yet sent anywhere."""

    request: GenerationRequest
    """With the served model id and `max_tokens` set."""
    caller: Caller
    floor: TrustLevel | None
    job_id: str
    is_held: bool
    hold: asyncio.Task[None] | None = None
    """The hold being written while the job already runs, when it was not awaited."""


class Dispatcher:
    def __init__(self, registry: Registry, db: Database, settings: CoordinatorSettings) -> None:
        self.registry = registry
        self.db = db
        self.settings = settings
        self.pricing = Pricing(db, settings)
        self.queues = ModelQueues(settings.queue_max_waiting, settings.queue_max_wait_s)
        """Requests waiting, per model, for a provider with a free slot."""
        self.limits = RateLimits(
            settings.rate_limit_requests_per_minute, settings.rate_limit_tokens_per_minute
        )
        self.known_credit = KnownCredit()
        self.live_jobs: set[Job] = set()
        """Jobs handed to a consumer and not yet closed."""
        self.is_draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    async def drain(self, deadline_s: float) -> None:
        """Refuse new requests, and return once every live job has closed or `deadline_s`
        has passed (the server then cuts what is left, which cancels and settles it)."""
        self.is_draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), deadline_s)
        except TimeoutError:
            log.warning("draining: %d jobs still running at the deadline", len(self.live_jobs))

    def _job_closed(self, job: Job) -> None:
        self.live_jobs.discard(job)
        if not self.live_jobs:
            self._idle.set()
        self.queues.notify(job.request.model)

    async def start(
        self,
        request: GenerationRequest,
        caller: Caller,
        floor: TrustLevel | None = None,
        *,
        is_billed: bool = True,
    ) -> Job:
        """`admit` the request, then `run` it: a job whose provider has produced its first
        output."""
        return await self.run(await self.admit(request, caller, floor, is_billed=is_billed))

    async def admit(
        self,
        request: GenerationRequest,
        caller: Caller,
        floor: TrustLevel | None = None,
        *,
        is_billed: bool = True,
    ) -> Admission:
        """Everything that can refuse a request before the consumer is answered: shutdown,
        rate limits, an unknown or unserved model, a full queue, and the hold on the most
        it can cost (`is_billed=False`, token counting, holds nothing).

        A model alias is resolved here: providers are asked for the served model, while the
        dialects keep answering with the name the caller used."""
        if self.is_draining:
            raise errors.ShuttingDown("The coordinator is restarting; retry in a moment.")
        self.limits.admit(caller.key_id)
        served = self.settings.model_aliases.get(request.model, request.model)
        if served != request.model:
            request = dataclasses.replace(request, model=served)
        candidates = self.registry.serving(served, floor)
        if not candidates:
            await self._raise_unavailable(served, floor)
        if not self.registry.has_free_slot_for(served, floor):
            self.queues.check_room(served)
        card = worst_card(candidates, served)
        if request.max_tokens is None:
            request = dataclasses.replace(
                request, max_tokens=min(self.settings.default_max_tokens, card.context_length)
            )
        admission = Admission(request, caller, floor, uuid.uuid4().hex, is_held=False)
        if is_billed:
            prices = await self.pricing.current()
            amount = reservation(prices, request, card)
            hold = self._hold(admission.job_id, caller.account_id, amount)
            if self.known_credit.covers(caller.account_id, amount):
                admission.hold = asyncio.create_task(hold)
            else:
                await hold
            admission.is_held = True
        return admission

    async def _hold(self, job_id: str, account_id: str, amount: int) -> None:
        since = self.known_credit.reports(account_id)
        try:
            left = await billing.reserve(self.db, job_id, account_id, amount)
        except BaseException:
            self.known_credit.refused(account_id, amount)
            raise
        self.known_credit.written(account_id, left, amount, since)

    async def hold_taken(self, admission: Admission) -> None:
        """Wait for a hold written alongside the job; raises `InsufficientFunds` if refused."""
        if admission.hold is not None:
            await admission.hold

    def must_wait(self, admission: Admission) -> bool:
        """Whether `run` would have to queue for a free slot right now."""
        model = admission.request.model
        return self.queues.waiting(model) > 0 or not self.registry.has_free_slot_for(
            model, admission.floor
        )

    async def run(self, admission: Admission) -> Job:
        """Wait in the model's queue for a provider with a free slot, send it the job and
        wait for its first output; up to three providers. On any failure the hold is given
        back whole and the request fails with the right error."""
        request, floor = admission.request, admission.floor
        model = request.model
        tried: set[str] = set()
        failure: Failed | None = None
        abandoned: Job | None = None
        try:
            for _attempt in range(MAX_ATTEMPTS):
                if not any(p.id not in tried for p in self.registry.serving(model, floor)):
                    break
                if self.must_wait(admission):  # only requests that can pay take a place
                    await self.hold_taken(admission)
                provider = await self.queues.wait_turn(
                    model, functools.partial(self._pick, model, tried, floor)
                )
                tried.add(provider.id)
                card = provider.card(model)
                assert card is not None
                job, failure = await self._try(admission, provider, card)
                if failure is None and job is not None:
                    return job
                abandoned = job or abandoned
            if abandoned is not None:  # recorded as failed, and its hold released whole
                abandoned.outcome = abandoned.attempt_failure
                await self.settle(abandoned)
        except BaseException:
            await self._release(admission)
            raise
        await self._release(admission)
        if failure is not None and failure.code == "timeout":
            raise errors.UpstreamTimeout(
                f"No provider produced a first token in time ({len(tried)} tried)."
            )
        if tried:
            raise errors.ProviderFailed(
                f"Every provider tried for this request failed before answering ({len(tried)})."
            )
        await self._raise_unavailable(model, floor)
        raise AssertionError("unreachable")

    async def _release(self, admission: Admission) -> None:
        if not admission.is_held:
            return
        try:
            await self.hold_taken(admission)  # never release before the hold is written
        except Exception:
            return  # refused (or failed): there is nothing to give back
        await billing.release(self.db, admission.job_id)  # a no-op once settled

    async def _raise_unavailable(self, model: str, floor: TrustLevel | None) -> None:
        if self.registry.connected_for(model):
            level = max(floor or self.registry.default_floor, self.registry.default_floor)
            raise errors.NoProviderAvailable(model, required_trust=level.label)
        if await job_ledger.has_been_served(self.db, model):
            raise errors.NoProviderAvailable(model)
        raise errors.ModelNotFound(model)

    def _pick(
        self, model: str, tried: set[str], floor: TrustLevel | None
    ) -> ProviderSession | None:
        """The best-scoring provider with a free slot that this request has not tried."""
        return self.registry.pick(model, floor, exclude=tried)

    async def _try(
        self, admission: Admission, provider: ProviderSession, card: wire.ModelCard
    ) -> tuple[Job | None, Failed | None]:
        """Send the job to one provider and wait for its first output (and the hold). If
        the provider failed before that, the attempt is abandoned unsettled (so the same job
        id can go elsewhere) and returned with why."""
        job_id, request, caller = admission.job_id, admission.request, admission.caller
        try:
            channel = await provider.start_job(job_id, request)
        except errors.MoonflowerError:
            raise
        except Exception:
            log.warning("could not send job %s to provider %s", job_id, provider.id)
            return None, Failed(code="provider_gone", message="The job could not be sent.")
        log.info("job %s sent to provider %s", job_id, provider.id)
        job = Job(
            job_id=job_id,
            request=request,
            provider=provider,
            card=card,
            account_id=caller.account_id,
            key_id=caller.key_id,
            channel=channel,
            settings=self.settings,
            settle=self.settle,
            on_close=self._job_closed,
        )
        try:
            if await job.wait_ready():
                await self._confirm_hold(admission, job)
                log.info("job %s answering from provider %s", job_id, provider.id)
                self.live_jobs.add(job)
                self._idle.clear()
                return job, None
        except BaseException:
            await job.close()
            raise
        await job.abandon()
        self.queues.notify(request.model)
        failure = job.attempt_failure
        log.info(
            "job %s: provider %s failed before its first token (%s); trying another",
            job_id,
            provider.id,
            failure.code if failure else "unknown",
        )
        return job, failure

    async def _confirm_hold(self, admission: Admission, job: Job) -> None:
        """The first output is ready: it may go to the consumer once the hold is written. A
        refused hold ends the job as if it never started: cancelled, unrecorded, unpaid."""
        try:
            await self.hold_taken(admission)
        except errors.InsufficientFunds:
            await job.abandon()
            self.queues.notify(admission.request.model)
            raise

    async def settle(self, job: Job) -> billing.Settlement | None:
        """Charge what `job` delivered, pay its provider and the platform, and record it,
        in one ledger transaction. Failing here must not break the consumer's answer: the
        hold then stays until `release_abandoned_holds` gives it back."""
        try:
            prices = await self.pricing.current()
            usage = job.billable_usage()
            cost = (
                0
                if usage is None
                else prices.cost(job.request.model, usage.prompt_tokens, usage.completion_tokens)
            )
            record = job.record()
            self.limits.record_tokens(job.key_id, record.prompt_tokens + record.completion_tokens)
            if usage is not None:
                record = dataclasses.replace(
                    record,
                    billed_prompt_tokens=usage.prompt_tokens,
                    billed_completion_tokens=usage.completion_tokens,
                )
            return await billing.settle(
                self.db,
                record,
                cost_micro_usd=cost,
                platform_fee_bps=prices.platform_fee_bps,
                provider_account_id=job.provider.account_id,
                receipt=self._receipt_record(job),
            )
        except Exception:
            log.exception("could not settle job %s", job.id)
            return None

    @staticmethod
    def _receipt_record(job: Job) -> ReceiptRecord | None:
        statement = job.provider.trust.statement
        if job.receipt is None or statement is None:
            return None
        return ReceiptRecord(
            job_id=job.id,
            account_id=job.account_id,
            provider_id=job.provider.id,
            receipt_json=job.receipt.json_text,
            signature=job.receipt.signature,
            signing_public_key=statement.signing_public_key,
        )
