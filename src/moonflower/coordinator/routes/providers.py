"""The provider WebSocket: registration, heartbeats and job events for one connection.

Owns the life of a `ProviderSession`: it exists from a valid `register` until the socket
closes or falls silent for longer than the heartbeat timeout, and every job still running on
it fails when it goes. Frames are validated by `wire`; an invalid frame closes the socket.
Who may register is `reputation`'s decision: a provider it refuses (no or a bad provider
token, an untrusted key or account) gets a `rejected` frame saying why, then the socket closes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter
from starlette.websockets import WebSocket, WebSocketDisconnect

from moonflower import errors, wire
from moonflower.coordinator.auth import credential
from moonflower.coordinator.reputation import UNENROLLED, RecordedStats
from moonflower.coordinator.services import Services
from moonflower.coordinator.session import ProviderSession
from moonflower.coordinator.trust import judge_registration
from moonflower.crypto.envelope import KEY_BYTES, validate_public_key
from moonflower.crypto.signing import b64d
from moonflower.crypto.status import new_challenge
from moonflower.settings import CoordinatorSettings

log = logging.getLogger(__name__)

router = APIRouter()

REGISTER_TIMEOUT_S = 30.0
MAX_REGISTER_FRAME_CHARS = 256 * 1024
"""A `register` is a few kilobytes (at most `wire.MAX_MODEL_CARDS` cards and a statement);
a larger one is refused before it is parsed."""
FRAMES_PER_S = 200.0
"""Sustained rate of the frames a provider may send that carry no running job's output
(heartbeats, challenge answers, late events): about a thousand times an honest provider's."""
FRAME_BURST = 1000.0
FRAME_COST_BYTES = 16 * 1024
"""A frame costs one from the budget, and one more per this many bytes."""
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013


@router.websocket("/ws/provider")
async def provider_socket(websocket: WebSocket) -> None:
    services = Services.of(websocket)
    await websocket.accept()
    send_lock = asyncio.Lock()

    async def send_frame(frame: str) -> None:
        async with send_lock:
            await websocket.send_text(frame)

    token = credential(websocket)
    try:
        if token is None and not services.settings.allow_anonymous_providers:
            await skip_registration(websocket)  # a stranger's frame is not even parsed
            raise errors.AuthenticationFailed(UNENROLLED)
        registration, sealing_key = await receive_registration(websocket)
        trust = judge_registration(registration, sealing_key, services.settings)
        models = tuple(card.id for card in registration.models)
        enrollment = await services.reputation.admit(token, trust, models)
    except (
        errors.ProtocolError,
        errors.AuthenticationFailed,
        errors.PermissionDenied,
        TimeoutError,
        WebSocketDisconnect,
    ) as exc:
        log.warning("provider registration refused: %s", exc)
        await reject(websocket, str(exc))
        return
    except Exception:  # the store's trouble: no verdict, the provider connects again later
        log.exception("could not admit a provider")
        await close_quietly(websocket, CLOSE_TRY_AGAIN_LATER)
        return
    session = ProviderSession(
        id="prov_" + uuid.uuid4().hex[:16],
        registration=registration,
        send_frame=send_frame,
        encryption_public_key=sealing_key,
        trust=trust,
        account_id=enrollment.account_id,
        stats=RecordedStats(),
    )
    services.reputation.connected(session, enrollment)
    services.registry.add(session)
    notify_waiting(services, session)
    log.info(
        "provider %s connected serving %s (trust %s%s)",
        session.id,
        ", ".join(m.id for m in registration.models),
        session.trust.level.label,
        f"; statement refused: {session.trust.statement_problem}"
        if session.trust.statement_problem and registration.statement is not None
        else "",
    )
    challenges = asyncio.create_task(
        challenge_loop(
            session,
            services.settings,
            functools.partial(services.reputation.key_proven, session, enrollment),
        )
    )
    try:
        await send_frame(
            wire.encode(
                wire.Registered(
                    provider_id=session.id,
                    heartbeat_interval_s=wire.HEARTBEAT_INTERVAL_S,
                    trust_level=session.trust.level.label,
                )
            )
        )
        await serve_session(websocket, session, services)
    except (errors.ProtocolError, TimeoutError) as exc:
        log.warning("closing provider %s: %s", session.id, exc)
        await close_quietly(websocket, CLOSE_PROTOCOL_ERROR)
    except WebSocketDisconnect:
        pass
    finally:
        challenges.cancel()
        services.registry.remove(session.id)
        services.reputation.disconnected(session, enrollment, models)
        log.info("provider %s disconnected", session.id)


