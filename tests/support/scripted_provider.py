"""A provider driven by a test over the real coordinator⇄provider wire protocol, able to keep
or break any rule on purpose.

`ScriptedProvider.connect(...)` opens the real WebSocket (with a provider token when given),
sends `register` (honest, or any `Register` a test builds, or raw frames afterwards), and from
then on a background task reads every frame the coordinator sends: challenges are answered
honestly (unless told not to), job requests are opened and queued for `next_job()`, and
`job_cancel` / `job_credit` are recorded. Tests therefore never deadlock on an unread frame,
and every wait here is bounded.

A `ScriptedJob` seals whatever events a test asks for — honest or lying counts, forbidden
failure codes, garbage — and signs receipts over exactly what it sent, or over what a test
says instead. Nothing here checks a rule: the coordinator is the one under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from moonflower import wire
from moonflower.crypto.canonical import canonical_json
from moonflower.crypto.envelope import EncryptionKeyPair, SealedChannel
from moonflower.crypto.receipt import request_digest
from moonflower.crypto.signing import SoftwareSigner, b64d, b64e, key_fingerprint
from moonflower.crypto.statement import AttestedHardware, build_statement, sign_statement
from moonflower.crypto.status import Challenge, answer_challenge
from moonflower.errors import ProtocolError, SealError
from moonflower.generation import (
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    Started,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from moonflower.receipts import OutputTally

MODEL_SHA = "ab" * 32
HARDWARE = wire.Hardware(cpu="scripted cpu", cpu_cores=1, memory_bytes=1 << 30, os="scripted")
POSTURE: dict[str, bool | None] = {"secure_boot": None, "kernel_lockdown": None}
CODE_HASH = "c" * 64
RUNTIME_HASH = "d" * 64
DEFAULT_TIMEOUT_S = 10.0


def model_card(
    model: str, *, sha256: str = MODEL_SHA, context_length: int = 4096
) -> wire.ModelCard:
    return wire.ModelCard(
        id=model, sha256=sha256, context_length=context_length, engine="scripted", size_bytes=0
    )


def signed_statement(
    signer: SoftwareSigner,
    keys: EncryptionKeyPair,
    models: Iterable[wire.ModelCard],
    **facts: Any,
) -> wire.SignedBlob:
    """A valid signed statement binding `keys` and naming exactly `models`; `facts`
    override `build_statement` arguments (posture, code_hash, now, …)."""
    arguments: dict[str, Any] = {
        "hardware": AttestedHardware(
            chip="Scripted Chip",
            machine_model="Scripted1,1",
            serial=None,
            memory_bytes=1 << 30,
            gpu=None,
            cpu="scripted cpu",
        ),
        "os_version": "ScriptedOS 1",
        "posture": POSTURE,
        "code_hash": CODE_HASH,
        "runtime_hash": RUNTIME_HASH,
        "model_hashes": {card.id: card.sha256 for card in models},
        "protocol_version": wire.PROTOCOL_VERSION,
        "now": time.time(),
        **facts,
    }
    signed = sign_statement(build_statement(signer, keys.public_key, **arguments), signer)
    return wire.SignedBlob(json_text=signed.statement_json, signature=signed.signature)


def honest_register(
    signer: SoftwareSigner,
    keys: EncryptionKeyPair,
    *,
    model: str = "scripted",
    slots: int = 1,
    statement: bool = True,
    models: tuple[wire.ModelCard, ...] | None = None,
    hardware: wire.Hardware = HARDWARE,
) -> wire.Register:
    """The `register` an honest provider with these keys sends."""
    cards = models if models is not None else (model_card(model),)
    return wire.Register(
        protocol_version=wire.PROTOCOL_VERSION,
        agent_version="scripted",
        hardware=hardware,
        models=cards,
        max_concurrent_jobs=slots,
        encryption_public_key=b64e(keys.public_key),
        statement=signed_statement(signer, keys, cards) if statement else None,
    )


RegisterSpec = wire.Register | Callable[["ScriptedProvider"], wire.Register] | None


class RegistrationRefused(AssertionError):
    """The coordinator answered `rejected` (or closed) where the test expected `registered`."""


@dataclass(eq=False)
class ScriptedJob:
    """One job the coordinator sent: opened, and sealed back however the test says."""

    provider: ScriptedProvider
    message: wire.JobRequest
    channel: SealedChannel
    opened: GenerationRequest | None
    open_error: str | None = None
    sent: list[GenerationEvent] = field(default_factory=list)
    """Every event this job sealed and sent through `event()`, in order."""
    prompt_tokens: int = 0
    """The prompt tokens the last `started` event claimed."""
    completion_tokens: int = 0
    """The sum of `tokens` over the text and tool-call deltas sent."""

    @property
    def job_id(self) -> str:
        return self.message.job_id

    @property
    def request(self) -> GenerationRequest:
        if self.opened is None:
            raise AssertionError(f"job {self.job_id} did not open: {self.open_error}")
        return self.opened

    @property
    def is_cancelled(self) -> bool:
        return self.job_id in self.provider.cancels

    @property
    def credit(self) -> int:
        """Events the coordinator granted so far through `job_credit`."""
        return self.provider.credits.get(self.job_id, 0)

    def seal(self, payload: bytes) -> str:
        return self.channel.seal(payload)

    async def event(self, event: GenerationEvent) -> None:
        """Seal and send any event, with whatever counts and codes it holds."""
        if isinstance(event, Started):
            self.prompt_tokens = event.prompt_tokens
        elif isinstance(event, TextDelta | ToolCallDelta):
            self.completion_tokens += event.tokens
        self.sent.append(event)
        await self.sealed_raw(self.seal(wire.event_bytes(event)))

    async def event_json(self, payload: dict[str, Any] | bytes) -> None:
        """Seal and send any JSON as an event (for shapes `GenerationEvent` cannot hold)."""
        data = payload if isinstance(payload, bytes) else canonical_json(payload)
        await self.sealed_raw(self.seal(data))

    async def sealed_raw(self, sealed_event: str) -> None:
        """A `job_event` for this job carrying exactly `sealed_event`."""
        await self.provider.send(wire.JobEvent(job_id=self.job_id, sealed_event=sealed_event))

    async def started(self, prompt_tokens: int, *, starts_in_reasoning: bool = False) -> None:
        await self.event(Started(prompt_tokens, starts_in_reasoning))

    async def text(self, text: str, tokens: int = 1) -> None:
        await self.event(TextDelta(text=text, tokens=tokens))

    async def finish(
        self,
        reason: FinishReason = "stop",
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> None:
        """`finished` with the honest counts unless told otherwise."""
        usage = Usage(
            self.prompt_tokens if prompt_tokens is None else prompt_tokens,
            self.completion_tokens if completion_tokens is None else completion_tokens,
        )
        await self.event(Finished(reason=reason, usage=usage))

    def receipt_blob(
        self,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        corrupt: bool = False,
        other_request: GenerationRequest | None = None,
        finish_reason: str | None = None,
        signer: SoftwareSigner | None = None,
    ) -> wire.SignedBlob:
        """A receipt signed over exactly the events sent so far (see `receipts.OutputTally`),
        with the counts it states, the request it binds, its reason or its signer replaced
        when given, and its signature broken when `corrupt`."""
        tally = OutputTally()
        for sent in self.sent:
            tally.add(sent)
        key = signer or self.provider.signer
        fields = {
            "v": 1,
            "job_id": self.job_id,
            "model_id": self.request.model,
            "model_sha256": self.provider.model_sha256(self.request.model),
            "request_sha256": request_digest(other_request or self.request),
            "output_sha256": tally.digest(),
            "prompt_tokens": tally.usage.prompt_tokens if prompt_tokens is None else prompt_tokens,
            "completion_tokens": tally.usage.completion_tokens
            if completion_tokens is None
            else completion_tokens,
            "finish_reason": finish_reason or tally.finish_reason or "failed",
            "provider_key_fingerprint": key_fingerprint(key.public_key()),
            "timestamp": int(time.time()),
        }
        data = canonical_json(fields)
        signature = key.sign(data)
        if corrupt:
            raw = bytearray(signature)
            raw[len(raw) // 2] ^= 1
            signature = bytes(raw)
        return wire.SignedBlob(json_text=data.decode(), signature=b64e(signature))

    async def receipt(
        self,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        corrupt: bool = False,
        other_request: GenerationRequest | None = None,
        finish_reason: str | None = None,
    ) -> None:
        blob = self.receipt_blob(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            corrupt=corrupt,
            other_request=other_request,
            finish_reason=finish_reason,
        )
        await self.provider.send(wire.JobReceipt(job_id=self.job_id, receipt=blob))

    async def wait_cancelled(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        await self.provider.wait_for(lambda: self.is_cancelled, timeout, f"cancel of {self.job_id}")

    async def wait_credit(self, events: int, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Wait until the coordinator has granted at least `events` events of credit."""
        await self.provider.wait_for(
            lambda: self.credit >= events, timeout, f"{events} events of credit for {self.job_id}"
        )

    async def serve_honestly(self, words: Iterable[str], prompt_tokens: int = 5) -> None:
        """`started`, one text delta per word (1 token each), `finished` with the honest
        counts and reason, and an honest receipt."""
        words = list(words)
        await self.started(prompt_tokens)
        limit = self.request.max_tokens
        sent = words if limit is None else words[:limit]
        for word in sent:
            await self.text(word)
        await self.finish("stop" if len(sent) == len(words) else "length")
        await self.receipt()


