"""Sealed consumer→coordinator transport through the real coordinator and a real provider
agent (scripted engine) on loopback: the key endpoint, sealed whole and streamed answers in
both dialects with httpx and with the official SDKs, what the wire carries, and every way a
sealed request is refused. These tests say nothing about inference."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import orjson
import pytest

from moonflower.client.sealed import (
    ERROR_HEADER,
    KID_HEADER,
    SEALED_CONTENT_TYPE,
    AsyncSealingTransport,
    CoordinatorKey,
    SealedRequest,
    SealingTransport,
    fetch_key,
)
from moonflower.coordinator import app as app_module
from moonflower.coordinator.sealed_transport import SealedTransport
from moonflower.crypto.envelope import EncryptionKeyPair
from moonflower.crypto.signing import b64d, b64e
from moonflower.settings import CoordinatorSettings
from tests.support import inprocess
from tests.support.fake_engine import ScriptedEngine

PROMPT = "PROMPT-MARKER-7f3a what is the plan"
ANSWER = "ANSWER-MARKER-91bc sails at dawn"
SECRETS = (b"PROMPT-MARKER", b"ANSWER-MARKER", b"sails", b"dawn", b"[DONE]")


def chat(**extra: object) -> dict[str, object]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": PROMPT}], **extra}


def message(**extra: object) -> dict[str, object]:
    return {"max_tokens": 50, **chat(**extra)}


@asynccontextmanager
async def network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[inprocess.InProcessNetwork, ScriptedEngine]]:
    """The in-process network with the sealed transport installed (unless `create_app`
    already installs it itself)."""

    def create_app(settings: CoordinatorSettings, services: Any = None) -> Any:
        app = app_module.create_app(settings, services)
        if not any(cast(object, m.cls) is SealedTransport for m in app.user_middleware):
            app.add_middleware(SealedTransport, keys=EncryptionKeyPair.generate())
        return app

    monkeypatch.setattr(inprocess, "create_app", create_app)
    engine = ScriptedEngine(script=ANSWER)
    async with inprocess.inprocess_network(tmp_path, [engine]) as net:
        yield net, engine


def assert_hidden(*wire: bytes) -> None:
    for raw in wire:
        for secret in SECRETS:
            assert secret not in raw, secret


def sse_texts(stream: bytes) -> list[Any]:
    """The JSON data of each event (`[DONE]` as a string)."""
    out: list[Any] = []
    for line in stream.split(b"\n"):
        if line.startswith(b"data: "):
            data = line[6:]
            out.append(data.decode() if data == b"[DONE]" else orjson.loads(data))
    return out


def chat_text(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e["choices"]
    )


async def test_the_key_endpoint_publishes_the_key_and_its_id_without_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        network(tmp_path, monkeypatch) as (net, _engine),
        httpx.AsyncClient(base_url=net.base_url) as client,
    ):
        response = await client.get("/v1/encryption-key")
        assert response.status_code == 200
        document = response.json()
        assert set(document) == {"kid", "public_key", "algorithm"}
        assert document["algorithm"] == "x25519-xsalsa20-poly1305"
        public = b64d(document["public_key"])
        assert len(public) == 32
        assert document["kid"] == hashlib.sha256(public).hexdigest()[:16]
        assert (await fetch_key(client)) == CoordinatorKey(document["kid"], public)
        assert (await client.get("/v1/encryption-key")).json() == document  # one key per process


async def test_a_sealed_chat_completion_round_trips_and_the_wire_hides_prompt_and_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        network(tmp_path, monkeypatch) as (net, engine),
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        key = await fetch_key(client)
        sealed = SealedRequest.of_json(key, chat())
        response = await client.post(
            "/v1/chat/completions", content=sealed.content, headers=sealed.headers
        )
        plain = await client.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    assert response.headers["content-type"] == SEALED_CONTENT_TYPE
    assert response.headers[KID_HEADER] == key.kid
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["x-provider-id"] == plain.headers["x-provider-id"]
    assert set(response.json()) == {"sealed"}
    assert_hidden(sealed.content, response.content)
    body = sealed.open_json(response)
    assert body["choices"][0]["message"]["content"] == ANSWER
    assert body["choices"][0]["message"] == plain.json()["choices"][0]["message"]
    assert engine.requests[0].messages[0].content == PROMPT  # the provider got the prompt


async def test_a_sealed_stream_seals_every_event_in_order_and_opens_to_the_plain_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        network(tmp_path, monkeypatch) as (net, _engine),
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        key = await fetch_key(client)
        sealed = SealedRequest.of_json(key, chat(stream=True))
        async with client.stream(
            "POST", "/v1/chat/completions", content=sealed.content, headers=sealed.headers
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers[KID_HEADER] == key.kid
            raw = b"".join([chunk async for chunk in response.aiter_bytes()])
        plain = (await client.post("/v1/chat/completions", json=chat(stream=True))).content
    assert_hidden(sealed.content, raw)
    events = [block for block in raw.split(b"\n\n") if block]
    assert all(block.startswith(b"data: ") and b"\n" not in block for block in events)
    rewriter = sealed.event_rewriter()
    opened = rewriter.feed(raw) + rewriter.finish()
    assert opened.endswith(b"data: [DONE]\n\n")
    assert len(sse_texts(opened)) == len(events) == len(sse_texts(plain))
    assert chat_text(sse_texts(opened)) == chat_text(sse_texts(plain)) == ANSWER


async def test_the_openai_sdk_works_unchanged_over_the_sealing_transport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = RecordingTransport()
    async with network(tmp_path, monkeypatch) as (net, _engine):
        http_client = httpx.AsyncClient(transport=AsyncSealingTransport(inner=wire))
        sdk = openai.AsyncOpenAI(
            base_url=f"{net.base_url}/v1",
            api_key=net.key,
            max_retries=0,
            # The SDK is typed for httpx2 but still takes an httpx client.
            http_client=http_client,  # type: ignore[arg-type]
        )
        whole = await sdk.chat.completions.create(**chat())  # type: ignore[call-overload]
        stream = await sdk.chat.completions.create(**chat(stream=True))  # type: ignore[call-overload]
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await http_client.aclose()
    assert whole.choices[0].message.content == ANSWER
    assert "".join(pieces) == ANSWER
    assert len(wire.sent) == 3  # the key, then two sealed requests
    assert_hidden(*wire.sent, *wire.received)


async def test_the_blocking_openai_sdk_works_over_the_blocking_sealing_transport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with network(tmp_path, monkeypatch) as (net, _engine):

        def use_sdk() -> tuple[str | None, str]:
            with httpx.Client(transport=SealingTransport()) as http_client:
                sdk = openai.OpenAI(
                    base_url=f"{net.base_url}/v1",
                    api_key=net.key,
                    max_retries=0,
                    http_client=http_client,  # type: ignore[arg-type]
                )
                whole = sdk.chat.completions.create(**chat())  # type: ignore[call-overload]
                stream = sdk.chat.completions.create(**chat(stream=True))  # type: ignore[call-overload]
                text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                return whole.choices[0].message.content, text

        assert await asyncio.to_thread(use_sdk) == (ANSWER, ANSWER)


async def test_a_sealed_anthropic_message_round_trips_whole_and_streamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The anthropic SDK rides on httpx2, not httpx, so this uses the helpers directly.
    async with (
        network(tmp_path, monkeypatch) as (net, _engine),
        httpx.AsyncClient(base_url=net.base_url, headers={"x-api-key": net.key}) as client,
    ):
        key = await fetch_key(client)
        whole = SealedRequest.of_json(key, message())
        response = await client.post("/v1/messages", content=whole.content, headers=whole.headers)
        streamed = SealedRequest.of_json(key, message(stream=True))
        async with client.stream(
            "POST", "/v1/messages", content=streamed.content, headers=streamed.headers
        ) as stream_response:
            raw = b"".join([chunk async for chunk in stream_response.aiter_bytes()])
    assert response.status_code == stream_response.status_code == 200
    assert_hidden(whole.content, response.content, streamed.content, raw)
    assert [block["text"] for block in whole.open_json(response)["content"]] == [ANSWER]
    assert b"event: message_start\ndata: " in raw  # event names stay as they were
    assert b"event: message_stop\ndata: " in raw
    rewriter = streamed.event_rewriter()
    events = sse_texts(rewriter.feed(raw) + rewriter.finish())
    assert [e["type"] for e in events][:2] == ["message_start", "content_block_start"]
    assert events[-1]["type"] == "message_stop"
    text = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    assert "".join(text) == ANSWER


async def test_a_client_hanging_up_on_a_sealed_stream_cancels_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with network(tmp_path, monkeypatch) as (net, engine):
        engine.script = " ".join(["word"] * 500)
        engine.token_delay_s = 0.01
        async with httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client:
            sealed = SealedRequest.of_json(await fetch_key(client), chat(stream=True))
            async with client.stream(
                "POST", "/v1/chat/completions", content=sealed.content, headers=sealed.headers
            ) as response:
                events = sealed.aiter_events(response)
                for _ in range(4):
                    await anext(events)
        async with asyncio.timeout(5):
            while not engine.endings:
                await asyncio.sleep(0.02)
    assert engine.endings[0].kind == "finished" and engine.endings[0].reason == "cancelled"


async def test_a_sealed_request_needs_an_api_key_before_it_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        network(tmp_path, monkeypatch) as (net, engine),
        httpx.AsyncClient(base_url=net.base_url) as client,
    ):
        sealed = SealedRequest.of_json(await fetch_key(client), chat())
        response = await client.post(
            "/v1/chat/completions", content=sealed.content, headers=sealed.headers
        )
        sealed_bad_json = SealedRequest(await fetch_key(client), b"{not json")
        bad_json = await client.post(
            "/v1/chat/completions",
            content=sealed_bad_json.content,
            headers={**sealed_bad_json.headers, **net.headers},
        )
    # Refused before anything was opened, so the answer cannot be sealed: plain JSON,
    # which the sealing client passes on as an error.
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.headers[ERROR_HEADER] == "invalid_api_key"
    assert sealed.open_json(response)["error"]["code"] == "invalid_api_key"
    # With the key, the app runs and its errors are sealed.
    assert bad_json.status_code == 400
    assert bad_json.headers["content-type"] == SEALED_CONTENT_TYPE
    assert sealed_bad_json.open_json(bad_json)["error"]["code"] == "invalid_json"
    assert engine.requests == []


@pytest.mark.parametrize("key_headers", [{}, {"Authorization": "Bearer mf-not-a-key"}])
async def test_a_wrong_key_is_refused_before_the_envelope_is_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_headers: dict[str, str]
) -> None:
    """A body that would not open (400 with a key) gets the 401: the key is checked before
    the body is looked at."""
    async with (
        network(tmp_path, monkeypatch) as (net, engine),
        httpx.AsyncClient(
            base_url=net.base_url, headers={**key_headers, "Content-Type": SEALED_CONTENT_TYPE}
        ) as client,
    ):
        key = await fetch_key(client)
        undecryptable = forged(key, sealed=flip_last_byte(orjson.loads(forged(key))["sealed"]))
        answers = [
            await client.post(path, content=body)
            for path in ("/v1/chat/completions", "/v1/messages")
            for body in (undecryptable, b"not json at all")
        ]
    for answer in answers[:2]:
        assert answer.status_code == 401
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["error"]["code"] == "invalid_api_key"
    for answer in answers[2:]:
        assert answer.status_code == 401
        assert answer.json()["type"] == "error"
        assert answer.json()["error"]["type"] == "authentication_error"
        assert answer.headers[ERROR_HEADER] == "invalid_api_key"
    assert engine.requests == []


async def test_a_wrong_key_is_answered_while_the_body_is_still_on_its_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client announces an 11 MB sealed body and sends one kilobyte of it: the 401
    arrives anyway, so the coordinator neither waited for the body nor opened it."""
    async with network(tmp_path, monkeypatch) as (net, _engine):
        port = int(net.base_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer mf-not-a-key\r\n"
                b"Content-Type: " + SEALED_CONTENT_TYPE.encode() + b"\r\n"
                b"Content-Length: "
                + str(11 * 1024 * 1024).encode()
                + b"\r\n\r\n"
                + b"{"
                + b" " * 1023
            )
            await writer.drain()
            async with asyncio.timeout(10):
                status_line = await reader.readline()
                head = await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()
    assert status_line.startswith(b"HTTP/1.1 401 "), status_line
    assert f"{ERROR_HEADER}: invalid_api_key".encode() in head.lower()


