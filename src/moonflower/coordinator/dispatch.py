"""Dispatch: pick a provider, send it the job, relay its events, cancel and record the job.

`Dispatcher.start` returns only once the provider has accepted the prompt (or raises a
domain error), so a dialect can still answer with a clean 4xx/5xx before it commits to a
200 and a stream. `Job.close` is idempotent and always runs: it cancels the provider's work
if the job has not ended, and writes the job's metadata (never its text) to the ledger.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from moonflower import errors, wire
from moonflower.coordinator.channel import JobChannel
from moonflower.coordinator.registry import ProviderSession, Registry
from moonflower.coordinator.trust import TrustLevel
from moonflower.crypto.receipt import receipt_hash, request_digest, verify_receipt
from moonflower.errors import ReceiptError
from moonflower.generation import (
    Failed,
    Finished,
    GenerationEvent,
    GenerationRequest,
    OutputEvent,
    Receipted,
    Started,
    Usage,
)
from moonflower.ledger import jobs as job_ledger
from moonflower.ledger.database import Database
from moonflower.ledger.keys import Caller
from moonflower.ledger.receipts import ReceiptRecord, store_receipt
from moonflower.reasoning import split_reasoning
from moonflower.receipts import OutputTally
from moonflower.settings import CoordinatorSettings

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""A job whose provider vanishes before accepting it is retried on another provider."""


class Job:
    """One generation on one provider, from the moment it is sent until it is recorded."""

    def __init__(
        self,
        *,
        job_id: str,
        request: GenerationRequest,
        provider: ProviderSession,
        card: wire.ModelCard,
        caller: Caller,
        channel: JobChannel,
        dispatcher: Dispatcher,
    ) -> None:
        self.id = job_id
        self.request = request
        self.provider = provider
        self.card = card
        self.caller = caller
        self.prompt_tokens = 0
        self.starts_in_reasoning = False
        self.created_at = datetime.now(UTC)
        self.outcome: Finished | Failed | None = None
        self.receipt: wire.SignedBlob | None = None
        """The provider's receipt, once verified against what this job relayed."""
        self._channel = channel
        self._tally = OutputTally()
        self._dispatcher = dispatcher
        self._t0 = time.monotonic()
        self._first_token_ms: int | None = None
        self._is_ended_by_provider = False
        self._is_closed = False

    async def _next(self, wait_s: float) -> GenerationEvent:
        try:
            event = await asyncio.wait_for(self._channel.events.get(), wait_s)
        except TimeoutError:
            return Failed(code="timeout", message="The provider did not answer in time.")
        if not (isinstance(event, Failed) and event.code == "provider_gone"):
            self._tally.add(event)
        if isinstance(event, Finished | Failed):
            self._is_ended_by_provider = True
        return event

    async def wait_started(self) -> bool:
        """Wait until the provider accepts the prompt. False if the provider vanished first
        (the job may be retried elsewhere); a refusal raises the matching domain error."""
        first = await self._next(self._dispatcher.settings.first_event_timeout_s)
        if isinstance(first, Started):
            self.prompt_tokens = first.prompt_tokens
            self.starts_in_reasoning = first.starts_in_reasoning
            return True
        self.outcome = first if isinstance(first, Failed) else _unexpected(first)
        if self.outcome.code == "provider_gone":
            return False
        raise errors.from_failure(self.outcome)

    def events(self) -> AsyncIterator[OutputEvent]:
        """What the provider generated — text (with `<think>` blocks split off as
        reasoning), tool calls — then exactly one terminal event."""
        return split_reasoning(
            self._provider_events(), starts_in_reasoning=self.starts_in_reasoning
        )

    async def _provider_events(self) -> AsyncIterator[OutputEvent]:
        while self.outcome is None:
            event = await self._next(self._dispatcher.settings.idle_timeout_s)
            if isinstance(event, Started):
                continue
            if isinstance(event, Finished | Failed):
                event = await self._checked_by_receipt(event)
                self.outcome = event
                if self.receipt is not None:
                    yield Receipted(
                        job_id=self.id,
                        provider_id=self.provider.id,
                        receipt=self.receipt.json_text,
                        signature=self.receipt.signature,
                        response_hash=receipt_hash(self.receipt.json_text),
                    )
            elif self._first_token_ms is None:
                self._first_token_ms = _elapsed_ms(self._t0)
            yield event

    async def _checked_by_receipt(self, ending: Finished | Failed) -> Finished | Failed:
        """Wait for the provider's receipt and check it binds this request and exactly the
        output relayed. A provider whose receipt fails is untrusted and the job fails."""
        statement = self.provider.trust.statement
        if statement is None or (isinstance(ending, Failed) and ending.code == "provider_gone"):
            return ending  # no attested key to check a receipt against
        try:
            signed = await asyncio.wait_for(
                asyncio.shield(self._channel.receipt), self._dispatcher.settings.receipt_timeout_s
            )
            verify_receipt(
                signed.json_text,
                signed.signature,
                statement.signing_key,
                job_id=self.id,
                model_sha256=self.card.sha256,
                request_sha256=request_digest(self.request),
                output_sha256=self._tally.digest(),
            )
        except (TimeoutError, asyncio.CancelledError, ReceiptError) as exc:
            reason = exc.reason if isinstance(exc, ReceiptError) else "no receipt"
            self.provider.mark_untrusted(f"receipt rejected: {reason}")
            return Failed(code="engine_error", message="The provider's receipt did not verify.")
        self.receipt = signed
        return ending

    async def close(self) -> None:
        """Cancel the provider's work unless it already ended, and record the job once."""
        if self._is_closed:
            return
        self._is_closed = True
        if not self._is_ended_by_provider:
            await self.provider.cancel_job(self.id)
        self.provider.forget_receipt(self.id)
        await self._dispatcher.record(self)

    def record(self) -> job_ledger.JobRecord:
        outcome = self.outcome
        usage = outcome.usage if isinstance(outcome, Finished) else Usage(self.prompt_tokens, 0)
        if isinstance(outcome, Finished):
            status = "cancelled" if outcome.reason == "cancelled" else "completed"
        else:
            status = "cancelled" if outcome is None else "failed"
        return job_ledger.JobRecord(
            id=self.id,
            account_id=self.caller.account_id,
            key_id=self.caller.key_id,
            model=self.request.model,
            provider_id=self.provider.id,
            status=status,
            finish_reason=outcome.reason if isinstance(outcome, Finished) else None,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            created_at=self.created_at,
            first_token_ms=self._first_token_ms,
            duration_ms=_elapsed_ms(self._t0),
            error_code=outcome.code if isinstance(outcome, Failed) else None,
        )


