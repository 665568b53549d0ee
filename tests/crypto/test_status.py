"""Challenge-response: answering a challenge, and every way an answer is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from moonflower.crypto.canonical import canonical_json, sha256_hex
from moonflower.crypto.signing import SoftwareSigner, b64d, b64e, key_fingerprint
from moonflower.crypto.statement import AttestationError
from moonflower.crypto.status import (
    Challenge,
    ChallengeStatus,
    SignedStatus,
    answer_challenge,
    new_challenge,
    sign_status,
    verify_status,
)

NOW = 1_767_225_600
CODE = sha256_hex(b"code")
RUNTIME = sha256_hex(b"runtime")
MODELS = {"smollm2-135m": sha256_hex(b"weights")}


def _answer(signer: SoftwareSigner, challenge: Challenge, now: float = NOW + 2) -> SignedStatus:
    return answer_challenge(
        challenge,
        signer,
        now=now,
        posture={"secure_boot": True, "kernel_lockdown": None},
        code_hash=CODE,
        runtime_hash=RUNTIME,
        model_hashes=MODELS,
    )


def _resign(signer: SoftwareSigner, signed: SignedStatus, **changes: Any) -> SignedStatus:
    fields = json.loads(signed.status_json)
    fields.update(changes)
    text = canonical_json(fields).decode()
    return SignedStatus(text, b64e(signer.sign(text.encode())))


def _rejects(
    reason: str,
    signed: SignedStatus,
    *,
    challenge: Challenge,
    public_key: bytes,
    now: float = NOW + 3,
) -> None:
    with pytest.raises(AttestationError) as caught:
        verify_status(
            signed.status_json,
            signed.signature,
            challenge=challenge,
            public_key=public_key,
            now=now,
        )
    assert caught.value.reason == reason, caught.value.message


@pytest.fixture
def signer() -> SoftwareSigner:
    return SoftwareSigner.generate()


@pytest.fixture
def challenge() -> Challenge:
    return new_challenge(NOW + 0.9)


def test_new_challenges_are_32_random_bytes_and_whole_seconds() -> None:
    first, second = new_challenge(NOW + 0.9), new_challenge(NOW)
    assert len(b64d(first.nonce)) == 32
    assert first.nonce != second.nonce
    assert first.timestamp == NOW


def test_round_trip(signer: SoftwareSigner, challenge: Challenge) -> None:
    signed = _answer(signer, challenge)
    status = verify_status(
        signed.status_json,
        signed.signature,
        challenge=challenge,
        public_key=signer.public_key(),
        now=NOW + 3,
    )
    assert status.nonce == challenge.nonce
    assert status.challenge_timestamp == NOW
    assert status.response_timestamp == NOW + 2
    assert status.posture == {"secure_boot": True, "kernel_lockdown": None}
    assert (status.code_hash, status.runtime_hash, status.model_hashes) == (CODE, RUNTIME, MODELS)
    assert status.signing_key_fingerprint == key_fingerprint(signer.public_key())
    assert signed.status_json.encode() == status.canonical_bytes()


def test_replayed_answer_to_an_old_challenge(signer: SoftwareSigner) -> None:
    old = new_challenge(NOW)
    replayed = _answer(signer, old)
    current = Challenge(nonce=new_challenge(NOW).nonce, timestamp=NOW)
    _rejects("nonce_mismatch", replayed, challenge=current, public_key=signer.public_key())
    same_nonce_other_time = Challenge(nonce=old.nonce, timestamp=NOW + 1)
    _rejects(
        "nonce_mismatch", replayed, challenge=same_nonce_other_time, public_key=signer.public_key()
    )


def test_late_answer(signer: SoftwareSigner, challenge: Challenge) -> None:
    signed = _answer(signer, challenge, now=NOW + 29)
    key = signer.public_key()
    verify_status(
        signed.status_json, signed.signature, challenge=challenge, public_key=key, now=NOW + 30
    )
    _rejects("late", signed, challenge=challenge, public_key=key, now=NOW + 31)
    with pytest.raises(AttestationError) as caught:
        verify_status(
            signed.status_json,
            signed.signature,
            challenge=challenge,
            public_key=key,
            now=NOW + 11,
            deadline_s=10,
        )
    assert caught.value.reason == "late"


def test_forged_truncated_and_foreign_signatures(
    signer: SoftwareSigner, challenge: Challenge
) -> None:
    signed = _answer(signer, challenge)
    key = signer.public_key()
    der = b64d(signed.signature)
    for signature in (b64e(der[:-1]), b64e(bytes(len(der))), "", "%%%"):
        _rejects(
            "bad_signature",
            SignedStatus(signed.status_json, signature),
            challenge=challenge,
            public_key=key,
        )
    intruder = SoftwareSigner.generate()
    by_intruder = _answer(intruder, challenge)
    _rejects("bad_signature", by_intruder, challenge=challenge, public_key=key)


def test_field_changed_after_signing(signer: SoftwareSigner, challenge: Challenge) -> None:
    signed = _answer(signer, challenge)
    tampered = signed.status_json.replace('"secure_boot":true', '"secure_boot":false')
    assert tampered != signed.status_json
    _rejects(
        "bad_signature",
        SignedStatus(tampered, signed.signature),
        challenge=challenge,
        public_key=signer.public_key(),
    )


def test_status_naming_another_key(signer: SoftwareSigner, challenge: Challenge) -> None:
    other = SoftwareSigner.generate()
    signed = _resign(
        signer,
        _answer(signer, challenge),
        signing_key_fingerprint=key_fingerprint(other.public_key()),
    )
    _rejects("key_mismatch", signed, challenge=challenge, public_key=signer.public_key())


def test_reserialised_and_malformed_statuses(signer: SoftwareSigner, challenge: Challenge) -> None:
    key = signer.public_key()
    signed = _answer(signer, challenge)
    spaced = json.dumps(json.loads(signed.status_json), sort_keys=True)
    _rejects(
        "bad_signature", SignedStatus(spaced, signed.signature), challenge=challenge, public_key=key
    )
    resigned = SignedStatus(spaced, b64e(signer.sign(spaced.encode())))
    _rejects("not_canonical", resigned, challenge=challenge, public_key=key)
    for changes in (
        {"posture": {"secure_boot": 1}},
        {"nonce": b64e(bytes(16))},
        {"model_hashes": {"m": "x"}},
        {"extra": 1},
        {"response_timestamp": NOW + 2.0},
    ):
        _rejects(
            "malformed", _resign(signer, signed, **changes), challenge=challenge, public_key=key
        )
    _rejects(
        "unsupported_version", _resign(signer, signed, v=2), challenge=challenge, public_key=key
    )
    garbage = SignedStatus("not json", b64e(signer.sign(b"not json")))
    _rejects("malformed", garbage, challenge=challenge, public_key=key)


def test_response_timestamp_must_lie_between_challenge_and_now(
    signer: SoftwareSigner, challenge: Challenge
) -> None:
    key = signer.public_key()
    signed = _answer(signer, challenge)
    early = _resign(signer, signed, response_timestamp=NOW - 31)
    _rejects("stale", early, challenge=challenge, public_key=key)
    ahead = _resign(signer, signed, response_timestamp=NOW + 3 + 31)
    _rejects("future", ahead, challenge=challenge, public_key=key)


def test_sign_refuses_a_status_for_another_key(
    signer: SoftwareSigner, challenge: Challenge
) -> None:
    status = ChallengeStatus(
        nonce=challenge.nonce,
        challenge_timestamp=challenge.timestamp,
        response_timestamp=NOW,
        posture={},
        code_hash=CODE,
        runtime_hash=RUNTIME,
        model_hashes={},
        signing_key_fingerprint=key_fingerprint(SoftwareSigner.generate().public_key()),
    )
    with pytest.raises(ValueError, match="another signing key"):
        sign_status(status, signer)


def test_challenges_hold_32_byte_nonces() -> None:
    with pytest.raises(ValidationError):
        Challenge(nonce=b64e(bytes(16)), timestamp=NOW)
    with pytest.raises(ValidationError):
        Challenge(nonce="not base64", timestamp=NOW)
