"""One job: relaying a provider's events, checking its receipt, winding it down, and what
the consumer owes for it.

A `Job` exists from the moment its request is sent to a provider. `close` is idempotent and
always runs: it cancels the provider's work if the job has not ended, waits (bounded) for
the provider's last word and receipt, and hands the job to its owner to settle and record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

from moonflower import errors, wire
from moonflower.coordinator.channel import JobChannel
from moonflower.coordinator.session import ProviderSession
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
    TextDelta,
    ToolCallDelta,
    Usage,
)
from moonflower.ledger import jobs as job_ledger
from moonflower.ledger.billing import Settlement
from moonflower.ledger.book import format_usd
from moonflower.reasoning import split_reasoning
from moonflower.receipts import OutputTally
from moonflower.settings import CoordinatorSettings

Settle = Callable[["Job"], Awaitable[Settlement | None]]

CREDIT_BATCH_EVENTS = 16
"""Events the consumer reads between two grants of credit to the provider."""

RETRYABLE_BEFORE_FIRST_TOKEN = frozenset(
    {"provider_gone", "timeout", "engine_error", "overloaded", "model_not_loaded"}
)
"""Failures of a provider rather than of the request: another provider may do better."""


class Job:
    """One generation on one provider, from the moment it is sent until it is settled."""

    def __init__(
        self,
        *,
        job_id: str,
        request: GenerationRequest,
        provider: ProviderSession,
        card: wire.ModelCard,
        account_id: str,
        key_id: str,
        channel: JobChannel,
        settings: CoordinatorSettings,
        settle: Settle,
        on_close: Callable[[Job], None] = lambda _job: None,
    ) -> None:
        self.id = job_id
        self.request = request
        self.provider = provider
        self.card = card
        self.account_id = account_id
        self.key_id = key_id
        self.prompt_tokens = 0
        self.starts_in_reasoning = False
        self.created_at = datetime.now(UTC)
        self.outcome: Finished | Failed | None = None
        self.receipt: wire.SignedBlob | None = None
        """The provider's receipt, once verified against what this job relayed."""
        self.signed_usage: Usage | None = None
        """The token counts the verified receipt states."""
        self.delivered_tokens = 0
        """Completion tokens in the deltas relayed to the consumer."""
        self.settlement: Settlement | None = None
        self._settings = settings
        self._settle = settle
        self._on_close = on_close
        self._channel = channel
        self._tally = OutputTally()
        self._t0 = time.monotonic()
        self._first_token_ms: int | None = None
        self._is_ended_by_provider = False
        self._is_cancelled_by_us = False
        self._is_receipt_rejected = False
        self._is_closed = False
        self._consumed = 0
        self._held_back: GenerationEvent | None = None
        """The first output, read before the job was handed to the consumer."""
        self.attempt_failure: Failed | None = None
        """Why this attempt did not become the consumer's job, when it did not."""

    async def _next(self, wait_s: float) -> GenerationEvent:
        left_s = self._settings.max_job_duration_s - (time.monotonic() - self._t0)
        queue = self._channel.events
        if not queue.empty() and left_s > 0:  # already here: no timer, no task
            event = queue.get_nowait()
        else:
            try:
                async with asyncio.timeout(min(wait_s, left_s)):
                    event = await queue.get()
            except TimeoutError:  # the provider may still be working: close() cancels it
                return Failed(code="timeout", message="The provider did not answer in time.")
        if not (isinstance(event, Failed) and event.code == "provider_gone"):
            self._tally.add(event)
        if isinstance(event, Finished | Failed):
            self._is_ended_by_provider = True
        return event

    async def wait_ready(self) -> bool:
        """Wait until the provider has accepted the prompt and produced its first output (or
        ended). False when this attempt failed in a way another provider may not — it went
        away, broke, or was too slow to a first token — so the job can go elsewhere, nothing
        having reached the consumer; a refusal of the request itself raises its error."""
        first = await self._next(self._settings.first_event_timeout_s)
        if isinstance(first, Started):
            self.prompt_tokens = first.prompt_tokens
            self.starts_in_reasoning = first.starts_in_reasoning
            first = await self._next(self._settings.first_token_timeout_s)
        elif not isinstance(first, Failed):
            first = _unexpected(first)
        if isinstance(first, Failed):
            self.attempt_failure = first
            if first.code in RETRYABLE_BEFORE_FIRST_TOKEN:
                self.provider.stats.job_failed()
                return False
            self.outcome = first
            raise errors.from_failure(first)
        self._first_token_ms = _elapsed_ms(self._t0)
        self.provider.stats.job_started(self._first_token_ms / 1000)
        self._held_back = first
        return True

    async def abandon(self) -> None:
        """Give up this attempt before anything reached the consumer: stop the provider's
        work and forget the job on its connection. Nothing is settled (the hold stays with
        the request, which may go to another provider)."""
        self._is_closed = True
        if not self._is_ended_by_provider:
            await self.provider.cancel_job(self.id)
        self.provider.forget_job(self.id)

    def events(self) -> AsyncIterator[OutputEvent]:
        """What the provider generated — text (with `<think>` blocks split off as
        reasoning), tool calls — then exactly one terminal event."""
        return split_reasoning(
            self._provider_events(), starts_in_reasoning=self.starts_in_reasoning
        )

    async def _provider_events(self) -> AsyncIterator[OutputEvent]:
        while self.outcome is None:
            if self._held_back is not None:
                event, self._held_back = self._held_back, None
            else:
                event = await self._next(self._settings.idle_timeout_s)
            if isinstance(event, Started):
                continue
            if isinstance(event, Finished | Failed):
                self.outcome = await self._checked_by_receipt(event)
                self._measure()
                self.settlement = await self._settle(self)
                if self.receipt is not None:
                    yield self._receipted()
                yield self.outcome
                return
            if isinstance(event, TextDelta | ToolCallDelta):
                self.delivered_tokens += event.tokens
            yield event
            # Read by the consumer: the provider may send more (see provider/flow.py).
            self._consumed += 1
            if self._consumed % CREDIT_BATCH_EVENTS == 0:
                await self.provider.grant_credit(self.id, CREDIT_BATCH_EVENTS)

    def _measure(self) -> None:
        """Tell the provider's stats how this job went, for routing the next ones."""
        outcome = self.outcome
        if isinstance(outcome, Finished) and outcome.reason != "cancelled":
            first_ms = self._first_token_ms or 0
            decode_s = max(time.monotonic() - self._t0 - first_ms / 1000, 0.0)
            self.provider.stats.job_finished(outcome.usage.completion_tokens, decode_s)
        elif isinstance(outcome, Failed):
            self.provider.stats.job_failed()

    def _receipted(self) -> Receipted:
        assert self.receipt is not None
        charged = self.settlement.charged_micro_usd if self.settlement is not None else None
        return Receipted(
            job_id=self.id,
            provider_id=self.provider.id,
            receipt=self.receipt.json_text,
            signature=self.receipt.signature,
            response_hash=receipt_hash(self.receipt.json_text),
            cost_usd=format_usd(charged) if charged is not None else None,
        )

    async def _checked_by_receipt(self, ending: Finished | Failed) -> Finished | Failed:
        """Wait for the provider's receipt and check it binds this request and exactly the
        output relayed. A provider whose receipt fails is untrusted and the job fails."""
        statement = self.provider.trust.statement
        if statement is None or (isinstance(ending, Failed) and ending.code == "provider_gone"):
            return ending  # no attested key to check a receipt against
        try:
            signed = await asyncio.wait_for(
                asyncio.shield(self._channel.receipt), self._settings.receipt_timeout_s
            )
            receipt = verify_receipt(
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
            self._is_receipt_rejected = True
            return Failed(code="engine_error", message="The provider's receipt did not verify.")
        self.receipt = signed
        self.signed_usage = Usage(receipt.prompt_tokens, receipt.completion_tokens)
        return ending

    async def close(self) -> None:
        """End the job once: cancel the provider's work unless it already ended, wait for
        its last event and receipt, then settle and record it."""
        if self._is_closed:
            return
        self._is_closed = True
        if not self._is_ended_by_provider:
            self._is_cancelled_by_us = True
            await self.provider.cancel_job(self.id)
            await self._wind_down()
        self.provider.forget_job(self.id)
        try:
            if self.settlement is None:
                self.settlement = await self._settle(self)
        finally:
            self._on_close(self)

    async def _wind_down(self) -> None:
        """After a cancel: take the provider's remaining events (relayed to nobody) until
        its terminal one, so its receipt can be checked against everything it sent."""
        deadline = time.monotonic() + self._settings.receipt_timeout_s
        while (left_s := deadline - time.monotonic()) > 0:
            event = await self._next(left_s)
            if isinstance(event, Failed) and event.code in ("timeout", "provider_gone"):
                return
            if isinstance(event, Finished | Failed):
                if self.outcome is None:
                    self.outcome = await self._checked_by_receipt(event)
                return

    def billable_usage(self) -> Usage | None:
        """The tokens the consumer pays for, or None when nothing is owed.

        Completed: what the verified receipt states. Cancelled because the consumer left:
        the tokens generated up to the cancel (the receipt's count). The provider broke off
        mid-stream: only the tokens relayed to the consumer. Nothing before the first
        token, and nothing for a job whose receipt failed."""
        outcome = self.outcome
        if self._is_receipt_rejected:
            return None
        if isinstance(outcome, Finished) and outcome.reason != "cancelled":
            return self.signed_usage or outcome.usage
        if isinstance(outcome, Finished) and self._is_cancelled_by_us:
            usage = self.signed_usage or outcome.usage
        else:
            usage = Usage(self.prompt_tokens, self.delivered_tokens)
        return usage if usage.completion_tokens > 0 else None

    def record(self) -> job_ledger.JobRecord:
        outcome = self.outcome
        usage = outcome.usage if isinstance(outcome, Finished) else Usage(self.prompt_tokens, 0)
        if isinstance(outcome, Finished):
            status = "cancelled" if outcome.reason == "cancelled" else "completed"
        else:
            status = "cancelled" if outcome is None else "failed"
        return job_ledger.JobRecord(
            id=self.id,
            account_id=self.account_id,
            key_id=self.key_id,
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
            receipt_hash=receipt_hash(self.receipt.json_text) if self.receipt else None,
        )


def _unexpected(event: GenerationEvent) -> Failed:
    return Failed(code="engine_error", message=f"The provider sent {event.kind} before started.")


def _elapsed_ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)
