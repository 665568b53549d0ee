"""Many simulated providers in one process, for scale tests and benchmarks.

Each is a real WebSocket client speaking the real wire protocol to a real coordinator: it
registers, sends heartbeats, opens each sealed job with its own X25519 key and seals a few
short text events back, honouring cancels. What it leaves out is everything that costs a
real provider memory or CPU: there is no model, and no attestation statement — so these
providers are trust level `none`, are never challenged, sign no receipts, and a coordinator
only routes to them with `MOONFLOWER_MIN_TRUST=none`. Each presents the provider `token` it
is given; without one it is anonymous, which a coordinator admits only with
`MOONFLOWER_ALLOW_ANONYMOUS_PROVIDERS=true`. They say nothing about inference or trust; they
load the coordinator's connection handling, routing and relaying.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from moonflower import wire
from moonflower.crypto.envelope import EncryptionKeyPair, SealedChannel
from moonflower.crypto.signing import b64d, b64e
from moonflower.errors import ProtocolError, SealError
from moonflower.generation import (
    Finished,
    FinishReason,
    GenerationEvent,
    Started,
    TextDelta,
    Usage,
)

log = logging.getLogger(__name__)

HARDWARE = wire.Hardware(cpu="simulated", cpu_cores=1, memory_bytes=1 << 30, os="simulated")
WORDS = ("Hello", " from", " a", " simulated", " provider", ".")
REGISTER_TIMEOUT_S = 60.0


@dataclass
class FleetCounters:
    """What the whole fleet did; a healthy run has no `disconnects` or `bad_frames`."""

    registered: int = 0
    jobs: int = 0
    cancelled: int = 0
    heartbeats: int = 0
    bad_frames: int = 0
    """Frames from the coordinator that did not parse, and jobs that did not open."""
    disconnects: int = 0
    """Connections the coordinator closed or lost while the fleet was running."""


@dataclass
class SimulatedProvider:
    url: str
    model: str
    slots: int
    counters: FleetCounters
    words: tuple[str, ...] = WORDS
    token_delay_s: float = 0.0
    token: str | None = None
    """The provider token presented when connecting; None connects anonymously."""
    keys: EncryptionKeyPair = field(default_factory=EncryptionKeyPair.generate)
    provider_id: str | None = None
    _socket: ClientConnection | None = None
    _send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _jobs: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _credits: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    """Per job, the events it may still send: the flow-control window, then what the
    coordinator grants (`job_credit`) as its consumer reads."""

    def registration(self) -> wire.Register:
        card = wire.ModelCard(
            id=self.model, sha256="5" * 64, context_length=4096, engine="simulated", size_bytes=0
        )
        return wire.Register(
            protocol_version=wire.PROTOCOL_VERSION,
            agent_version="simulated",
            hardware=HARDWARE,
            models=(card,),
            max_concurrent_jobs=self.slots,
            encryption_public_key=b64e(self.keys.public_key),
            statement=None,
        )

    async def connect(self) -> None:
        """Open the socket and register; returns once the coordinator said `registered`."""
        # No WebSocket pings: heartbeats already prove liveness, and a thousand ping timers
        # would be most of this process's work.
        headers = {} if self.token is None else {"Authorization": f"Bearer {self.token}"}
        self._socket = await connect(
            self.url,
            additional_headers=headers,
            max_size=wire.MAX_FRAME_BYTES,
            ping_interval=None,
            open_timeout=30,
        )
        await self._send(self.registration())
        async with asyncio.timeout(REGISTER_TIMEOUT_S):
            reply = wire.decode_from_coordinator(await self._socket.recv())
        if not isinstance(reply, wire.Registered):
            raise ProtocolError(f"registration refused: {reply}")
        self.provider_id = reply.provider_id
        self.counters.registered += 1

    async def serve(self, heartbeat_interval_s: float) -> None:
        """Answer the coordinator until the socket closes or this task is cancelled."""
        assert self._socket is not None
        beats = asyncio.create_task(self._heartbeats(heartbeat_interval_s))
        try:
            async for frame in self._socket:
                try:
                    message = wire.decode_from_coordinator(frame)
                except ProtocolError:
                    self.counters.bad_frames += 1
                    continue
                if isinstance(message, wire.JobRequest):
                    task = asyncio.create_task(self._answer(message))
                    self._jobs[message.job_id] = task
                    task.add_done_callback(functools.partial(self._forget, message.job_id))
                elif isinstance(message, wire.JobCancel):
                    running = self._jobs.get(message.job_id)
                    if running is not None:
                        running.cancel()
                elif isinstance(message, wire.JobCredit):
                    credit = self._credits.get(message.job_id)
                    for _ in range(message.events if credit is not None else 0):
                        assert credit is not None
                        credit.release()
            self.counters.disconnects += 1
        except ConnectionClosed:
            self.counters.disconnects += 1
        finally:
            beats.cancel()
            for running in list(self._jobs.values()):
                running.cancel()

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()

    def _forget(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._jobs.pop(job_id, None)
        self._credits.pop(job_id, None)

    async def _send(self, message: wire.AnyMessage) -> None:
        assert self._socket is not None
        async with self._send_lock:
            await self._socket.send(wire.encode(message))

    async def _heartbeats(self, interval_s: float) -> None:
        # A random phase, so a thousand providers do not beat in step.
        await asyncio.sleep(random.uniform(0, interval_s))
        while True:
            beat = wire.Heartbeat(
                active_jobs=len(self._jobs),
                jobs_served=self.counters.jobs,
                tokens_generated=0,
            )
            try:
                await self._send(beat)
            except WebSocketException:
                return
            self.counters.heartbeats += 1
            await asyncio.sleep(interval_s)

    async def _answer(self, job: wire.JobRequest) -> None:
        try:
            channel = SealedChannel(self.keys, b64d(job.ephemeral_public_key))
            request = wire.request_from_bytes(channel.open(job.sealed_request))
        except (SealError, ProtocolError, ValueError):
            self.counters.bad_frames += 1
            return
        prompt_tokens = sum(len(m.content.split()) for m in request.messages) or 1
        limit = request.max_tokens if request.max_tokens is not None else len(self.words)
        words = self.words[:limit]
        sent = 0
        credit = self._credits[job.job_id] = asyncio.Semaphore(wire.FLOW_WINDOW_EVENTS)
        try:
            await credit.acquire()
            await self._event(job.job_id, channel, Started(prompt_tokens=prompt_tokens))
            for word in words:
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                await credit.acquire()
                await self._event(job.job_id, channel, TextDelta(text=word, tokens=1))
                sent += 1
            reason: FinishReason = "stop" if len(words) == len(self.words) else "length"
            usage = Usage(prompt_tokens, sent)
            await self._event(job.job_id, channel, Finished(reason=reason, usage=usage))
            self.counters.jobs += 1
        except asyncio.CancelledError:
            self.counters.cancelled += 1
            ending = Finished(reason="cancelled", usage=Usage(prompt_tokens, sent))
            with contextlib.suppress(WebSocketException):
                await self._event(job.job_id, channel, ending)
        except WebSocketException:
            return

    async def _event(self, job_id: str, channel: SealedChannel, event: GenerationEvent) -> None:
        sealed = channel.seal(wire.event_bytes(event))
        await self._send(wire.JobEvent(job_id=job_id, sealed_event=sealed))


@dataclass
class SimulatedFleet:
    providers: list[SimulatedProvider]
    counters: FleetCounters
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@asynccontextmanager
async def simulated_fleet(
    base_url: str,
    count: int,
    *,
    model: str = "simulated",
    slots: int = 4,
    token_delay_s: float = 0.0,
    heartbeat_interval_s: float = wire.HEARTBEAT_INTERVAL_S,
    connecting_at_once: int = 50,
    timeout_s: float = 120.0,
    token: str | None = None,
) -> AsyncIterator[SimulatedFleet]:
    """`count` providers of `model`, all presenting `token` (None: anonymous), all
    registered by the time this yields (at most `connecting_at_once` registering at a time,
    all within `timeout_s`); every socket is closed on exit."""
    url = base_url.replace("http://", "ws://") + "/ws/provider"
    counters = FleetCounters()
    fleet = SimulatedFleet(
        [
            SimulatedProvider(url, model, slots, counters, token_delay_s=token_delay_s, token=token)
            for _ in range(count)
        ],
        counters,
    )
    gate = asyncio.Semaphore(connecting_at_once)

    async def bring_up(provider: SimulatedProvider) -> None:
        async with gate:
            await provider.connect()
        fleet.tasks.append(asyncio.create_task(provider.serve(heartbeat_interval_s)))

    try:
        async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as group:
            for provider in fleet.providers:
                group.create_task(bring_up(provider))
        yield fleet
    finally:
        for task in fleet.tasks:
            task.cancel()
        await asyncio.gather(*fleet.tasks, return_exceptions=True)
        await asyncio.gather(*(p.close() for p in fleet.providers), return_exceptions=True)
