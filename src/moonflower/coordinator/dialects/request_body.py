"""What every dialect's request parsing shares: validating the JSON body against the
dialect's pydantic model (with a cap on how many messages a conversation may have), the caps
on stop sequences (how many, how long), and resolving a tool choice against the tools offered.

Dialect-neutral: each dialect passes its own validation-error mapping and field names, so
errors still come out in its own words. It must not know any dialect's wire shapes; it
knows only the names of the fields that carry a conversation (`CONVERSATION_FIELDS`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Discriminator, ValidationError
from pydantic_core import InitErrorDetails

from moonflower import errors
from moonflower.generation import Tool, ToolChoice

log = logging.getLogger(__name__)

Body = TypeVar("Body", bound=BaseModel)
ToolMode = Literal["auto", "none", "required", "function"]

MAX_MESSAGES = 2048
"""The most messages a request may carry, unless the route passes its own `max_messages`
(the coordinator setting of that name)."""
MAX_OPENAI_STOPS = 4
"""OpenAI documents "up to 4 sequences" for `stop` (chat and legacy completions)."""
MAX_ANTHROPIC_STOPS = 16
"""Anthropic documents no count for `stop_sequences`; every stop is matched against the
output after each token, so a request may carry at most this many (README, Limits)."""
MAX_STOP_CHARS = 256
"""The longest stop sequence, in characters, in every dialect."""
CONVERSATION_FIELDS = ("messages", "input")
"""Chat and Anthropic messages, and the Responses API's list of input items."""


def validate_body(
    model: type[Body],
    payload: object,
    *,
    to_error: Callable[[ValidationError], errors.InvalidRequest],
    endpoint: str,
    max_messages: int = MAX_MESSAGES,
) -> Body:
    """`payload` as `model`, or the dialect's `InvalidRequest` naming the first bad field.
    A conversation longer than `max_messages` is refused before anything is validated.
    Unknown fields are accepted; only their names are logged, at debug level."""
    if not isinstance(payload, dict):
        raise errors.InvalidRequest("The request body must be a JSON object.", param=None)
    for name in CONVERSATION_FIELDS:
        items = payload.get(name)
        if isinstance(items, list) and len(items) > max_messages:
            raise to_error(_too_long(name, len(items), max_messages)) from None
    try:
        body = model.model_validate(payload)
    except ValidationError as exc:
        raise to_error(exc) from None
    if body.model_extra:
        log.debug("ignoring unknown %s fields: %s", endpoint, sorted(body.model_extra))
    return body


def check_stops(
    stops: Sequence[str],
    *,
    name: str,
    max_count: int,
    to_error: Callable[[ValidationError], errors.InvalidRequest],
    is_list: bool = True,
) -> None:
    """Refuse more than `max_count` stop sequences, or one longer than `MAX_STOP_CHARS`, as
    the dialect's `InvalidRequest` naming `name` (or the element; `is_list` False: the field
    held one string)."""
    if len(stops) > max_count:
        raise to_error(_too_long(name, len(stops), max_count))
    for index, stop in enumerate(stops):
        if len(stop) > MAX_STOP_CHARS:
            loc: tuple[int | str, ...] = (name, index) if is_list else (name,)
            detail = InitErrorDetails(
                type="string_too_long", loc=loc, input="", ctx={"max_length": MAX_STOP_CHARS}
            )
            raise to_error(ValidationError.from_exception_data("request body", [detail]))


def _too_long(name: str, length: int, max_length: int) -> ValidationError:
    """What pydantic reports for a list over its `max_length`, so each dialect words it."""
    detail = InitErrorDetails(
        type="too_long",
        loc=(name,),
        input=[],  # never echoed; the length is in the context
        ctx={"field_type": "List", "max_length": max_length, "actual_length": length},
    )
    return ValidationError.from_exception_data("request body", [detail])


def resolve_tool_choice(
    mode: ToolMode,
    name: str | None,
    tools: Sequence[Tool],
    *,
    missing_tools: str,
    unknown_name: str,
    name_param: str,
) -> ToolChoice:
    """The neutral choice; forcing a call needs tools, and a named call a tool of that name.
    `missing_tools` and `unknown_name` are the dialect's messages (`{name}` is filled in)."""
    if mode in ("auto", "none"):
        return ToolChoice(mode)
    if not tools:
        raise errors.InvalidRequest(missing_tools, param="tool_choice")
    if mode == "required":
        return ToolChoice("required")
    if name not in {tool.name for tool in tools}:
        raise errors.InvalidRequest(
            unknown_name.format(name=name), param=name_param, code="invalid_value"
        )
    return ToolChoice("function", name)


def type_tag(allowed: set[str], fallback: str | None) -> Any:
    """A discriminator on `type` whose tags start with `_` (so `field_path` drops them from
    error locations); types outside `allowed` go to `fallback`, or fail if there is none."""

    def tag(value: Any) -> str | None:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        if not isinstance(kind, str):
            return None
        return "_" + kind if kind in allowed else fallback

    return Discriminator(
        tag,
        custom_error_type="invalid_type",
        custom_error_message="Input should be an object whose 'type' is one of: "
        + ", ".join(f"'{k}'" for k in sorted(allowed)),
    )


def unreadable_content(kind: str, param: str, *, text_type: str) -> errors.InvalidRequest:
    """The refusal of a content part no model here can read (an image, audio, a file), in
    OpenAI's words; `param` names the part's `type`."""
    return errors.InvalidRequest(
        f"Invalid value for '{param}': {kind!r} content is not supported: the models on this "
        f"network read text only; send {text_type!r} parts.",
        param=param,
        code="invalid_value",
    )
