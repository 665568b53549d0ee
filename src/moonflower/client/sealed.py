"""Sealed transport, consumer side: a prompt and its answer that nothing between the consumer
and the coordinator (a TLS-terminating proxy, a logging load balancer) can read or reorder.

Owns the transport's wire format — the key document, the request envelope, the sealed answer
forms, the nonce layout that numbers an answer's pieces, the rewriting of SSE `data:` fields
— and the consumer's half: check the coordinator's key, seal a body, open a whole answer or a
stream, and httpx transports that do all of it under an unmodified SDK. The coordinator's
half (`moonflower.coordinator.sealed_transport`) imports the format from here, so the two
cannot drift. It never logs or keeps plaintext and never accepts a plain 2xx answer to a
sealed request.

Format (docs/trust.md, "Sealed transport"). Values are NaCl boxes, `base64(nonce ‖ box)`,
between the coordinator's X25519 key and a fresh ephemeral key per request:

- key document `{"kid", "public_key", "algorithm": "x25519-xsalsa20-poly1305"}`, where
  `kid` = the first 16 hex digits of SHA-256(public key);
- request body `{"kid", "ephemeral_public_key", "sealed"}` (content type
  `application/moonflower-sealed+json`), `sealed` opening to the plain JSON body under a
  random nonce;
- answer pieces are sealed under nonce `stream id (16 random bytes per answer) ‖ index (8
  bytes, big-endian, from 0)`: a whole answer is `{"sealed"}` (index 0) with the sealed
  content type; a stream stays `text/event-stream` and each event's data is replaced by its
  sealed form (indices 0, 1, 2 … in order), every other line kept. Both carry the header
  `x-moonflower-sealed-kid`. An opener refuses a piece from another answer, out of order,
  missing, or repeated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import nacl.exceptions
import nacl.public
import nacl.utils
import orjson

from moonflower.crypto.canonical import sha256_hex
from moonflower.crypto.envelope import KEY_BYTES, NONCE_BYTES, TAG_BYTES, EncryptionKeyPair
from moonflower.crypto.signing import b64d, b64e
from moonflower.errors import SealError

SEALED_CONTENT_TYPE = "application/moonflower-sealed+json"
ALGORITHM = "x25519-xsalsa20-poly1305"
KEY_PATH = "/v1/encryption-key"
KID_HEADER = "x-moonflower-sealed-kid"
ERROR_HEADER = "x-moonflower-sealed-error"
STREAM_ID_BYTES = 16
_INDEX_BYTES = NONCE_BYTES - STREAM_ID_BYTES

AnswerKind = Literal["sealed_body", "sealed_stream", "plain_error"]


def key_id(public_key: bytes) -> str:
    """The key id: the first 16 hex digits of SHA-256 of the 32-byte public key."""
    return sha256_hex(public_key)[:16]


def is_sealed_content_type(value: str | bytes | None) -> bool:
    """Whether a Content-Type names the sealed form (case-insensitive, parameters ignored)."""
    if value is None:
        return False
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text.split(";", 1)[0].strip().lower() == SEALED_CONTENT_TYPE


@dataclass(frozen=True)
class CoordinatorKey:
    """The coordinator's public encryption key, as `GET /v1/encryption-key` publishes it."""

    kid: str
    public_key: bytes

    @classmethod
    def of(cls, public_key: bytes) -> CoordinatorKey:
        return cls(key_id(public_key), public_key)

    def document(self) -> dict[str, str]:
        return {"kid": self.kid, "public_key": b64e(self.public_key), "algorithm": ALGORITHM}

    @classmethod
    def from_document(cls, document: object) -> CoordinatorKey:
        """Check a key document; raises `SealError` unless it is complete and consistent."""
        if not isinstance(document, dict):
            raise SealError("malformed", "the key document is not a JSON object")
        if document.get("algorithm") != ALGORITHM:
            raise SealError("malformed", f"the key's algorithm is not {ALGORITHM}")
        try:
            public_key = b64d(document.get("public_key"))  # type: ignore[arg-type]
        except ValueError as exc:
            raise SealError("malformed", "the public key is not canonical base64") from exc
        if len(public_key) != KEY_BYTES:
            raise SealError("bad_key", "an X25519 public key is 32 bytes")
        if document.get("kid") != key_id(public_key):
            raise SealError("malformed", "the kid is not the one its public key gives")
        return cls.of(public_key)


