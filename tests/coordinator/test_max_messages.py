"""The cap on messages per request: refused as a 400 naming the field, in each dialect's own
words, before the conversation is validated; a conversation at the cap is accepted; the
coordinator's `max_messages` setting is the cap its routes apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from moonflower import errors
from moonflower.coordinator.dialects import (
    anthropic_errors,
    anthropic_messages,
    openai_chat,
    openai_errors,
    openai_responses,
)
from moonflower.coordinator.dialects.request_body import MAX_MESSAGES, validate_body
from moonflower.settings import CoordinatorSettings
from tests.support import inprocess
from tests.support.fake_engine import ScriptedEngine
from tests.support.openapi import assert_valid_anthropic, assert_valid_openai


def turns(count: int) -> list[dict[str, Any]]:
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": f"turn {i}"} for i in range(count)]


def test_the_default_cap_is_the_setting_default() -> None:
    assert MAX_MESSAGES == CoordinatorSettings().max_messages == 2048


def test_a_chat_at_the_cap_is_accepted() -> None:
    call = openai_chat.parse({"model": "m", "messages": turns(MAX_MESSAGES)})
    assert len(call.request.messages) == MAX_MESSAGES


def test_a_chat_over_the_cap_is_a_400_naming_messages() -> None:
    with pytest.raises(errors.InvalidRequest) as refused:
        openai_chat.parse({"model": "m", "messages": turns(MAX_MESSAGES + 1)})
    status, body = openai_errors.status_and_body(refused.value)
    assert status == 400
    assert_valid_openai("ErrorResponse", body)
    assert body["error"] == {
        "message": "Invalid 'messages': array too long. Expected an array with maximum "
        "length 2048, but got an array with length 2049 instead.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "array_above_max_length",
    }


def test_the_cap_is_checked_before_the_messages_are_validated() -> None:
    too_many_and_broken = [{"role": "nobody"}] * (MAX_MESSAGES + 5)
    with pytest.raises(errors.InvalidRequest) as refused:
        openai_chat.parse({"model": "m", "messages": too_many_and_broken})
    assert refused.value.param == "messages"
    assert refused.value.code == "array_above_max_length"


def test_an_anthropic_request_over_the_cap_is_a_400_in_its_words() -> None:
    payload = {"model": "m", "max_tokens": 8, "messages": turns(MAX_MESSAGES + 1)}
    for parse in (anthropic_messages.parse, anthropic_messages.parse_count):
        with pytest.raises(errors.InvalidRequest) as refused:
            parse(payload)
        assert refused.value.param == "messages"
        status, body = anthropic_errors.status_and_body(refused.value)
        assert status == 400
        assert_valid_anthropic("ErrorResponse", body)
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"].startswith("messages: ")
        assert "2048" in body["error"]["message"]


def test_responses_input_items_over_the_cap_are_a_400_naming_input() -> None:
    items = [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1)
    with pytest.raises(errors.InvalidRequest) as refused:
        openai_responses.parse({"model": "m", "input": items})
    assert refused.value.param == "input"
    assert openai_responses.parse({"model": "m", "input": "one long string"}).request.messages


class _Body(BaseModel):
    messages: list[int]


def test_a_dialect_may_pass_its_own_cap() -> None:
    def check(count: int) -> _Body:
        return validate_body(
            _Body,
            {"messages": list(range(count))},
            to_error=openai_errors.from_validation_error,
            endpoint="test",
            max_messages=3,
        )

    assert check(3).messages == [0, 1, 2]
    with pytest.raises(errors.InvalidRequest, match="maximum length 3, but got an array with"):
        check(4)


async def test_the_max_messages_setting_caps_every_conversation_route(tmp_path: Path) -> None:
    """`MOONFLOWER_MAX_MESSAGES` reaches the dialects: with 3, four messages are refused by
    every conversation route of the real app, three are served."""
    engine = ScriptedEngine(script="ok")
    async with (
        inprocess.inprocess_network(tmp_path, [engine], max_messages=3) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        four, three = turns(5)[1:], turns(3)
        refused = {
            "/v1/chat/completions": await client.post(
                "/v1/chat/completions", json={"model": "fake-model", "messages": four}
            ),
            "/v1/messages": await client.post(
                "/v1/messages", json={"model": "fake-model", "max_tokens": 4, "messages": four}
            ),
            "/v1/messages/count_tokens": await client.post(
                "/v1/messages/count_tokens", json={"model": "fake-model", "messages": four}
            ),
            "/v1/responses": await client.post(
                "/v1/responses", json={"model": "fake-model", "input": four}
            ),
        }
        served = await client.post(
            "/v1/chat/completions", json={"model": "fake-model", "messages": three}
        )
    for path, response in refused.items():
        assert response.status_code == 400, path
        assert "3" in response.json()["error"]["message"], path
    assert refused["/v1/chat/completions"].json()["error"]["param"] == "messages"
    assert refused["/v1/responses"].json()["error"]["param"] == "input"
    assert served.status_code == 200
    assert len(engine.requests) == 1
