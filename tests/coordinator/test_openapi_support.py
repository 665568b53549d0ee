"""The OpenAPI validators in tests/support/openapi.py accept real bodies and reject broken ones."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.openapi import (
    anthropic_schema_names,
    assert_valid_anthropic,
    assert_valid_openai,
    openai_schema_names,
)

CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "smollm2-135m-instruct",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}

ANTHROPIC_MESSAGE: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "smollm2-135m-instruct",
    "content": [{"type": "text", "text": "Hello.", "citations": None}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "stop_details": None,
    "container": None,
    "usage": {
        "input_tokens": 5,
        "output_tokens": 2,
        "cache_creation": None,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": None,
        "inference_geo": None,
        "output_tokens_details": None,
        "server_tool_use": None,
        "service_tier": None,
    },
}


def test_a_minimal_chat_completion_is_valid() -> None:
    assert_valid_openai("CreateChatCompletionResponse", CHAT_COMPLETION)


def test_a_chat_completion_without_model_is_rejected_naming_the_field() -> None:
    body = copy.deepcopy(CHAT_COMPLETION)
    del body["model"]
    with pytest.raises(AssertionError, match="'model' is a required property"):
        assert_valid_openai("CreateChatCompletionResponse", body)


def test_a_wrong_nested_value_is_reported_with_its_json_path() -> None:
    body = copy.deepcopy(CHAT_COMPLETION)
    body["choices"][0]["finish_reason"] = "done"
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\]\.finish_reason"):
        assert_valid_openai("CreateChatCompletionResponse", body)


def test_openapi_nullable_fields_accept_null() -> None:
    # The chunk's logprobs is written as `type: object, nullable: true` in the document.
    choice: dict[str, Any] = {
        "index": 0,
        "delta": {"content": "Hi"},
        "logprobs": None,
        "finish_reason": None,
    }
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "m",
        "choices": [choice],
    }
    assert_valid_openai("CreateChatCompletionStreamResponse", chunk)
    choice["logprobs"] = "none"
    with pytest.raises(AssertionError, match="logprobs"):
        assert_valid_openai("CreateChatCompletionStreamResponse", chunk)


def test_a_legacy_completion_and_its_usage_chunk_are_valid() -> None:
    body = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": "m",
        "choices": [{"text": "Hi", "index": 0, "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    assert_valid_openai("CreateCompletionResponse", body)
    assert_valid_openai("CreateCompletionResponse", {**body, "choices": []})


def test_an_openai_error_body_needs_param_and_code() -> None:
    error: dict[str, Any] = {
        "type": "invalid_request_error",
        "message": "bad",
        "param": "prompt",
        "code": None,
    }
    assert_valid_openai("ErrorResponse", {"error": error})
    with pytest.raises(AssertionError, match="'param' is a required property"):
        assert_valid_openai(
            "ErrorResponse", {"error": {"type": "x", "message": "bad", "code": None}}
        )


def test_an_anthropic_message_is_valid() -> None:
    assert_valid_anthropic("Message", ANTHROPIC_MESSAGE)


def test_an_anthropic_message_without_stop_reason_is_rejected() -> None:
    body = copy.deepcopy(ANTHROPIC_MESSAGE)
    del body["stop_reason"]
    with pytest.raises(AssertionError, match="'stop_reason' is a required property"):
        assert_valid_anthropic("Message", body)


def test_anthropic_stream_events_are_valid() -> None:
    start = copy.deepcopy(ANTHROPIC_MESSAGE)
    start.update(content=[], stop_reason=None)
    events: list[tuple[str, dict[str, Any]]] = [
        ("MessageStartEvent", {"type": "message_start", "message": start}),
        (
            "ContentBlockStartEvent",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": "", "citations": None},
            },
        ),
        (
            "ContentBlockDeltaEvent",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hi"},
            },
        ),
        ("ContentBlockStopEvent", {"type": "content_block_stop", "index": 0}),
        (
            "MessageDeltaEvent",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "stop_details": None,
                    "container": None,
                },
                "usage": {
                    "output_tokens": 2,
                    "input_tokens": None,
                    "cache_creation_input_tokens": None,
                    "cache_read_input_tokens": None,
                    "output_tokens_details": None,
                    "server_tool_use": None,
                },
            },
        ),
        ("MessageStopEvent", {"type": "message_stop"}),
    ]
    for name, event in events:
        assert_valid_anthropic(name, event)
        assert_valid_anthropic("MessageStreamEvent", event)


def test_the_intended_union_branch_is_the_one_reported() -> None:
    event = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}
    with pytest.raises(AssertionError, match=r"\$\.delta: 'text' is a required property"):
        assert_valid_anthropic("MessageStreamEvent", event)


def test_an_anthropic_error_body_is_valid() -> None:
    body = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: required"},
        "request_id": None,
    }
    assert_valid_anthropic("ErrorResponse", body)


def test_an_unknown_schema_name_fails_with_suggestions() -> None:
    with pytest.raises(AssertionError, match="'Message'"):
        assert_valid_anthropic("Mesage", {})


def test_the_documented_schema_names_exist() -> None:
    openai = set(openai_schema_names())
    anthropic = set(anthropic_schema_names())
    assert {
        "CreateChatCompletionResponse",
        "CreateChatCompletionStreamResponse",
        "CreateCompletionResponse",
        "Response",
        "ResponseStreamEvent",
        "ResponseTextDeltaEvent",
        "ResponseCompletedEvent",
        "ErrorResponse",
        "ListModelsResponse",
    } <= openai
    assert {
        "Message",
        "MessageStreamEvent",
        "MessageStartEvent",
        "ContentBlockDeltaEvent",
        "MessageDeltaEvent",
        "MessageStopEvent",
        "ErrorResponse",
    } <= anthropic
