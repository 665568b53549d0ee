"""Receipts: digests, signing, the receipt hash, and every way a receipt is refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

import pytest

from moonflower.crypto.canonical import canonical_json, sha256_hex
from moonflower.crypto.receipt import (
    Receipt,
    ReceiptError,
    SignedReceipt,
    output_digest,
    receipt_hash,
    request_digest,
    sign_receipt,
    verify_receipt,
    verify_receipt_hash,
)
from moonflower.crypto.signing import SoftwareSigner, b64d, b64e, key_fingerprint
from moonflower.generation import (
    GenerationRequest,
    Message,
    ResponseFormat,
    SamplingParams,
    Tool,
    ToolCall,
    ToolChoice,
)

REQUEST = GenerationRequest(
    model="smollm2-135m",
    max_tokens=32,
    messages=(Message(role="user", content="Say hello."),),
)
MODEL_HASH = sha256_hex(b"weights")
OUTPUT = output_digest("Hello!", "", [], "stop")


def _receipt(signer: SoftwareSigner, **changes: Any) -> Receipt:
    fields: dict[str, Any] = {
        "job_id": "job-1",
        "model_id": "smollm2-135m",
        "model_sha256": MODEL_HASH,
        "request_sha256": request_digest(REQUEST),
        "output_sha256": OUTPUT,
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "finish_reason": "stop",
        "provider_key_fingerprint": key_fingerprint(signer.public_key()),
        "timestamp": 1_767_225_600,
    }
    fields.update(changes)
    return Receipt(**fields)


def _rejects(reason: str, signed: SignedReceipt, public_key: bytes, **expect: Any) -> None:
    with pytest.raises(ReceiptError) as caught:
        verify_receipt(signed.receipt_json, signed.signature, public_key, **expect)
    assert caught.value.reason == reason, caught.value.message


def _resign(signer: SoftwareSigner, text: str) -> SignedReceipt:
    return SignedReceipt(text, b64e(signer.sign(text.encode())))


@pytest.fixture
def signer() -> SoftwareSigner:
    return SoftwareSigner.generate()


@pytest.fixture
def signed(signer: SoftwareSigner) -> SignedReceipt:
    return sign_receipt(_receipt(signer), signer)


def test_round_trip_with_every_expectation_met(
    signer: SoftwareSigner, signed: SignedReceipt
) -> None:
    receipt = verify_receipt(
        signed.receipt_json,
        signed.signature,
        signer.public_key(),
        job_id="job-1",
        model_sha256=MODEL_HASH,
        request_sha256=request_digest(REQUEST),
        output_sha256=output_digest("Hello!", "", [], "stop"),
    )
    assert receipt == _receipt(signer)
    assert signed.receipt_json.encode() == receipt.canonical_bytes()


def test_receipt_hash_and_header_signature(signer: SoftwareSigner, signed: SignedReceipt) -> None:
    response_hash = receipt_hash(signed.receipt_json)
    assert response_hash == hashlib.sha256(signed.receipt_json.encode()).hexdigest()
    key = signer.public_key()
    assert verify_receipt_hash(response_hash, signed.signature, key)
    other = sign_receipt(_receipt(signer, job_id="job-2"), signer)
    assert not verify_receipt_hash(receipt_hash(other.receipt_json), signed.signature, key)
    assert not verify_receipt_hash(response_hash.upper(), signed.signature, key)
    assert not verify_receipt_hash(response_hash[:-2], signed.signature, key)
    assert not verify_receipt_hash("zz" * 32, signed.signature, key)
    assert not verify_receipt_hash(response_hash, "not base64", key)
    assert not verify_receipt_hash(
        response_hash, signed.signature, SoftwareSigner.generate().public_key()
    )


def test_tampered_receipt(signer: SoftwareSigner, signed: SignedReceipt) -> None:
    tampered = signed.receipt_json.replace('"completion_tokens":3', '"completion_tokens":30')
    assert tampered != signed.receipt_json
    _rejects("bad_signature", SignedReceipt(tampered, signed.signature), signer.public_key())


def test_forged_truncated_and_foreign_signatures(
    signer: SoftwareSigner, signed: SignedReceipt
) -> None:
    key = signer.public_key()
    der = b64d(signed.signature)
    for signature in (b64e(der[:-1]), b64e(bytes(len(der))), "", "***"):
        _rejects("bad_signature", SignedReceipt(signed.receipt_json, signature), key)
    intruder = SoftwareSigner.generate()
    _rejects("bad_signature", _resign(intruder, signed.receipt_json), key)
    # Verified against the intruder's own key, it still names the provider's fingerprint.
    _rejects("key_mismatch", _resign(intruder, signed.receipt_json), intruder.public_key())


def test_receipt_for_another_job_model_request_or_output(
    signer: SoftwareSigner, signed: SignedReceipt
) -> None:
    key = signer.public_key()
    other_request = dataclasses.replace(REQUEST, max_tokens=33)
    _rejects("request_mismatch", signed, key, request_sha256=request_digest(other_request))
    _rejects("job_mismatch", signed, key, job_id="job-2")
    _rejects("model_mismatch", signed, key, model_sha256=sha256_hex(b"other weights"))
    # One character of the received text differs from what the provider signed.
    _rejects("output_mismatch", signed, key, output_sha256=output_digest("Hello?", "", [], "stop"))


def test_reserialised_and_malformed_receipts(signer: SoftwareSigner, signed: SignedReceipt) -> None:
    key = signer.public_key()
    spaced = json.dumps(json.loads(signed.receipt_json), sort_keys=True, indent=1)
    _rejects("bad_signature", SignedReceipt(spaced, signed.signature), key)
    _rejects("not_canonical", _resign(signer, spaced), key)
    fields = json.loads(signed.receipt_json)
    for changes in (
        {"finish_reason": "exploded"},
        {"prompt_tokens": -1},
        {"completion_tokens": 3.0},
        {"job_id": ""},
        {"request_sha256": "0" * 63},
        {"extra": None},
    ):
        text = canonical_json({**fields, **changes}).decode()
        _rejects("malformed", _resign(signer, text), key)
    _rejects(
        "unsupported_version", _resign(signer, canonical_json({**fields, "v": 2}).decode()), key
    )
    _rejects("malformed", _resign(signer, "[1]"), key)
    _rejects("malformed", SignedReceipt("\udc80", signed.signature), key)


def test_sign_refuses_a_receipt_for_another_key(signer: SoftwareSigner) -> None:
    with pytest.raises(ValueError, match="another signing key"):
        sign_receipt(_receipt(signer), SoftwareSigner.generate())


def test_cancelled_and_failed_jobs_have_receipts(signer: SoftwareSigner) -> None:
    for reason in ("cancelled", "failed"):
        signed = sign_receipt(_receipt(signer, finish_reason=reason), signer)
        assert (
            verify_receipt(signed.receipt_json, signed.signature, signer.public_key()).finish_reason
            == reason
        )


# --- digests ---


def test_request_digest_covers_every_field() -> None:
    variants: dict[str, GenerationRequest] = {
        "model": dataclasses.replace(REQUEST, model="other"),
        "max_tokens": dataclasses.replace(REQUEST, max_tokens=None),
        "messages": dataclasses.replace(
            REQUEST, messages=(Message(role="user", content="Say hi."),)
        ),
        "prompt": dataclasses.replace(REQUEST, prompt=""),
        "sampling": dataclasses.replace(REQUEST, sampling=SamplingParams(temperature=0.0)),
        "stop": dataclasses.replace(REQUEST, stop=("\n",)),
        "tools": dataclasses.replace(REQUEST, tools=(Tool(name="f"),)),
        "tool_choice": dataclasses.replace(REQUEST, tool_choice=ToolChoice(mode="none")),
        "response_format": dataclasses.replace(
            REQUEST, response_format=ResponseFormat(kind="json_object")
        ),
        "logprobs": dataclasses.replace(REQUEST, logprobs=0),
    }
    # A new GenerationRequest field must get a variant here (and changes the golden digest).
    assert set(variants) == {f.name for f in dataclasses.fields(GenerationRequest)}
    digests = {request_digest(request) for request in variants.values()}
    assert len(digests) == len(variants)
    assert request_digest(REQUEST) not in digests


def test_request_digest_reaches_nested_fields() -> None:
    base = dataclasses.replace(
        REQUEST,
        messages=(
            Message(
                role="assistant",
                content="",
                tool_calls=(ToolCall(id="c1", name="f", arguments="{}"),),
            ),
        ),
        tools=(
            Tool(name="f", parameters={"type": "object", "properties": {"x": {"minimum": 0.5}}}),
        ),
    )
    nested = [
        dataclasses.replace(
            base,
            messages=(
                dataclasses.replace(
                    base.messages[0], tool_calls=(ToolCall(id="c2", name="f", arguments="{}"),)
                ),
            ),
        ),
        dataclasses.replace(
            base,
            tools=(
                Tool(
                    name="f", parameters={"type": "object", "properties": {"x": {"minimum": 0.25}}}
                ),
            ),
        ),
        dataclasses.replace(base, sampling=SamplingParams(seed=1)),
    ]
    assert len({request_digest(r) for r in [base, *nested]}) == 4


def test_request_digest_refuses_non_finite_floats() -> None:
    request = dataclasses.replace(REQUEST, sampling=SamplingParams(temperature=math.nan))
    with pytest.raises(ValueError, match="no JSON form"):
        request_digest(request)


def test_output_digest_is_the_documented_canonical_object() -> None:
    calls = [ToolCall(id="call_1", name="f", arguments='{"a": 1}')]
    expected = canonical_json(
        {
            "finish_reason": "tool_calls",
            "reasoning": "think",
            "text": "hi",
            "tool_calls": [{"arguments": '{"a": 1}', "name": "f"}],
        }
    )
    assert output_digest("hi", "think", calls, "tool_calls") == sha256_hex(expected)


def test_output_digest_separates_what_the_consumer_can_see_change() -> None:
    call_a = ToolCall(id="1", name="a", arguments="{}")
    call_b = ToolCall(id="2", name="b", arguments="{}")
    base = output_digest("text", "why", [call_a, call_b], "tool_calls")
    changed = [
        output_digest("texT", "why", [call_a, call_b], "tool_calls"),
        output_digest("textwhy", "", [call_a, call_b], "tool_calls"),
        output_digest("text", "why", [call_b, call_a], "tool_calls"),
        output_digest("text", "why", [call_a], "tool_calls"),
        output_digest(
            "text", "why", [call_a, dataclasses.replace(call_b, arguments="{ }")], "tool_calls"
        ),
        output_digest("text", "why", [call_a, call_b], "stop"),
    ]
    assert base not in changed
    assert len(set(changed)) == len(changed)
    # Ids are not part of the output: dialects may rewrite them.
    renamed = [dataclasses.replace(call_a, id="toolu_x"), dataclasses.replace(call_b, id="y")]
    assert output_digest("text", "why", renamed, "tool_calls") == base
