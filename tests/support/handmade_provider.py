"""A provider driven by hand over the real wire protocol, so tests can make it keep or break
each rule of attestation and challenge-response on purpose."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from moonflower import wire
from moonflower.crypto.envelope import EncryptionKeyPair
from moonflower.crypto.signing import SoftwareSigner, b64e
from moonflower.crypto.statement import (
    AttestedHardware,
    Statement,
    build_statement,
    sign_statement,
)
from moonflower.crypto.status import Challenge, answer_challenge
from tests.support.inprocess import HARDWARE

MODEL_SHA = "ab" * 32
HONEST_POSTURE: dict[str, bool | None] = {"secure_boot": None, "kernel_lockdown": None}


@dataclass
class HandmadeProvider:
    socket: ClientConnection
    model: str = "handmade"
    signer: SoftwareSigner = field(default_factory=SoftwareSigner.generate)
    keys: EncryptionKeyPair = field(default_factory=EncryptionKeyPair.generate)
    serial: str | None = None
    posture: dict[str, bool | None] = field(default_factory=lambda: dict(HONEST_POSTURE))

    def statement(self, **changes: Any) -> Statement:
        statement = build_statement(
            self.signer,
            self.keys.public_key,
            hardware=AttestedHardware(
                chip="Test Chip",
                machine_model="Test1,1",
                serial=self.serial,
                memory_bytes=1 << 30,
                gpu=None,
                cpu="test cpu",
            ),
            os_version="TestOS 1",
            posture=self.posture,
            code_hash="c" * 64,
            runtime_hash="d" * 64,
            model_hashes={self.model: MODEL_SHA},
            protocol_version=wire.PROTOCOL_VERSION,
            now=time.time(),
        )
        return replace(statement, **changes) if changes else statement

    def signed(self, statement: Statement | None = None) -> wire.SignedBlob:
        signed = sign_statement(statement or self.statement(), self.signer)
        return wire.SignedBlob(json_text=signed.statement_json, signature=signed.signature)

    async def register(self, statement: wire.SignedBlob | None) -> None:
        card = wire.ModelCard(
            id=self.model, sha256=MODEL_SHA, context_length=512, engine="hand", size_bytes=0
        )
        register = wire.Register(
            protocol_version=wire.PROTOCOL_VERSION,
            agent_version="0",
            hardware=HARDWARE,
            models=(card,),
            max_concurrent_jobs=1,
            encryption_public_key=b64e(self.keys.public_key),
            statement=statement,
        )
        await self.socket.send(wire.encode(register))
        reply = wire.decode_from_coordinator(await self.socket.recv())
        assert isinstance(reply, wire.Registered)

    async def next_challenge(self, timeout: float = 5.0) -> wire.Challenge:
        async with asyncio.timeout(timeout):
            while True:
                message = wire.decode_from_coordinator(await self.socket.recv())
                if isinstance(message, wire.Challenge):
                    return message

    def answer(self, challenge: wire.Challenge, **facts: Any) -> wire.ChallengeAnswer:
        values: dict[str, Any] = {
            "posture": self.posture,
            "code_hash": "c" * 64,
            "runtime_hash": "d" * 64,
            "model_hashes": {self.model: MODEL_SHA},
            **facts,
        }
        status = answer_challenge(
            Challenge(nonce=challenge.nonce, timestamp=challenge.timestamp),
            self.signer,
            now=time.time(),
            **values,
        )
        blob = wire.SignedBlob(json_text=status.status_json, signature=status.signature)
        return wire.ChallengeAnswer(nonce=challenge.nonce, status=blob)

    async def send(self, message: wire.AnyMessage) -> None:
        await self.socket.send(wire.encode(message))


@asynccontextmanager
async def handmade(
    base_url: str, token: str | None = None, **fields: Any
) -> AsyncIterator[HandmadeProvider]:
    """A connected provider presenting the provider `token` (None: anonymous)."""
    url = base_url.replace("http://", "ws://") + "/ws/provider"
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with connect(url, additional_headers=headers) as socket:
        yield HandmadeProvider(socket, **fields)


async def serve_one_job(
    provider: HandmadeProvider,
    events: list[Any],
    *,
    receipt_request: Any = None,
    receipt_events: list[Any] | None = None,
    corrupt_signature: bool = False,
) -> None:
    """Take the next job, send `events` sealed, then a receipt — honest unless told to sign
    another request or other events, or to corrupt its signature."""
    from moonflower.crypto.envelope import SealedChannel
    from moonflower.crypto.signing import b64d
    from moonflower.receipts import OutputTally, build_receipt

    while True:
        message = wire.decode_from_coordinator(await provider.socket.recv())
        if isinstance(message, wire.Challenge):
            await provider.send(provider.answer(message))
        elif isinstance(message, wire.JobRequest):
            break
    channel = SealedChannel(provider.keys, b64d(message.ephemeral_public_key))
    request = wire.request_from_bytes(channel.open(message.sealed_request))
    for event in events:
        sealed = channel.seal(wire.event_bytes(event))
        await provider.send(wire.JobEvent(job_id=message.job_id, sealed_event=sealed))
    tally = OutputTally()
    for event in receipt_events if receipt_events is not None else events:
        tally.add(event)
    receipt_json, signature = build_receipt(
        signer=provider.signer,
        job_id=message.job_id,
        model_id=request.model,
        model_sha256=MODEL_SHA,
        request=receipt_request or request,
        tally=tally,
    )
    if corrupt_signature:
        raw = bytearray(b64d(signature))
        raw[len(raw) // 2] ^= 1
        signature = b64e(bytes(raw))
    blob = wire.SignedBlob(json_text=receipt_json, signature=signature)
    await provider.send(wire.JobReceipt(job_id=message.job_id, receipt=blob))