def forged(key: CoordinatorKey, **fields: object) -> bytes:
    envelope = orjson.loads(SealedRequest.of_json(key, chat()).content)
    return orjson.dumps({**envelope, **fields})


def flip_last_byte(sealed_b64: str) -> str:
    raw = bytearray(b64d(sealed_b64))
    raw[-1] ^= 1
    return b64e(bytes(raw))


@pytest.mark.parametrize(
    ("make_body", "code", "param"),
    [
        (lambda k: forged(k, kid="0123456789abcdef"), "kid_mismatch", "kid"),
        (
            lambda k: forged(k, sealed=flip_last_byte(orjson.loads(forged(k))["sealed"])),
            "decryption_failed",
            "sealed",
        ),
        (
            lambda k: forged(k, ephemeral_public_key=b64e(EncryptionKeyPair.generate().public_key)),
            "decryption_failed",
            "sealed",
        ),
        (lambda k: forged(k, sealed="AAAA"), "invalid_sealed_envelope", "sealed"),
        (lambda k: forged(k, sealed=None), "invalid_sealed_envelope", "sealed"),
        (
            lambda k: forged(k, ephemeral_public_key="AAAA"),
            "invalid_sealed_envelope",
            "ephemeral_public_key",
        ),
        (
            lambda k: forged(k, ephemeral_public_key=b64e(bytes(32))),
            "invalid_sealed_envelope",
            "ephemeral_public_key",
        ),
        (lambda k: forged(k, kid=7), "invalid_sealed_envelope", "kid"),
        (lambda k: b"[1, 2]", "invalid_sealed_envelope", None),
        (lambda k: b"not json at all", "invalid_sealed_envelope", None),
        (lambda k: b"", "invalid_sealed_envelope", None),
    ],
)
async def test_a_sealed_body_that_does_not_open_is_a_plain_400_in_the_dialects_shape(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_body: Any,
    code: str,
    param: str | None,
) -> None:
    async with (
        network(tmp_path, monkeypatch) as (net, engine),
        httpx.AsyncClient(
            base_url=net.base_url, headers={**net.headers, "Content-Type": SEALED_CONTENT_TYPE}
        ) as client,
    ):
        body = make_body(await fetch_key(client))
        openai_style = await client.post("/v1/chat/completions", content=body)
        anthropic_style = await client.post("/v1/messages", content=body)
    assert openai_style.status_code == anthropic_style.status_code == 400
    assert openai_style.headers["content-type"] == "application/json"
    assert openai_style.headers[ERROR_HEADER] == anthropic_style.headers[ERROR_HEADER] == code
    error = openai_style.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert anthropic_style.json()["type"] == "error"
    assert anthropic_style.json()["error"]["type"] == "invalid_request_error"
    assert anthropic_style.json()["error"]["message"] == error["message"]
    assert engine.requests == []


