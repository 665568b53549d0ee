"""Consumer verification: an honest answer passes every named check, and each way an answer,
its receipt or the statement can be wrong fails exactly the check that names it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import pytest

from moonflower.client import verify as checks
from moonflower.client.verify import Received, Verdict, verify
from moonflower.crypto.canonical import canonical_json, sha256_hex
from moonflower.crypto.envelope import EncryptionKeyPair
from moonflower.crypto.receipt import (
    Receipt,
    SignedReceipt,
    output_digest,
    receipt_hash,
    sign_receipt,
)
from moonflower.crypto.signing import SoftwareSigner, b64e, key_fingerprint
from moonflower.crypto.statement import (
    AttestedHardware,
    SignedStatement,
    build_statement,
    sign_statement,
)
from moonflower.generation import ToolCall

MODEL = "smollm2-135m-instruct"
WEIGHTS = sha256_hex(b"weights")
STATED_AT = 1_700_000_000
"""Long ago: a statement's age is not checked offline."""

ALL_CHECKS = [
    checks.STATEMENT_SIGNATURE,
    checks.RECEIPT_SIGNATURE,
    checks.RECEIPT_FORMAT,
    checks.ATTESTED_KEY,
    checks.ATTESTED_MODEL,
    checks.JOB_ID,
    checks.RESPONSE_HASH,
    checks.FINISH_REASON,
    checks.OUTPUT_HASH,
]

RECEIVED = Received(
    text="Red, orange and yellow.",
    reasoning="The user wants three colours.",
    tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),),
    finish_reason="tool_calls",
)


def signed_statement(signer: SoftwareSigner, **models: str) -> SignedStatement:
    statement = build_statement(
        signer,
        EncryptionKeyPair.generate().public_key,
        hardware=AttestedHardware(
            chip="Test Chip",
            machine_model="Test1,1",
            serial=None,
            memory_bytes=1 << 30,
            gpu=None,
            cpu="test cpu",
        ),
        os_version="TestOS 1",
        posture={"secure_boot": True},
        code_hash="c" * 64,
        runtime_hash="d" * 64,
        model_hashes=models or {MODEL: WEIGHTS},
        protocol_version=2,
        now=STATED_AT,
    )
    return sign_statement(statement, signer)


def make_receipt(signer: SoftwareSigner, received: Received = RECEIVED, **changes: Any) -> Receipt:
    fields: dict[str, Any] = {
        "job_id": "job-1",
        "model_id": MODEL,
        "model_sha256": WEIGHTS,
        "request_sha256": sha256_hex(b"request"),
        "output_sha256": output_digest(
            received.text,
            received.reasoning or "",
            received.tool_calls,
            received.finish_reason,
        ),
        "prompt_tokens": 12,
        "completion_tokens": 7,
        "finish_reason": received.finish_reason,
        "provider_key_fingerprint": key_fingerprint(signer.public_key()),
        "timestamp": STATED_AT + 60,
    }
    fields.update(changes)
    return Receipt(**fields)


def signed_by(signer: SoftwareSigner, receipt: Receipt) -> SignedReceipt:
    """Signed by `signer` whatever key the receipt names (sign_receipt refuses that)."""
    data = receipt.canonical_bytes()
    return SignedReceipt(data.decode(), b64e(signer.sign(data)))


@dataclass
class Case:
    """Everything the consumer holds; each test spoils one part."""

    received: Received
    receipt: SignedReceipt
    statement: SignedStatement
    response_hash: str | None
    job_id: str | None = "job-1"

    def run(self) -> Verdict:
        return verify(
            received=self.received,
            receipt_json=self.receipt.receipt_json,
            signature=self.receipt.signature,
            statement_json=self.statement.statement_json,
            statement_signature=self.statement.signature,
            response_hash=self.response_hash,
            job_id=self.job_id,
        )


@pytest.fixture
def signer() -> SoftwareSigner:
    return SoftwareSigner.generate()


@pytest.fixture
def case(signer: SoftwareSigner) -> Case:
    receipt = sign_receipt(make_receipt(signer), signer)
    return Case(RECEIVED, receipt, signed_statement(signer), receipt_hash(receipt.receipt_json))


def failed_names(verdict: Verdict) -> list[str]:
    return [check.name for check in verdict.failed]


def test_an_honest_answer_passes_every_check_in_order(case: Case) -> None:
    verdict = case.run()
    assert [check.name for check in verdict.checks] == ALL_CHECKS
    assert verdict.ok, verdict.lines()
    assert failed_names(verdict) == []


