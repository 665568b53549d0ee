"""Relaying one job's events from its provider to the consumer, and ending the relay once.

The channel counts, checks and splits every frame as it arrives (`channel.py`, `tally.py`);
the relay hands the consumer the pieces the channel split, notes how much of the tally's
relayed count reached the consumer's connection (it keeps no count of its own), grants the
provider credit as the consumer reads, and holds the job to its deadline (wall
clock: it holds whether or not the consumer reads). However the relay ends — the provider
finished or failed, its connection went, the coordinator timed it out or reached the
deadline, the consumer hung up — it is wound down exactly once, in a task of its own that a
consumer hanging up cannot cancel: cancel the provider's work if it still runs, take its last
events (bounded) and check its receipt (`receipt_check.py`). What follows from how it ended —
the money and the verdict — is the job's owner's (`closing.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from moonflower import wire
from moonflower.coordinator.channel import BROKE_PROTOCOL, GONE, Arrival, JobChannel
from moonflower.coordinator.receipt_check import check_receipt
from moonflower.coordinator.session import ProviderSession
from moonflower.coordinator.settlement import Ending, ReceiptCheck
from moonflower.generation import (
    Failed,
    Finished,
    GeneratedEvent,
    GenerationRequest,
)
from moonflower.settings import CoordinatorSettings

CREDIT_BATCH_EVENTS = wire.FLOW_WINDOW_EVENTS // 2
"""Events the consumer reads between two grants of credit to the provider: half the window,
so the provider still has half a window to send while a grant is on its way, at one credit
frame per half window."""


class Relay:
    """The events of one job on one provider, from the moment it is sent until its receipt
    was checked."""

    def __init__(
        self,
        *,
        job_id: str,
        request: GenerationRequest,
        provider: ProviderSession,
        card: wire.ModelCard,
        channel: JobChannel,
        settings: CoordinatorSettings,
        on_end: Callable[[], None],
    ) -> None:
        self._job_id = job_id
        self._request = request
        self._provider = provider
        self._card = card
        self._channel = channel
        self._settings = settings
        self._on_end = on_end
        self.is_whole = False
        """A whole (non-streaming) answer: its output reaches the consumer only if the job
        completes, all at once."""
        self.delivered_tokens = 0
        """Billable completion tokens handed to the consumer's connection: the tally's
        relayed count through the last event the consumer read."""
        self.ending: Ending | None = None
        self.terminal: Finished | Failed | None = None
        """The provider's terminal event, once wound down, when it sent one."""
        self.receipt: wire.SignedBlob | None = None
        """The provider's receipt, once verified against what this job relayed."""
        self.receipt_check: ReceiptCheck | None = None
        self.t0 = time.monotonic()
        self.first_token_ms: int | None = None
        self._deadline = self.t0 + settings.max_job_duration_s
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._is_cancelled_by_us = False
        self._is_reading = False
        self._winding: asyncio.Task[None] | None = None
        self._consumed = 0
        self._held_back: Arrival | None = None
        """The first output, read before the job was handed to the consumer."""
        self._last_read: Arrival | None = None
        """The last event the consumer read."""

    @property
    def relayed_tokens(self) -> int:
        """Billable completion tokens the provider relayed (delivered or not), as the
        channel's tally counted them."""
        return self._channel.tally.relayed_tokens

    @property
    def output_bytes(self) -> int:
        """Bytes of output the provider sent, as the channel's tally counted them."""
        return self._channel.tally.output_bytes

    @property
    def has_ended(self) -> bool:
        return self._winding is not None

    async def next(self, wait_s: float) -> Arrival | Ending:
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
        return event

    def ready(self, first: Arrival) -> None:
        """The provider produced its first output: keep it for the consumer, and start the
        clock on the job's deadline."""
        self.first_token_ms = elapsed_ms(self.t0)
        self._held_back = first
        self._deadline_timer = asyncio.get_running_loop().call_at(
            _loop_time_of(self._deadline), self._deadline_passed
        )

    async def abandon(self) -> None:
        """Stop the provider's work and forget the job on its connection, before anything
        reached the consumer."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        if not self._channel.is_ended:
            await self._provider.cancel_job(self._job_id)
        self._provider.forget_job(self._job_id)

    async def events(self) -> AsyncIterator[GeneratedEvent]:
        """The provider's output as the consumer reads it — each event as the channel split
        it — until the relay ends (its terminal event is the owner's to show, once the relay
        has wound down)."""
        while self._winding is None:
            arrival: Arrival | Ending
            if self._held_back is not None:
                arrival, self._held_back = self._held_back, None
            else:
                arrival = await self.next(self._settings.idle_timeout_s)
            if isinstance(arrival, Ending):
                self.end(arrival)
                break
            event = arrival.event
            if isinstance(event, Finished | Failed):
                self.end(self._ending_of(event), event)
                for piece in arrival.shown:  # the text it held back until the end
                    yield piece
                break
            self._last_read = arrival
            for piece in arrival.shown:
                yield piece
            # Handed on: it reached the consumer's connection, which asks for the next.
            if not self.is_whole:
                self.delivered_tokens = arrival.relayed_tokens
            self._consumed += 1
            if self._consumed % CREDIT_BATCH_EVENTS == 0:
                await self._provider.grant_credit(self._job_id, CREDIT_BATCH_EVENTS)
        # Cut short without the provider's end (after it, nothing is held back): the text
        # held back from what the consumer read is released to it, unless events it never
        # read came after.
        if self._channel.last is self._last_read:
            for piece in self._channel.unreleased():
                yield piece

    def _ending_of(self, event: Finished | Failed) -> Ending:
        if event is BROKE_PROTOCOL or self._channel.violation is not None:
            return Ending.VIOLATION
        if event is GONE:
            return Ending.PROVIDER_GONE
        if isinstance(event, Finished) and event.reason != "cancelled":
            return Ending.COMPLETED
        return Ending.PROVIDER_FAILED  # a failure, or stopping unasked

    # --- winding down, once ----------------------------------------------------------

    def _deadline_passed(self) -> None:
        """The maximum duration is up. A consumer reading right now meets it in `next`;
        one that is not (stalled, or gone without closing) does not stop it here."""
        if not self._is_reading and self._winding is None:
            self.end(Ending.DEADLINE)

    def end(self, ending: Ending, terminal: Finished | Failed | None = None) -> None:
        """End the relay as `ending` (a no-op once ended) and tell its owner."""
        if self._winding is None:
            self._winding = asyncio.create_task(self._wind_down(ending, terminal))
            self._on_end()

    async def wound_down(self) -> None:
        """Wait for the wind-down; a caller cancelled meanwhile is cancelled, the wind-down
        goes on."""
        assert self._winding is not None
        await asyncio.shield(self._winding)

    async def _wind_down(self, ending: Ending, terminal: Finished | Failed | None) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        if not self._channel.is_ended:
            self._is_cancelled_by_us = True
            await self._provider.cancel_job(self._job_id)
            await self._drain()
        if self._channel.violation is not None:
            ending = Ending.VIOLATION
        self.ending = ending
        self.terminal = terminal = terminal or self._channel.tally.terminal
        self.receipt_check, self.receipt = await check_receipt(
            self._channel,
            self._provider,
            self._request,
            self._card,
            self._job_id,
            is_expected=terminal is not None or self._is_cancelled_by_us,
            timeout_s=self._settings.receipt_timeout_s,
        )
        self._provider.forget_job(self._job_id)
        if self.is_whole:
            self.delivered_tokens = self.relayed_tokens if ending is Ending.COMPLETED else 0

    async def _drain(self) -> None:
        """After a cancel: take the provider's remaining events (relayed to nobody) until
        its terminal one, bounded, so its receipt can be checked against all it sent."""
        until = time.monotonic() + self._settings.receipt_timeout_s
        while not self._channel.is_ended and (left_s := until - time.monotonic()) > 0:
            if isinstance(await self.next(left_s), Ending):
                return


def _loop_time_of(monotonic_s: float) -> float:
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_s - time.monotonic())


def elapsed_ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)
