"""`moonflower verify` end to end: answers obtained with the official `openai` and `anthropic`
SDKs from real processes and the real model, whole (receipt fetched by the job id in their
headers) and streamed (receipt carried in the stream), verify against the provider's attested
statement; one flipped character of the received text makes the output-hash check fail."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from moonflower.client import verify as checks
from tests.support.network import LocalNetwork

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
MESSAGES: list[Any] = [{"role": "user", "content": "Name three colours of the rainbow."}]
MAX_TOKENS = 24
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def openai_client(network: LocalNetwork, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=api_key, max_retries=0)


@pytest.fixture(scope="module")
def anthropic_client(network: LocalNetwork, api_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=network.base_url, api_key=api_key, max_retries=0)


def moonflower_verify(
    network: LocalNetwork, answer: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moonflower", "verify", str(answer), *args],
        capture_output=True,
        text=True,
        env={**network.env(), "PYTHONIOENCODING": "utf-8"},
        timeout=120,
        check=False,
    )


def save_headers(path: Path, headers: Mapping[str, str]) -> Path:
    path.write_text("".join(f"{name}: {value}\n" for name, value in headers.items()))
    return path


def assert_verified(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("VERIFIED"), result.stdout
    named = [line[2:].split(":")[0] for line in lines[:-1]]
    for name in (
        checks.STATEMENT_SIGNATURE,
        checks.RECEIPT_SIGNATURE,
        checks.ATTESTED_KEY,
        checks.ATTESTED_MODEL,
        checks.JOB_ID,
        checks.RESPONSE_HASH,
        checks.FINISH_REASON,
        checks.OUTPUT_HASH,
    ):
        assert name in named, result.stdout
    assert all(line.startswith("✓ ") for line in lines[:-1]), result.stdout


def assert_output_hash_fails(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("✗ ")]
    assert [line[2:].split(":")[0] for line in failed] == [checks.OUTPUT_HASH], result.stdout
    assert result.stdout.splitlines()[-1].startswith("NOT VERIFIED")


def flipped(text: str) -> str:
    """`text` with the character in its middle changed."""
    assert text, "the model said nothing to flip"
    middle = len(text) // 2
    return text[:middle] + ("X" if text[middle] != "X" else "Y") + text[middle + 1 :]


def flip_stream(data: bytes, text_of: Callable[[dict[str, Any]], dict[str, Any] | None]) -> bytes:
    """The recorded stream with one character flipped in the first event carrying text:
    `text_of(data)` returns the object whose `"text"`-like field holds it, or None."""
    frames = data.split(b"\n\n")
    for index, frame in enumerate(frames):
        lines = frame.split(b"\n")
        for number, line in enumerate(lines):
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[len(b"data: ") :])
            holder = text_of(event)
            if holder is None:
                continue
            field = next(k for k in ("content", "text") if holder.get(k))
            holder[field] = flipped(holder[field])
            lines[number] = b"data: " + json.dumps(event).encode()
            frames[index] = b"\n".join(lines)
            return b"\n\n".join(frames)
    raise AssertionError("no event in the stream carries text")


def chat_text(event: dict[str, Any]) -> dict[str, Any] | None:
    choices = event.get("choices") or []
    delta = choices[0].get("delta", {}) if choices else {}
    return delta if delta.get("content") else None


def anthropic_text(event: dict[str, Any]) -> dict[str, Any] | None:
    delta = event.get("delta") or {}
    return delta if event.get("type") == "content_block_delta" and delta.get("text") else None


def test_a_whole_openai_chat_answer_verifies_and_a_flipped_character_fails(
    network: LocalNetwork, api_key: str, openai_client: openai.OpenAI, tmp_path: Path
) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
    )
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-response-hash"] and raw.headers["x-se-signature"]
    body = raw.http_response.json()
    answer = tmp_path / "chat.json"
    answer.write_bytes(raw.http_response.content)
    headers = save_headers(tmp_path / "headers.txt", raw.headers)
    connect = ["--headers", str(headers), "--base-url", f"{network.base_url}/v1"]
    assert_verified(moonflower_verify(network, answer, *connect, "--api-key", api_key))

    message = body["choices"][0]["message"]
    message["content"] = flipped(message["content"])
    answer.write_text(json.dumps(body))
    assert_output_hash_fails(moonflower_verify(network, answer, *connect, "--api-key", api_key))


def test_a_whole_answer_needs_its_receipt_fetched_by_its_owner(
    network: LocalNetwork, openai_client: openai.OpenAI, tmp_path: Path
) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0
    )
    answer = tmp_path / "chat.json"
    answer.write_bytes(raw.http_response.content)
    headers = save_headers(tmp_path / "headers.txt", raw.headers)
    base = ["--base-url", network.base_url]
    nothing = moonflower_verify(network, answer, *base)
    assert nothing.returncode == 2 and "--job-id" in nothing.stderr
    stranger = moonflower_verify(
        network, answer, *base, "--headers", str(headers), "--api-key", "mf-x"
    )
    assert stranger.returncode == 2 and "no receipt" in stranger.stderr
    by_id = moonflower_verify(
        network,
        answer,
        *base,
        "--job-id",
        raw.headers["x-moonflower-job-id"],
        "--api-key",
        network.create_key("verify-other"),
    )
    assert by_id.returncode == 2, by_id.stdout


def test_a_streamed_openai_chat_answer_verifies_from_its_own_receipt(
    network: LocalNetwork, openai_client: openai.OpenAI, tmp_path: Path
) -> None:
    with openai_client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, stream=True
    ) as response:
        data = b"".join(response.iter_bytes())
        headers = save_headers(tmp_path / "headers.txt", response.headers)
    assert b'"moonflower_receipt"' in data
    answer = tmp_path / "chat.sse"
    answer.write_bytes(data)
    # No API key: the receipt came with the stream, the statement feed is public.
    connect = ["--base-url", network.base_url, "--headers", str(headers)]
    assert_verified(moonflower_verify(network, answer, *connect))

    answer.write_bytes(flip_stream(data, chat_text))
    assert_output_hash_fails(moonflower_verify(network, answer, *connect))


def test_a_whole_anthropic_message_verifies_and_a_flipped_character_fails(
    network: LocalNetwork, api_key: str, anthropic_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    raw = anthropic_client.messages.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, extra_body=GREEDY
    )
    assert raw.parse().content
    body = raw.http_response.json()
    answer = tmp_path / "message.json"
    answer.write_bytes(raw.http_response.content)
    headers = save_headers(tmp_path / "headers.txt", raw.headers)
    connect = ["--headers", str(headers), "--base-url", network.base_url, "--api-key", api_key]
    result = moonflower_verify(network, answer, "--dialect", "anthropic", *connect)
    assert_verified(result)

    block = body["content"][0]
    block["text"] = flipped(block["text"])
    answer.write_text(json.dumps(body))
    assert_output_hash_fails(moonflower_verify(network, answer, *connect))


def test_a_streamed_anthropic_message_verifies_and_a_flipped_character_fails(
    network: LocalNetwork, anthropic_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    with anthropic_client.messages.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True, extra_body=GREEDY
    ) as response:
        data = b"".join(response.iter_bytes())
        headers = save_headers(tmp_path / "headers.txt", response.headers)
    assert b"event: moonflower_receipt" in data
    answer = tmp_path / "message.sse"
    answer.write_bytes(data)
    connect = ["--base-url", network.base_url, "--headers", str(headers)]
    assert_verified(moonflower_verify(network, answer, *connect))

    answer.write_bytes(flip_stream(data, anthropic_text))
    assert_output_hash_fails(moonflower_verify(network, answer, *connect))


def test_a_streamed_responses_answer_verifies(
    network: LocalNetwork, openai_client: openai.OpenAI, tmp_path: Path
) -> None:
    with openai_client.responses.with_streaming_response.create(
        model=MODEL, input="Name three colours.", max_output_tokens=16, stream=True
    ) as response:
        data = b"".join(response.iter_bytes())
        headers = save_headers(tmp_path / "headers.txt", response.headers)
    answer = tmp_path / "response.sse"
    answer.write_bytes(data)
    result = moonflower_verify(
        network, answer, "--base-url", network.base_url, "--headers", str(headers)
    )
    assert_verified(result)


def test_a_tampered_statement_file_is_refused(
    network: LocalNetwork, openai_client: openai.OpenAI, tmp_path: Path
) -> None:
    with openai_client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0, stream=True
    ) as response:
        data = b"".join(response.iter_bytes())
    answer = tmp_path / "chat.sse"
    answer.write_bytes(data)
    feed = httpx.get(f"{network.base_url}/v1/providers/attestation", timeout=10).json()
    entry = feed["data"][0]
    saved = tmp_path / "statement.json"
    saved.write_text(json.dumps(entry))
    kept = moonflower_verify(
        network, answer, "--statement", str(saved), "--base-url", "http://127.0.0.1:9"
    )
    assert_verified(kept)
    statement = entry["statement"]
    statement["json"] = statement["json"].replace('"os_version":"', '"os_version":"x')
    saved.write_text(json.dumps(entry))
    tampered = moonflower_verify(network, answer, "--statement", str(saved))
    assert tampered.returncode == 1
    assert f"✗ {checks.STATEMENT_SIGNATURE}: bad_signature" in tampered.stdout