def test_the_verdict_prints_one_line_per_check_and_says_freshness_is_not_checked(
    case: Case,
) -> None:
    lines = case.run().lines()
    assert len(lines) == len(ALL_CHECKS) + 1
    assert all(line.startswith("✓ ") for line in lines[:-1])
    assert lines[1] == "✓ receipt signature: valid over the receipt's exact bytes"
    assert lines[-1].startswith("VERIFIED: all 9 checks passed")
    assert "not checked offline" in lines[-1]
    statement = case.run().check(checks.STATEMENT_SIGNATURE).detail
    assert "age is not checked here" in statement and "2023-11-14" in statement


def test_a_receipt_signed_by_another_key_fails_the_receipt_signature_alone(
    case: Case, signer: SoftwareSigner
) -> None:
    case.receipt = signed_by(SoftwareSigner.generate(), make_receipt(signer))
    verdict = case.run()
    assert failed_names(verdict) == [checks.RECEIPT_SIGNATURE]
    assert not verdict.ok
    assert verdict.lines()[1].startswith("✗ receipt signature: does not verify")
    assert verdict.lines()[-1].startswith("NOT VERIFIED: 1 of 9 checks failed")


def test_a_receipt_naming_another_key_fails_the_attested_key_check_alone(
    case: Case, signer: SoftwareSigner
) -> None:
    other = key_fingerprint(SoftwareSigner.generate().public_key())
    case.receipt = signed_by(signer, make_receipt(signer, provider_key_fingerprint=other))
    case.response_hash = receipt_hash(case.receipt.receipt_json)
    assert failed_names(case.run()) == [checks.ATTESTED_KEY]


def test_another_providers_receipt_fails_both_key_checks(case: Case) -> None:
    stranger = SoftwareSigner.generate()
    case.receipt = sign_receipt(make_receipt(stranger), stranger)
    case.response_hash = receipt_hash(case.receipt.receipt_json)
    assert failed_names(case.run()) == [checks.RECEIPT_SIGNATURE, checks.ATTESTED_KEY]


def test_a_tampered_receipt_fails_its_signature_alone(case: Case) -> None:
    fields = json.loads(case.receipt.receipt_json)
    fields["completion_tokens"] = 1
    case.receipt = SignedReceipt(canonical_json(fields).decode(), case.receipt.signature)
    case.response_hash = receipt_hash(case.receipt.receipt_json)
    assert failed_names(case.run()) == [checks.RECEIPT_SIGNATURE]


def test_a_tampered_receipt_without_a_fresh_hash_also_fails_the_response_hash(
    case: Case,
) -> None:
    tampered = case.receipt.receipt_json.replace('"completion_tokens":7', '"completion_tokens":8')
    assert tampered != case.receipt.receipt_json
    case.receipt = SignedReceipt(tampered, case.receipt.signature)
    assert failed_names(case.run()) == [checks.RECEIPT_SIGNATURE, checks.RESPONSE_HASH]


def test_one_flipped_character_of_text_fails_the_output_hash_alone(case: Case) -> None:
    text = case.received.text
    case.received = dataclasses.replace(case.received, text="r" + text[1:])
    verdict = case.run()
    assert failed_names(verdict) == [checks.OUTPUT_HASH]
    assert "do not hash to the receipt's output_sha256" in verdict.check(checks.OUTPUT_HASH).detail


@pytest.mark.parametrize(
    "change",
    [
        {"reasoning": "The user wants three colours!"},
        {"tool_calls": (ToolCall("call_1", "get_weather", '{"city":"Paris"}'),)},
        {"tool_calls": (ToolCall("call_1", "get_time", '{"city": "Paris"}'),)},
        {"tool_calls": ()},
    ],
    ids=["reasoning", "arguments", "tool name", "missing call"],
)
def test_any_other_change_to_the_output_fails_the_output_hash_alone(
    case: Case, change: dict[str, Any]
) -> None:
    case.received = dataclasses.replace(case.received, **change)
    assert failed_names(case.run()) == [checks.OUTPUT_HASH]


def test_tool_call_ids_are_not_hashed(case: Case) -> None:
    calls = (ToolCall("toolu_rewritten", "get_weather", '{"city": "Paris"}'),)
    case.received = dataclasses.replace(case.received, tool_calls=calls)
    assert case.run().ok


def test_a_wrong_response_hash_header_fails_the_response_hash_alone(case: Case) -> None:
    case.response_hash = sha256_hex(b"another receipt")
    verdict = case.run()
    assert failed_names(verdict) == [checks.RESPONSE_HASH]


def test_a_wrong_finish_reason_fails_the_finish_reason_alone(case: Case) -> None:
    case.received = dataclasses.replace(case.received, finish_reason="stop")
    verdict = case.run()
    assert failed_names(verdict) == [checks.FINISH_REASON]
    assert verdict.check(checks.FINISH_REASON).detail == (
        "received stop, the receipt says tool_calls"
    )


def test_a_receipt_for_another_job_fails_the_job_check_alone(case: Case) -> None:
    case.job_id = "job-2"
    assert failed_names(case.run()) == [checks.JOB_ID]


