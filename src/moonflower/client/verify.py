"""Verification for consumers: does the answer I received match what the attested machine
signed?

Owns the checks, run offline on what the consumer holds: the provider's signed statement
(from `GET /v1/providers/attestation`), its signed receipt (from the stream, or
`GET /v1/receipts/{job_id}`), the `x-response-hash` header when there was one, and the output
as received (`Received`, built by `moonflower.client.recorded`). The verdict names every
check with why it passed or failed. It does no I/O and reads no clock; it must not decide
what to do about a failure.

The statement's freshness is not checked: a statement is only fresh at registration, when the
coordinator checked it, and a receipt may be verified long after. Nothing here can tell
whether the coordinator relayed a statement it should not have trusted for other reasons
(code hash, posture): the statement's fields are shown for the consumer to judge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from moonflower.crypto.canonical import (
    NotCanonicalError,
    check_canonical,
    document_bytes,
    parse_json_object,
)
from moonflower.crypto.receipt import RECEIPT_VERSION, Receipt, output_digest, receipt_hash
from moonflower.crypto.signing import b64d, verify_signature
from moonflower.crypto.statement import MAX_SIGNED_BYTES, Statement, verify_statement
from moonflower.errors import AttestationError
from moonflower.generation import ToolCall

STATEMENT_SIGNATURE = "statement signature"
RECEIPT_SIGNATURE = "receipt signature"
RECEIPT_FORMAT = "receipt format"
ATTESTED_KEY = "receipt signed by the attested key"
ATTESTED_MODEL = "model weights attested"
JOB_ID = "job id"
RESPONSE_HASH = "response hash"
FINISH_REASON = "finish reason"
OUTPUT_HASH = "output hash"

_RECEIPT = TypeAdapter(Receipt)


@dataclass(frozen=True)
class Received:
    """The output as the consumer received it, in the terms a receipt hashes.

    `reasoning` is `None` when the response did not show reasoning at all (Anthropic without
    thinking enabled, legacy completions): it is then taken as empty, which only matches a
    receipt whose output had none. `finish_reason` is the neutral one (`stop`, `length`,
    `tool_calls`, `cancelled`, `failed`). `has_exact_arguments` is false when tool-call
    arguments were rebuilt from parsed objects rather than received as text.
    """

    text: str
    reasoning: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str
    has_exact_arguments: bool = True


@dataclass(frozen=True)
class Check:
    """One named check, passed or failed, and why."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.name}: {self.detail}"


@dataclass(frozen=True)
class Verdict:
    """Every check that was run, in order; `ok` only when there are checks and all passed."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if not check.ok)

    def check(self, name: str) -> Check:
        """The check called `name`; `KeyError` if it was not run."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def summary(self) -> str:
        if self.ok:
            return (
                f"VERIFIED: all {len(self.checks)} checks passed (the statement's age is not "
                "checked offline: the coordinator checked it was fresh at registration)"
            )
        names = ", ".join(check.name for check in self.failed)
        return f"NOT VERIFIED: {len(self.failed)} of {len(self.checks)} checks failed ({names})"

    def lines(self) -> list[str]:
        return [check.line() for check in self.checks] + [self.summary()]


def verify(
    *,
    received: Received,
    receipt_json: str,
    signature: str,
    statement_json: str,
    statement_signature: str,
    response_hash: str | None = None,
    job_id: str | None = None,
) -> Verdict:
    """Check `received` against the receipt and the receipt against the attested statement.

    `response_hash` is the `x-response-hash` the answer carried, `job_id` the job the consumer
    knows it asked for (`x-moonflower-job-id`); each is checked only when given. Checks that
    need a verified statement or a readable receipt fail, saying so, when those are missing.
    """
    statement, statement_check = _check_statement(statement_json, statement_signature)
    receipt, format_check = _read_receipt(receipt_json)
    checks = [statement_check, _check_signature(receipt_json, signature, statement), format_check]
    checks.append(_needs(statement, receipt, ATTESTED_KEY, _check_attested_key))
    checks.append(_needs(statement, receipt, ATTESTED_MODEL, _check_attested_model))
    if job_id is not None:
        checks.append(_check_job(receipt, job_id))
    if response_hash is not None:
        checks.append(_check_response_hash(receipt_json, response_hash))
    checks.append(_check_finish(receipt, received))
    checks.append(_check_output(receipt, received))
    return Verdict(tuple(checks))


