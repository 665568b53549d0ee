"""The attestation statement: what a provider says about itself, signed, at registration.

Owns the statement's fields, its canonical bytes, signing, and the checks that need nothing
but the statement and a clock: exact-bytes signature under the statement's own key, strict
shape, canonical form, freshness. It must not apply coordinator policy (is the encryption key
the one this connection uses, is the code hash blessed, do model hashes match the catalog,
is a posture value acceptable): those need context this module does not have, so the parsed
fields are returned for the coordinator to check.

Canonical form: `canonical_json` of the fields below, every field always present (`null` for
what the OS cannot report), nested objects included; see `docs/trust.md` for a golden
example. The signature is ECDSA P-256/SHA-256 over exactly those bytes, DER, base64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic.dataclasses import dataclass

from moonflower.crypto.canonical import (
    NotCanonicalError,
    Sha256Hex,
    canonical_json,
    check_canonical,
    document_bytes,
    parse_json_object,
)
from moonflower.crypto.envelope import KEY_BYTES
from moonflower.crypto.signing import (
    KeyStorage,
    Signer,
    b64d,
    b64e,
    is_valid_public_key,
    key_fingerprint,
    verify_signature,
)
from moonflower.errors import AttestationError

STATEMENT_VERSION: Final = 1
MAX_SIGNED_BYTES = 64 * 1024
"""Upper bound on any signed document's canonical bytes (statements, statuses, receipts)."""

SIGNED_FORMAT = ConfigDict(strict=True, extra="forbid")
"""Pydantic config of every signed format: no coercion, no unknown fields."""

AttestationReason = Literal[
    "malformed",
    "not_canonical",
    "unsupported_version",
    "bad_key",
    "bad_signature",
    "key_mismatch",
    "nonce_mismatch",
    "stale",
    "future",
    "late",
]


def _signing_key(text: str) -> str:
    if not is_valid_public_key(b64d(text)):
        raise ValueError("not a 65-byte uncompressed P-256 point")
    return text


def _encryption_key(text: str) -> str:
    if len(b64d(text)) != KEY_BYTES:
        raise ValueError("not a 32-byte X25519 public key")
    return text


SigningKeyB64 = Annotated[str, AfterValidator(_signing_key)]
EncryptionKeyB64 = Annotated[str, AfterValidator(_encryption_key)]
ShortText = Annotated[str, StringConstraints(max_length=256)]
Count = Annotated[int, Field(ge=0)]
UnixSeconds = Annotated[int, Field(ge=0)]
PostureName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
ModelId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Posture = Mapping[PostureName, bool | None]
"""Security posture the OS reports: `True`/`False`, or `None` when it cannot tell."""
ModelHashes = Mapping[ModelId, Sha256Hex]
"""Served model id → SHA-256 of its weights."""


@dataclass(frozen=True, kw_only=True, config=SIGNED_FORMAT)
class AttestedHardware:
    """The machine as the OS reports it; `None` where it reports nothing."""

    chip: ShortText | None
    machine_model: ShortText | None
    serial: ShortText | None
    memory_bytes: Count
    gpu: ShortText | None
    cpu: ShortText