def test_without_a_job_id_or_response_hash_those_checks_are_not_run(case: Case) -> None:
    case.job_id = None
    case.response_hash = None
    verdict = case.run()
    assert verdict.ok
    names = [check.name for check in verdict.checks]
    assert checks.JOB_ID not in names and checks.RESPONSE_HASH not in names


def test_weights_the_statement_does_not_list_fail_the_model_check_alone(
    case: Case, signer: SoftwareSigner
) -> None:
    case.statement = signed_statement(signer, **{MODEL: sha256_hex(b"other weights")})
    verdict = case.run()
    assert failed_names(verdict) == [checks.ATTESTED_MODEL]
    case.statement = signed_statement(signer, **{"another-model": WEIGHTS})
    assert failed_names(case.run()) == [checks.ATTESTED_MODEL]


def test_a_forged_statement_fails_and_nothing_is_checked_against_its_key(case: Case) -> None:
    forged = case.statement.statement_json.replace('"TestOS 1"', '"TestOS 2"')
    case.statement = SignedStatement(forged, case.statement.signature)
    verdict = case.run()
    assert failed_names(verdict) == [
        checks.STATEMENT_SIGNATURE,
        checks.RECEIPT_SIGNATURE,
        checks.ATTESTED_KEY,
        checks.ATTESTED_MODEL,
    ]
    assert verdict.check(checks.STATEMENT_SIGNATURE).detail.startswith("bad_signature")
    assert "no verified statement" in verdict.check(checks.ATTESTED_KEY).detail


def test_a_statement_signed_by_another_key_fails(case: Case) -> None:
    other = SoftwareSigner.generate()
    stranger = signed_statement(other)
    case.statement = SignedStatement(stranger.statement_json, case.statement.signature)
    assert checks.STATEMENT_SIGNATURE in failed_names(case.run())


def test_an_unreadable_receipt_fails_the_format_and_everything_that_needs_it(
    case: Case, signer: SoftwareSigner
) -> None:
    spaced = json.dumps(json.loads(case.receipt.receipt_json), indent=1)
    case.receipt = SignedReceipt(spaced, b64e(signer.sign(spaced.encode())))
    case.response_hash = receipt_hash(spaced)
    verdict = case.run()
    assert failed_names(verdict) == [
        checks.RECEIPT_FORMAT,
        checks.ATTESTED_KEY,
        checks.ATTESTED_MODEL,
        checks.JOB_ID,
        checks.FINISH_REASON,
        checks.OUTPUT_HASH,
    ]
    assert verdict.check(checks.RECEIPT_FORMAT).detail.startswith("not canonical")


def test_a_bad_signature_encoding_fails_the_receipt_signature(case: Case) -> None:
    case.receipt = SignedReceipt(case.receipt.receipt_json, "not base64!")
    assert failed_names(case.run()) == [checks.RECEIPT_SIGNATURE]


def test_unshown_reasoning_is_taken_as_none_and_the_verdict_says_so(signer: SoftwareSigner) -> None:
    shown = dataclasses.replace(RECEIVED, reasoning="")
    receipt = sign_receipt(make_receipt(signer, shown), signer)
    hidden = dataclasses.replace(RECEIVED, reasoning=None)
    case = Case(hidden, receipt, signed_statement(signer), None)
    verdict = case.run()
    assert verdict.ok
    assert "none was shown, and there was none" in verdict.check(checks.OUTPUT_HASH).detail


def test_reasoning_the_answer_did_not_show_makes_the_output_hash_say_it_is_needed(
    case: Case,
) -> None:
    case.received = dataclasses.replace(case.received, reasoning=None)
    verdict = case.run()
    assert failed_names(verdict) == [checks.OUTPUT_HASH]
    detail = verdict.check(checks.OUTPUT_HASH).detail
    assert "did not show the model's reasoning" in detail
    assert "the hash needs the reasoning too" in detail


def test_rebuilt_tool_arguments_are_named_as_a_possible_cause(case: Case) -> None:
    case.received = dataclasses.replace(
        case.received,
        tool_calls=(ToolCall("toolu_1", "get_weather", '{"city":"Paris"}'),),
        has_exact_arguments=False,
    )
    detail = case.run().check(checks.OUTPUT_HASH).detail
    assert "rebuilt from parsed objects" in detail


def test_details_never_quote_the_output(case: Case) -> None:
    case.received = dataclasses.replace(case.received, text="Blue, orange and yellow.")
    text = "\n".join(case.run().lines())
    assert "orange" not in text and "colours" not in text and "Paris" not in text


def test_a_verdict_without_checks_is_not_ok() -> None:
    assert not Verdict(()).ok
    with pytest.raises(KeyError):
        Verdict(()).check(checks.OUTPUT_HASH)
