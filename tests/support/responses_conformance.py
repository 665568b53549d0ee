"""Check a Responses API object or stream event against both documents that describe it:
OpenAI's official OpenAPI document (``tests/support/openapi.py``) and the Open Responses
specification (``tests/support/open_responses.py``).

Owns the map from each event type to its schema in each document and the two places where
the documents cannot both be met to the letter, each set aside in the narrowest way:

- Nulls. Open Responses requires every field of a response object, with ``null`` for
  ``usage`` (until the answer is finished), ``safety_identifier`` and ``prompt_cache_key``
  when there is none; OpenAI's API sends the same nulls (and ``user: null``; its document's
  own ``response.created`` example shows ``"usage": null`` and ``"user": null``), but its
  document types those four fields as non-null strings or objects. For OpenAI's check,
  those four fields are dropped when they are null; every other field, and those four when
  set, is checked as sent.
- Reasoning text events. OpenAI names them ``response.reasoning_text.delta`` / ``.done``;
  Open Responses names the same payload ``response.reasoning.delta`` / ``.done``. The
  OpenAI names are sent (the OpenAI SDKs type them); for Open Responses' check, the payload
  is checked against its schema for its own name.
- A `json_schema` text format. Open Responses' ``JsonSchemaResponseFormat`` admits only
  ``schema: null`` (an artefact of its generator: its own Python model types the field
  ``None``) and requires ``description``; OpenAI's requires the schema object and types
  ``description`` as a string. The echo follows OpenAI (the caller's schema, a description
  only when given); for Open Responses' check, ``schema`` is read as null and a missing
  ``description`` as null.

It must not relax anything else, and knows nothing of how the events are produced.
"""

from __future__ import annotations

from typing import Any

from tests.support.open_responses import assert_valid_open_responses
from tests.support.openapi import assert_valid_openai

OPENAI_NULLS_SET_ASIDE = frozenset({"usage", "user", "safety_identifier", "prompt_cache_key"})
"""Response fields OpenAI's API sends as null but its document types as non-null."""

EVENT_SCHEMAS: dict[str, tuple[str, str]] = {
    "response.created": ("ResponseCreatedEvent", "ResponseCreatedStreamingEvent"),
    "response.in_progress": ("ResponseInProgressEvent", "ResponseInProgressStreamingEvent"),
    "response.output_item.added": (
        "ResponseOutputItemAddedEvent",
        "ResponseOutputItemAddedStreamingEvent",
    ),
    "response.output_item.done": (
        "ResponseOutputItemDoneEvent",
        "ResponseOutputItemDoneStreamingEvent",
    ),
    "response.content_part.added": (
        "ResponseContentPartAddedEvent",
        "ResponseContentPartAddedStreamingEvent",
    ),
    "response.content_part.done": (
        "ResponseContentPartDoneEvent",
        "ResponseContentPartDoneStreamingEvent",
    ),
    "response.output_text.delta": (
        "ResponseTextDeltaEvent",
        "ResponseOutputTextDeltaStreamingEvent",
    ),
    "response.output_text.done": ("ResponseTextDoneEvent", "ResponseOutputTextDoneStreamingEvent"),
    "response.reasoning_text.delta": (
        "ResponseReasoningTextDeltaEvent",
        "ResponseReasoningDeltaStreamingEvent",
    ),
    "response.reasoning_text.done": (
        "ResponseReasoningTextDoneEvent",
        "ResponseReasoningDoneStreamingEvent",
    ),
    "response.function_call_arguments.delta": (
        "ResponseFunctionCallArgumentsDeltaEvent",
        "ResponseFunctionCallArgumentsDeltaStreamingEvent",
    ),
    "response.function_call_arguments.done": (
        "ResponseFunctionCallArgumentsDoneEvent",
        "ResponseFunctionCallArgumentsDoneStreamingEvent",
    ),
    "response.completed": ("ResponseCompletedEvent", "ResponseCompletedStreamingEvent"),
    "response.incomplete": ("ResponseIncompleteEvent", "ResponseIncompleteStreamingEvent"),
    "response.failed": ("ResponseFailedEvent", "ResponseFailedStreamingEvent"),
    "error": ("ResponseErrorEvent", "ErrorStreamingEvent"),
}
_OPEN_RESPONSES_NAMES = {
    "response.reasoning_text.delta": "response.reasoning.delta",
    "response.reasoning_text.done": "response.reasoning.done",
}
RECEIPT_EVENT = "moonflower.receipt"
"""Moonflower's own event: the provider's signed receipt, in neither document."""


def assert_response_conforms(response: dict[str, Any]) -> None:
    """A whole `response` object is valid in both documents."""
    assert_valid_open_responses("ResponseResource", as_open_responses_documents(response))
    assert_valid_openai("Response", as_openai_documents(response))


def assert_event_conforms(event: dict[str, Any]) -> None:
    """A stream event (not Moonflower's receipt) is valid in both documents, as its own
    event schema and, for OpenAI, as a member of the `ResponseStreamEvent` union."""
    openai_schema, open_responses_schema = EVENT_SCHEMAS[event["type"]]
    open_event = as_open_responses_names(event)
    if "response" in event:
        open_event = {**open_event, "response": as_open_responses_documents(event["response"])}
    assert_valid_open_responses(open_responses_schema, open_event)
    if "response" in event:
        event = {**event, "response": as_openai_documents(event["response"])}
    assert_valid_openai(openai_schema, event)
    assert_valid_openai("ResponseStreamEvent", event)


def as_openai_documents(response: dict[str, Any]) -> dict[str, Any]:
    """`response` without the nulls OpenAI sends but its document does not allow."""
    return {
        key: value
        for key, value in response.items()
        if not (key in OPENAI_NULLS_SET_ASIDE and value is None)
    }


def as_open_responses_documents(response: dict[str, Any]) -> dict[str, Any]:
    """`response` with a `json_schema` text format as Open Responses' document spells it."""
    text = response.get("text")
    if not isinstance(text, dict):
        return response
    spec = text.get("format")
    if not isinstance(spec, dict) or spec.get("type") != "json_schema":
        return response
    spec = {"description": None, **spec, "schema": None}
    return {**response, "text": {**text, "format": spec}}


def as_open_responses_names(event: dict[str, Any]) -> dict[str, Any]:
    """`event` under the type name Open Responses gives the same payload."""
    name = _OPEN_RESPONSES_NAMES.get(event["type"])
    return event if name is None else {**event, "type": name}