class Dispatcher:
    def __init__(self, registry: Registry, db: Database, settings: CoordinatorSettings) -> None:
        self.registry = registry
        self.db = db
        self.settings = settings

    async def start(
        self, request: GenerationRequest, caller: Caller, floor: TrustLevel | None = None
    ) -> Job:
        """Send `request` to a provider and wait until it accepts the prompt.

        A model alias is resolved here: the provider is asked for the served model, while
        the dialects keep answering with the name the caller used."""
        served = self.settings.model_aliases.get(request.model, request.model)
        if served != request.model:
            request = dataclasses.replace(request, model=served)
        tried: set[str] = set()
        for _attempt in range(MAX_ATTEMPTS):
            provider = self._pick(request.model, tried, floor)
            if provider is None:
                break
            tried.add(provider.id)
            job = await self._try(provider, request, caller)
            if job is not None:
                return job
        if tried:
            raise errors.ProviderFailed("Every provider tried for this request went away.")
        if self.registry.connected_for(request.model):
            level = max(floor or self.registry.default_floor, self.registry.default_floor)
            raise errors.NoProviderAvailable(request.model, required_trust=level.label)
        if await job_ledger.has_been_served(self.db, request.model):
            raise errors.NoProviderAvailable(request.model)
        raise errors.ModelNotFound(request.model)

    def _pick(
        self, model: str, tried: set[str], floor: TrustLevel | None
    ) -> ProviderSession | None:
        provider = self.registry.pick(model, floor)
        if provider is None or provider.id in tried:
            rest = [p for p in self.registry.serving(model, floor) if p.id not in tried]
            return min(rest, key=lambda p: p.load) if rest else None
        return provider

    async def _try(
        self, provider: ProviderSession, request: GenerationRequest, caller: Caller
    ) -> Job | None:
        card = provider.card(request.model)
        assert card is not None
        if request.max_tokens is None:
            bound = min(self.settings.default_max_tokens, card.context_length)
            request = dataclasses.replace(request, max_tokens=bound)
        job_id = uuid.uuid4().hex
        try:
            channel = await provider.start_job(job_id, request)
        except errors.MoonflowerError:
            raise
        except Exception:
            log.warning("could not send job %s to provider %s", job_id, provider.id)
            return None
        job = Job(
            job_id=job_id,
            request=request,
            provider=provider,
            card=card,
            caller=caller,
            channel=channel,
            dispatcher=self,
        )
        try:
            if await job.wait_started():
                log.info("job %s started on provider %s", job_id, provider.id)
                return job
        except BaseException:
            await job.close()
            raise
        await job.close()
        return None

    async def record(self, job: Job) -> None:
        try:
            await job_ledger.record_job(self.db, job.record())
            if job.receipt is not None and job.provider.trust.statement is not None:
                await store_receipt(
                    self.db,
                    ReceiptRecord(
                        job_id=job.id,
                        account_id=job.caller.account_id,
                        provider_id=job.provider.id,
                        receipt_json=job.receipt.json_text,
                        signature=job.receipt.signature,
                        signing_public_key=job.provider.trust.statement.signing_public_key,
                    ),
                )
        except Exception:
            log.exception("could not record job %s", job.id)


def _unexpected(event: GenerationEvent) -> Failed:
    return Failed(code="engine_error", message=f"The provider sent {event.kind} before started.")


def _elapsed_ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)
