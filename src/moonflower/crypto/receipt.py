"""Receipts: the provider's signed account of one job, and the digests it binds.

Owns the receipt's fields and canonical bytes, signing and verifying them, the request and
output digests a receipt carries, and the receipt hash (`x-response-hash`). It must not
decide what a failed check does to a provider or a bill, and never sees more of a prompt or
completion than the digest functions read.

Digests (each the hex SHA-256 of `canonical_json` of a plain JSON value):

- `request_sha256` = `request_digest(request)`: the `GenerationRequest` as dispatched to the
  provider, as an object whose members are its dataclass fields by name (every field, always
  present; nested dataclasses the same way; tuples as arrays; `None` as `null`; dict fields
  such as JSON schemas as they are).
- `output_sha256` = `output_digest(...)`: `{"finish_reason": …, "reasoning": …, "text": …,
  "tool_calls": [{"arguments": …, "name": …}, …]}` where `text` is the visible text and
  `reasoning` the reasoning text, each the concatenation of every delta the consumer got
  (`""` if none), tool calls are in index order with `arguments` the exact JSON text, and
  `finish_reason` is the receipt's. Tool-call ids are left out: dialects may rewrite them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

from pydantic import StringConstraints, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic.dataclasses import dataclass

from moonflower.crypto.canonical import (
    NotCanonicalError,
    Sha256Hex,
    canonical_json,
    check_canonical,
    document_bytes,
    parse_json_object,
    sha256_hex,
)
from moonflower.crypto.signing import (
    Signer,
    b64d,
    b64e,
    key_fingerprint,
    verify_digest_signature,
    verify_signature,
)
from moonflower.crypto.statement import MAX_SIGNED_BYTES, SIGNED_FORMAT, Count, UnixSeconds
from moonflower.errors import ReceiptError
from moonflower.generation import GenerationRequest, ToolCall

RECEIPT_VERSION: Final = 1

ReceiptFinishReason = Literal["stop", "length", "tool_calls", "cancelled", "failed"]
"""How the job ended: an engine finish reason, or `failed` for a job that broke mid-stream."""

ReceiptReason = Literal[
    "malformed",
    "not_canonical",
    "unsupported_version",
    "bad_signature",
    "key_mismatch",
    "job_mismatch",
    "model_mismatch",
    "request_mismatch",
    "output_mismatch",
]


@dataclass(frozen=True, kw_only=True, config=SIGNED_FORMAT)
class Receipt:
    """What a provider signs when a job ends (complete, cancelled or failed)."""

    v: Literal[1] = RECEIPT_VERSION
    job_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    model_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    model_sha256: Sha256Hex
    request_sha256: Sha256Hex
    output_sha256: Sha256Hex
    prompt_tokens: Count
    completion_tokens: Count
    finish_reason: ReceiptFinishReason
    provider_key_fingerprint: Sha256Hex
    timestamp: UnixSeconds

    def canonical_bytes(self) -> bytes:
        return canonical_json(dataclasses.asdict(self))


@dataclass(frozen=True)
class SignedReceipt:
    """The canonical receipt text and the base64 DER signature over its UTF-8 bytes."""

    receipt_json: str
    signature: str


_RECEIPT = TypeAdapter(Receipt)


def request_digest(request: GenerationRequest) -> str:
    """Hex SHA-256 of the canonical form of every field of `request` (module docstring).

    Raises `ValueError` for a request holding NaN/infinite floats.
    """
    return sha256_hex(canonical_json(_plain(request)))


def output_digest(
    text: str, reasoning: str, tool_calls: Sequence[ToolCall], finish_reason: str
) -> str:
    """Hex SHA-256 of the canonical output (module docstring): what a consumer recomputes."""
    return sha256_hex(
        canonical_json(
            {
                "finish_reason": finish_reason,
                "reasoning": reasoning,
                "text": text,
                "tool_calls": [
                    {"arguments": call.arguments, "name": call.name} for call in tool_calls
                ],
            }
        )
    )


def sign_receipt(receipt: Receipt, signer: Signer) -> SignedReceipt:
    """Sign the receipt's canonical bytes; the signer must be the key the receipt names."""
    if receipt.provider_key_fingerprint != key_fingerprint(signer.public_key()):
        raise ValueError("the receipt names another signing key than the signer's")
    data = receipt.canonical_bytes()
    return SignedReceipt(data.decode("utf-8"), b64e(signer.sign(data)))


def verify_receipt(
    receipt_json: str,
    signature: str,
    public_key: bytes,
    *,
    job_id: str | None = None,
    model_sha256: str | None = None,
    request_sha256: str | None = None,
    output_sha256: str | None = None,
) -> Receipt:
    """Check a receipt signed by `public_key` and return it; raises `ReceiptError`.

    The signature is verified over exactly the received bytes first; then canonical form,
    version and shape, and that it names `public_key`'s fingerprint. Each keyword given is
    an expectation the receipt must meet (a receipt for another job, model, request or
    output is rejected).
    """
    try:
        data = document_bytes(receipt_json, max_bytes=MAX_SIGNED_BYTES)
    except ValueError as exc:
        raise ReceiptError("malformed", str(exc)) from exc
    try:
        der = b64d(signature)
    except ValueError as exc:
        raise ReceiptError("bad_signature", "the signature is not base64") from exc
    if not verify_signature(public_key, der, data):
        raise ReceiptError("bad_signature", "the signature does not verify")
    receipt = _parse(data)
    if receipt.provider_key_fingerprint != key_fingerprint(public_key):
        raise ReceiptError("key_mismatch", "the receipt names another signing key")
    expected: tuple[tuple[ReceiptReason, str, str | None], ...] = (
        ("job_mismatch", "job_id", job_id),
        ("model_mismatch", "model_sha256", model_sha256),
        ("request_mismatch", "request_sha256", request_sha256),
        ("output_mismatch", "output_sha256", output_sha256),
    )
    for reason, name, value in expected:
        if value is not None and getattr(receipt, name) != value:
            raise ReceiptError(reason, f"{name} is not the expected value")
    return receipt


def receipt_hash(receipt_json: str) -> str:
    """Hex SHA-256 of the receipt's canonical bytes: the `x-response-hash` header value."""
    return sha256_hex(receipt_json.encode("utf-8"))


def verify_receipt_hash(response_hash: str, signature: str, public_key: bytes) -> bool:
    """Whether `signature` is the provider's signature over the receipt whose hash is
    `response_hash` (the `x-se-signature` / `x-response-hash` header pair), without the
    receipt itself. False for any malformed input."""
    try:
        digest = bytes.fromhex(response_hash)
        der = b64d(signature)
    except (ValueError, TypeError):
        return False
    if response_hash != digest.hex():
        return False
    return verify_digest_signature(public_key, der, digest)


def _parse(data: bytes) -> Receipt:
    try:
        fields = parse_json_object(data)
    except ValueError as exc:
        raise ReceiptError("malformed", str(exc)) from exc
    try:
        check_canonical(data, fields)
    except NotCanonicalError as exc:
        raise ReceiptError("not_canonical", str(exc)) from exc
    if fields.get("v") != RECEIPT_VERSION:
        raise ReceiptError("unsupported_version", f"format version {fields.get('v')!r}")
    try:
        return _RECEIPT.validate_json(data)
    except PydanticValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "document"
        raise ReceiptError("malformed", f"{where}: {error['msg']}") from exc


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
