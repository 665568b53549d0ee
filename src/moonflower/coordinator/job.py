"""One job: a request on one provider, from the moment it is sent until it is closed.

A `Job` is what the dispatcher hands to a route. It waits for the provider's first output
(`wait_ready`), then gives the consumer the relayed events (`relay.py`) followed by the
receipt event and exactly one terminal event. However the job ends — the relay ended, or
the consumer hung up — it is closed exactly once by its owner (the dispatcher's close path,
`closing.py`), in a task that a consumer hanging up cannot cancel: the close decides the
money and the verdict and settles them. The stream's last events wait for that close, so
the receipt event can say what the job cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from moonflower import errors, wire
from moonflower.coordinator.billing import prompt_size
from moonflower.coordinator.channel import BROKE_ARRIVAL, JobChannel
from moonflower.coordinator.relay import Relay
from moonflower.coordinator.session import ProviderSession
from moonflower.coordinator.settlement import Ending
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
)
from moonflower.ledger.billing import Settlement
from moonflower.ledger.book import format_usd
from moonflower.settings import CoordinatorSettings

CloseJob = Callable[["Job"], Coroutine[None, None, None]]
"""The owner's close path: wait for the relay to wind down, then decide and settle."""

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


class PromptCounter(Protocol):
    """Counts a request's prompt with a model's own tokenizer (`prompt_count.py`)."""

    async def count(self, request: GenerationRequest, card: wire.ModelCard) -> int | None: ...


class PromptMeasures:
    """One request's prompt, measured once however many providers it is weighed for or sent
    to: the size of its JSON (`billing.prompt_size`, one serialisation) and, per weights,
    the exact count with their tokenizer. Filling in a model's recommended sampling changes
    no prompt, so the measures of the request as admitted hold for the request as sent."""

    def __init__(self, request: GenerationRequest, counter: PromptCounter | None) -> None:
        self._request = request
        self._counter = counter
        self._size: int | None = None
        self._exact: dict[tuple[str, str], int | None] = {}

    def bound(self, card: wire.ModelCard) -> int:
        """`billing.prompt_token_bound` on `card`."""
        if self._size is None:
            self._size = prompt_size(self._request)
        return min(self._size, card.context_length)

    async def count(self, card: wire.ModelCard) -> PromptCount:
        weights = (card.engine, card.sha256)
        if weights not in self._exact:
            counter = self._counter
            exact = None if counter is None else await counter.count(self._request, card)
            self._exact[weights] = exact
        return PromptCount(exact=self._exact[weights], bound=self.bound(card))


class Job:
    """One generation on one provider, from the moment it is sent until it is closed."""

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
        closer: CloseJob,
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
        self.relay = Relay(
            job_id=job_id,
            request=request,
            provider=provider,
            card=card,
            channel=channel,
            settings=settings,
            on_end=self._relay_ended,
        )
        self.outcome: Finished | Failed | None = None
        """The terminal event the consumer is shown."""
        self.settlement: Settlement | None = None
        self.attempt_failure: Failed | None = None
        """Why this attempt did not become the consumer's job, when it did not."""
        self._settings = settings
        self._closer = closer
        self._on_close = on_close
        self._closing: asyncio.Task[None] | None = None
        self._is_closed = False
        self._refusal: Failed | None = None
        """The provider's refusal of the request, when it refused it before any output."""

    @property
    def is_whole(self) -> bool:
        """A whole (non-streaming) answer: its output reaches the consumer only if the job
        completes, all at once."""
        return self.relay.is_whole

    @is_whole.setter
    def is_whole(self, is_whole: bool) -> None:
        self.relay.is_whole = is_whole

    @property
    def ending(self) -> Ending | None:
        """How the job ended, once its relay has wound down."""
        return self.relay.ending

    @property
    def receipt(self) -> wire.SignedBlob | None:
        """The provider's receipt, once verified against what this job relayed."""
        return self.relay.receipt

    async def wait_ready(self) -> bool:
        """Wait until the provider has accepted the prompt and produced its first output (or
        ended). False when this attempt failed in a way another provider may not — it went
        away, broke, or was too slow to a first token — so the job can go elsewhere, nothing
        having reached the consumer; a refusal of the request itself raises its error."""
        first = await self.relay.next(self._settings.first_event_timeout_s)
        if not isinstance(first, Ending) and isinstance(first.event, Started):
            started = first.event
            self.prompt_tokens = self.prompt.billable(started.prompt_tokens)
            self.starts_in_reasoning = started.starts_in_reasoning
            first = await self.relay.next(self._settings.first_token_timeout_s)
        elif not isinstance(first, Ending) and isinstance(first.event, TextDelta | ToolCallDelta):
            first = BROKE_ARRIVAL  # the channel refuses this; kept for safety
        failure = _as_attempt_failure(first if isinstance(first, Ending) else first.event)
        if failure is not None:
            self.attempt_failure = failure
            if failure.code in RETRYABLE_BEFORE_FIRST_TOKEN:
                self.provider.stats.job_failed()
                return False
            # The request itself was refused: no other provider would do better.
            assert not isinstance(first, Ending)  # every other failure is the provider's
            assert isinstance(first.event, Failed)
            self._refusal = first.event
            raise errors.from_failure(failure)
        assert not isinstance(first, Ending)
        self.relay.ready(first)
        assert self.relay.first_token_ms is not None
        self.provider.stats.job_started(self.relay.first_token_ms / 1000)
        return True

    async def abandon(self) -> None:
        """Give up this attempt before anything reached the consumer: stop the provider's
        work and forget the job on its connection. Nothing is settled (the hold stays with
        the request, which may go to another provider)."""
        self._is_closed = True
        await self.relay.abandon()

    async def events(self) -> AsyncIterator[OutputEvent]:
        """What the provider generated — text (with `<think>` blocks split off as
        reasoning, once, by the job's channel), tool calls — then, once the job is closed,
        its receipt event and exactly one terminal event."""
        async for event in self.relay.events():
            yield event
        await self._closed()
        if self.receipt is not None:
            yield self._receipted()
        assert self.outcome is not None
        yield self.outcome

    def _relay_ended(self) -> None:
        """However the relay ended, the owner closes the job now, whether or not anyone
        reads on."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._closer(self))

    async def _closed(self) -> None:
        """Wait for the owner's close; a caller cancelled meanwhile is cancelled, the close
        goes on."""
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def close(self) -> None:
        """End the job once: if it still runs, the consumer has left — cancel the
        provider's work, then wait for the owner to close it. Always hands the job back to
        its owner."""
        if self._is_closed:
            return
        self._is_closed = True
        try:
            ending = Ending.CONSUMER_LEFT if self._refusal is None else Ending.REFUSED
            self.relay.end(ending, self._refusal)
            await self._closed()
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
