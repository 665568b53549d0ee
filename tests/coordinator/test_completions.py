"""`POST /v1/completions` shapes, parameters and errors, through the real coordinator and a
real provider agent with a scripted engine (these tests say nothing about inference), plus
the renderer fed hand-made events where the scripted engine cannot help (logprobs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from moonflower.coordinator import sse
from moonflower.coordinator.dialects import openai_completions
from moonflower.coordinator.dialects.dialect import whole
from moonflower.coordinator.dialects.openai_completions_render import CompletionRenderer
from moonflower.generation import (
    Failed,
    Finished,
    OutputEvent,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    Usage,
)
from moonflower.settings import DEFAULT_MAX_TOKENS
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import inprocess_network
from tests.support.openapi import assert_valid_openai

MODEL = "fake-model"


def sse_payloads(raw: bytes) -> list[str]:
    """The `data:` payloads, less the provider's receipt chunk (an empty chunk, checked to
    come at most once, just before the finish)."""
    payloads = [
        line[len("data: ") :] for line in raw.decode().split("\n") if line.startswith("data: ")
    ]
    receipts = [i for i, p in enumerate(payloads) if '"moonflower_receipt"' in p]
    assert len(receipts) <= 1
    return [p for p in payloads if '"moonflower_receipt"' not in p]


def assert_valid_chunk(chunk: dict[str, Any]) -> None:
    """The document gives chunks the whole body's schema, which allows neither the `null`
    finish_reason of a chunk before the last nor the `usage: null` that OpenAI documents
    (stream_options.include_usage) and sends; check everything else against it."""
    documented = dict(chunk)
    if documented.get("usage", "absent") is None:
        del documented["usage"]
    documented["choices"] = [
        {**choice, "finish_reason": choice["finish_reason"] or "stop"}
        for choice in chunk["choices"]
    ]
    assert_valid_openai("CreateCompletionResponse", documented)


async def test_a_whole_completion_has_openais_shape_and_the_raw_prompt_is_sent(
    tmp_path: Path,
) -> None:
    engine = ScriptedEngine(script="alpha beta gamma")
    async with (
        inprocess_network(tmp_path, [engine]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "Once"})
    assert response.status_code == 200
    body = response.json()
    assert_valid_openai("CreateCompletionResponse", body)
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["model"] == MODEL
    assert body["system_fingerprint"].startswith("fp_")
    assert body["choices"] == [
        {"text": "alpha beta gamma", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
    assert response.headers["x-moonflower-job-id"]
    (sent,) = engine.requests
    assert sent.prompt == "Once"
    assert sent.messages == ()
    # No max_tokens given: the coordinator's default, bounded by the model's context.
    assert sent.max_tokens == min(DEFAULT_MAX_TOKENS, engine.context_length)


async def test_every_honoured_parameter_reaches_the_engine(tmp_path: Path) -> None:
    engine = ScriptedEngine(script="alpha beta gamma")
    payload = {
        "model": MODEL,
        "prompt": ["Once upon"],
        "max_tokens": 2,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n", "END"],
        "seed": 7,
        "presence_penalty": 0.25,
        "frequency_penalty": -0.5,
        "user": "someone",
        "logprobs": 3,
        "n": 1,
        "best_of": 1,
        "echo": False,
        "some_future_field": {"x": 1},
    }
    async with (
        inprocess_network(tmp_path, [engine]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        body = (await client.post("/v1/completions", json=payload)).json()
    assert_valid_openai("CreateCompletionResponse", body)
    assert body["choices"][0]["text"] == "alpha beta"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2
    (sent,) = engine.requests
    assert sent.prompt == "Once upon"
    assert sent.max_tokens == 2
    assert sent.stop == ("\n", "END")
    assert sent.logprobs == 3
    sampling = sent.sampling
    assert (sampling.temperature, sampling.top_p, sampling.seed) == (0.5, 0.9, 7)
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.25, -0.5)
    # The scripted engine gives no logprobs; the object is there, and its lists agree.
    logprobs = body["choices"][0]["logprobs"]
    assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len({len(values) for values in logprobs.values()}) == 1


async def test_a_stream_is_text_completion_chunks_then_usage_then_one_done(
    tmp_path: Path,
) -> None:
    engine = ScriptedEngine(script="alpha beta gamma")
    async with (
        inprocess_network(tmp_path, [engine]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        whole = (await client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})).json()
        response = await client.post(
            "/v1/completions",
            json={
                "model": MODEL,
                "prompt": "x",
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(response.content)
    assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        assert_valid_chunk(chunk)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert chunks[0]["id"].startswith("cmpl-")
    assert all(c["object"] == "text_completion" for c in chunks)
    *texts, usage_chunk = chunks
    assert "".join(c["choices"][0]["text"] for c in texts) == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in texts] == [None] * (len(texts) - 1) + ["stop"]
    assert all(c["usage"] is None for c in texts)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == whole["usage"]


async def test_a_stream_without_include_usage_has_no_usage_field(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, [ScriptedEngine(script="a b")]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        response = await client.post(
            "/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True}
        )
    chunks = [orjson.loads(p) for p in sse_payloads(response.content)[:-1]]
    assert chunks and all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_reasoning_is_not_part_of_the_text(tmp_path: Path) -> None:
    engine = ScriptedEngine(script="<think> hmm </think> Answer")
    async with (
        inprocess_network(tmp_path, [engine]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        whole = (await client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})).json()
        streamed = await client.post(
            "/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True}
        )
    assert whole["choices"][0]["text"] == "Answer"
    chunks = [orjson.loads(p) for p in sse_payloads(streamed.content)[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Answer"


async def test_echo_prefixes_the_prompt(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, [ScriptedEngine(script="a b")]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        payload = {"model": MODEL, "prompt": "Say: ", "echo": True}
        whole = (await client.post("/v1/completions", json=payload)).json()
        streamed = await client.post("/v1/completions", json={**payload, "stream": True})
    assert whole["choices"][0]["text"] == "Say: a b"
    chunks = [orjson.loads(p) for p in sse_payloads(streamed.content)[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Say: a b"


BAD_BODIES: list[tuple[Any, str | None]] = [
    ({"model": MODEL}, "prompt"),
    ({"model": MODEL, "prompt": [1, 2, 3]}, "prompt"),
    ({"model": MODEL, "prompt": [[1, 2]]}, "prompt"),
    ({"model": MODEL, "prompt": ["one", "two"]}, "prompt"),
    ({"model": MODEL, "prompt": []}, "prompt"),
    ({"model": MODEL, "prompt": 5}, "prompt"),
    ({"prompt": "x"}, "model"),
    ({"model": MODEL, "prompt": "x", "n": 2}, "n"),
    ({"model": MODEL, "prompt": "x", "best_of": 3}, "best_of"),
    ({"model": MODEL, "prompt": "x", "suffix": "end"}, "suffix"),
    ({"model": MODEL, "prompt": "x", "echo": True, "logprobs": 1}, "echo"),
    ({"model": MODEL, "prompt": "x", "logprobs": 6}, "logprobs"),
    ({"model": MODEL, "prompt": "x", "logprobs": True}, "logprobs"),
    ({"model": MODEL, "prompt": "x", "temperature": 2.5}, "temperature"),
    ({"model": MODEL, "prompt": "x", "top_p": 1.5}, "top_p"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "max_tokens": "ten"}, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": MODEL, "prompt": "x", "presence_penalty": 3}, "presence_penalty"),
    ({"model": MODEL, "prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    (["not", "an", "object"], None),
]


async def test_bad_input_is_a_400_in_openais_shape_naming_the_field(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    async with (
        inprocess_network(tmp_path, [engine]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        for payload, param in BAD_BODIES:
            response = await client.post("/v1/completions", json=payload)
            assert response.status_code == 400, (payload, response.text)
            body = response.json()
            assert_valid_openai("ErrorResponse", body)
            assert body["error"]["type"] == "invalid_request_error"
            assert body["error"]["param"] == param, (payload, body)
        unknown = await client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
        unauthenticated = await client.post(
            "/v1/completions", json={"model": MODEL, "prompt": "x"}, headers={"Authorization": ""}
        )
    assert engine.requests == []
    assert unknown.status_code == 404
    assert unknown.json()["error"]["param"] == "model"
    assert unauthenticated.status_code == 401
    assert_valid_openai("ErrorResponse", unauthenticated.json())


# The renderer, fed hand-made events: the scripted engine produces no logprobs.

TOKENS = [
    TokenLogprob("Hel", -0.5, (("Hel", -0.5), ("He", -1.5))),
    TokenLogprob("lo", -0.25, (("lo", -0.25), ("p", -2.0))),
    TokenLogprob("!", -1.0, (("!", -1.0), (".", -1.25))),
]
FINISHED = Finished(reason="length", usage=Usage(prompt_tokens=4, completion_tokens=3))


def renderer(**fields: Any) -> CompletionRenderer:
    call = openai_completions.parse({"model": MODEL, "prompt": "Say: ", **fields})
    return CompletionRenderer(call, fingerprint="fp_test", include_usage=True)


async def events(*items: OutputEvent) -> AsyncIterator[OutputEvent]:
    for item in items:
        yield item


async def rendered_stream(r: CompletionRenderer, *items: OutputEvent) -> list[dict[str, Any]]:
    frames = b"".join([frame async for frame in sse.framed(r.stream(events(*items)), sse.DONE)])
    payloads = sse_payloads(frames)
    assert payloads[-1] == "[DONE]"
    return [orjson.loads(p) for p in payloads[:-1]]


async def test_whole_logprobs_are_openais_legacy_object_offset_from_the_prompt_start() -> None:
    body = await whole(
        renderer(logprobs=1),
        events(TextDelta("Hello", tuple(TOKENS[:2])), TextDelta("!", tuple(TOKENS[2:])), FINISHED),
    )
    assert_valid_openai("CreateCompletionResponse", body)
    assert body["choices"][0]["logprobs"] == {
        "tokens": ["Hel", "lo", "!"],
        "token_logprobs": [-0.5, -0.25, -1.0],
        "top_logprobs": [
            {"Hel": -0.5, "He": -1.5},
            {"lo": -0.25, "p": -2.0},
            {"!": -1.0, ".": -1.25},
        ],
        "text_offset": [5, 8, 10],
    }
    assert body["choices"][0]["finish_reason"] == "length"


async def test_streamed_logprobs_continue_their_offsets_across_chunks() -> None:
    chunks = await rendered_stream(
        renderer(logprobs=1, stream=True),
        TextDelta("Hello", tuple(TOKENS[:2])),
        ReasoningDelta("hidden"),
        TextDelta("!", tuple(TOKENS[2:])),
        FINISHED,
    )
    for chunk in chunks:
        assert_valid_chunk(chunk)
    texts = [c for c in chunks if c["choices"]]
    assert [c["choices"][0]["text"] for c in texts] == ["Hello", "!", ""]
    assert [c["choices"][0]["logprobs"]["text_offset"] for c in texts] == [[5, 8], [10], []]
    assert [c["choices"][0]["logprobs"]["tokens"] for c in texts] == [["Hel", "lo"], ["!"], []]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 7


async def test_a_failure_mid_stream_is_an_openai_error_event_then_done() -> None:
    chunks = await rendered_stream(
        renderer(stream=True),
        TextDelta("Hel"),
        Failed(code="engine_error", message="The engine broke."),
    )
    assert chunks[0]["choices"][0]["text"] == "Hel"
    assert_valid_openai("ErrorResponse", chunks[-1])
    assert chunks[-1]["error"]["message"] == "The engine broke."


@pytest.mark.parametrize("prompt", ["", None])
def test_an_empty_or_null_prompt_is_the_empty_prompt(prompt: str | None) -> None:
    call = openai_completions.parse({"model": MODEL, "prompt": prompt})
    assert call.request.prompt == "" and call.prompt == ""