def seal_piece(box: nacl.public.Box, stream_id: bytes, index: int, plaintext: bytes) -> str:
    """One piece of an answer, sealed under nonce `stream_id ‖ index`."""
    return b64e(bytes(box.encrypt(plaintext, stream_id + index.to_bytes(_INDEX_BYTES, "big"))))


def open_with_nonce(box: nacl.public.Box, sealed: str) -> tuple[bytes, bytes]:
    """(nonce, plaintext) of a sealed value; raises `SealError`."""
    try:
        raw = b64d(sealed)
    except ValueError as exc:
        raise SealError("malformed", "the sealed value is not canonical base64") from exc
    if len(raw) < NONCE_BYTES + TAG_BYTES:
        raise SealError("malformed", "the sealed value is too short for a nonce and a tag")
    try:
        return raw[:NONCE_BYTES], box.decrypt(raw)
    except nacl.exceptions.CryptoError as exc:
        raise SealError(
            "open_failed", "the sealed value does not open: wrong key, or it was changed"
        ) from exc


class AnswerOpener:
    """Opens the pieces of one answer, refusing any not in their sealed order."""

    def __init__(self, box: nacl.public.Box, request_nonce: bytes) -> None:
        self._box = box
        self._request_stream = request_nonce[:STREAM_ID_BYTES]
        self._stream_id: bytes | None = None
        self._next = 0

    def open(self, sealed: str) -> bytes:
        nonce, plaintext = open_with_nonce(self._box, sealed)
        stream_id, index = nonce[:STREAM_ID_BYTES], int.from_bytes(nonce[STREAM_ID_BYTES:], "big")
        if self._stream_id is None:
            if stream_id == self._request_stream:
                raise SealError("reflected", "the answer is the request sent back")
            self._stream_id = stream_id
        elif stream_id != self._stream_id:
            raise SealError("out_of_order", "a piece of another answer was spliced in")
        if index != self._next:
            raise SealError("out_of_order", f"piece {index} came where {self._next} belonged")
        self._next += 1
        return plaintext


class EventRewriter:
    """Replaces the data of each SSE event in a byte stream with `transform(data)`, keeping
    every other line as it is. Events may arrive split across chunks: bytes after the last
    blank line wait for the next chunk (or `finish`). Expects `\\n` line ends, as the
    coordinator's `sse` module writes them."""

    def __init__(self, transform: Callable[[bytes], bytes]) -> None:
        self._transform = transform
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        *events, self._pending = (self._pending + chunk).split(b"\n\n")
        return b"".join(self._rewrite(event) + b"\n\n" for event in events)

    def finish(self) -> bytes:
        """The rewritten unterminated tail, if any (left unterminated, as it came)."""
        tail, self._pending = self._pending, b""
        return self._rewrite(tail) if tail else b""

    def _rewrite(self, event: bytes) -> bytes:
        lines = event.split(b"\n")
        data = [_field_value(line) for line in lines if _is_data(line)]
        if not data:
            return event
        replaced = [b"data: " + part for part in self._transform(b"\n".join(data)).split(b"\n")]
        first = next(i for i, line in enumerate(lines) if _is_data(line))
        kept = [line for line in lines if not _is_data(line)]
        return b"\n".join(kept[:first] + replaced + kept[first:])


def _is_data(line: bytes) -> bool:
    return line == b"data" or line.startswith(b"data:")


def _field_value(line: bytes) -> bytes:
    value = line[5:]
    return value[1:] if value.startswith(b" ") else value


