"""Think tags split across provider frames come out of `/v1/chat/completions` as
`reasoning_content`, never as content, streaming and not — through the real coordinator and
a real provider agent with a scripted engine (this says nothing about inference)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import inprocess_network
from tests.support.openapi import assert_valid_openai

PIECES = [
    "<th",
    "ink>",
    "The user",
    " says hi.",
    "</thi",
    "nk>",
    "\n\n",
    "Hello",
    " <",
    "b>",
    "there",
]
# Longer than the provider's default stream batching interval (20 ms), so each piece
# reaches the coordinator in its own frame and the tags really arrive split.
PIECE_DELAY_S = 0.03


def engine(**options: Any) -> ScriptedEngine:
    return ScriptedEngine(token_delay_s=PIECE_DELAY_S, **options)


def chat(**extra: object) -> dict[str, object]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], **extra}


async def stream_deltas(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    deltas = []
    async with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            assert_valid_openai("CreateChatCompletionStreamResponse", chunk)
            deltas += [choice["delta"] for choice in chunk["choices"]]
    return deltas


def no_tags(text: str) -> bool:
    return "think>" not in text and "<think" not in text and "</think" not in text


async def test_a_whole_answer_keeps_reasoning_out_of_the_content(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, [engine(pieces=PIECES)]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        response = await client.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    body = response.json()
    assert_valid_openai("CreateChatCompletionResponse", body)
    message = body["choices"][0]["message"]
    assert message["content"] == "Hello <b>there"
    assert message["reasoning_content"] == "The user says hi."


async def test_a_stream_sends_reasoning_and_content_as_they_are_generated(
    tmp_path: Path,
) -> None:
    async with (
        inprocess_network(tmp_path, [engine(pieces=PIECES)]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        deltas = await stream_deltas(client)
    pieces = [
        (kind, delta[kind])
        for delta in deltas
        for kind in ("reasoning_content", "content")
        if delta.get(kind)
    ]
    assert all(no_tags(text) for _kind, text in pieces)
    # Each piece is released as soon as it cannot be part of a tag: nothing waits for the end.
    assert pieces == [
        ("reasoning_content", "The user"),
        ("reasoning_content", " says hi."),
        ("content", "Hello"),
        ("content", " "),
        ("content", "<b>"),
        ("content", "there"),
    ]


async def test_output_that_starts_inside_a_block_is_split_too(tmp_path: Path) -> None:
    pieces = ["Greeting", " noted", "</", "think>", "\n", "Hi!"]
    scripted = engine(pieces=pieces, starts_in_reasoning=True)
    async with (
        inprocess_network(tmp_path, [scripted]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        message = (await client.post("/v1/chat/completions", json=chat())).json()["choices"][0][
            "message"
        ]
        deltas = await stream_deltas(client)
    assert (message["content"], message["reasoning_content"]) == ("Hi!", "Greeting noted")
    assert "".join(d.get("content") or "" for d in deltas) == "Hi!"
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "Greeting noted"
    assert all(no_tags(json.dumps(d)) for d in deltas)
