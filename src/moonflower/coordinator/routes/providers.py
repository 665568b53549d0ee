"""The provider WebSocket: registration, heartbeats and job events for one connection.

Owns the life of a `ProviderSession`: it exists from a valid `register` until the socket
closes or falls silent for longer than the heartbeat timeout, and every job still running on
it fails when it goes. Frames are validated by `wire`; an invalid frame closes the socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from fastapi import APIRouter
from starlette.websockets import WebSocket, WebSocketDisconnect

from moonflower import errors, wire
from moonflower.coordinator.auth import credential
from moonflower.coordinator.services import Services
from moonflower.coordinator.session import ProviderSession
from moonflower.coordinator.trust import ProviderTrust, judge_registration
from moonflower.crypto.signing import b64d, key_fingerprint
from moonflower.crypto.status import new_challenge
from moonflower.ledger import jobs as job_ledger
from moonflower.ledger import keys
from moonflower.ledger.accounts import ensure_account
from moonflower.settings import CoordinatorSettings

log = logging.getLogger(__name__)

router = APIRouter()

REGISTER_TIMEOUT_S = 30.0
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY_VIOLATION = 1008


@router.websocket("/ws/provider")
async def provider_socket(websocket: WebSocket) -> None:
    services = Services.of(websocket)
    await websocket.accept()
    send_lock = asyncio.Lock()

    async def send_frame(frame: str) -> None:
        async with send_lock:
            await websocket.send_text(frame)

    try:
        registration, sealing_key = await receive_registration(websocket)
        trust = judge_registration(registration, sealing_key, services.settings)
        account_id = await earning_account(websocket, trust, services)
    except (errors.ProtocolError, TimeoutError, WebSocketDisconnect) as exc:
        log.warning("provider registration failed: %s", exc)
        await reject(websocket, str(exc))
        return
    session = ProviderSession(
        id="prov_" + uuid.uuid4().hex[:16],
        registration=registration,
        send_frame=send_frame,
        encryption_public_key=sealing_key,
        trust=trust,
        account_id=account_id,
    )
    await job_ledger.note_models_served(services.db, [m.id for m in registration.models])
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
    challenges = asyncio.create_task(challenge_loop(session, services.settings))
    try:
        await send_frame(
            wire.encode(
                wire.Registered(
                    provider_id=session.id, heartbeat_interval_s=wire.HEARTBEAT_INTERVAL_S
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
        log.info("provider %s disconnected", session.id)


def notify_waiting(services: Services, session: ProviderSession) -> None:
    """A provider arrived or checked in: requests queued for its models may go now."""
    for card in session.registration.models:
        services.dispatcher.queues.notify(card.id)


async def receive_registration(websocket: WebSocket) -> tuple[wire.Register, bytes]:
    frame = await asyncio.wait_for(websocket.receive_text(), REGISTER_TIMEOUT_S)
    message = wire.decode_from_provider(frame)
    if not isinstance(message, wire.Register):
        raise errors.ProtocolError(f"expected register, got {message.type}")
    if message.protocol_version != wire.PROTOCOL_VERSION:
        raise errors.ProtocolError(
            f"protocol version {message.protocol_version} is not supported; "
            f"this coordinator speaks version {wire.PROTOCOL_VERSION}"
        )
    return message, encryption_key(message)


async def earning_account(websocket: WebSocket, trust: ProviderTrust, services: Services) -> str:
    """The account this provider earns for: the one its provider token names, else one
    kept for its attested signing key (so its earnings can be claimed later), else the
    shared account of providers that proved nothing."""
    token = credential(websocket)
    if token is not None:
        caller = await keys.authenticate_provider(services.db, token)
        if caller is None:
            raise errors.ProtocolError("unknown or revoked provider token")
        return caller.account_id
    statement = trust.statement
    name = (
        f"provider:{key_fingerprint(statement.signing_key)[:32]}"
        if statement is not None
        else "provider:unattested"
    )
    return (await ensure_account(services.db, name, "provider")).id


async def challenge_loop(session: ProviderSession, settings: CoordinatorSettings) -> None:
    """Challenge right away, then every interval, for as long as the provider is trusted."""
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
        session.trust.settle(answer, settings)
        await asyncio.sleep(settings.challenge_interval_s)


def encryption_key(registration: wire.Register) -> bytes:
    try:
        key = b64d(registration.encryption_public_key)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise errors.ProtocolError("register carries no valid X25519 encryption key")
    return key


async def serve_session(websocket: WebSocket, session: ProviderSession, services: Services) -> None:
    loop = asyncio.get_running_loop()
    silence_s = services.settings.heartbeat_timeout_s
    # Dropped after silence_s to silence_s + slack_s of silence: the deadline moves on only
    # when a frame finds it nearer than silence_s, not once per frame (a timer each time).
    slack_s = silence_s / 16
    async with asyncio.timeout(silence_s) as silence:
        while True:
            frame = await websocket.receive_text()
            now = session.last_seen = loop.time()
            if (silence.when() or 0.0) < now + silence_s:
                silence.reschedule(now + silence_s + slack_s)
            handle_frame(frame, session, services)


def handle_frame(frame: str, session: ProviderSession, services: Services) -> None:
    message = wire.decode_from_provider(frame)
    if isinstance(message, wire.JobEvent):
        session.deliver(message.job_id, message.sealed_event)
    elif isinstance(message, wire.JobReceipt):
        session.take_receipt(message.job_id, message.receipt)
    elif isinstance(message, wire.ChallengeAnswer):
        session.take_answer(message)
    elif isinstance(message, wire.Heartbeat):
        notify_waiting(services, session)
        session.jobs_served = message.jobs_served
        session.tokens_generated = message.tokens_generated
        session.reported_free_slots = message.free_slots
    elif isinstance(message, wire.Draining):
        session.is_draining = True
        log.info("provider %s is draining: no new jobs", session.id)
    elif isinstance(message, wire.Register):
        raise errors.ProtocolError("register sent twice on one connection")
    else:
        log.debug("provider %s sent %s, which this coordinator ignores", session.id, message.type)


async def reject(websocket: WebSocket, reason: str) -> None:
    try:
        await websocket.send_text(wire.encode(wire.Rejected(reason=reason)))
    except Exception:  # the peer may already be gone
        log.debug("could not send rejection")
    await close_quietly(websocket, CLOSE_POLICY_VIOLATION)


async def close_quietly(websocket: WebSocket, code: int) -> None:
    try:
        await websocket.close(code)
    except Exception:
        log.debug("socket already closed")
