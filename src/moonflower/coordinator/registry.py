"""Live providers: who is connected, what they serve, and which one takes the next job.

The registry holds one `ProviderSession` per open provider WebSocket. A session owns the
per-job event queues of that connection, so a provider that disappears fails exactly its
own jobs. The registry must not do I/O beyond the `send` callable each session is given,
and knows nothing of HTTP dialects or storage.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from moonflower import wire
from moonflower.coordinator.channel import JobChannel
from moonflower.coordinator.trust import ProviderTrust, TrustLevel
from moonflower.generation import Failed, GenerationRequest

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
    """The ledger account this provider's earnings are credited to."""
    connected_at: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    jobs_served: int = 0
    tokens_generated: int = 0
    reported_free_slots: int | None = None
    challenge_answer: asyncio.Future[wire.ChallengeAnswer] | None = None
    """Resolved by the answer to the challenge in flight, if one is."""
    _jobs: dict[str, JobChannel] = field(default_factory=dict)
    _receipts: dict[str, JobChannel] = field(default_factory=dict)
    _is_closed: bool = False

    @property
    def active_jobs(self) -> int:
        return len(self._jobs)

    @property
    def load(self) -> float:
        return len(self._jobs) / self.registration.max_concurrent_jobs

    def is_routable(self, floor: TrustLevel, freshness_s: float) -> bool:
        if self._is_closed:
            return False
        return self.trust.is_routable(floor, freshness_s=freshness_s, now=time.monotonic())

    def card(self, model: str) -> wire.ModelCard | None:
        return next((m for m in self.registration.models if m.id == model), None)

    def mark_untrusted(self, reason: str) -> None:
        log.info("provider %s breached a rule", self.id)
        self.trust.mark_untrusted(reason)

    async def start_job(self, job_id: str, request: GenerationRequest) -> JobChannel:
        """Seal `request` to this provider and send it; its opened events land in the
        channel's queue, its receipt in the channel's future."""
        channel = JobChannel(job_id, self.encryption_public_key)
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

    def forget_job(self, job_id: str) -> None:
        """Stop routing anything more of `job_id` (late events, its receipt) to its channel."""
        self._jobs.pop(job_id, None)
        self._receipts.pop(job_id, None)

    def take_answer(self, answer: wire.ChallengeAnswer) -> None:
        """An answer no challenge waits for (late, or unasked) is ignored: the challenge it
        may belong to has already been judged as unanswered."""
        waiting = self.challenge_answer
        if waiting is not None and not waiting.done():
            waiting.set_result(answer)

    def deliver(self, job_id: str, sealed_event: str) -> None:
        channel = self._jobs.get(job_id)
        if channel is None:
            # Late events of a job already finished or cancelled: nothing waits for them.
            log.debug("provider %s sent an event for unknown job %s", self.id, job_id)
            return
        event = channel.open_event(sealed_event)
        if event is None:
            del self._jobs[job_id]
            self.mark_untrusted("a job frame failed to open")
            return
        channel.events.put_nowait(event)
        if event.kind in ("finished", "failed"):
            del self._jobs[job_id]

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
        """Fail every job still running on this connection."""
        self._is_closed = True
        gone = Failed(code="provider_gone", message="The provider disconnected mid-job.")
        for channel in self._jobs.values():
            channel.events.put_nowait(gone)
        self._jobs.clear()


class Registry:
    """The set of live provider sessions.

    Only sessions that meet the trust floor and passed a challenge within `freshness_s` are
    offered for jobs or listed as serving; `default_floor` applies unless a caller raises it.
    """

    def __init__(self, *, default_floor: TrustLevel, freshness_s: float) -> None:
        self._sessions: dict[str, ProviderSession] = {}
        self._turn = itertools.count()
        self.default_floor = default_floor
        self.freshness_s = freshness_s

    def add(self, session: ProviderSession) -> None:
        self._sessions[session.id] = session

    def remove(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.close()

    def __iter__(self) -> Iterator[ProviderSession]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def serving(self, model: str, floor: TrustLevel | None = None) -> list[ProviderSession]:
        """Sessions that may take a job for `model` now, at trust `floor` or above."""
        level = max(floor or self.default_floor, self.default_floor)
        return [
            s
            for s in self._sessions.values()
            if s.card(model) is not None and s.is_routable(level, self.freshness_s)
        ]

    def connected_for(self, model: str) -> bool:
        """Is any connected provider, trusted or not, serving `model`?"""
        return any(s.card(model) is not None for s in self._sessions.values())

    def routable_count(self) -> int:
        return sum(
            1
            for s in self._sessions.values()
            if s.is_routable(self.default_floor, self.freshness_s)
        )

    def pick(self, model: str, floor: TrustLevel | None = None) -> ProviderSession | None:
        """The least-loaded provider serving `model`; ties rotate so load spreads evenly."""
        candidates = self.serving(model, floor)
        if not candidates:
            return None
        turn = next(self._turn)
        ranked = sorted(
            enumerate(candidates),
            key=lambda ic: (ic[1].load, (ic[0] - turn) % len(candidates)),
        )
        return ranked[0][1]

    def models(self) -> dict[str, list[wire.ModelCard]]:
        """Every model served right now, with the cards of the providers serving it."""
        served: dict[str, list[wire.ModelCard]] = {}
        for session in self._sessions.values():
            if not session.is_routable(self.default_floor, self.freshness_s):
                continue
            for card in session.registration.models:
                served.setdefault(card.id, []).append(card)
        return served
