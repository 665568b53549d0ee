"""Challenge-response: a fresh nonce from the coordinator, a signed status from the provider.

Owns challenges, the canonical status a provider signs in answer, and the checks that need
only the challenge, the provider's key and a clock: signature over the exact bytes, canonical
form, shape, that it answers this challenge (not a replayed earlier one) and in time. It
must not decide what a status means for trust (negative posture, changed hashes, counting
failures): the coordinator does that with the returned fields.

Canonical form: `canonical_json` of the `ChallengeStatus` fields, all always present; see
`docs/trust.md` for a golden example.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import AfterValidator, TypeAdapter
from pydantic.dataclasses import dataclass

from moonflower.crypto.canonical import Sha256Hex, canonical_json, parse_json_object
from moonflower.crypto.signing import Signer, b64d, b64e, key_fingerprint, verify_signature
from moonflower.crypto.statement import (
    SIGNED_FORMAT,
    STATEMENT_VERSION,
    ModelHashes,
    Posture,
    UnixSeconds,
    check_fresh,
    parse_signed,
    signature_bytes,
    signed_bytes,
)
from moonflower.errors import AttestationError

NONCE_BYTES = 32
CHALLENGE_DEADLINE_S = 30.0


def _nonce(text: str) -> str:
    if len(b64d(text)) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
    return text


NonceB64 = Annotated[str, AfterValidator(_nonce)]


@dataclass(frozen=True, kw_only=True, config=SIGNED_FORMAT)
class Challenge:
    """What the coordinator sends: base64 of 32 random bytes, and when (Unix seconds)."""

    nonce: NonceB64
    timestamp: UnixSeconds


def new_challenge(now: float) -> Challenge:
    return Challenge(nonce=b64e(secrets.token_bytes(NONCE_BYTES)), timestamp=int(now))


@dataclass(frozen=True, kw_only=True, config=SIGNED_FORMAT)
class ChallengeStatus:
    """The provider's signed answer: the challenge echoed, and its state right now."""

    v: Literal[1] = STATEMENT_VERSION
    nonce: NonceB64
    challenge_timestamp: UnixSeconds
    response_timestamp: UnixSeconds
    posture: Posture
    code_hash: Sha256Hex
    runtime_hash: Sha256Hex
    model_hashes: ModelHashes
    signing_key_fingerprint: Sha256Hex

    def canonical_bytes(self) -> bytes:
        return canonical_json(dataclasses.asdict(self))


@dataclass(frozen=True)
class SignedStatus:
    """The canonical status text and the base64 DER signature over its UTF-8 bytes."""

    status_json: str
    signature: str


_STATUS = TypeAdapter(ChallengeStatus)


def sign_status(status: ChallengeStatus, signer: Signer) -> SignedStatus:
    """Sign the status's canonical bytes; the signer must be the key the status names."""
    if status.signing_key_fingerprint != key_fingerprint(signer.public_key()):
        raise ValueError("the status names another signing key than the signer's")
    data = status.canonical_bytes()
    return SignedStatus(data.decode("utf-8"), b64e(signer.sign(data)))


def answer_challenge(
    challenge: Challenge,
    signer: Signer,
    *,
    now: float,
    posture: Mapping[str, bool | None],
    code_hash: str,
    runtime_hash: str,
    model_hashes: Mapping[str, str],
) -> SignedStatus:
    """The provider's side: build and sign the status that answers `challenge`."""
    status = ChallengeStatus(
        nonce=challenge.nonce,
        challenge_timestamp=challenge.timestamp,
        response_timestamp=int(now),
        posture=dict(posture),
        code_hash=code_hash,
        runtime_hash=runtime_hash,
        model_hashes=dict(model_hashes),
        signing_key_fingerprint=key_fingerprint(signer.public_key()),
    )
    return sign_status(status, signer)


def verify_status(
    status_json: str,
    signature: str,
    *,
    challenge: Challenge,
    public_key: bytes,
    now: float,
    deadline_s: float = CHALLENGE_DEADLINE_S,
    max_skew_s: float = 30.0,
) -> ChallengeStatus:
    """Check an answer to `challenge` from the provider holding `public_key`.

    Raises `AttestationError`: `late` when `now` is more than `deadline_s` after the
    challenge's timestamp (checked first: a late answer is a failure whatever it says);
    `malformed`; `bad_signature` unless the signature verifies over exactly the received
    bytes; `not_canonical`; `unsupported_version`; `key_mismatch` when the status names
    another key's fingerprint; `nonce_mismatch` when it answers another challenge (a replay);
    `stale`/`future` when its response timestamp is before the challenge or after `now` by
    more than `max_skew_s`.
    """
    if now - challenge.timestamp > deadline_s:
        raise AttestationError(
            "late", f"answered {now - challenge.timestamp:.0f} s after the challenge"
        )
    data = signed_bytes(status_json)
    if not verify_signature(public_key, signature_bytes(signature), data):
        raise AttestationError("bad_signature", "the signature does not verify")
    try:
        fields = parse_json_object(data)
    except ValueError as exc:
        raise AttestationError("malformed", str(exc)) from exc
    status = parse_signed(data, fields, _STATUS)
    if status.signing_key_fingerprint != key_fingerprint(public_key):
        raise AttestationError("key_mismatch", "the status names another signing key")
    if status.nonce != challenge.nonce or status.challenge_timestamp != challenge.timestamp:
        raise AttestationError("nonce_mismatch", "the status answers another challenge")
    check_fresh(
        status.response_timestamp,
        now=now,
        max_age_s=now - challenge.timestamp + max_skew_s,
        max_skew_s=max_skew_s,
    )
    return status