@dataclass(frozen=True, kw_only=True, config=SIGNED_FORMAT)
class Statement:
    """What a provider states at registration. Mappings are plain dicts: do not mutate."""

    v: Literal[1] = STATEMENT_VERSION
    signing_public_key: SigningKeyB64
    encryption_public_key: EncryptionKeyB64
    hardware: AttestedHardware
    os_version: ShortText
    key_storage: KeyStorage
    posture: Posture
    code_hash: Sha256Hex
    runtime_hash: Sha256Hex
    model_hashes: ModelHashes
    protocol_version: Annotated[int, Field(ge=1)]
    timestamp: UnixSeconds

    @property
    def signing_key(self) -> bytes:
        """The 65-byte P-256 public point."""
        return b64d(self.signing_public_key)

    @property
    def encryption_key(self) -> bytes:
        """The 32-byte X25519 public key."""
        return b64d(self.encryption_public_key)

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the signing key (what statuses and receipts name)."""
        return key_fingerprint(self.signing_key)

    def canonical_bytes(self) -> bytes:
        return canonical_json(dataclasses.asdict(self))


@dataclass(frozen=True)
class SignedStatement:
    """The canonical statement text and the base64 DER signature over its UTF-8 bytes."""

    statement_json: str
    signature: str


_STATEMENT = TypeAdapter(Statement)
_T = TypeVar("_T")


def build_statement(
    signer: Signer,
    encryption_public_key: bytes,
    *,
    hardware: AttestedHardware,
    os_version: str,
    posture: Mapping[str, bool | None],
    code_hash: str,
    runtime_hash: str,
    model_hashes: Mapping[str, str],
    protocol_version: int,
    now: float,
) -> Statement:
    """A statement for this signer and encryption key, timestamped `now` (whole seconds)."""
    return Statement(
        signing_public_key=b64e(signer.public_key()),
        encryption_public_key=b64e(encryption_public_key),
        hardware=hardware,
        os_version=os_version,
        key_storage=signer.key_storage,
        posture=dict(posture),
        code_hash=code_hash,
        runtime_hash=runtime_hash,
        model_hashes=dict(model_hashes),
        protocol_version=protocol_version,
        timestamp=int(now),
    )


def sign_statement(statement: Statement, signer: Signer) -> SignedStatement:
    """Sign the statement's canonical bytes; the signer must hold the statement's key."""
    if statement.signing_key != signer.public_key():
        raise ValueError("the statement names another signing key than the signer's")
    data = statement.canonical_bytes()
    return SignedStatement(data.decode("utf-8"), b64e(signer.sign(data)))


def verify_statement(
    statement_json: str,
    signature: str,
    *,
    now: float,
    max_age_s: float = 300.0,
    max_skew_s: float = 30.0,
) -> Statement:
    """Check a received statement and return its fields; raises `AttestationError`.

    In order: the text is UTF-8 JSON within size; its `signing_public_key` is a P-256 point;
    the base64 DER `signature` verifies under that key over exactly the received bytes
    (nothing is re-serialised first); the bytes are canonical (so re-spaced or re-ordered
    JSON is rejected as `not_canonical` even when signed); the shape is exact (`malformed`,
    or `unsupported_version` for another `v`); and `timestamp` is no more than `max_age_s`
    old (`stale`) nor more than `max_skew_s` ahead of `now` (`future`).
    """
    data = signed_bytes(statement_json)
    try:
        fields = parse_json_object(data)
    except ValueError as exc:
        raise AttestationError("malformed", str(exc)) from exc
    key = _claimed_key(fields)
    if not verify_signature(key, signature_bytes(signature), data):
        raise AttestationError("bad_signature", "the signature does not verify")
    statement = parse_signed(data, fields, _STATEMENT)
    check_fresh(statement.timestamp, now=now, max_age_s=max_age_s, max_skew_s=max_skew_s)
    return statement


def parse_signed(data: bytes, fields: dict[str, Any], adapter: TypeAdapter[_T]) -> _T:
    """The canonical-form, version and shape checks shared by statements and statuses."""
    try:
        check_canonical(data, fields)
    except NotCanonicalError as exc:
        raise AttestationError("not_canonical", str(exc)) from exc
    if fields.get("v") != STATEMENT_VERSION:
        raise AttestationError("unsupported_version", f"format version {fields.get('v')!r}")
    try:
        return adapter.validate_json(data)
    except PydanticValidationError as exc:
        raise AttestationError("malformed", _first_error(exc)) from exc


def check_fresh(timestamp: int, *, now: float, max_age_s: float, max_skew_s: float) -> None:
    """Raise `stale`/`future` unless `timestamp` is within the window around `now`."""
    if now - timestamp > max_age_s:
        raise AttestationError("stale", f"timestamp is {now - timestamp:.0f} s old")
    if timestamp - now > max_skew_s:
        raise AttestationError("future", f"timestamp is {timestamp - now:.0f} s ahead")


def signed_bytes(text: str) -> bytes:
    """The UTF-8 bytes of a received signed document; `malformed` if it has none or is huge."""
    try:
        return document_bytes(text, max_bytes=MAX_SIGNED_BYTES)
    except ValueError as exc:
        raise AttestationError("malformed", str(exc)) from exc


def signature_bytes(signature: str) -> bytes:
    """The DER bytes of a base64 signature; `bad_signature` if it is not base64."""
    try:
        return b64d(signature)
    except ValueError as exc:
        raise AttestationError("bad_signature", "the signature is not base64") from exc


def _claimed_key(fields: dict[str, Any]) -> bytes:
    text = fields.get("signing_public_key")
    try:
        key = b64d(text) if isinstance(text, str) else b""
    except ValueError:
        key = b""
    if not is_valid_public_key(key):
        raise AttestationError("bad_key", "signing_public_key is not a base64 P-256 point")
    return key


def _first_error(exc: PydanticValidationError) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "document"
    return f"{where}: {error['msg']}"