def notify_waiting(services: Services, session: ProviderSession) -> None:
    """A provider arrived or may have room again: requests queued for its models may go now
    (once per model)."""
    for model in dict.fromkeys(card.id for card in session.registration.models):
        services.queues.notify(model)


class BinaryFrame(Exception):
    """The provider sent a binary WebSocket frame; the protocol is text frames only."""


async def receive_frame(websocket: WebSocket) -> str:
    """The next text frame. Raises `WebSocketDisconnect` when the peer has gone, and
    `BinaryFrame` for a binary frame (Starlette's `receive_text` would raise a bare
    `KeyError` there)."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    text = message.get("text")
    if not isinstance(text, str):
        raise BinaryFrame
    return text


async def receive_registration(websocket: WebSocket) -> tuple[wire.Register, bytes]:
    try:
        frame = await asyncio.wait_for(receive_frame(websocket), REGISTER_TIMEOUT_S)
    except BinaryFrame:
        raise errors.ProtocolError("binary frames are not part of the protocol") from None
    if len(frame) > MAX_REGISTER_FRAME_CHARS:
        raise errors.ProtocolError(
            f"register is larger than {MAX_REGISTER_FRAME_CHARS // 1024} KiB "
            f"(at most {wire.MAX_MODEL_CARDS} models)"
        )
    message = wire.decode_from_provider(frame)
    if not isinstance(message, wire.Register):
        raise errors.ProtocolError(f"expected register, got {message.type}")
    if message.protocol_version != wire.PROTOCOL_VERSION:
        raise errors.ProtocolError(
            f"protocol version {message.protocol_version} is not supported; "
            f"this coordinator speaks version {wire.PROTOCOL_VERSION}"
        )
    return message, encryption_key(message)


async def skip_registration(websocket: WebSocket) -> None:
    """Wait for the first frame (a refused provider then reads its `rejected` as the answer
    to its `register`), without reading what it says."""
    await asyncio.wait_for(websocket.receive(), REGISTER_TIMEOUT_S)


async def challenge_loop(
    session: ProviderSession, settings: CoordinatorSettings, key_proven: Callable[[], None]
) -> None:
    """Challenge right away, then every interval, for as long as the provider is trusted;
    `key_proven` is called once, when an answer first proves the provider holds its key."""
    if session.trust.statement is None:
        return  # nothing to prove a challenge against
    loop = asyncio.get_running_loop()
    while session.trust.untrusted_reason is None:
        challenge = new_challenge(time.time())
        session.trust.issue(challenge)
        session.challenge_answer = loop.create_future()
        frame = wire.Challenge(nonce=challenge.nonce, timestamp=challenge.timestamp)
        await session.send_frame(wire.encode(frame))
        try:
            answer: wire.ChallengeAnswer | None = await asyncio.wait_for(
                session.challenge_answer, settings.challenge_deadline_s
            )
        except TimeoutError:
            answer = None
        was_proven = session.trust.has_proven_key
        session.trust.settle(answer, settings)
        if session.trust.has_proven_key and not was_proven:
            key_proven()
        await asyncio.sleep(settings.challenge_interval_s)


def encryption_key(registration: wire.Register) -> bytes:
    """The provider's X25519 key, refused unless a box can be sealed to it (32 bytes, not a
    low-order point such as all zeros, with which anyone could open its jobs)."""
    try:
        key = b64d(registration.encryption_public_key)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise errors.ProtocolError("register carries no valid X25519 encryption key")
    try:
        return validate_public_key(key)
    except errors.SealError:
        raise errors.ProtocolError(
            "the X25519 encryption key is a low-order point: nothing sealed to it is private"
        ) from None


class FrameBudget:
    """A token bucket: `rate` per second, holding at most `burst`."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._at = now

    def spend(self, cost: float, now: float) -> bool:
        """Take `cost` if the bucket holds it; False (taking nothing) when it does not."""
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True


@dataclass
class Connection:
    """What one provider connection's loop keeps between frames."""

    budget: FrameBudget
    was_routable: bool = False