@dataclass(eq=False)
class ScriptedProvider:
    """One provider connection under a test's control (module docstring)."""

    socket: ClientConnection
    signer: SoftwareSigner
    keys: EncryptionKeyPair
    register_message: wire.Register | None = None
    answer_challenges: bool = True
    """Answer every challenge honestly; set False to fall silent on challenges."""
    provider_id: str = ""
    reply: wire.Registered | wire.Rejected | None = None
    received: list[wire.FromCoordinator] = field(default_factory=list)
    """Every frame the coordinator sent, decoded, in order."""
    bad_frames: list[str | bytes] = field(default_factory=list)
    """Frames from the coordinator that did not decode."""
    challenges: list[wire.Challenge] = field(default_factory=list)
    challenges_answered: int = 0
    cancels: set[str] = field(default_factory=set)
    credits: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, ScriptedJob] = field(default_factory=dict)
    _queue: asyncio.Queue[ScriptedJob] = field(default_factory=asyncio.Queue)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _reader: asyncio.Task[None] | None = None
    _beats: asyncio.Task[None] | None = None
    _close_code: int | None = None
    _is_closed: bool = False

    # --- connecting -------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        base_url: str,
        *,
        token: str | None = None,
        model: str = "scripted",
        slots: int = 1,
        statement: bool = True,
        register: RegisterSpec = None,
        answer_challenges: bool = True,
        expect_registered: bool = True,
        heartbeats: bool = True,
        signer: SoftwareSigner | None = None,
        keys: EncryptionKeyPair | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> AsyncIterator[ScriptedProvider]:
        """Connect and register; yields once `registered` arrived (or, with
        `expect_registered=False`, right after `register` was sent). `register` replaces the
        whole frame: a `Register`, or a function of the provider (its `signer` and `keys`
        are set) returning one. Pass `signer`/`keys` to come back as the same identity."""
        url = websocket_url(base_url)
        extra = dict(headers or {})
        if token is not None:
            extra["Authorization"] = f"Bearer {token}"
        async with asyncio.timeout(timeout):
            socket = await connect(url, additional_headers=extra, max_size=None, ping_interval=None)
        provider = cls(
            socket,
            signer=signer or SoftwareSigner.generate(),
            keys=keys or EncryptionKeyPair.generate(),
            answer_challenges=answer_challenges,
        )
        try:
            if register is None:
                frame = honest_register(
                    provider.signer, provider.keys, model=model, slots=slots, statement=statement
                )
            elif isinstance(register, wire.Register):
                frame = register
            else:
                frame = register(provider)
            provider.register_message = frame
            provider._reader = asyncio.create_task(provider._read())
            await provider.send(frame)
            if expect_registered:
                reply = await provider.registration_reply(timeout)
                if not isinstance(reply, wire.Registered):
                    raise RegistrationRefused(f"registration refused: {reply!r}")
            if heartbeats:
                provider._beats = asyncio.create_task(provider._heartbeats())
            yield provider
        finally:
            await provider.close()

    async def registration_reply(
        self, timeout: float = DEFAULT_TIMEOUT_S
    ) -> wire.Registered | wire.Rejected | None:
        """`registered` or `rejected`, or None if the socket closed without either."""
        await self.wait_for(
            lambda: self.reply is not None or self._is_closed, timeout, "a registration reply"
        )
        return self.reply

    # --- sending ----------------------------------------------------------------------

    async def send(self, message: wire.AnyMessage) -> None:
        await self.send_raw(wire.encode(message))

    async def send_raw(self, frame: str | bytes) -> None:
        """Send one frame as is: text for `str`, a binary WebSocket frame for `bytes`."""
        async with self._send_lock:
            await self.socket.send(frame)

    async def heartbeat(self, **fields: Any) -> None:
        """An honest heartbeat, with any field replaced."""
        active = sum(1 for job in self.jobs.values() if not _is_over(job))
        slots = self.register_message.max_concurrent_jobs if self.register_message else 1
        values: dict[str, Any] = {
            "active_jobs": active,
            "jobs_served": len(self.jobs) - active,
            "tokens_generated": sum(job.completion_tokens for job in self.jobs.values()),
            "free_slots": max(0, slots - active),
            **fields,
        }
        await self.send(wire.Heartbeat(**values))

    # --- waiting ----------------------------------------------------------------------

    async def next_job(self, timeout: float = DEFAULT_TIMEOUT_S) -> ScriptedJob:
        async with asyncio.timeout(timeout):
            return await self._queue.get()

    def pending_jobs(self) -> int:
        """Jobs received and not yet taken with `next_job()`."""
        return self._queue.qsize()

    async def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until `condition()` holds, re-checked after every frame; TimeoutError names
        `what` after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(condition)
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None

    async def closed(self, timeout: float = DEFAULT_TIMEOUT_S) -> int | None:
        """Wait until the coordinator closes the socket; its close code (None if none)."""
        await self.wait_for(lambda: self._is_closed, timeout, "the coordinator to close")
        return self._close_code

    @property
    def is_closed(self) -> bool:
        return self._is_closed

    async def wait_routable(self, base_url: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        await wait_routable(base_url, self.provider_id, timeout=timeout)

    def model_sha256(self, model: str) -> str:
        if self.register_message is not None:
            for card in self.register_message.models:
                if card.id == model:
                    return card.sha256
        return MODEL_SHA

    # --- the background reader ----------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for frame in self.socket:
                await self._take(frame)
        except ConnectionClosed:
            pass
        finally:
            self._close_code = self.socket.close_code
            self._is_closed = True
            await self._notify()

    async def _take(self, frame: str | bytes) -> None:
        try:
            message = wire.decode_from_coordinator(frame)
        except ProtocolError:
            self.bad_frames.append(frame)
            await self._notify()
            return
        self.received.append(message)
        if isinstance(message, wire.Registered):
            self.reply, self.provider_id = message, message.provider_id
        elif isinstance(message, wire.Rejected):
            self.reply = message
        elif isinstance(message, wire.Challenge):
            self.challenges.append(message)
            if self.answer_challenges:
                await self._answer(message)
        elif isinstance(message, wire.JobRequest):
            job = self._open(message)
            self.jobs[job.job_id] = job
            self._queue.put_nowait(job)
        elif isinstance(message, wire.JobCancel):
            self.cancels.add(message.job_id)
        elif isinstance(message, wire.JobCredit):
            self.credits[message.job_id] = self.credits.get(message.job_id, 0) + message.events
        await self._notify()

    def _open(self, message: wire.JobRequest) -> ScriptedJob:
        try:
            channel = SealedChannel(self.keys, b64d(message.ephemeral_public_key))
        except Exception as exc:  # a hostile or broken key: the job cannot be answered
            unusable = SealedChannel(self.keys, EncryptionKeyPair.generate().public_key)
            return ScriptedJob(self, message, unusable, None, open_error=f"bad key: {exc}")
        try:
            request = wire.request_from_bytes(channel.open(message.sealed_request))
        except (SealError, ProtocolError, ValueError) as exc:
            return ScriptedJob(self, message, channel, None, open_error=str(exc))
        return ScriptedJob(self, message, channel, request)

    async def _answer(self, challenge: wire.Challenge) -> None:
        served = self.register_message.models if self.register_message else ()
        status = answer_challenge(
            Challenge(nonce=challenge.nonce, timestamp=challenge.timestamp),
            self.signer,
            now=time.time(),
            posture=POSTURE,
            code_hash=CODE_HASH,
            runtime_hash=RUNTIME_HASH,
            model_hashes={card.id: card.sha256 for card in served},
        )
        blob = wire.SignedBlob(json_text=status.status_json, signature=status.signature)
        with contextlib.suppress(WebSocketException):
            await self.send(wire.ChallengeAnswer(nonce=challenge.nonce, status=blob))
            self.challenges_answered += 1

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _heartbeats(self) -> None:
        interval = self.reply.heartbeat_interval_s if isinstance(self.reply, wire.Registered) else 5
        with contextlib.suppress(WebSocketException):
            while not self._is_closed:
                await asyncio.sleep(interval)
                await self.heartbeat()

    async def close(self) -> None:
        for task in (self._beats, self._reader):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._beats, self._reader) if t is not None), return_exceptions=True
        )
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.socket.close()
        self._is_closed = True


