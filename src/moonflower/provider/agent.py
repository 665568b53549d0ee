"""The provider agent: an outbound WebSocket to the coordinator, kept alive for as long as
the process runs.

It registers (protocol version, hardware, models, capacity), sends heartbeats, hands job
requests to the `JobRunner` and cancels them on request, and reconnects whenever the
coordinator goes away. Given several coordinator URLs (replicas of one network), it serves
through one at a time and, when that one drops or refuses to connect, goes straight on to
the next, so losing a replica costs a reconnect rather than the provider; once every URL has
been tried in turn it waits a capped exponential backoff before the next round. No inbound
port is ever opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidURI, WebSocketException

from moonflower import __version__, errors, wire
from moonflower.crypto.envelope import EncryptionKeyPair, SealedChannel
from moonflower.crypto.signing import Signer, b64d, b64e
from moonflower.errors import SealError
from moonflower.generation import Failed, GenerationEvent
from moonflower.provider.engines.base import Engine
from moonflower.provider.identity import ProviderIdentity
from moonflower.provider.jobs import JobOutput, JobRunner, SendFrame
from moonflower.settings import ProviderSettings

log = logging.getLogger(__name__)

REGISTER_REPLY_TIMEOUT_S = 30.0
EPHEMERAL_KEY_BYTES = 32


def websocket_url(coordinator: str) -> str:
    """`http://host:port[/base]` → `ws://host:port[/base]/ws/provider` (https → wss)."""
    parts = urlsplit(coordinator)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise errors.InvalidRequest(
            f"The coordinator URL must look like http://host:port, got {coordinator!r}.",
            param="coordinator",
        )
    path = parts.path.rstrip("/")
    if not path.endswith("/ws/provider"):
        path += "/ws/provider"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class ProviderAgent:
    def __init__(
        self, settings: ProviderSettings, engine: Engine, hardware: wire.Hardware, signer: Signer
    ) -> None:
        self.settings = settings
        self.urls = tuple(websocket_url(coordinator) for coordinator in settings.coordinator)
        self._base_urls = dict(zip(self.urls, settings.coordinator, strict=True))
        self._next_url = 0
        self.engine = engine
        self.hardware = hardware
        self.runner = JobRunner(engine, signer, batch_interval_s=settings.stream_batch_interval_s)
        # A fresh X25519 key per process: jobs are sealed to it and nothing persists it.
        self.encryption = EncryptionKeyPair.generate()
        self.identity = ProviderIdentity(signer, self.encryption, (engine.card,), hardware)
        self.provider_id: str | None = None
        self.coordinator_url: str | None = None
        """The coordinator this agent is registered with now, if any."""
        self.trust_level: str | None = None
        """What that coordinator said this connection's trust level is."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.is_connected = asyncio.Event()
        self.is_draining = False
        self._socket: ClientConnection | None = None
        self._send: SendFrame | None = None

    def registration(self, statement: wire.SignedBlob) -> wire.Register:
        return wire.Register(
            protocol_version=wire.PROTOCOL_VERSION,
            agent_version=__version__,
            hardware=self.hardware,
            models=(self.engine.card,),
            max_concurrent_jobs=self.engine.max_concurrent_jobs,
            encryption_public_key=b64e(self.encryption.public_key),
            statement=statement,
        )

    def _headers(self) -> dict[str, str]:
        token = self.settings.token
        return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    async def run(self) -> None:
        """Stay connected until cancelled; raises only if a coordinator rejects us."""
        backoff = self.settings.backoff_initial_s
        try:
            while True:
                for _ in self.urls:
                    if await self._connect_once(self._take_url()):
                        backoff = self.settings.backoff_initial_s
                    if self.is_draining:
                        return
                delay = backoff * random.uniform(0.8, 1.2)
                log.info("reconnecting in %.1fs", delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self.settings.backoff_max_s)
        finally:
            await self.runner.drain()

    def _take_url(self) -> str:
        """The URL to try next; they are taken in turn, so a provider whose coordinator
        went away tries the others before coming back to it."""
        url = self.urls[self._next_url]
        self._next_url = (self._next_url + 1) % len(self.urls)
        return url

    async def _connect_once(self, url: str) -> bool:
        """Serve one session through `url` until it ends; whether it registered."""
        try:
            async with connect(
                url,
                additional_headers=self._headers(),
                max_size=wire.MAX_FRAME_BYTES,
                ping_interval=10,
                ping_timeout=30,
                open_timeout=10,
            ) as socket:
                await self._session(socket, url)
        except errors.RegistrationRejected:
            raise
        except (OSError, TimeoutError, WebSocketException, errors.ProtocolError) as exc:
            if isinstance(exc, InvalidURI | InvalidHandshake):
                log.warning("cannot connect to %s: %s", url, exc)
            else:
                log.info("lost or could not reach %s (%s)", url, type(exc).__name__)
        finally:
            registered = self.is_connected.is_set()
            self.is_connected.clear()
            self.coordinator_url = None
            self.runner.cancel_all()
        return registered

    async def _session(self, socket: ClientConnection, url: str) -> None:
        send_lock = asyncio.Lock()

        async def send(frame: str) -> None:
            async with send_lock:
                await socket.send(frame)

        await send(wire.encode(self.registration(await self.identity.statement())))
        reply = wire.decode_from_coordinator(
            await asyncio.wait_for(socket.recv(), REGISTER_REPLY_TIMEOUT_S)
        )
        if isinstance(reply, wire.Rejected):
            raise errors.RegistrationRejected(
                f"the coordinator rejected this provider: {reply.reason}"
            )
        if not isinstance(reply, wire.Registered):
            raise errors.ProtocolError(f"expected registered, got {reply.type}")
        self.provider_id = reply.provider_id
        self.trust_level = reply.trust_level
        self.coordinator_url = self._base_urls.get(url, url)
        self._socket, self._send = socket, send
        self.is_connected.set()
        log.info("registered with %s as %s", url, reply.provider_id)
        heartbeats = asyncio.create_task(self._heartbeats(send, reply.heartbeat_interval_s))
        try:
            async for frame in socket:
                message = wire.decode_from_coordinator(frame)
                if isinstance(message, wire.JobRequest):
                    await self._accept(message, send)
                elif isinstance(message, wire.JobCancel):
                    self.runner.cancel(message.job_id)
                elif isinstance(message, wire.JobCredit):
                    self.runner.grant(message.job_id, message.events)
                elif isinstance(message, wire.Challenge):
                    self._spawn(self._answer(message, send))
                elif isinstance(message, wire.Registered | wire.Rejected):
                    raise errors.ProtocolError(f"unexpected {message.type} mid-session")
                else:
                    log.debug("ignoring %s from the coordinator", message.type)
        finally:
            heartbeats.cancel()
        log.info("coordinator closed the connection")

    async def stop_gracefully(self, deadline_s: float) -> None:
        """Stop like a good citizen: tell the coordinator no new jobs, finish the running
        ones (up to `deadline_s`), then close the connection; `run` then returns."""
        if self.is_draining:
            return
        self.is_draining = True
        log.info("draining: finishing %d jobs, taking no new ones", self.runner.active_jobs)
        if self._send is not None:
            with contextlib.suppress(WebSocketException):
                await self._send(wire.encode(wire.Draining()))
        if not await self.runner.wait_idle(deadline_s):
            log.warning("draining: jobs still running at the deadline are cancelled")
        if self._socket is not None:
            await self._socket.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, challenge: wire.Challenge, send: SendFrame) -> None:
        answer = await self.identity.answer(challenge)
        try:
            await send(wire.encode(answer))
        except WebSocketException:
            log.info("could not answer a challenge: the connection is gone")

    async def _accept(self, message: wire.JobRequest, send: SendFrame) -> None:
        """Open a sealed job and start it; its events are sealed back to the job's key."""
        try:
            ephemeral = b64d(message.ephemeral_public_key)
        except ValueError:
            ephemeral = b""
        if len(ephemeral) != EPHEMERAL_KEY_BYTES:
            log.warning("job %s: no valid ephemeral key; ignoring it", message.job_id)
            return
        channel = SealedChannel(self.encryption, ephemeral)
        sink = self._sealed_sink(message.job_id, channel, send)
        if self.is_draining:  # sent before the coordinator heard we are stopping
            await sink.event(Failed(code="overloaded", message="The provider is stopping."))
            return
        try:
            request = wire.request_from_bytes(channel.open(message.sealed_request))
        except (SealError, errors.ProtocolError):
            log.warning("job %s: the request did not open; refusing it", message.job_id)
            await sink.event(Failed(code="invalid_request", message="The job did not open."))
            return
        self.runner.submit(message.job_id, request, sink)

    def _sealed_sink(self, job_id: str, channel: SealedChannel, send: SendFrame) -> JobOutput:
        return _SealedOutput(job_id, channel, send)

    async def _heartbeats(self, send: SendFrame, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            active = self.runner.active_jobs
            beat = wire.Heartbeat(
                active_jobs=active,
                jobs_served=self.runner.jobs_served,
                tokens_generated=self.runner.tokens_generated,
                # Jobs waiting for a slot count as active, so there may be more than slots.
                free_slots=max(0, self.engine.max_concurrent_jobs - active),
            )
            try:
                await send(wire.encode(beat))
            except WebSocketException:
                return


class _SealedOutput:
    """One job's way back: events sealed to the job's key, then its signed receipt."""

    def __init__(self, job_id: str, channel: SealedChannel, send: SendFrame) -> None:
        self._job_id = job_id
        self._channel = channel
        self._send = send

    async def event(self, event: GenerationEvent) -> None:
        sealed = self._channel.seal(wire.event_bytes(event))
        await self._send(wire.encode(wire.JobEvent(job_id=self._job_id, sealed_event=sealed)))

    async def receipt(self, receipt: wire.SignedBlob) -> None:
        await self._send(wire.encode(wire.JobReceipt(job_id=self._job_id, receipt=receipt)))
