"""OpenAI chat completions through real processes and the real model, called with the
official `openai` SDK and with raw HTTP where the exact bytes matter."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.support.network import LocalNetwork

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]


@pytest.fixture(scope="module")
def client(network: LocalNetwork, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=api_key, max_retries=0)


def sse_events(raw: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    return [line[len("data: ") :] for line in raw.decode().split("\n") if line.startswith("data: ")]


def test_non_streaming_matches_llama_cpp_directly(
    client: openai.OpenAI, reference_llama: Any
) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=48
    )
    reference = reference_llama.create_chat_completion(
        messages=MESSAGES, temperature=0, max_tokens=48
    )
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert completion.system_fingerprint and completion.system_fingerprint.startswith("fp_")
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == reference["choices"][0]["message"]["content"]
    assert choice.finish_reason == reference["choices"][0]["finish_reason"]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == reference["usage"]["prompt_tokens"]
    assert completion.usage.completion_tokens == reference["usage"]["completion_tokens"]
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_streaming_with_the_sdk_gives_the_same_text_and_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=40
    )
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        temperature=0,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == chunks[0].id and c.id.startswith("chatcmpl-") for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None and whole.usage is not None
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_ends_with_exactly_one_done(network: LocalNetwork, api_key: str) -> None:
    response = httpx.post(
        f"{network.base_url}/v1/chat/completions",
        headers={"x-api-key": api_key},
        json={"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 12},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.content)
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    assert response.content.endswith(b"data: [DONE]\n\n")
    # Without include_usage no chunk carries a usage field.
    assert all("usage" not in orjson.loads(e) for e in events[:-1])
    # The provider's signed receipt rides on an empty delta just before the finish chunk.
    chunks = [orjson.loads(e) for e in events[:-1]]
    receipt_at = [i for i, c in enumerate(chunks) if "moonflower_receipt" in c]
    assert receipt_at == [len(chunks) - 2]
    assert chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] is not None
    assert set(chunks[-2]["moonflower_receipt"]) == {
        "job_id",
        "provider_id",
        "receipt",
        "signature",
        "response_hash",
        "cost_usd",
    }


def test_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    for limit_field in ("max_tokens", "max_completion_tokens"):
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Write a long story about a lighthouse."}],
            temperature=0,
            **{limit_field: 5},  # type: ignore[arg-type]
        )
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage is not None and completion.usage.completion_tokens == 5


def test_stop_sequence_cuts_the_answer(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "Write a short poem about the sea."}]
    free = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=60
    )
    text = free.choices[0].message.content or ""
    assert len(text) > 12, text
    stop = text[len(text) // 2 : len(text) // 2 + 4]
    assert text.index(stop) > 0
    cut = text[: text.index(stop)]
    for stream in (False, True):
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model=MODEL,
                    messages=messages,
                    temperature=0,
                    max_tokens=60,
                    stop=[stop, "never-appears"],
                    stream=True,
                )
            )
            got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = chunks[-1].choices[0].finish_reason
        else:
            stopped = client.chat.completions.create(
                model=MODEL, messages=messages, temperature=0, max_tokens=60, stop=stop
            )
            got = stopped.choices[0].message.content or ""
            finish = stopped.choices[0].finish_reason
        assert got == cut
        assert finish == "stop"


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    def sample() -> str:
        completion = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, temperature=1.2, top_p=0.9, seed=7, max_tokens=24
        )
        return completion.choices[0].message.content or ""

    assert sample() == sample()


def test_content_as_text_parts_and_developer_role(client: openai.OpenAI) -> None:
    as_parts = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": [{"type": "text", "text": MESSAGES[0]["content"]}]},
            {"role": "user", "content": [{"type": "text", "text": MESSAGES[1]["content"]}]},
        ],
        temperature=0,
        max_tokens=20,
    )
    as_strings = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=20
    )
    assert as_parts.choices[0].message.content == as_strings.choices[0].message.content
    assert as_parts.usage == as_strings.usage


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model"
    assert client.models.retrieve(MODEL).id == MODEL


def test_sdk_stream_helper_gives_the_final_completion(client: openai.OpenAI) -> None:
    # The SDK's helper refuses a length-cut answer, so ask for one that ends by itself.
    short: list[Any] = [{"role": "user", "content": "Say hello."}]
    whole = client.chat.completions.create(
        model=MODEL, messages=short, temperature=0, max_tokens=200
    )
    assert whole.choices[0].finish_reason == "stop"
    with client.chat.completions.stream(
        model=MODEL, messages=short, temperature=0, max_tokens=200
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == whole.choices[0].message.content
    assert final.choices[0].message.content == whole.choices[0].message.content
    assert final.choices[0].finish_reason == whole.choices[0].finish_reason


def test_sdk_raises_its_typed_errors(network: LocalNetwork, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=3)
    assert bad.value.param == "temperature"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    stranger = openai.OpenAI(
        base_url=f"{network.base_url}/v1", api_key="mf-not-a-key", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model=MODEL, messages=MESSAGES)
