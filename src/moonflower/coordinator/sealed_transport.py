"""Sealed transport, coordinator side: opens request bodies sealed to the coordinator's key
and seals their answers back to the sender, as a pure ASGI middleware around the app.

Owns `GET /v1/encryption-key` (public: `{"kid", "public_key", "algorithm"}`) and, for a
request whose Content-Type is `application/moonflower-sealed+json`: reading and opening the
envelope, handing the app the plain JSON body as an ordinary `application/json` request, and
sealing whatever the app answers — a whole body becomes `{"sealed": …}` with the sealed
content type, an event stream keeps `text/event-stream` with each event's data sealed in
order (event names stay visible; `[DONE]` is sealed like any data). Both carry the header
`x-moonflower-sealed-kid`. The wire format itself lives in `moonflower.client.sealed`.

Opening costs the coordinator (a body of up to `MAX_SEALED_BODY_BYTES`, about 11 MB, read,
decoded and decrypted), so nobody gets it for free: the API key in the request's plain
headers is checked first, through the app's `CallerCache`, and a missing or wrong key is
answered 401 before a byte of the body is read; a declared length over the limit is 413
before reading too, and reading stops at the limit. Those refusals, and an envelope that
cannot be opened — not JSON, a missing field, a kid that is not this coordinator's key
(`kid_mismatch`: the key is the one in the coordinator's key file, shared by its replicas
and kept across restarts, so it changes only when that file does, or, with no file, at
every start), a bad ephemeral key, a box that does not open (`decryption_failed`) — are
answered in plain JSON in the called route's dialect, their code also in the header
`x-moonflower-sealed-error` (Anthropic's shape has no code field), and the app never runs.
Everything the app answers, errors included, is sealed. A sealed body is for the API-key
routes (the inference endpoints); a route that takes another credential takes plain bodies.
Plain requests pass through after one look at their Content-Type. It must not log or keep
plaintext, and is not Starlette's `BaseHTTPMiddleware`, which would break streaming and
disconnect detection: the app's later `receive` calls reach the server's, so a client
hanging up still cancels its job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import nacl.public
import nacl.utils
import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moonflower import errors
from moonflower.client.sealed import (
    ERROR_HEADER,
    KEY_PATH,
    KID_HEADER,
    SEALED_CONTENT_TYPE,
    STREAM_ID_BYTES,
    CoordinatorKey,
    EventRewriter,
    is_sealed_content_type,
    open_with_nonce,
    seal_piece,
)
from moonflower.coordinator.error_response import render_error
from moonflower.coordinator.request_reading import MAX_BODY_BYTES
from moonflower.crypto.envelope import KEY_BYTES, EncryptionKeyPair
from moonflower.crypto.signing import b64d

MAX_SEALED_BODY_BYTES = MAX_BODY_BYTES * 4 // 3 + 64 * 1024
"""The envelope of the largest body the app accepts: base64 of it, plus room for the rest."""

_INVALID = "invalid_sealed_envelope"


class SealedTransport:
    """ASGI middleware: `app.add_middleware(SealedTransport, keys=EncryptionKeyPair...)`."""

    def __init__(
        self,
        app: ASGIApp,
        keys: EncryptionKeyPair,
        admits: Callable[[Request], Awaitable[object]] | None = None,
    ) -> None:
        """`admits` checks the caller from the plain headers (raising a domain error) before
        any of a sealed body is read; the coordinator passes its API-key check."""
        self.app = app
        self._admits = admits
        self._keys = keys
        self.key = CoordinatorKey.of(keys.public_key)
        self._key_document = orjson.dumps(self.key.document())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["path"] == KEY_PATH and scope["method"] == "GET":
            await self._send_key(send)
        elif _has_sealed_body(scope):
            await self._sealed(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _send_key(self, send: Send) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._key_document)).encode()),
            # The key lives as long as its file (or process), which an operator may replace:
            # caches ask again each time, as a stale key costs a refused request and a
            # fresh one costs this tiny answer. Clients keep the key in memory anyway.
            (b"cache-control", b"no-cache"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self._key_document})

    async def _sealed(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # The key first: an unknown caller gets no body read and nothing decrypted.
            if self._admits is not None:
                await self._admits(Request(scope))
            envelope = await _read_body(scope, receive)
            if envelope is None:
                return  # the client left before sending its body
            box, plain = self._open(envelope)
        except errors.MoonflowerError as exc:
            await _send_error(scope, receive, send, exc)
            return
        inner = {**scope, "headers": _plain_request_headers(scope["headers"], len(plain))}
        sealer = _AnswerSealer(box, self.key.kid, send)
        await self.app(inner, _replay(plain, receive), sealer.send)

    def _open(self, raw: bytes) -> tuple[nacl.public.Box, bytes]:
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError:
            envelope = None
        if not isinstance(envelope, dict):
            raise _invalid("The sealed request body must be a JSON object.", None)
        kid, ephemeral, sealed = (
            envelope.get(name) for name in ("kid", "ephemeral_public_key", "sealed")
        )
        if not isinstance(kid, str):
            raise _invalid("The sealed request has no 'kid' string.", "kid")
        if kid != self.key.kid:
            raise errors.InvalidRequest(
                f"The request is sealed to key '{kid[:32]}', but the coordinator's key is "
                f"'{self.key.kid}' (it changes when the coordinator's key is replaced); fetch "
                f"GET {KEY_PATH} again and seal the request to that key.",
                param="kid",
                code="kid_mismatch",
            )
        box = self._box_with(ephemeral)
        if not isinstance(sealed, str):
            raise _invalid("The sealed request has no 'sealed' string.", "sealed")
        try:
            _nonce, plain = open_with_nonce(box, sealed)
        except errors.SealError as exc:
            if exc.reason != "open_failed":
                raise _invalid(f"The 'sealed' value is unusable: {exc.detail}.", "sealed") from None
            raise errors.InvalidRequest(
                "The 'sealed' value does not open with the coordinator's key and the given "
                "ephemeral key: it was sealed to another key, or changed on the way.",
                param="sealed",
                code="decryption_failed",
            ) from None
        return box, plain

    def _box_with(self, ephemeral: object) -> nacl.public.Box:
        name = "ephemeral_public_key"
        try:
            public = b64d(ephemeral)  # type: ignore[arg-type]
        except ValueError:
            raise _invalid(f"'{name}' must be canonical base64.", name) from None
        if len(public) != KEY_BYTES:
            raise _invalid(f"'{name}' must be a 32-byte X25519 public key.", name)
        try:
            return self._keys.box_with(public)
        except errors.SealError:
            raise _invalid(f"'{name}' gives no usable shared secret.", name) from None


def _invalid(message: str, param: str | None) -> errors.InvalidRequest:
    return errors.InvalidRequest(message, param=param, code=_INVALID)


def _has_sealed_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return is_sealed_content_type(value)
    return False


async def _read_body(scope: Scope, receive: Receive) -> bytes | None:
    too_large = errors.BodyTooLarge(
        f"The sealed request body is larger than the {MAX_SEALED_BODY_BYTES} byte limit.",
        param=None,
    )
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > MAX_SEALED_BODY_BYTES:
            raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_SEALED_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _plain_request_headers(headers: list[tuple[bytes, bytes]], length: int) -> list[Any]:
    dropped = {b"content-type", b"content-length", b"transfer-encoding"}
    kept = [(name, value) for name, value in headers if name not in dropped]
    return [*kept, (b"content-type", b"application/json"), (b"content-length", b"%d" % length)]


def _replay(body: bytes, receive: Receive) -> Receive:
    """The opened body once, then the server's own messages (a hang-up included)."""
    is_sent = False

    async def replay() -> Message:
        nonlocal is_sent
        if is_sent:
            return await receive()
        is_sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _send_error(
    scope: Scope, receive: Receive, send: Send, exc: errors.MoonflowerError
) -> None:
    response = render_error(Request(scope), exc)
    response.headers[ERROR_HEADER] = exc.code  # the same for every dialect, for clients
    await response(scope, receive, send)