class SealedRequest:
    """One body sealed to the coordinator under a fresh ephemeral key, and the means to open
    its answer. Single use: one request, one answer."""

    def __init__(self, key: CoordinatorKey, body: bytes) -> None:
        self.key = key
        ephemeral = EncryptionKeyPair.generate()
        box = ephemeral.box_with(key.public_key)
        nonce = nacl.utils.random(NONCE_BYTES)
        envelope = {
            "kid": key.kid,
            "ephemeral_public_key": b64e(ephemeral.public_key),
            "sealed": b64e(bytes(box.encrypt(body, nonce))),
        }
        self.content = orjson.dumps(envelope)
        self.headers = {"Content-Type": SEALED_CONTENT_TYPE}
        self._opener = AnswerOpener(box, nonce)

    @classmethod
    def of_json(cls, key: CoordinatorKey, payload: Any) -> SealedRequest:
        return cls(key, orjson.dumps(payload))

    def classify(self, status: int, headers: httpx.Headers) -> AnswerKind:
        """What the answer is; raises `SealError` for a plain success (never accepted)."""
        content_type = headers.get("content-type", "")
        if is_sealed_content_type(content_type):
            return "sealed_body"
        if content_type.startswith("text/event-stream") and headers.get(KID_HEADER) == self.key.kid:
            return "sealed_stream"
        if status >= 400:
            return "plain_error"  # the coordinator could not open the request; no payload
        raise SealError("not_sealed", f"a sealed request got a plain {status} answer")

    def open_body(self, body: bytes) -> bytes:
        """The plain body inside a sealed whole answer."""
        try:
            envelope = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise SealError("malformed", "the sealed answer is not JSON") from exc
        sealed = envelope.get("sealed") if isinstance(envelope, dict) else None
        if not isinstance(sealed, str):
            raise SealError("malformed", "the sealed answer has no 'sealed' string")
        return self._opener.open(sealed)

    def open_json(self, response: httpx.Response) -> Any:
        """The JSON answer to this request (a read `httpx.Response`), opened if sealed."""
        kind = self.classify(response.status_code, response.headers)
        if kind == "sealed_stream":
            raise SealError("malformed", "the answer is a stream; use `event_rewriter`")
        body = self.open_body(response.content) if kind == "sealed_body" else response.content
        return orjson.loads(body)

    def event_rewriter(self) -> EventRewriter:
        """Turns the sealed SSE bytes of this request's answer back into the plain ones."""
        return EventRewriter(lambda data: self._opener.open(_ascii(data)))

    async def aiter_events(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The plain SSE bytes of a streamed answer (a response opened with `stream`)."""
        if self.classify(response.status_code, response.headers) != "sealed_stream":
            raise SealError("malformed", "the answer is not a sealed stream")
        rewriter = self.event_rewriter()
        async for chunk in response.aiter_bytes():
            if plain := rewriter.feed(chunk):
                yield plain
        if tail := rewriter.finish():
            yield tail


def _ascii(data: bytes) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise SealError("malformed", "a sealed event is not base64 text") from exc


async def fetch_key(client: httpx.AsyncClient, url: str = KEY_PATH) -> CoordinatorKey:
    """The coordinator's key, from a client whose base URL is the coordinator."""
    response = await client.get(url)
    response.raise_for_status()
    return CoordinatorKey.from_document(response.json())


def fetch_key_sync(client: httpx.Client, url: str = KEY_PATH) -> CoordinatorKey:
    """The blocking twin of `fetch_key`."""
    response = client.get(url)
    response.raise_for_status()
    return CoordinatorKey.from_document(response.json())


def _is_sealable(request: httpx.Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return request.method == "POST" and content_type.split(";")[0].strip() == "application/json"


def _key_request(request: httpx.Request) -> httpx.Request:
    return httpx.Request("GET", request.url.copy_with(path=KEY_PATH, query=None))


def _sealed_request(request: httpx.Request, sealed: SealedRequest) -> httpx.Request:
    headers = httpx.Headers(request.headers)
    headers["Content-Type"] = SEALED_CONTENT_TYPE
    headers.pop("Content-Length", None)
    return httpx.Request(
        request.method,
        request.url,
        headers=headers,
        content=sealed.content,
        extensions=request.extensions,
    )


def _plain_headers(headers: httpx.Headers, content_type: str | None) -> httpx.Headers:
    plain = httpx.Headers(headers)
    for name in ("content-length", "content-encoding", KID_HEADER):
        plain.pop(name, None)
    if content_type is not None:
        plain["content-type"] = content_type
    return plain


def _is_kid_mismatch(response: httpx.Response) -> bool:
    """Whether the coordinator says the request was sealed to a key it no longer has (its
    operator replaced the key, or the coordinator keeps none on disk and restarted)."""
    return bool(response.headers.get(ERROR_HEADER) == "kid_mismatch")


def _whole_answer(
    sealed: SealedRequest, kind: AnswerKind, response: httpx.Response, content: bytes
) -> httpx.Response:
    if kind == "sealed_body":
        headers = _plain_headers(response.headers, "application/json")
        return httpx.Response(
            response.status_code, headers=headers, content=sealed.open_body(content)
        )
    headers = _plain_headers(response.headers, response.headers.get("content-type"))
    return httpx.Response(response.status_code, headers=headers, content=content)


def _key_from(status: int, content: bytes) -> CoordinatorKey:
    if status != 200:
        raise SealError("bad_key", f"the coordinator's key is unavailable (HTTP {status})")
    try:
        return CoordinatorKey.from_document(orjson.loads(content))
    except orjson.JSONDecodeError as exc:
        raise SealError("malformed", "the key document is not JSON") from exc


class AsyncSealingTransport(httpx.AsyncBaseTransport):
    """Seals every JSON POST body and opens every answer, so an SDK works unchanged:
    `openai.AsyncOpenAI(http_client=httpx.AsyncClient(transport=AsyncSealingTransport()))`.

    With no `key`, it fetches the coordinator's key on first use and again when the
    coordinator says the key changed (its operator replaced it). That protects against passive
    readers only: a proxy able to rewrite traffic could hand out its own key. Pass a `key`
    obtained over a path you trust to pin it; a pinned key is never replaced. It is an httpx
    transport: SDKs built on httpx2 (the anthropic SDK 2.x) refuse it; use `SealedRequest`.
    """

    def __init__(
        self, key: CoordinatorKey | None = None, inner: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._key = key
        self._is_pinned = key is not None
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not _is_sealable(request):
            return await self._inner.handle_async_request(request)
        body = await request.aread()
        for attempt in range(2):
            if self._key is None or (attempt and not self._is_pinned):
                self._key = await self._fetch_key(request)
            sealed = SealedRequest(self._key, body)
            response = await self._inner.handle_async_request(_sealed_request(request, sealed))
            kind = sealed.classify(response.status_code, response.headers)
            if kind == "sealed_stream":
                headers = _plain_headers(response.headers, None)
                stream = _AsyncOpenedStream(sealed, response)
                return httpx.Response(response.status_code, headers=headers, stream=stream)
            content = await response.aread()
            await response.aclose()
            if kind == "sealed_body" or self._is_pinned or attempt:
                break
            if not _is_kid_mismatch(response):
                break
        return _whole_answer(sealed, kind, response, content)

    async def _fetch_key(self, request: httpx.Request) -> CoordinatorKey:
        response = await self._inner.handle_async_request(_key_request(request))
        content = await response.aread()
        await response.aclose()
        return _key_from(response.status_code, content)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _AsyncOpenedStream(httpx.AsyncByteStream):
    def __init__(self, sealed: SealedRequest, response: httpx.Response) -> None:
        self._sealed = sealed
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for plain in self._sealed.aiter_events(self._response):
            yield plain

    async def aclose(self) -> None:
        await self._response.aclose()


class SealingTransport(httpx.BaseTransport):
    """The blocking twin of `AsyncSealingTransport`, for `openai.OpenAI(http_client=...)`."""

    def __init__(
        self, key: CoordinatorKey | None = None, inner: httpx.BaseTransport | None = None
    ) -> None:
        self._key = key
        self._is_pinned = key is not None
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not _is_sealable(request):
            return self._inner.handle_request(request)
        body = request.read()
        for attempt in range(2):
            if self._key is None or (attempt and not self._is_pinned):
                self._key = self._fetch_key(request)
            sealed = SealedRequest(self._key, body)
            response = self._inner.handle_request(_sealed_request(request, sealed))
            kind = sealed.classify(response.status_code, response.headers)
            if kind == "sealed_stream":
                headers = _plain_headers(response.headers, None)
                stream = _OpenedStream(sealed, response)
                return httpx.Response(response.status_code, headers=headers, stream=stream)
            content = response.read()
            response.close()
            if kind == "sealed_body" or self._is_pinned or attempt:
                break
            if not _is_kid_mismatch(response):
                break
        return _whole_answer(sealed, kind, response, content)

    def _fetch_key(self, request: httpx.Request) -> CoordinatorKey:
        response = self._inner.handle_request(_key_request(request))
        content = response.read()
        response.close()
        return _key_from(response.status_code, content)

    def close(self) -> None:
        self._inner.close()


class _OpenedStream(httpx.SyncByteStream):
    def __init__(self, sealed: SealedRequest, response: httpx.Response) -> None:
        self._rewriter = sealed.event_rewriter()
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._response.iter_bytes():
            if plain := self._rewriter.feed(chunk):
                yield plain
        if tail := self._rewriter.finish():
            yield tail

    def close(self) -> None:
        self._response.close()
