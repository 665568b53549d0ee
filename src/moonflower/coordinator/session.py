"""One connected provider, for the life of its WebSocket: what it registered, what it has
proven (`trust`), how it has served (`stats`), and the per-job channels of its connection,
so a provider that disappears fails exactly its own jobs.

Sends frames only through the `send_frame` callable it is given; knows nothing of HTTP
dialects, storage or how providers are chosen (`registry`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from moonflower import errors, wire
from moonflower.coordinator.channel import JobChannel
from moonflower.coordinator.scoring import ProviderStats
from moonflower.coordinator.trust import ProviderTrust, TrustLevel
from moonflower.generation import GenerationRequest

log = logging.getLogger(__name__)

SendFrame = Callable[[str], Awaitable[None]]


@dataclass(eq=False)
class ProviderSession:
    """One connected provider, for the life of its WebSocket."""

    id: str
    registration: wire.Register
    send_frame: SendFrame
    encryption_public_key: bytes
    trust: ProviderTrust
    account_id: str | None = None
    is_draining: bool = False
    """The provider said it is stopping: it finishes its jobs but gets no new ones."""
    """The ledger account this provider's earnings are credited to."""
    connected_at: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    jobs_served: int = 0
    tokens_generated: int = 0
    reported_free_slots: int | None = None
    challenge_answer: asyncio.Future[wire.ChallengeAnswer] | None = None
    """Resolved by the answer to the challenge in flight, if one is."""
    stats: ProviderStats = field(default_factory=ProviderStats)
    """What the coordinator measured of this connection's jobs; routing ranks by it. The
    dispatcher reports to it; nothing rebinds it."""
    _jobs: dict[str, JobChannel] = field(default_factory=dict)
    _receipts: dict[str, JobChannel] = field(default_factory=dict)
    _is_closed: bool = False

    @property
    def active_jobs(self) -> int:
        return len(self._jobs)

    @property
    def load(self) -> float:
        return len(self._jobs) / self.registration.max_concurrent_jobs

    @property
    def has_free_slot(self) -> bool:
        return len(self._jobs) < self.registration.max_concurrent_jobs

    def is_routable(self, floor: TrustLevel, freshness_s: float, now: float | None = None) -> bool:
        if self._is_closed or self.is_draining:
            return False
        if now is None:
            now = time.monotonic()
        return self.trust.is_routable(floor, freshness_s=freshness_s, now=now)

    def card(self, model: str) -> wire.ModelCard | None:
        return next((m for m in self.registration.models if m.id == model), None)

    def is_loaded(self, model: str) -> bool:
        """Is `model` in memory, ready for a first token without loading? Every registered
        model is today (the wire protocol has no way to say otherwise); scoring already
        charges a cold start to a provider for which this says no."""
        return True

    def mark_untrusted(self, reason: str) -> None:
        log.info("provider %s breached a rule", self.id)
        self.trust.mark_untrusted(reason)

    async def start_job(
        self, job_id: str, request: GenerationRequest, card: wire.ModelCard
    ) -> JobChannel:
        """Seal `request` (its `max_tokens` set) to this provider and send it; its opened
        events land in the channel's queue, its receipt in the channel's future."""
        assert request.max_tokens is not None
        channel = JobChannel(
            job_id,
            self.encryption_public_key,
            max_tokens=request.max_tokens,
            context_length=card.context_length,
        )
        frame = channel.request_frame(request)
        self._jobs[job_id] = channel
        self._receipts[job_id] = channel
        try:
            await self.send_frame(frame)
        except Exception:
            self._jobs.pop(job_id, None)
            self._receipts.pop(job_id, None)
            raise
        return channel

    def take_receipt(self, job_id: str, receipt: wire.SignedBlob) -> None:
        channel = self._receipts.pop(job_id, None)
        if channel is None:
            log.debug("provider %s sent a receipt nobody waits for (job %s)", self.id, job_id)
            return
        channel.take_receipt(receipt)

    def has_job(self, job_id: str) -> bool:
        """Does `job_id` still take events or a receipt on this connection?"""
        return job_id in self._jobs or job_id in self._receipts

    def forget_job(self, job_id: str) -> None:
        """Stop routing anything more of `job_id` (late events, its receipt) to its channel."""
        self._jobs.pop(job_id, None)
        channel = self._receipts.pop(job_id, None)
        if channel is not None:
            channel.no_receipt()

    def take_answer(self, answer: wire.ChallengeAnswer) -> None:
        """An answer no challenge waits for (late, or unasked) is ignored: the challenge it
        may belong to has already been judged as unanswered."""
        waiting = self.challenge_answer
        if waiting is not None and not waiting.done():
            waiting.set_result(answer)

    def deliver(self, job_id: str, sealed_event: str) -> None:
        """Hand one sealed event to its job. A frame that breaks the protocol ends the job,
        untrusts this provider and raises `ProtocolError`: the connection is then closed."""
        channel = self._jobs.get(job_id)
        if channel is None:
            # Late events of a job already finished or cancelled: nothing waits for them.
            log.debug("provider %s sent an event for unknown job %s", self.id, job_id)
            return
        try:
            channel.accept(sealed_event)
        except errors.ProtocolError:
            del self._jobs[job_id]
            self.mark_untrusted(f"job {job_id}: {channel.violation or 'protocol violation'}")
            raise
        if channel.tally.terminal is not None:
            del self._jobs[job_id]

    async def grant_credit(self, job_id: str, events: int) -> None:
        """Let the provider send `events` more of `job_id`: its consumer has read them."""
        channel = self._jobs.get(job_id)
        if channel is None or self._is_closed:
            return
        channel.tally.grant(events)  # counted before the provider can spend it
        try:
            await self.send_frame(wire.encode(wire.JobCredit(job_id=job_id, events=events)))
        except Exception:  # the socket is going away; its jobs end with it
            log.debug("could not grant credit for job %s to provider %s", job_id, self.id)

    async def cancel_job(self, job_id: str) -> None:
        """Ask the provider to stop; its last events and receipt still reach the channel
        until `forget_job`."""
        if job_id not in self._jobs or self._is_closed:
            return
        try:
            await self.send_frame(wire.encode(wire.JobCancel(job_id=job_id)))
        except Exception:  # the socket is going away; its jobs end with it
            log.debug("could not send cancel for job %s to provider %s", job_id, self.id)

    def close(self) -> None:
        """The connection is gone: every job still running on it, or still waiting for its
        receipt, learns that nothing more will come."""
        self._is_closed = True
        for channel in {*self._jobs.values(), *self._receipts.values()}:
            channel.connection_lost()
        self._jobs.clear()
        self._receipts.clear()
