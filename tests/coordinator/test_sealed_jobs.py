"""Jobs travel sealed between coordinator and provider: nothing readable on the WebSocket,
and a frame that does not open fails the job and ends the provider's trust."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from moonflower import wire
from moonflower.crypto.envelope import EncryptionKeyPair, SealedChannel
from moonflower.crypto.signing import b64d, b64e
from moonflower.generation import Finished, Started, TextDelta, Usage
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import HARDWARE, InProcessNetwork, inprocess_network


def chat(model: str, content: str = "hi") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


async def test_websocket_frames_never_carry_prompt_or_completion_in_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt_marker = "PROMPT" + secrets.token_hex(6)
    answer_marker = "ANSWER" + secrets.token_hex(6)
    frames: list[str] = []
    real_send, real_recv = ClientConnection.send, ClientConnection.recv

    async def send(self: ClientConnection, message: Any, *args: Any, **kwargs: Any) -> None:
        frames.append(str(message))
        await real_send(self, message, *args, **kwargs)

    async def recv(self: ClientConnection, *args: Any, **kwargs: Any) -> Any:
        message = await real_recv(self, *args, **kwargs)
        frames.append(str(message))
        return message

    monkeypatch.setattr(ClientConnection, "send", send)
    monkeypatch.setattr(ClientConnection, "recv", recv)
    engine = ScriptedEngine(script=f"the answer is {answer_marker} indeed")
    async with (
        inprocess_network(tmp_path, [engine]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        body = (
            await client.post("/v1/chat/completions", json=chat("fake-model", prompt_marker))
        ).json()
        assert answer_marker in body["choices"][0]["message"]["content"]
    assert any('"job_request"' in f for f in frames)
    assert any('"job_event"' in f for f in frames)
    assert prompt_marker in engine.requests[0].messages[0].content
    assert not [f for f in frames if prompt_marker in f or answer_marker in f]


class RogueProvider:
    """Speaks the wire protocol by hand, so a test can make it break the sealing rules."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.keys = EncryptionKeyPair.generate()

    async def register(self, model: str) -> None:
        card = wire.ModelCard(
            id=model, sha256="1" * 64, context_length=512, engine="rogue", size_bytes=0
        )
        register = wire.Register(
            protocol_version=wire.PROTOCOL_VERSION,
            agent_version="0",
            hardware=HARDWARE,
            models=(card,),
            max_concurrent_jobs=1,
            encryption_public_key=b64e(self.keys.public_key),
        )
        await self.socket.send(wire.encode(register))
        assert isinstance(wire.decode_from_coordinator(await self.socket.recv()), wire.Registered)

    async def next_job(self) -> tuple[str, SealedChannel]:
        while True:
            message = wire.decode_from_coordinator(await self.socket.recv())
            if isinstance(message, wire.JobRequest):
                channel = SealedChannel(self.keys, b64d(message.ephemeral_public_key))
                wire.request_from_bytes(channel.open(message.sealed_request))
                return message.job_id, channel


@asynccontextmanager
async def rogue(net: InProcessNetwork, model: str) -> AsyncIterator[RogueProvider]:
    url = net.base_url.replace("http://", "ws://") + "/ws/provider"
    enrolled = {"Authorization": f"Bearer {await net.enroll()}"}
    async with connect(url, additional_headers=enrolled) as socket:
        provider = RogueProvider(socket)
        await provider.register(model)
        yield provider


async def sealed_event(channel: SealedChannel, event: Any) -> str:
    return channel.seal(wire.event_bytes(event))


@pytest.mark.parametrize("breach", ["other_key", "tampered", "plaintext_in_sealed_field"])
async def test_a_frame_that_does_not_open_fails_the_job_and_untrusts_the_provider(
    tmp_path: Path, breach: str
) -> None:
    async with (
        inprocess_network(tmp_path, [], min_trust="none") as net,
        rogue(net, "rogue-model") as provider,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat("rogue-model")))
        job_id, channel = await provider.next_job()
        await provider.socket.send(
            wire.encode(
                wire.JobEvent(
                    job_id=job_id,
                    sealed_event=channel.seal(wire.event_bytes(Started(prompt_tokens=3))),
                )
            )
        )
        if breach == "other_key":
            stranger = SealedChannel(EncryptionKeyPair.generate(), channel.peer_public_key)
            bad = stranger.seal(wire.event_bytes(TextDelta("x")))
        elif breach == "tampered":
            raw = bytearray(b64d(channel.seal(wire.event_bytes(TextDelta("x")))))
            raw[-1] ^= 1
            bad = b64e(bytes(raw))
        else:
            bad = b64e(wire.event_bytes(TextDelta("x")))
        await provider.socket.send(wire.encode(wire.JobEvent(job_id=job_id, sealed_event=bad)))
        response = await request
        assert response.status_code == 502
        # The provider is still connected but serves nothing more on this connection.
        assert (await client.get("/v1/models")).json()["data"] == []
        again = await client.post("/v1/chat/completions", json=chat("rogue-model"))
        assert again.status_code == 503


async def test_a_plaintext_event_frame_closes_the_connection(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, [], min_trust="none") as net,
        rogue(net, "rogue-model") as provider,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat("rogue-model")))
        job_id, _channel = await provider.next_job()
        clear = {"type": "job_event", "job_id": job_id, "event": {"kind": "text", "text": "x"}}
        await provider.socket.send(orjson.dumps(clear).decode())
        response = await request
        assert response.status_code == 502
        async with asyncio.timeout(5):
            while (await client.get("/health")).json()["providers"]:
                await asyncio.sleep(0.05)


async def test_an_honest_sealed_exchange_works(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, [], min_trust="none") as net,
        rogue(net, "rogue-model") as provider,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat("rogue-model")))
        job_id, channel = await provider.next_job()
        for event in (
            Started(prompt_tokens=3),
            TextDelta("sealed hello", tokens=2),
            Finished(reason="stop", usage=Usage(3, 2)),
        ):
            await provider.socket.send(
                wire.encode(
                    wire.JobEvent(job_id=job_id, sealed_event=await sealed_event(channel, event))
                )
            )
        response = await request
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == "sealed hello"