class _AnswerSealer:
    """Wraps `send` for one sealed request: every piece of the answer is sealed to the
    sender under nonce `stream id ‖ index`, so the sender can check their order."""

    def __init__(self, box: nacl.public.Box, kid: str, send: Send) -> None:
        self._box = box
        self._kid = kid.encode()
        self._send = send
        self._stream_id = nacl.utils.random(STREAM_ID_BYTES)
        self._index = 0
        self._start: Message | None = None
        self._rewriter: EventRewriter | None = None
        self._is_bodiless = False
        self._chunks: list[bytes] = []

    def _seal(self, plaintext: bytes) -> str:
        sealed = seal_piece(self._box, self._stream_id, self._index, plaintext)
        self._index += 1
        return sealed

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self._begin(message)
        elif message["type"] != "http.response.body" or self._is_bodiless:
            await self._send(message)
        elif self._rewriter is not None:
            await self._stream(message)
        else:
            await self._gather(message)

    async def _begin(self, message: Message) -> None:
        if message["status"] in (204, 304):  # no body to seal, and none may be added
            self._is_bodiless = True
            await self._send(message)
            return
        headers = message.get("headers", [])
        content_type = next((v for n, v in headers if n.lower() == b"content-type"), b"")
        if not content_type.lower().startswith(b"text/event-stream"):
            self._start = message  # sent once the whole body is sealed and its length known
            return
        self._rewriter = EventRewriter(lambda data: self._seal(data).encode("ascii"))
        kept = [(n, v) for n, v in headers if n.lower() != b"content-length"]
        await self._send({**message, "headers": [*kept, (KID_HEADER.encode(), self._kid)]})

    async def _stream(self, message: Message) -> None:
        assert self._rewriter is not None
        is_more = message.get("more_body", False)
        body = self._rewriter.feed(message.get("body", b""))
        if not is_more:
            body += self._rewriter.finish()
        if body or not is_more:
            await self._send({"type": "http.response.body", "body": body, "more_body": is_more})

    async def _gather(self, message: Message) -> None:
        self._chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        assert self._start is not None, "ASGI: a body came before the response start"
        body = orjson.dumps({"sealed": self._seal(b"".join(self._chunks))})
        self._chunks.clear()
        dropped = {b"content-type", b"content-length"}
        kept = [(n, v) for n, v in self._start.get("headers", []) if n.lower() not in dropped]
        headers = [
            *kept,
            (b"content-type", SEALED_CONTENT_TYPE.encode()),
            (b"content-length", b"%d" % len(body)),
            (KID_HEADER.encode(), self._kid),
        ]
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
