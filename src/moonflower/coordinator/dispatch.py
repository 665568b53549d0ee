"""Dispatch: reserve → pick → send → relay → settle.

`Dispatcher.start` returns only once a provider has accepted the prompt (or raises a domain
error), so a dialect can still answer with a clean 4xx/5xx before it commits to a 200 and a
stream. Before any output reaches the consumer, the consumer's credit for the worst case is
held (`holds.py`); a job that never starts gives the hold back whole, and every started job
is closed by the dispatcher exactly once when it ends — decided, its provider judged, and
settled (`closing.py`) — with its metadata (never its text) recorded alongside.

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

from moonflower import errors, wire
from moonflower.coordinator import lost_jobs
from moonflower.coordinator.billing import Pricing, reservation
from moonflower.coordinator.closing import NOTHING_OWED, JobCloser
from moonflower.coordinator.holds import Admission, Holds
from moonflower.coordinator.job import Job, PromptCounter, PromptMeasures
from moonflower.coordinator.leases import HoldLeases
from moonflower.coordinator.limits import RateLimiter
from moonflower.coordinator.queueing import ModelQueues
from moonflower.coordinator.registry import Registry
from moonflower.coordinator.session import ProviderSession
from moonflower.coordinator.trust import TrustLevel
from moonflower.generation import Failed, GenerationRequest
from moonflower.ledger import jobs as job_ledger
from moonflower.ledger.database import Database
from moonflower.ledger.keys import Caller
from moonflower.settings import CoordinatorSettings

log = logging.getLogger(__name__)


def with_recommended_sampling(
    request: GenerationRequest, card: wire.ModelCard
) -> GenerationRequest:
    """`request` with the model's recommended sampling wherever the caller set none, as the
    provider will run it: what is sealed, signed for and reported is what was used."""
    sampling = request.sampling.filled_from(card.sampling_defaults.params())
    return (
        request if sampling == request.sampling else dataclasses.replace(request, sampling=sampling)
    )


def worst_card(providers: list[ProviderSession], model: str) -> wire.ModelCard:
    """The card of `model` with the longest context among `providers`: the reservation
    must cover whichever of them ends up serving the request."""
    cards = [c for c in (p.card(model) for p in providers) if c is not None]
    return max(cards, key=lambda c: c.context_length)


MAX_ATTEMPTS = 3
"""A job whose provider vanishes before accepting it is retried on another provider."""


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        db: Database,
        settings: CoordinatorSettings,
        *,
        pricing: Pricing,
        leases: HoldLeases,
        queues: ModelQueues,
        limits: RateLimiter,
        holds: Holds,
        closer: JobCloser,
        prompt_counter: PromptCounter | None = None,
    ) -> None:
        """Every collaborator is handed in, built once with the others
        (`assembly.build_services`)."""
        self.registry = registry
        self.db = db
        self.settings = settings
        self.prompt_counter = prompt_counter
        self.pricing = pricing
        self.leases = leases
        """The holds of the requests and jobs this coordinator runs, kept leased."""
        self.queues = queues
        """Requests waiting, per model, for a provider with a free slot."""
        self.limits = limits
        """Per-key request and token limits: in memory, or shared by the replicas through
        Redis."""
        self.holds = holds
        self.closer = closer
        """The close path every job ends through: decide, judge the provider, settle."""
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
        served = self.settings.model_aliases.get(request.model, request.model)
        try:
            return await self._admit(request, served, caller, floor, is_billed=is_billed)
        except BaseException:
            self.queues.gave_up(served)  # a turn it had in the line is used up
            raise

    async def _admit(
        self,
        request: GenerationRequest,
        served: str,
        caller: Caller,
        floor: TrustLevel | None,
        *,
        is_billed: bool,
    ) -> Admission:
        if self.is_draining:
            raise errors.ShuttingDown("The coordinator is restarting; retry in a moment.")
        await self.limits.admit(caller.key_id)
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
        prompts = PromptMeasures(request, self.prompt_counter)
        admission = Admission(request, caller, floor, uuid.uuid4().hex, False, prompts)
        if is_billed:
            prices = await self.pricing.current()
            prompt = await self._prompt_bound(prompts, candidates, card)
            amount = reservation(prices, request, card, prompt_tokens=prompt)
            hold = self.holds.take(admission.job_id, caller.account_id, amount)
            if self.holds.known_credit.covers(caller.account_id, amount):
                admission.hold = asyncio.create_task(hold)
            else:
                await hold
            admission.is_held = True
        return admission

    async def _prompt_bound(
        self, prompts: PromptMeasures, candidates: list[ProviderSession], card: wire.ModelCard
    ) -> int:
        """The most prompt tokens the request can be billed on any provider that may serve
        it: the exact count for weights whose tokenizer the coordinator has, the byte bound
        for the others."""
        model = card.id
        cards = {c.sha256: c for c in (p.card(model) for p in candidates) if c}
        counts = [await prompts.count(c) for c in cards.values()]
        exact = [count.exact for count in counts if count.exact is not None]
        if len(exact) < len(counts) or not counts:
            exact.append(prompts.bound(card))
        return max(exact)

    async def hold_taken(self, admission: Admission) -> None:
        """Wait for a hold written alongside the job; raises `InsufficientFunds` if refused."""
        await self.holds.taken(admission)

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
                await self.closer.settle(abandoned, NOTHING_OWED)
        except BaseException:
            if not tried:  # refused, or gone, before it took a slot
                self.queues.gave_up(model)
            await self.holds.give_back(admission)
            raise
        await self.holds.give_back(admission)
        if not tried:
            self.queues.gave_up(model)
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
        job_id, caller = admission.job_id, admission.caller
        request = with_recommended_sampling(admission.request, card)
        prompt = await admission.prompts.count(card)
        try:
            channel = await provider.start_job(job_id, request, card)
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
            closer=self.closer.close,
            prompt=prompt,
            on_close=self._job_closed,
        )
        try:
            if await job.wait_ready():
                await self._confirm_hold(admission, job)
                log.info("job %s answering from provider %s", job_id, provider.id)
                self.leases.follow(job_id, functools.partial(lost_jobs.tally_of, job))
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
