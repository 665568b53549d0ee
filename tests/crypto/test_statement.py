"""Attestation statements: signing, exact-bytes verification, and every rejection."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from moonflower.crypto.canonical import canonical_json, sha256_hex
from moonflower.crypto.envelope import EncryptionKeyPair
from moonflower.crypto.signing import SoftwareSigner, b64d, b64e
from moonflower.crypto.statement import (
    AttestationError,
    AttestedHardware,
    SignedStatement,
    Statement,
    build_statement,
    sign_statement,
    verify_statement,
)

NOW = 1_767_225_600
MODEL_HASH = sha256_hex(b"weights")


def _statement(signer: SoftwareSigner, **changes: Any) -> Statement:
    fields: dict[str, Any] = {
        "hardware": AttestedHardware(
            chip="Apple M4",
            machine_model="Mac16,10",
            serial=None,
            memory_bytes=16 << 30,
            gpu="Apple M4 (10-core GPU)",
            cpu="Apple M4",
        ),
        "os_version": "macOS 15.5",
        "posture": {"sip_enabled": True, "secure_boot": True, "sealed_system_volume": None},
        "code_hash": sha256_hex(b"code"),
        "runtime_hash": sha256_hex(b"runtime"),
        "model_hashes": {"smollm2-135m": MODEL_HASH},
        "protocol_version": 1,
        "now": NOW + 0.75,
    }
    fields.update(changes)
    return build_statement(signer, EncryptionKeyPair.generate().public_key, **fields)


def _resign(signer: SoftwareSigner, text: str) -> SignedStatement:
    return SignedStatement(text, b64e(signer.sign(text.encode())))


def _edit(signed: SignedStatement, **changes: Any) -> str:
    fields = json.loads(signed.statement_json)
    fields.update(changes)
    return canonical_json(fields).decode()


def _rejects(reason: str, text: str, signature: str, now: float = NOW) -> AttestationError:
    with pytest.raises(AttestationError) as caught:
        verify_statement(text, signature, now=now)
    assert caught.value.reason == reason, caught.value.message
    return caught.value


@pytest.fixture
def signer() -> SoftwareSigner:
    return SoftwareSigner.generate()


@pytest.fixture
def built(signer: SoftwareSigner) -> Statement:
    return _statement(signer)


@pytest.fixture
def signed(signer: SoftwareSigner, built: Statement) -> SignedStatement:
    return sign_statement(built, signer)


def test_round_trip_returns_the_fields(
    signer: SoftwareSigner, built: Statement, signed: SignedStatement
) -> None:
    statement = verify_statement(signed.statement_json, signed.signature, now=NOW + 1)
    assert statement == built
    assert statement.signing_key == signer.public_key()
    assert len(statement.encryption_key) == 32
    assert statement.fingerprint == sha256_hex(signer.public_key())
    assert statement.key_storage == "software"
    assert statement.timestamp == NOW  # whole seconds
    assert statement.posture["sealed_system_volume"] is None
    assert statement.model_hashes == {"smollm2-135m": MODEL_HASH}
    assert signed.statement_json.encode() == statement.canonical_bytes()


def test_forged_and_truncated_signatures(signed: SignedStatement) -> None:
    der = b64d(signed.signature)
    _rejects("bad_signature", signed.statement_json, b64e(der[:-1]))
    _rejects("bad_signature", signed.statement_json, b64e(bytes(len(der))))
    _rejects("bad_signature", signed.statement_json, "")
    _rejects("bad_signature", signed.statement_json, "not base64")


def test_statement_signed_by_another_key(signed: SignedStatement) -> None:
    intruder = SoftwareSigner.generate()
    _rejects(
        "bad_signature", signed.statement_json, _resign(intruder, signed.statement_json).signature
    )


def test_field_changed_after_signing(signed: SignedStatement) -> None:
    tampered = signed.statement_json.replace('"memory_bytes":', '"memory_bytes":1')
    assert tampered != signed.statement_json
    _rejects("bad_signature", tampered, signed.signature)
    _rejects("bad_signature", _edit(signed, model_hashes={}), signed.signature)


def test_reserialised_json_is_rejected(signer: SoftwareSigner, signed: SignedStatement) -> None:
    spaced = json.dumps(json.loads(signed.statement_json), sort_keys=True)
    fields = json.loads(signed.statement_json)
    unsorted = json.dumps(dict(reversed(fields.items())), separators=(",", ":"))
    escaped = json.dumps(
        json.loads(signed.statement_json.replace("Apple M4", "Applé M4")),
        sort_keys=True,
        separators=(",", ":"),
    )
    assert "\\u00e9" in escaped
    for text in (spaced, unsorted, escaped):
        # With the original signature: the bytes differ, so it does not verify.
        _rejects("bad_signature", text, signed.signature)
        # Signed as it is: valid signature, but not the one canonical spelling.
        _rejects("not_canonical", text, _resign(signer, text).signature)


def test_duplicate_keys_are_rejected(signer: SoftwareSigner, signed: SignedStatement) -> None:
    text = signed.statement_json[:-1] + ',"v":1}'
    _rejects("malformed", text, _resign(signer, text).signature)


def test_stale_and_future_timestamps(signed: SignedStatement) -> None:
    verify_statement(signed.statement_json, signed.signature, now=NOW + 300)
    verify_statement(signed.statement_json, signed.signature, now=NOW - 30)
    _rejects("stale", signed.statement_json, signed.signature, now=NOW + 301)
    _rejects("future", signed.statement_json, signed.signature, now=NOW - 31)
    verify_statement(signed.statement_json, signed.signature, now=NOW + 3000, max_age_s=3600)
    with pytest.raises(AttestationError) as caught:
        verify_statement(signed.statement_json, signed.signature, now=NOW - 5, max_skew_s=1)
    assert caught.value.reason == "future"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"extra": True}, "malformed"),
        ({"v": 2}, "unsupported_version"),
        ({"v": "1"}, "unsupported_version"),
        ({"hardware": {"cpu": "x", "chip": None, "gpu": None, "machine_model": None}}, "malformed"),
        ({"timestamp": float(NOW)}, "malformed"),
        ({"timestamp": str(NOW)}, "malformed"),
        ({"protocol_version": True}, "malformed"),
        ({"key_storage": "tpm"}, "malformed"),
        ({"posture": {"sip_enabled": "yes"}}, "malformed"),
        ({"posture": {"SIP": True}}, "malformed"),
        ({"code_hash": sha256_hex(b"x").upper()}, "malformed"),
        ({"code_hash": sha256_hex(b"x") + "\n"}, "malformed"),
        ({"model_hashes": {"m": "abc"}}, "malformed"),
        ({"model_hashes": {"": MODEL_HASH}}, "malformed"),
        ({"encryption_public_key": b64e(bytes(31))}, "malformed"),
        ({"encryption_public_key": "not base64"}, "malformed"),
        ({"hardware": {"cpu": "x"}}, "malformed"),
        ({"timestamp": -1}, "malformed"),
    ],
)
def test_wrong_shapes_are_malformed_even_when_signed(
    signer: SoftwareSigner, signed: SignedStatement, changes: dict[str, Any], reason: str
) -> None:
    fields = json.loads(signed.statement_json)
    fields.update(changes)
    text = canonical_json(fields).decode()
    _rejects(reason, text, _resign(signer, text).signature)


def test_missing_field(signer: SoftwareSigner, signed: SignedStatement) -> None:
    fields = json.loads(signed.statement_json)
    del fields["runtime_hash"]
    text = canonical_json(fields).decode()
    error = _rejects("malformed", text, _resign(signer, text).signature)
    assert "runtime_hash" in error.message


@pytest.mark.parametrize("key", [None, 7, "", "not base64", b64e(bytes(65)), b64e(bytes(64))])
def test_unusable_signing_keys(signer: SoftwareSigner, signed: SignedStatement, key: Any) -> None:
    fields = json.loads(signed.statement_json)
    if key is None:
        del fields["signing_public_key"]
    else:
        fields["signing_public_key"] = key
    text = canonical_json(fields).decode()
    _rejects("bad_key", text, _resign(signer, text).signature)


@pytest.mark.parametrize(
    "text", ["", "not json", "[]", '"text"', '{"a":NaN}', "\udc80", "x" * (64 * 1024 + 1)]
)
def test_unreadable_text_is_malformed(signer: SoftwareSigner, text: str) -> None:
    signature = b64e(signer.sign(text.encode(errors="replace")))
    _rejects("malformed", text, signature)


def test_sign_refuses_a_statement_for_another_key(signer: SoftwareSigner) -> None:
    with pytest.raises(ValueError, match="another signing key"):
        sign_statement(_statement(signer), SoftwareSigner.generate())


def test_statements_cannot_be_built_malformed(signer: SoftwareSigner) -> None:
    with pytest.raises(ValidationError):
        _statement(signer, code_hash="abc")
    with pytest.raises(ValidationError):
        build_statement(
            signer,
            bytes(31),
            hardware=_statement(signer).hardware,
            os_version="x",
            posture={},
            code_hash=MODEL_HASH,
            runtime_hash=MODEL_HASH,
            model_hashes={},
            protocol_version=1,
            now=NOW,
        )