def _check_statement(text: str, signature: str) -> tuple[Statement | None, Check]:
    try:
        # An unbounded window: freshness is not checked offline (module docstring).
        statement = verify_statement(
            text, signature, now=0.0, max_age_s=math.inf, max_skew_s=math.inf
        )
    except AttestationError as exc:
        return None, Check(STATEMENT_SIGNATURE, False, f"{exc.reason}: {exc.detail}")
    hardware = statement.hardware
    machine = ", ".join(part for part in (hardware.chip, hardware.machine_model) if part)
    detail = (
        f"valid, by {statement.key_storage} key {statement.fingerprint[:16]}… on "
        f"{machine or hardware.cpu}, stated {_when(statement.timestamp)}; its age is not "
        "checked here (the coordinator checked it was fresh when the provider registered)"
    )
    return statement, Check(STATEMENT_SIGNATURE, True, detail)


def _check_signature(receipt_json: str, signature: str, statement: Statement | None) -> Check:
    if statement is None:
        return Check(RECEIPT_SIGNATURE, False, "not checked: no verified statement holds a key")
    try:
        data = document_bytes(receipt_json, max_bytes=MAX_SIGNED_BYTES)
        der = b64d(signature)
    except ValueError as exc:
        return Check(RECEIPT_SIGNATURE, False, f"unreadable: {exc}")
    if not verify_signature(statement.signing_key, der, data):
        return Check(
            RECEIPT_SIGNATURE,
            False,
            "does not verify over the receipt's bytes under the attested key "
            "(the receipt was altered, or another key signed it)",
        )
    return Check(RECEIPT_SIGNATURE, True, "valid over the receipt's exact bytes")


def _read_receipt(text: str) -> tuple[Receipt | None, Check]:
    try:
        data = document_bytes(text, max_bytes=MAX_SIGNED_BYTES)
        fields = parse_json_object(data)
        check_canonical(data, fields)
        if fields.get("v") != RECEIPT_VERSION:
            return None, Check(RECEIPT_FORMAT, False, f"unknown version {fields.get('v')!r}")
        receipt = _RECEIPT.validate_json(data)
    except NotCanonicalError as exc:
        return None, Check(RECEIPT_FORMAT, False, f"not canonical JSON: {exc}")
    except PydanticValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "document"
        return None, Check(RECEIPT_FORMAT, False, f"{where}: {error['msg']}")
    except ValueError as exc:
        return None, Check(RECEIPT_FORMAT, False, f"unreadable: {exc}")
    detail = (
        f"job {receipt.job_id}, model {receipt.model_id}, {receipt.prompt_tokens} prompt + "
        f"{receipt.completion_tokens} completion tokens, ended {receipt.finish_reason}, "
        f"signed {_when(receipt.timestamp)}"
    )
    return receipt, Check(RECEIPT_FORMAT, True, detail)


def _needs(
    statement: Statement | None,
    receipt: Receipt | None,
    name: str,
    check: Callable[[Statement, Receipt], Check],
) -> Check:
    if statement is None:
        return Check(name, False, "not checked: no verified statement")
    if receipt is None:
        return Check(name, False, "not checked: the receipt could not be read")
    return check(statement, receipt)


def _check_attested_key(statement: Statement, receipt: Receipt) -> Check:
    if receipt.provider_key_fingerprint != statement.fingerprint:
        return Check(
            ATTESTED_KEY,
            False,
            f"the receipt names key {receipt.provider_key_fingerprint[:16]}…, the statement "
            f"attests {statement.fingerprint[:16]}…",
        )
    return Check(ATTESTED_KEY, True, f"names key {statement.fingerprint[:16]}…, the attested one")