async def test_an_oversized_sealed_body_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        network(tmp_path, monkeypatch) as (net, _engine),
        httpx.AsyncClient(
            base_url=net.base_url, headers={**net.headers, "Content-Type": SEALED_CONTENT_TYPE}
        ) as client,
    ):
        response = await client.post("/v1/chat/completions", content=b" " * (12 * 1024 * 1024))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


async def test_plain_requests_are_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        network(tmp_path, monkeypatch) as (net, _engine),
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        whole = await client.post("/v1/chat/completions", json=chat())
        stream = await client.post("/v1/chat/completions", json=chat(stream=True))
        models = await client.get("/v1/models")
    assert whole.headers["content-type"] == "application/json"
    assert KID_HEADER not in whole.headers and KID_HEADER not in stream.headers
    assert whole.json()["choices"][0]["message"]["content"] == ANSWER
    assert chat_text(sse_texts(stream.content)) == ANSWER
    assert stream.content.endswith(b"data: [DONE]\n\n")
    assert models.json()["data"][0]["id"] == "fake-model"


class RecordingTransport(httpx.AsyncBaseTransport):
    """The bytes on the wire: each request body sent and each response body received."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[bytes] = []
        self.received: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(await request.aread())
        response = await self.inner.handle_async_request(request)
        self.received.append(b"")
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Recorded(response, self.received),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Recorded(httpx.AsyncByteStream):
    def __init__(self, response: httpx.Response, received: list[bytes]) -> None:
        self.response = response
        self.received = received
        self.index = len(received) - 1

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.response.aiter_raw():
            self.received[self.index] += chunk
            yield chunk

    async def aclose(self) -> None:
        await self.response.aclose()
