"""`/openapi.json` publishes each inference route's request body, and the published schema
accepts and refuses what the coordinator's dialects accept and refuse."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from pydantic import BaseModel, ValidationError

from moonflower.coordinator.app import create_app
from moonflower.coordinator.dialects.anthropic_messages import CountTokensBody, MessagesBody
from moonflower.coordinator.dialects.openai_chat import ChatCompletionBody
from moonflower.coordinator.dialects.openai_completions import CompletionBody
from moonflower.coordinator.dialects.openai_responses_body import ResponsesBody
from moonflower.settings import CoordinatorSettings
from tests.support.openapi import component_validator

BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionBody,
    "/v1/completions": CompletionBody,
    "/v1/responses": ResponsesBody,
    "/v1/messages": MessagesBody,
    "/v1/messages/count_tokens": CountTokensBody,
}

USER = {"role": "user", "content": "Say hello."}
SAMPLES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (ChatCompletionBody, {"model": "m", "messages": [USER]}),
    (ChatCompletionBody, {"model": "m", "messages": [USER], "stream": True, "max_tokens": 8}),
    (ChatCompletionBody, {"model": "m", "messages": [USER], "temperature": 1, "extra": [1]}),
    (ChatCompletionBody, {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}),
    (ChatCompletionBody, {"model": "m", "messages": [USER], "tools": [{"type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    (ChatCompletionBody, {"model": "m", "messages": [USER], "response_format": {
        "type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}}}}),
    (ChatCompletionBody, {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text"}]}]}),
    (ChatCompletionBody, {"model": "m", "messages": [{"role": "user", "content": [
        {"text": "no type"}]}]}),
    (ChatCompletionBody, {"model": "m"}),
    (ChatCompletionBody, {"model": "m", "messages": []}),
    (ChatCompletionBody, {"model": "m", "messages": [USER], "temperature": 3}),
    (ChatCompletionBody, {"model": "m", "messages": [USER], "max_tokens": "8"}),
    (ChatCompletionBody, {"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
    (ChatCompletionBody, {"model": "", "messages": [USER]}),
    (CompletionBody, {"model": "m", "prompt": "Once upon a time"}),
    (CompletionBody, {"model": "m", "prompt": "x", "stop": ["\n"], "echo": True}),
    (CompletionBody, {"model": "m", "prompt": 7}),
    (CompletionBody, {"prompt": "x"}),
    (ResponsesBody, {"model": "m", "input": "Say hello."}),
    (ResponsesBody, {"model": "m", "input": [USER], "instructions": "Be brief.", "store": False}),
    (ResponsesBody, {"model": "m", "input": "x", "max_output_tokens": 0}),
    (ResponsesBody, {"model": "m", "input": "x", "top_p": 2}),
    (MessagesBody, {"model": "m", "max_tokens": 16, "messages": [USER]}),
    (MessagesBody, {"model": "m", "max_tokens": 16, "system": "Be brief.", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}], "stream": True}),
    (MessagesBody, {"model": "m", "max_tokens": 16, "messages": [USER],
        "thinking": {"type": "enabled", "budget_tokens": 1024}}),
    (MessagesBody, {"model": "m", "max_tokens": 16, "messages": [USER, {"role": "assistant",
        "content": [{"type": "thinking", "thinking": "...", "signature": "s"},
                    {"type": "redacted_thinking", "data": "d"}, {"type": "text", "text": "hi"}]},
        USER]}),
    (MessagesBody, {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text"}]}]}]}),
    (MessagesBody, {"model": "m", "max_tokens": 16, "messages": [USER],
        "tool_choice": {"type": "sometimes"}}),
    (MessagesBody, {"model": "m", "messages": [USER]}),
    (MessagesBody, {"model": "m", "max_tokens": 16, "messages": [
        {"role": "system", "content": "x"}]}),
    (MessagesBody, {"model": "m", "max_tokens": 16, "messages": [USER], "top_k": -1}),
    (CountTokensBody, {"model": "m", "messages": [USER]}),
    (CountTokensBody, {"model": "m", "messages": "hi"}),
]  # fmt: skip


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    schema: dict[str, Any] = create_app(CoordinatorSettings()).openapi()
    return schema


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


@pytest.fixture(scope="module")
def published(document: dict[str, Any]) -> Callable[[str], Draft202012Validator]:
    return component_validator(document, "urn:moonflower-tests:coordinator")


@pytest.mark.parametrize("path", sorted(BODIES))
def test_each_inference_route_publishes_its_json_body(document: dict[str, Any], path: str) -> None:
    operation = document["paths"][path]["post"]
    body = operation["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {
        "$ref": f"#/components/schemas/{BODIES[path].__name__}"
    }
    assert "application/json" in operation["responses"]["200"]["content"]
    streams = "text/event-stream" in operation["responses"]["200"]["content"]
    assert streams is (path != "/v1/messages/count_tokens")


def test_every_reference_in_the_document_resolves(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    found = list(refs(document))
    assert found
    unresolved = [ref for ref in found if ref.removeprefix("#/components/schemas/") not in schemas]
    assert unresolved == []
    assert not any(key.startswith("x-moonflower") for path in document["paths"].values()
                   for operation in path.values() for key in operation)  # fmt: skip


@pytest.mark.parametrize(("model", "body"), SAMPLES)
def test_the_published_schema_accepts_what_the_dialect_accepts(
    published: Callable[[str], Draft202012Validator], model: type[BaseModel], body: dict[str, Any]
) -> None:
    try:
        model.model_validate(body)
        accepted = True
    except ValidationError:
        accepted = False
    is_published = published(model.__name__).is_valid(body)
    assert is_published is accepted, (model.__name__, body)


def test_the_samples_include_both_verdicts_for_every_body() -> None:
    verdicts: dict[str, set[bool]] = {}
    for model, body in SAMPLES:
        try:
            model.model_validate(body)
            verdicts.setdefault(model.__name__, set()).add(True)
        except ValidationError:
            verdicts.setdefault(model.__name__, set()).add(False)
    assert verdicts == {model.__name__: {True, False} for model in BODIES.values()}