def _check_attested_model(statement: Statement, receipt: Receipt) -> Check:
    attested = statement.model_hashes.get(receipt.model_id)
    if attested is None:
        return Check(ATTESTED_MODEL, False, f"the statement lists no {receipt.model_id}")
    if attested != receipt.model_sha256:
        return Check(
            ATTESTED_MODEL,
            False,
            f"the receipt's {receipt.model_id} weights {receipt.model_sha256[:16]}… are not "
            f"the attested {attested[:16]}…",
        )
    return Check(ATTESTED_MODEL, True, f"{receipt.model_id} weights {attested[:16]}…")


def _check_job(receipt: Receipt | None, job_id: str) -> Check:
    if receipt is None:
        return Check(JOB_ID, False, "not checked: the receipt could not be read")
    if receipt.job_id != job_id:
        return Check(JOB_ID, False, f"the receipt is for job {receipt.job_id}, not {job_id}")
    return Check(JOB_ID, True, f"the receipt is for {job_id}")


def _check_response_hash(receipt_json: str, response_hash: str) -> Check:
    try:
        actual = receipt_hash(receipt_json)
    except UnicodeEncodeError:
        return Check(RESPONSE_HASH, False, "the receipt has no UTF-8 form")
    if actual != response_hash.strip().lower():
        return Check(
            RESPONSE_HASH,
            False,
            f"the answer's x-response-hash {response_hash[:16]}… is not the receipt's "
            f"hash {actual[:16]}…",
        )
    return Check(RESPONSE_HASH, True, f"{actual[:16]}… is the receipt's hash")


def _check_finish(receipt: Receipt | None, received: Received) -> Check:
    if receipt is None:
        return Check(FINISH_REASON, False, "not checked: the receipt could not be read")
    if received.finish_reason != receipt.finish_reason:
        return Check(
            FINISH_REASON,
            False,
            f"received {received.finish_reason}, the receipt says {receipt.finish_reason}",
        )
    return Check(FINISH_REASON, True, receipt.finish_reason)


def _check_output(receipt: Receipt | None, received: Received) -> Check:
    if receipt is None:
        return Check(OUTPUT_HASH, False, "not checked: the receipt could not be read")
    # The receipt's finish reason, so that this check is about the content alone; whether
    # the received finish reason agrees is the finish-reason check.
    digest = output_digest(
        received.text, received.reasoning or "", received.tool_calls, receipt.finish_reason
    )
    what = _describe(received.text, received.reasoning, received.tool_calls)
    if digest == receipt.output_sha256:
        note = "" if received.reasoning is not None else " (none was shown, and there was none)"
        return Check(OUTPUT_HASH, True, f"{what} hash to the receipt's output{note}")
    reasons = [f"{what} do not hash to the receipt's output_sha256"]
    if received.reasoning is None:
        reasons.append(
            "the response did not show the model's reasoning, and the hash needs the "
            "reasoning too: if the model reasoned, ask with reasoning shown (Anthropic: "
            "thinking enabled) or through a dialect that shows it"
        )
    if not received.has_exact_arguments:
        reasons.append(
            "tool-call arguments were rebuilt from parsed objects (a whole Anthropic message "
            "does not carry their exact text); a recorded stream does"
        )
    return Check(OUTPUT_HASH, False, "; ".join(reasons))


def _describe(text: str, reasoning: str | None, calls: Sequence[ToolCall]) -> str:
    parts = [f"{len(text)} characters of text"]
    if reasoning:
        parts.append(f"{len(reasoning)} of reasoning")
    if calls:
        parts.append(f"{len(calls)} tool call{'s' if len(calls) != 1 else ''}")
    return ", ".join(parts)


def _when(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