def _is_over(job: ScriptedJob) -> bool:
    return any(getattr(event, "kind", None) in ("finished", "failed") for event in job.sent)


def websocket_url(base_url: str) -> str:
    return base_url.replace("https://", "wss://").replace("http://", "ws://") + "/ws/provider"


async def provider_entry(base_url: str, provider_id: str) -> dict[str, Any] | None:
    """The coordinator's public attestation-feed entry for `provider_id`, if connected."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{base_url}/v1/providers/attestation")
    response.raise_for_status()
    for entry in response.json()["data"]:
        if entry.get("provider_id") == provider_id:
            return dict(entry)
    return None


def is_routable_entry(entry: dict[str, Any] | None) -> bool:
    """Whether a feed entry is a provider the coordinator routes to: trusted, and — when it
    sent a statement — with a passed challenge."""
    if entry is None or entry.get("is_untrusted"):
        return False
    if entry.get("statement") is None:
        return True
    return bool(entry.get("is_attested")) and int(entry.get("challenges_passed") or 0) >= 1


async def wait_routable(
    base_url: str, provider_id: str, *, timeout: float = DEFAULT_TIMEOUT_S
) -> None:
    """Wait (polling the attestation feed) until the coordinator routes to `provider_id`."""
    deadline = time.monotonic() + timeout
    entry: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        entry = await provider_entry(base_url, provider_id)
        if is_routable_entry(entry):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"provider {provider_id} not routable after {timeout}s: {entry}")
