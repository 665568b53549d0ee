"""The whole answers of Anthropic's dialect as `/openapi.json` publishes them: the `message`
that `MessageFold` produces, and `count_tokens`' count, described as typed dicts.

Descriptions only, used for the published schemas: every field is required (Anthropic's own
document requires its nullable ones too) and no other field is allowed, so a test validating
real answers against the published schema notices any drift. Nothing here builds or checks
an answer at run time.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

_CLOSED = ConfigDict(extra="forbid")


@with_config(_CLOSED)
class TextBlock(TypedDict):
    type: Literal["text"]
    text: str
    citations: None


@with_config(_CLOSED)
class ThinkingBlock(TypedDict):
    type: Literal["thinking"]
    thinking: str
    signature: str


@with_config(_CLOSED)
class DirectCaller(TypedDict):
    type: Literal["direct"]


@with_config(_CLOSED)
class ToolUseBlock(TypedDict):
    type: Literal["tool_use"]
    id: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]+$")]
    name: str
    input: dict[str, Any]
    caller: DirectCaller


ContentBlock = Annotated[TextBlock | ThinkingBlock | ToolUseBlock, Field(discriminator="type")]


@with_config(_CLOSED)
class CacheCreation(TypedDict):
    ephemeral_1h_input_tokens: int
    ephemeral_5m_input_tokens: int


@with_config(_CLOSED)
class MessageUsage(TypedDict):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cache_creation: CacheCreation
    server_tool_use: None
    service_tier: Literal["standard"]
    inference_geo: None
    output_tokens_details: None


@with_config(_CLOSED)
class Message(TypedDict):
    """A whole `message`: the stream's events folded."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: Annotated[list[ContentBlock], Field(min_length=1)]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]
    stop_sequence: str | None
    stop_details: None
    container: None
    usage: MessageUsage


@with_config(_CLOSED)
class MessageTokensCount(TypedDict):
    """`/v1/messages/count_tokens`' answer."""

    input_tokens: int
