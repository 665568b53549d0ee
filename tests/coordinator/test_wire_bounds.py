"""Every count and string a provider sends is bounded at the wire: out-of-range counts,
oversized lists, unprintable names and coordinator-only failure codes are protocol errors,
while a failure's free-text message is made printable instead of refused. Registration also
refuses encryption keys nothing can be sealed to, and a connection's frame budget holds."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from moonflower import wire
from moonflower.coordinator.routes.providers import FrameBudget, encryption_key
from moonflower.crypto.envelope import EncryptionKeyPair, validate_public_key
from moonflower.crypto.signing import b64e
from moonflower.errors import ProtocolError, SealError
from moonflower.generation import (
    MAX_FAILURE_MESSAGE_CHARS,
    MAX_TOKEN_COUNT,
    Failed,
    Finished,
    Started,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)

CARD: dict[str, Any] = {
    "id": "model",
    "sha256": "ab" * 32,
    "context_length": 4096,
    "engine": "llama.cpp",
    "size_bytes": 1,
}
HARDWARE: dict[str, Any] = {"cpu": "cpu", "cpu_cores": 2, "memory_bytes": 1 << 30, "os": "os"}
REGISTER: dict[str, Any] = {
    "type": "register",
    "protocol_version": wire.PROTOCOL_VERSION,
    "agent_version": "1.0",
    "hardware": HARDWARE,
    "models": [CARD],
    "max_concurrent_jobs": 4,
    "encryption_public_key": "A" * 43 + "=",
}


def register(**changes: Any) -> wire.FromProvider:
    return wire.decode_from_provider(orjson.dumps({**REGISTER, **changes}))


def event(**fields: Any) -> Any:
    return wire.event_from_provider_bytes(orjson.dumps(fields))


def test_an_honest_register_and_its_events_pass() -> None:
    assert isinstance(register(), wire.Register)
    assert event(kind="started", prompt_tokens=12) == Started(prompt_tokens=12)
    text = event(kind="text", text="a\nb\t", tokens=2, logprobs=[{"token": "\n", "logprob": -0.5}])
    assert text == TextDelta("a\nb\t", (TokenLogprob("\n", -0.5),), tokens=2)
    usage = {"prompt_tokens": 12, "completion_tokens": 2}
    assert event(kind="finished", reason="stop", usage=usage) == Finished("stop", Usage(12, 2))


def test_printable_names_in_any_script_pass() -> None:
    hardware = {**HARDWARE, "chip": "Apple M4 Pro ☃", "gpu": "Radeon Pro — 4 GB"}
    message = register(hardware=hardware, models=[{**CARD, "id": "modèle-日本"}])
    assert isinstance(message, wire.Register)
    assert message.hardware.chip == "Apple M4 Pro ☃"


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "started", "prompt_tokens": -1},
        {"kind": "started", "prompt_tokens": 2**31},
        {"kind": "started", "prompt_tokens": MAX_TOKEN_COUNT + 1},
        {"kind": "text", "text": "x", "tokens": -5},
        {"kind": "text", "text": "x", "tokens": 2**40},
        {"kind": "tool_call", "index": -1},
        {"kind": "tool_call", "index": 0, "tokens": 2**31},
        {
            "kind": "finished",
            "reason": "stop",
            "usage": {"prompt_tokens": 1, "completion_tokens": -1},
        },
        {
            "kind": "finished",
            "reason": "stop",
            "usage": {"prompt_tokens": 2**31, "completion_tokens": 1},
        },
    ],
)
def test_out_of_range_counts_are_protocol_errors(fields: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        event(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "text", "text": "x", "logprobs": [{"token": "x", "logprob": 1.0}]},
        {"kind": "text", "text": "x", "logprobs": [{"token": "x" * 300, "logprob": -1.0}]},
        {
            "kind": "text",
            "text": "x",
            "logprobs": [{"token": "x", "logprob": -1, "top": [["y", -1]] * 21}],
        },
        {"kind": "tool_call", "index": 0, "name": "call\nforged log line"},
        {"kind": "tool_call", "index": 0, "id": "\x1b[31mred"},
        {"kind": "tool_call", "index": 0, "name": "n" * 257},
        {"kind": "failed", "code": "invalid_request", "message": "m", "param": "a\u202eb"},
    ],
)
def test_unbounded_or_unprintable_event_strings_are_protocol_errors(fields: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        event(**fields)


def test_a_long_text_event_is_refused() -> None:
    with pytest.raises(ProtocolError):
        event(kind="text", text="x" * ((1 << 20) + 1))


@pytest.mark.parametrize("code", ["provider_gone", "timeout"])
def test_coordinator_only_failure_codes_are_refused_from_a_provider(code: str) -> None:
    data = orjson.dumps({"kind": "failed", "code": code, "message": "gone"})
    with pytest.raises(ProtocolError, match=code):
        wire.event_from_provider_bytes(data)
    # The coordinator's own (in-process) events keep them; only the wire refuses them.
    assert wire.event_from_bytes(data) == Failed(code=code, message="gone")  # type: ignore[arg-type]


def test_a_failure_message_is_made_printable_and_short_rather_than_refused() -> None:
    failed = event(kind="failed", code="engine_error", message="bad\nline\x1b[2J" + "x" * 5000)
    assert isinstance(failed, Failed)
    assert failed.message.isprintable()
    assert failed.message.startswith("bad line [2J")
    assert len(failed.message) == MAX_FAILURE_MESSAGE_CHARS


def test_more_model_cards_than_allowed_are_refused() -> None:
    cards = [{**CARD, "id": f"m{i}"} for i in range(wire.MAX_MODEL_CARDS + 1)]
    with pytest.raises(ProtocolError, match="at most 32"):
        register(models=cards)
    assert isinstance(register(models=cards[: wire.MAX_MODEL_CARDS]), wire.Register)


def test_duplicated_model_ids_are_refused() -> None:
    with pytest.raises(ProtocolError, match="distinct"):
        register(models=[CARD, {**CARD, "engine": "other"}])


@pytest.mark.parametrize(
    "changes",
    [
        {"hardware": {**HARDWARE, "chip": "M4\r\nx-injected: 1"}},
        {"hardware": {**HARDWARE, "cpu": "c" * 257}},
        {"hardware": {**HARDWARE, "os": "\x00"}},
        {"hardware": {**HARDWARE, "cpu_cores": 0}},
        {"hardware": {**HARDWARE, "memory_bytes": -1}},
        {"hardware": {**HARDWARE, "memory_bytes": 1 << 60}},
        {"agent_version": "1.0\n"},
        {"models": [{**CARD, "id": ""}]},
        {"models": [{**CARD, "id": "a\tb"}]},
        {"models": [{**CARD, "quantization": "Q4\x85"}]},
        {"models": [{**CARD, "engine": "e" * 300}]},
        {"models": [{**CARD, "context_length": 0}]},
        {"models": [{**CARD, "context_length": 2**31}]},
        {"models": [{**CARD, "size_bytes": -1}]},
        {"max_concurrent_jobs": 65},
        {"encryption_public_key": "not base64!"},
        {"encryption_public_key": "A" * 300},
    ],
)
def test_out_of_bounds_registrations_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        register(**changes)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "heartbeat", "active_jobs": -1, "jobs_served": 0, "tokens_generated": 0},
        {"type": "heartbeat", "active_jobs": 0, "jobs_served": 2**60, "tokens_generated": 0},
        {
            "type": "heartbeat",
            "active_jobs": 0,
            "jobs_served": 0,
            "tokens_generated": 0,
            "free_slots": 65,
        },
        {"type": "job_event", "job_id": "job\nINFO forged", "sealed_event": "x"},
        {"type": "job_event", "job_id": "j" * 129, "sealed_event": "x"},
        {"type": "job_receipt", "job_id": "j", "receipt": {"json": "{}", "signature": "\r\n"}},
        {
            "type": "job_receipt",
            "job_id": "j",
            "receipt": {"json": "x" * 70_000, "signature": "AA=="},
        },
        {
            "type": "challenge_answer",
            "nonce": "n",
            "status": {"json": "{}", "signature": "AA=="},
            "mda_chain": ["c"] * 9,
        },
    ],
)
def test_out_of_bounds_frames_are_refused(frame: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        wire.decode_from_provider(orjson.dumps(frame))


def test_a_heartbeat_may_count_past_two_to_the_31() -> None:
    # Lifetime counters of a busy process pass 2**31; they are never stored in a column.
    beat = {"type": "heartbeat", "active_jobs": 0, "jobs_served": 2**40, "tokens_generated": 2**50}
    assert isinstance(wire.decode_from_provider(orjson.dumps(beat)), wire.Heartbeat)


def test_errors_never_quote_the_frame() -> None:
    secret = "the consumer's prompt\nINFO forged"
    with pytest.raises(ProtocolError) as caught:
        register(hardware={**HARDWARE, "chip": secret}, agent_version=secret)
    assert "prompt" not in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(ProtocolError) as caught:
        wire.decode_from_provider(orjson.dumps({"type": secret}))
    assert "prompt" not in str(caught.value)


def test_a_frame_is_measured_in_bytes() -> None:
    # 3 MiB characters of 4 bytes each: within the limit as characters, not as bytes.
    frame = '{"type": "heartbeat", "x": "' + "\U0001f600" * (3 * 1024 * 1024) + '"}'
    with pytest.raises(ProtocolError, match="maximum size"):
        wire.decode_from_provider(frame)


def test_in_process_events_are_not_checked() -> None:
    # The bounds belong to the wire; the dataclasses themselves stay plain.
    assert TextDelta("x", tokens=-1).tokens == -1
    assert ToolCallDelta(index=-1).index == -1


P = 2**255 - 19
LOW_ORDER_POINTS = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    P - 1,
    P,
    P + 1,
]
"""The X25519 points of order 1, 2, 4 and 8, and the non-canonical encodings of some."""
LOW_ORDER_KEYS = [n.to_bytes(32, "little") for n in LOW_ORDER_POINTS] + [
    (n | 1 << 255).to_bytes(32, "little") for n in LOW_ORDER_POINTS
]  # the top bit is ignored by X25519, so each also comes with it set


@pytest.mark.parametrize("key", LOW_ORDER_KEYS, ids=lambda key: key.hex()[:8] + key.hex()[-2:])
def test_a_low_order_encryption_key_is_refused_at_registration(key: bytes) -> None:
    with pytest.raises(SealError):
        validate_public_key(key)
    message = register(encryption_public_key=b64e(key))
    assert isinstance(message, wire.Register)
    with pytest.raises(ProtocolError, match="low-order"):
        encryption_key(message)


def test_a_real_encryption_key_is_accepted() -> None:
    public = EncryptionKeyPair.generate().public_key
    assert validate_public_key(public) == public
    message = register(encryption_public_key=b64e(public))
    assert isinstance(message, wire.Register)
    assert encryption_key(message) == public
    with pytest.raises(ProtocolError, match="no valid X25519"):
        encryption_key(message.model_copy(update={"encryption_public_key": b64e(public[:31])}))


def test_the_frame_budget_allows_its_burst_then_its_rate() -> None:
    budget = FrameBudget(rate=10.0, burst=5.0, now=0.0)
    assert all(budget.spend(1, now=0.0) for _ in range(5))
    assert not budget.spend(1, now=0.0)
    assert not budget.spend(2, now=0.1)  # refilled one: not enough for two
    assert budget.spend(1, now=0.1)
    assert budget.spend(5, now=100.0)  # never holds more than the burst
    assert not budget.spend(1, now=100.0)
