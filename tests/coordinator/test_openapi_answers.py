"""`/openapi.json` publishes each inference route's whole answer, and the published schema
accepts exactly what the routes return: whole answers folded from each dialect's stream by
its own renderer (as the route builds it), over scripts that reach every shape of answer,
and whole answers from the real routes. The schemas are closed, so a field added, dropped
or retyped in a dialect's fold fails here until the published description follows it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from moonflower.coordinator.app import create_app
from moonflower.coordinator.dialects import dialect as dialects
from moonflower.coordinator.dialects import inference_apis
from moonflower.generation import (
    Finished,
    GenerationRequest,
    OutputEvent,
    ReasoningDelta,
    Receipted,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from moonflower.settings import CoordinatorSettings
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import inprocess_network
from tests.support.openapi import component_validator

MODEL = "fake-model"
USER = {"role": "user", "content": "Say hello."}
RECEIPT = Receipted(job_id="j", provider_id="p", receipt="r", signature="s", response_hash="h")
TOKEN = TokenLogprob("Hi", -0.5, (("Hi", -0.5), ("Hey", -1.5)))
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}}

SCRIPTS: dict[str, list[OutputEvent]] = {
    "text": [TextDelta("Hel"), TextDelta("lo."), RECEIPT, Finished("stop", Usage(4, 2))],
    "logprobs": [
        TextDelta("Hi", (TOKEN,)),
        TextDelta("Hi", (TOKEN,)),
        Finished("stop", Usage(4, 2)),
    ],
    "reasoning": [ReasoningDelta("think"), TextDelta("Five."), Finished("stop", Usage(4, 2))],
    "tool calls": [
        TextDelta("Looking."),
        ToolCallDelta(0, '{"city":', id="call_a", name="get_weather"),
        ToolCallDelta(0, ' "Paris"}'),
        ToolCallDelta(1, '{"city": "Oslo"}', id="call_b", name="get_weather"),
        RECEIPT,
        Finished("tool_calls", Usage(4, 9)),
    ],
    "cut short": [ReasoningDelta("hmm"), TextDelta("One, two"), Finished("length", Usage(4, 3))],
    "stop sequence": [TextDelta("Done"), Finished("stop", Usage(4, 1), stop_sequence="END")],
    "nothing": [Finished("stop", Usage(4, 0))],
}

BODIES: dict[str, list[dict[str, Any]]] = {
    "/v1/chat/completions": [
        {"messages": [USER]},
        {"messages": [USER], "logprobs": True, "top_logprobs": 1},
    ],
    "/v1/completions": [
        {"prompt": "Once"},
        {"prompt": "Once", "logprobs": 1},
        {"prompt": "Once", "echo": True},
    ],
    "/v1/responses": [
        {"input": "Hi"},
        {
            "input": "Hi",
            "instructions": "Be brief.",
            "include": ["message.output_text.logprobs"],
            "top_logprobs": 1,
            "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "metadata": {"k": "v"},
            "reasoning": {"effort": "low"},
        },
        {
            "input": "Hi",
            "text": {
                "format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}},
                "verbosity": "low",
            },
        },
    ],
    "/v1/messages": [
        {"max_tokens": 16, "messages": [USER]},
        {
            "max_tokens": 2048,
            "messages": [USER],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
    ],
}
DIALECTS = {dialect.path: dialect for dialect in inference_apis.ALL}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    schema: dict[str, Any] = create_app(CoordinatorSettings()).openapi()
    return schema


@pytest.fixture(scope="module")
def published(document: dict[str, Any]) -> Callable[[str], Draft202012Validator]:
    return component_validator(document, "urn:moonflower-tests:coordinator-answers")


def answer_schema(document: dict[str, Any], path: str) -> str:
    content = document["paths"][path]["post"]["responses"]["200"]["content"]
    assert "text/event-stream" in content
    ref: str = content["application/json"]["schema"]["$ref"]
    return ref.removeprefix("#/components/schemas/")


def job_for(request: GenerationRequest) -> Any:
    """What a renderer reads from a job: its model card, prompt size and the request as it
    runs (sampling defaults filled in)."""
    ran = SamplingParams(temperature=0.7, top_p=1.0)
    return SimpleNamespace(
        card=SimpleNamespace(sha256="ab" * 32),
        prompt_tokens=4,
        request=SimpleNamespace(max_tokens=request.max_tokens or 16, sampling=ran),
    )


async def replay(events: Sequence[OutputEvent]) -> AsyncIterator[OutputEvent]:
    for event in events:
        yield event


async def folded(path: str, body: dict[str, Any], script: Sequence[OutputEvent]) -> Any:
    """The whole answer the route gives for `body` when its job produces `script`."""
    dialect = DIALECTS[path]
    call = dialect.parse({"model": MODEL, **body}, CoordinatorSettings())
    renderer = dialect.renderer(call, job_for(call.request), True)
    return await dialects.whole(renderer, replay(script))


def problems(validator: Draft202012Validator, instance: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]


def test_each_inference_route_publishes_its_dialects_answer(document: dict[str, Any]) -> None:
    assert set(DIALECTS) == set(BODIES)
    for path, dialect in DIALECTS.items():
        assert dialect.answer is not None
        assert answer_schema(document, path) == dialect.answer.__name__
    counted = document["paths"]["/v1/messages/count_tokens"]["post"]["responses"]["200"]
    assert counted["content"] == {
        "application/json": {"schema": {"$ref": "#/components/schemas/MessageTokensCount"}}
    }


@pytest.mark.parametrize("path", sorted(BODIES))
async def test_every_folded_answer_conforms_to_the_published_schema(
    document: dict[str, Any], published: Callable[[str], Draft202012Validator], path: str
) -> None:
    validator = published(answer_schema(document, path))
    for body in BODIES[path]:
        for name, script in SCRIPTS.items():
            answer = await folded(path, body, script)
            assert problems(validator, answer) == [], (path, body, name)


@pytest.mark.parametrize("path", sorted(BODIES))
async def test_the_published_schema_refuses_an_answer_that_drifted(
    document: dict[str, Any], published: Callable[[str], Draft202012Validator], path: str
) -> None:
    validator = published(answer_schema(document, path))
    answer = await folded(path, BODIES[path][0], SCRIPTS["text"])
    assert validator.is_valid(answer)
    assert not validator.is_valid({**answer, "surprise": 1})
    assert not validator.is_valid({key: value for key, value in answer.items() if key != "id"})
    assert not validator.is_valid({**answer, "model": None})


async def test_the_routes_whole_answers_conform_to_the_published_schema(
    tmp_path: Path, document: dict[str, Any], published: Callable[[str], Draft202012Validator]
) -> None:
    engine = ScriptedEngine(model_id=MODEL, script="alpha beta gamma")
    async with (
        inprocess_network(tmp_path, [engine]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        for path, bodies in BODIES.items():
            validator = published(answer_schema(document, path))
            for body in bodies:
                response = await client.post(path, json={"model": MODEL, **body})
                assert response.status_code == 200, response.text
                assert problems(validator, response.json()) == [], (path, body)
        counted = await client.post(
            "/v1/messages/count_tokens", json={"model": MODEL, "messages": [USER]}
        )
        assert counted.status_code == 200
        assert problems(published("MessageTokensCount"), counted.json()) == []
