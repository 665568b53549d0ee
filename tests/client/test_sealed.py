"""The sealed transport's format and both halves at the ASGI level, without a network: key
documents, the numbered nonces that keep an answer's pieces in order, SSE events split
anywhere, bodies that arrive in pieces, the transports' key refresh, and the refusal of a
plain answer to a sealed request."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from moonflower.client.sealed import (
    KID_HEADER,
    SEALED_CONTENT_TYPE,
    AnswerOpener,
    AsyncSealingTransport,
    CoordinatorKey,
    EventRewriter,
    SealedRequest,
    key_id,
    seal_piece,
)
from moonflower.coordinator.sealed_transport import SealedTransport
from moonflower.crypto.envelope import EncryptionKeyPair
from moonflower.crypto.signing import b64d, b64e
from moonflower.errors import SealError

ALICE = EncryptionKeyPair.from_private_bytes(
    bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
)
BOB = EncryptionKeyPair.from_private_bytes(
    bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
)
STREAM = (
    b'event: message_start\ndata: {"a":1}\n\n'
    b": a comment stays\n\n"
    b"data: line one\ndata: line two\n\n"
    b"data:no space\n\n"
    b"data: [DONE]\n\n"
)


def test_golden_key_id_and_sealed_piece() -> None:
    assert key_id(ALICE.public_key) == "300c9c9603b92a4b"
    assert CoordinatorKey.of(ALICE.public_key).document() == {
        "kid": "300c9c9603b92a4b",
        "public_key": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=",
        "algorithm": "x25519-xsalsa20-poly1305",
    }
    piece = seal_piece(ALICE.box_with(BOB.public_key), bytes(range(16)), 1, b"[DONE]")
    assert piece == "AAECAwQFBgcICQoLDA0ODwAAAAAAAAABZ/JKO/lTXmjyjVAPD2uzYc7xJ2wI3w=="
    assert BOB.box_with(ALICE.public_key).decrypt(b64d(piece)) == b"[DONE]"


@pytest.mark.parametrize(
    "change",
    [
        {"algorithm": "x25519-nacl-box"},
        {"kid": "0000000000000000"},
        {"public_key": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTm=="},
        {"public_key": b64e(bytes(31)), "kid": hashlib.sha256(bytes(31)).hexdigest()[:16]},
        {"public_key": None},
    ],
)
def test_a_key_document_that_does_not_hold_together_is_refused(change: dict[str, Any]) -> None:
    document = {**CoordinatorKey.of(ALICE.public_key).document(), **change}
    with pytest.raises(SealError):
        CoordinatorKey.from_document(document)


def pieces(count: int, stream_id: bytes = b"s" * 16) -> list[str]:
    box = ALICE.box_with(BOB.public_key)
    return [seal_piece(box, stream_id, i, b"piece %d" % i) for i in range(count)]


def opener(request_nonce: bytes = bytes(24)) -> AnswerOpener:
    return AnswerOpener(BOB.box_with(ALICE.public_key), request_nonce)


def test_pieces_open_in_order() -> None:
    reader = opener()
    assert [reader.open(p) for p in pieces(3)] == [b"piece 0", b"piece 1", b"piece 2"]


@pytest.mark.parametrize(
    ("opened", "offending"),
    [
        ([], 1),  # the first is missing
        ([0], 2),  # one dropped
        ([0], 0),  # one repeated
        ([0, 1, 2], 1),  # an old one replayed
    ],
)
def test_pieces_out_of_their_sealed_order_are_refused(opened: list[int], offending: int) -> None:
    sealed, reader = pieces(3), opener()
    for index in opened:
        reader.open(sealed[index])
    with pytest.raises(SealError) as caught:
        reader.open(sealed[offending])
    assert caught.value.reason == "out_of_order"


def test_a_piece_of_another_answer_or_the_request_itself_is_refused() -> None:
    reader = opener()
    reader.open(pieces(2)[0])
    with pytest.raises(SealError, match="another answer"):
        reader.open(pieces(2, stream_id=b"t" * 16)[1])
    reflected = opener(request_nonce=b"s" * 16 + bytes(8))
    with pytest.raises(SealError) as caught:
        reflected.open(pieces(1)[0])
    assert caught.value.reason == "reflected"


def test_a_changed_piece_does_not_open() -> None:
    raw = bytearray(b64d(pieces(1)[0]))
    raw[30] ^= 0x40
    with pytest.raises(SealError) as caught:
        opener().open(b64e(bytes(raw)))
    assert caught.value.reason == "open_failed"


def test_event_rewriting_is_the_same_wherever_the_chunks_split() -> None:
    def mark(data: bytes) -> bytes:
        return b"<" + data + b">"

    whole = EventRewriter(mark)
    expected = whole.feed(STREAM) + whole.finish()
    assert expected == (
        b'event: message_start\ndata: <{"a":1}>\n\n'
        b": a comment stays\n\n"
        b"data: <line one\ndata: line two>\n\n"
        b"data: <no space>\n\n"
        b"data: <[DONE]>\n\n"
    )
    for cut in range(1, len(STREAM)):
        split = EventRewriter(mark)
        assert split.feed(STREAM[:cut]) + split.feed(STREAM[cut:]) + split.finish() == expected
    tail = EventRewriter(mark)
    assert tail.feed(b"data: a\n\ndata: b") + tail.finish() == b"data: <a>\n\ndata: <b>"


async def call(app: Any, scope: Scope, chunks: list[bytes]) -> list[Message]:
    """Run an ASGI app on one request whose body arrives in `chunks`."""
    incoming = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def http_scope(content_type: bytes, path: str = "/v1/chat/completions") -> Scope:
    headers = [(b"content-type", content_type), (b"host", b"coordinator")]
    return {"type": "http", "method": "POST", "path": path, "headers": headers}


def streaming_echo(sse_chunks: list[bytes]) -> Any:
    """An app that records the body it read, then answers with `sse_chunks` as a stream."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        app.seen = (dict(scope["headers"]), (await receive())["body"])  # type: ignore[attr-defined]
        start = [(b"content-type", b"text/event-stream"), (b"content-length", b"999")]
        await send({"type": "http.response.start", "status": 200, "headers": start})
        for i, chunk in enumerate(sse_chunks):
            more = i < len(sse_chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    return app


async def test_a_body_in_pieces_and_a_stream_split_mid_event_make_the_round_trip() -> None:
    chunks = [STREAM[i : i + 7] for i in range(0, len(STREAM), 7)] + [b""]
    app = streaming_echo(chunks)
    middleware = SealedTransport(app, ALICE)
    sealed = SealedRequest(middleware.key, b'{"prompt": "secret"}')
    body = sealed.content
    scope = http_scope(b"Application/Moonflower-Sealed+JSON; v=1")
    sent = await call(middleware, scope, [body[:10], body[10:50], body[50:]])
    headers, seen_body = app.seen
    assert seen_body == b'{"prompt": "secret"}'
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == b"%d" % len(seen_body)
    start_headers = dict(sent[0]["headers"])
    assert b"content-length" not in start_headers
    assert start_headers[KID_HEADER.encode()] == middleware.key.kid.encode()
    wire = b"".join(m["body"] for m in sent[1:])
    assert b"line one" not in wire and b"[DONE]" not in wire
    assert sent[-1]["more_body"] is False
    rewriter = sealed.event_rewriter()
    same_events = STREAM.replace(b"data:no", b"data: no")  # the same event data
    assert rewriter.feed(wire) + rewriter.finish() == same_events


async def test_an_answer_with_no_body_passes_as_it_is() -> None:
    async def no_content(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = SealedTransport(no_content, ALICE)
    body = SealedRequest(middleware.key, b"{}").content
    sent = await call(middleware, http_scope(SEALED_CONTENT_TYPE.encode()), [body])
    assert sent == [
        {"type": "http.response.start", "status": 204, "headers": []},
        {"type": "http.response.body", "body": b""},
    ]


async def test_a_client_that_leaves_before_its_body_arrives_gets_nothing() -> None:
    app = streaming_echo([b""])
    sent = await call(SealedTransport(app, ALICE), http_scope(SEALED_CONTENT_TYPE.encode()), [])
    assert sent == []
    assert not hasattr(app, "seen")


def json_echo() -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = (await receive())["body"]
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"echo": ', "more_body": True})
        await send({"type": "http.response.body", "body": body + b"}"})

    return app


class Restartable:
    """A coordinator whose key changes when it 'restarts'."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.current = SealedTransport(json_echo(), EncryptionKeyPair.generate())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.current(scope, receive, send)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_the_transport_fetches_the_key_again_after_a_restart(path: str) -> None:
    coordinator = Restartable()
    transport = AsyncSealingTransport(inner=httpx.ASGITransport(coordinator))
    async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
        assert (await client.post(path, json={"n": 1})).json() == {"echo": {"n": 1}}
        coordinator.restart()
        response = await client.post(path, json={"n": 2})
        assert response.json() == {"echo": {"n": 2}}
        assert response.headers["content-type"] == "application/json"
        assert KID_HEADER not in response.headers


async def test_a_pinned_key_is_never_replaced() -> None:
    coordinator = Restartable()
    pinned = coordinator.current.key
    transport = AsyncSealingTransport(pinned, inner=httpx.ASGITransport(coordinator))
    async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
        coordinator.restart()
        response = await client.post("/v1/x", json={"n": 1})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "kid_mismatch"


async def test_a_plain_success_answer_to_a_sealed_request_is_refused() -> None:
    plain_app = json_echo()
    transport = AsyncSealingTransport(
        CoordinatorKey.of(ALICE.public_key), inner=httpx.ASGITransport(plain_app)
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
        with pytest.raises(SealError) as caught:
            await client.post("/v1/x", json={"n": 1})
    assert caught.value.reason == "not_sealed"


async def test_requests_that_are_not_json_posts_pass_through_plain() -> None:
    seen: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(dict(scope["headers"]).get(b"content-type", b""))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": orjson.dumps("ok")})

    transport = AsyncSealingTransport(
        CoordinatorKey.of(ALICE.public_key), inner=httpx.ASGITransport(app)
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
        await client.get("/v1/models")
        await client.post("/v1/files", content=b"raw", headers={"content-type": "text/plain"})
    assert seen == [b"", b"text/plain"]