async def serve_session(websocket: WebSocket, session: ProviderSession, services: Services) -> None:
    """Read and handle the provider's frames until it goes, falls silent, sends a binary
    frame (closed with 1003) or exceeds its frame budget (closed with 1008); a frame that
    breaks the protocol raises `ProtocolError`."""
    loop = asyncio.get_running_loop()
    silence_s = services.settings.heartbeat_timeout_s
    # Dropped after silence_s to silence_s + slack_s of silence: the deadline moves on only
    # when a frame finds it nearer than silence_s, not once per frame (a timer each time).
    slack_s = silence_s / 16
    connection = Connection(FrameBudget(FRAMES_PER_S, FRAME_BURST, loop.time()))
    async with asyncio.timeout(silence_s) as silence:
        while True:
            try:
                frame = await receive_frame(websocket)
            except BinaryFrame:
                log.warning("closing provider %s: it sent a binary frame", session.id)
                await close_quietly(websocket, CLOSE_UNSUPPORTED_DATA, "unsupported data")
                return
            now = session.last_seen = loop.time()
            if (silence.when() or 0.0) < now + silence_s:
                silence.reschedule(now + silence_s + slack_s)
            if not handle_frame(frame, session, services, connection, now):
                log.warning("closing provider %s: it sent frames too fast", session.id)
                await close_quietly(websocket, CLOSE_POLICY_VIOLATION, "frame rate exceeded")
                return


def handle_frame(
    frame: str,
    session: ProviderSession,
    services: Services,
    connection: Connection,
    now: float,
) -> bool:
    """Act on one frame; False when it exceeds the connection's frame budget.

    A running job's events and receipt are bounded by its flow-control window, not by rate,
    so an honest provider streaming at full speed is never throttled; every other frame draws
    on the budget."""
    message = wire.decode_from_provider(frame)
    is_job_output = isinstance(message, wire.JobEvent | wire.JobReceipt) and session.has_job(
        message.job_id
    )
    if not is_job_output:
        cost = 1 + len(frame) // FRAME_COST_BYTES
        if not connection.budget.spend(cost, now):
            return False
    if isinstance(message, wire.JobEvent):
        session.deliver(message.job_id, message.sealed_event)
    elif isinstance(message, wire.JobReceipt):
        session.take_receipt(message.job_id, message.receipt)
    elif isinstance(message, wire.ChallengeAnswer):
        session.take_answer(message)
    elif isinstance(message, wire.Heartbeat):
        take_heartbeat(message, session, services, connection)
    elif isinstance(message, wire.Draining):
        session.is_draining = True
        log.info("provider %s is draining: no new jobs", session.id)
    elif isinstance(message, wire.Register):
        raise errors.ProtocolError("register sent twice on one connection")
    else:
        log.debug("provider %s sent %s, which this coordinator ignores", session.id, message.type)
    return True


def take_heartbeat(
    beat: wire.Heartbeat, session: ProviderSession, services: Services, connection: Connection
) -> None:
    """Record the provider's counters, and wake its models' queues only when it may have
    room it did not have before: it reports more free slots, or it has just become routable
    (passed its first challenge). A heartbeat that changes nothing costs no notification."""
    previous = session.reported_free_slots
    session.jobs_served = beat.jobs_served
    session.tokens_generated = beat.tokens_generated
    session.reported_free_slots = beat.free_slots
    registry = services.registry
    is_routable = session.is_routable(registry.default_floor, registry.freshness_s)
    became_routable = is_routable and not connection.was_routable
    connection.was_routable = is_routable
    more_slots = beat.free_slots is not None and (previous is None or beat.free_slots > previous)
    if is_routable and session.has_free_slot and (became_routable or more_slots):
        notify_waiting(services, session)


async def reject(websocket: WebSocket, reason: str) -> None:
    try:
        await websocket.send_text(wire.encode(wire.Rejected(reason=reason)))
    except Exception:  # the peer may already be gone
        log.debug("could not send rejection")
    await close_quietly(websocket, CLOSE_POLICY_VIOLATION)


async def close_quietly(websocket: WebSocket, code: int, reason: str | None = None) -> None:
    try:
        await websocket.close(code, reason)
    except Exception:
        log.debug("socket already closed")
