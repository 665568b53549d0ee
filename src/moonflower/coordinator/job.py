"""One job: relaying a provider's events to the consumer, counting what reached it, and
winding the job down once, however it ends.

A `Job` exists from the moment its request is sent to a provider. Its channel counts and
checks every frame as it arrives (`channel.py`, `tally.py`); the job counts what it hands
to the consumer. However the job ends — the provider finished or failed, its connection
went, the coordinator timed it out or reached its deadline, the consumer hung up — it is
wound down exactly once, in a task of its own that a consumer hanging up cannot cancel:
cancel the provider's work if it still runs, take its last events and receipt (bounded),
check the receipt (`receipt_check.py`), decide the money and the verdict
(`settlement.decide`), tell routing, and hand the decision to its owner to write down.

The deadline is wall clock: it holds whether or not the consumer reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from moonflower import errors, wire
from moonflower.coordinator.channel import BROKE_PROTOCOL, GONE, JobChannel
from moonflower.coordinator.receipt_check import check_receipt
from moonflower.coordinator.session import ProviderSession
from moonflower.coordinator.settlement import (
    Decision,
    Ending,
    Facts,
    ReceiptCheck,
    Verdict,
    decide,
)
from moonflower.coordinator.tally import billable_tokens
from moonflower.crypto.receipt import receipt_hash
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
from moonflower.settings import CoordinatorSettings

Settle = Callable[["Job", Decision], Awaitable[Settlement | None]]

CREDIT_BATCH_EVENTS = wire.FLOW_WINDOW_EVENTS // 2
"""Events the consumer reads between two grants of credit to the provider: half the window,
so the provider still has half a window to send while a grant is on its way, at one credit
frame per half window."""

BYTES_PER_TOKEN = 4
"""Bytes of output counted as one token when the coordinator measures a provider's speed
(about what English text averages); the same scale for every provider of a model."""

RETRYABLE_BEFORE_FIRST_TOKEN = frozenset(
    {"provider_gone", "timeout", "engine_error", "overloaded", "model_not_loaded"}
)
"""Failures of a provider rather than of the request: another provider may do better."""


@dataclass(frozen=True, slots=True)
class PromptCount:
    """What the coordinator knows of a request's prompt before the provider speaks."""

    exact: int | None
    """Counted with the model's own tokenizer; None where the coordinator has none."""
    bound: int
    """The most it can be (see `billing.prompt_token_bound`)."""

    def billable(self, claimed: int) -> int:
        """The prompt tokens the consumer pays for: the coordinator's count, or the
        provider's claim never above the bound."""
        return self.exact if self.exact is not None else min(max(claimed, 0), self.bound)


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
        prompt: PromptCount,
        on_close: Callable[[Job], None] = lambda _job: None,
    ) -> None:
        self.id = job_id
        self.request = request
        self.provider = provider
        self.card = card
        self.account_id = account_id
        self.key_id = key_id
        self.prompt = prompt
        self.prompt_tokens = 0
        """The prompt tokens as billed and reported to the consumer."""
        self.starts_in_reasoning = False
        self.created_at = datetime.now(UTC)
        self.is_whole = False
        """A whole (non-streaming) answer: its output reaches the consumer only if the job
        completes, all at once."""
        self.outcome: Finished | Failed | None = None
        """The terminal event the consumer is shown."""
        self.ending: Ending | None = None
        self.receipt: wire.SignedBlob | None = None
        """The provider's receipt, once verified against what this job relayed."""
        self.receipt_check: ReceiptCheck | None = None
        self.delivered_tokens = 0
        """Billable completion tokens handed to the consumer's connection."""
        self.relayed_tokens = 0
        """Billable completion tokens the provider relayed (delivered or not)."""
        self.decision: Decision | None = None
        self.settlement: Settlement | None = None
        self.attempt_failure: Failed | None = None
        """Why this attempt did not become the consumer's job, when it did not."""
        self._settings = settings
        self._settle = settle
        self._on_close = on_close
        self._channel = channel
        self._t0 = time.monotonic()
        self._deadline = self._t0 + settings.max_job_duration_s
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._first_token_ms: int | None = None
        self._is_cancelled_by_us = False
        self._is_reading = False
        self._is_closed = False
        self._winding: asyncio.Task[None] | None = None
        self._consumed = 0
        self._held_back: GenerationEvent | None = None
        """The first output, read before the job was handed to the consumer."""
        self._terminal: Finished | Failed | None = None
        """The provider's terminal event, when it ended the job before it was handed on."""

    # --- reading the provider's events -----------------------------------------------

    async def _next(self, wait_s: float) -> GenerationEvent | Ending:
        """The provider's next event, or `TIMED_OUT` after `wait_s` of silence, or
        `DEADLINE` when the job has run its maximum duration."""
        left_s = self._deadline - time.monotonic()
        queue = self._channel.events
        if not queue.empty() and left_s > 0:  # already here: no timer, no task
            event = queue.get_nowait()
        else:
            self._is_reading = True
            try:
                async with asyncio.timeout(min(wait_s, left_s)):
                    event = await queue.get()
            except TimeoutError:
                return Ending.DEADLINE if wait_s >= left_s else Ending.TIMED_OUT
            finally:
                self._is_reading = False
        if isinstance(event, TextDelta | ToolCallDelta):
            self.relayed_tokens += billable_tokens(event)
        return event

    def _ending_of(self, event: Finished | Failed) -> Ending:
        if event is BROKE_PROTOCOL or self._channel.violation is not None:
            return Ending.VIOLATION
        if event is GONE:
            return Ending.PROVIDER_GONE
        if isinstance(event, Finished) and event.reason != "cancelled":
            return Ending.COMPLETED
        return Ending.PROVIDER_FAILED  # a failure, or stopping unasked

    async def wait_ready(self) -> bool:
        """Wait until the provider has accepted the prompt and produced its first output (or
        ended). False when this attempt failed in a way another provider may not — it went
        away, broke, or was too slow to a first token — so the job can go elsewhere, nothing
        having reached the consumer; a refusal of the request itself raises its error."""
        first = await self._next(self._settings.first_event_timeout_s)
        if isinstance(first, Started):
            self.prompt_tokens = self.prompt.billable(first.prompt_tokens)
            self.starts_in_reasoning = first.starts_in_reasoning
            first = await self._next(self._settings.first_token_timeout_s)
        elif isinstance(first, TextDelta | ToolCallDelta):
            first = BROKE_PROTOCOL  # the channel refuses this; kept for safety
        failure = _as_attempt_failure(first)
        if failure is not None:
            self.attempt_failure = failure
            if failure.code in RETRYABLE_BEFORE_FIRST_TOKEN:
                self.provider.stats.job_failed()
                return False
            # The request itself was refused: no other provider would do better.
            self.ending = Ending.REFUSED
            if isinstance(first, Failed):
                self._terminal = first
            raise errors.from_failure(failure)
        self._first_token_ms = _elapsed_ms(self._t0)
        self.provider.stats.job_started(self._first_token_ms / 1000)
        assert not isinstance(first, Ending)
        self._held_back = first
        self._deadline_timer = asyncio.get_running_loop().call_at(
            _loop_time_of(self._deadline), self._deadline_passed
        )
        return True

    async def abandon(self) -> None:
        """Give up this attempt before anything reached the consumer: stop the provider's
        work and forget the job on its connection. Nothing is settled (the hold stays with
        the request, which may go to another provider)."""
        self._is_closed = True
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        if not self._channel.is_ended:
            await self.provider.cancel_job(self.id)
        self.provider.forget_job(self.id)

    def events(self) -> AsyncIterator[OutputEvent]:
        """What the provider generated — text (with `<think>` blocks split off as
        reasoning), tool calls — then exactly one terminal event."""
        return split_reasoning(
            self._provider_events(), starts_in_reasoning=self.starts_in_reasoning
        )

    async def _provider_events(self) -> AsyncIterator[OutputEvent]:
        while self._winding is None:
            event: GenerationEvent | Ending
            if self._held_back is not None:
                event, self._held_back = self._held_back, None
            else:
                event = await self._next(self._settings.idle_timeout_s)
            if isinstance(event, Ending):
                self._wind_down(event)
                break
            if isinstance(event, Finished | Failed):
                self._wind_down(self._ending_of(event), event)
                break
            if isinstance(event, Started):
                continue
            yield event
            # Handed on: it reached the consumer's connection, which asks for the next.
            if not self.is_whole and isinstance(event, TextDelta | ToolCallDelta):
                self.delivered_tokens += billable_tokens(event)
            self._consumed += 1
            if self._consumed % CREDIT_BATCH_EVENTS == 0:
                await self.provider.grant_credit(self.id, CREDIT_BATCH_EVENTS)
        await self._wound_down()
        if self.receipt is not None:
            yield self._receipted()
        assert self.outcome is not None
        yield self.outcome

    # --- winding down, once ----------------------------------------------------------

    def _deadline_passed(self) -> None:
        """The maximum duration is up. A consumer reading right now meets it in `_next`;
        one that is not (stalled, or gone without closing) does not stop it here."""
        if not self._is_reading and self._winding is None:
            self._wind_down(Ending.DEADLINE)

    def _wind_down(self, ending: Ending, terminal: Finished | Failed | None = None) -> None:
        if self._winding is None:
            self._winding = asyncio.create_task(self._finish(ending, terminal))

    async def _wound_down(self) -> None:
        """Wait for the wind-down; a caller cancelled meanwhile is cancelled, the wind-down
        goes on."""
        assert self._winding is not None
        await asyncio.shield(self._winding)

    async def _finish(self, ending: Ending, terminal: Finished | Failed | None) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        if not self._channel.is_ended:
            self._is_cancelled_by_us = True
            await self.provider.cancel_job(self.id)
            await self._drain()
        if self._channel.violation is not None:
            ending = Ending.VIOLATION
        self.ending = ending
        terminal = terminal or self._channel.tally.terminal
        self.receipt_check, self.receipt = await check_receipt(
            self._channel,
            self.provider,
            self.request,
            self.card,
            self.id,
            is_expected=terminal is not None or self._is_cancelled_by_us,
            timeout_s=self._settings.receipt_timeout_s,
        )
        self.provider.forget_job(self.id)
        if self.is_whole:
            self.delivered_tokens = self.relayed_tokens if ending is Ending.COMPLETED else 0
        self.decision = decide(
            Facts(
                ending=ending,
                receipt=self.receipt_check,
                prompt_tokens=self.prompt_tokens,
                delivered_tokens=self.delivered_tokens,
                max_tokens=self.request.max_tokens or 0,
            )
        )
        self.outcome = self._shown_outcome(ending, terminal)
        self._judge_provider(self.decision)
        self.settlement = await self._settle(self, self.decision)

    async def _drain(self) -> None:
        """After a cancel: take the provider's remaining events (relayed to nobody) until
        its terminal one, bounded, so its receipt can be checked against all it sent."""
        until = time.monotonic() + self._settings.receipt_timeout_s
        while not self._channel.is_ended and (left_s := until - time.monotonic()) > 0:
            if isinstance(await self._next(left_s), Ending):
                return

    def _shown_outcome(
        self, ending: Ending, terminal: Finished | Failed | None
    ) -> Finished | Failed:
        assert self.decision is not None
        if self.decision.verdict is Verdict.UNTRUSTED:
            return Failed(code="engine_error", message="The provider's answer did not verify.")
        if ending is Ending.COMPLETED and isinstance(terminal, Finished):
            usage = Usage(self.prompt_tokens, self.relayed_tokens)
            return Finished(terminal.reason, usage, stop_sequence=terminal.stop_sequence)
        if ending is Ending.TIMED_OUT:
            return Failed(code="timeout", message="The provider stopped answering.")
        if ending is Ending.DEADLINE:
            return Failed(code="timeout", message="The job reached its maximum duration.")
        if ending is Ending.CONSUMER_LEFT:
            return Finished("cancelled", Usage(self.prompt_tokens, self.delivered_tokens))
        if isinstance(terminal, Failed):
            return terminal
        return Failed(code="provider_gone", message="The provider stopped mid-job.")

    def _judge_provider(self, decision: Decision) -> None:
        """Tell routing how the provider did, from the coordinator's own clock and tally."""
        stats = self.provider.stats
        if decision.verdict is Verdict.UNTRUSTED:
            self.provider.mark_untrusted(decision.reason)
            stats.job_failed()
        elif decision.verdict is Verdict.UNRELIABLE:
            stats.job_failed()
        elif decision.verdict is Verdict.SERVED:
            # Speed in output the coordinator relayed, not in tokens a provider says it
            # sampled: bytes cannot be claimed, only sent (and the consumer receives them).
            first_s = (self._first_token_ms or 0) / 1000
            decode_s = max(time.monotonic() - self._t0 - first_s, 0.0)
            stats.job_finished(self._channel.tally.output_bytes // BYTES_PER_TOKEN, decode_s)

    async def close(self) -> None:
        """End the job once: if it still runs, the consumer has left — cancel the
        provider's work, wind down, settle. Always hands the job back to its owner."""
        if self._is_closed:
            return
        self._is_closed = True
        try:
            self._wind_down(self.ending or Ending.CONSUMER_LEFT, self._terminal)
            await self._wound_down()
        finally:
            self._on_close(self)

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

    def record(self, decision: Decision | None) -> job_ledger.JobRecord:
        """The job's metadata as stored: the coordinator's counts, never the provider's
        claims, and never content."""
        ending = self.ending
        if ending is Ending.COMPLETED:
            status = "completed"
        elif ending is Ending.CONSUMER_LEFT:
            status = "cancelled"
        else:
            status = "failed"
        outcome = self.outcome or self.attempt_failure
        billed = decision.billed if decision is not None else None
        return job_ledger.JobRecord(
            id=self.id,
            account_id=self.account_id,
            key_id=self.key_id,
            model=self.request.model,
            provider_id=self.provider.id,
            status=status,
            finish_reason=outcome.reason if isinstance(outcome, Finished) else None,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.relayed_tokens,
            created_at=self.created_at,
            first_token_ms=self._first_token_ms,
            duration_ms=_elapsed_ms(self._t0),
            error_code=outcome.code if isinstance(outcome, Failed) else None,
            billed_prompt_tokens=billed.prompt_tokens if billed else 0,
            billed_completion_tokens=billed.completion_tokens if billed else 0,
            receipt_hash=receipt_hash(self.receipt.json_text) if self.receipt else None,
        )


def _as_attempt_failure(first: GenerationEvent | Ending) -> Failed | None:
    """Why the first output did not come, or None when it did."""
    if first is Ending.TIMED_OUT or first is Ending.DEADLINE:
        return Failed(code="timeout", message="The provider did not answer in time.")
    if isinstance(first, Failed):
        return first
    if isinstance(first, Finished):
        if first.reason == "cancelled":
            return Failed(code="engine_error", message="The provider stopped unasked.")
        return None  # an empty answer (max_tokens 0: counting tokens) is an answer
    if isinstance(first, Started):
        return Failed(code="engine_error", message="The provider started twice.")
    return None


def _loop_time_of(monotonic_s: float) -> float:
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_s - time.monotonic())


def _elapsed_ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)
