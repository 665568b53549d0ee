"""What every dialect's request parsing shares: validating the JSON body against the
dialect's pydantic model, and resolving a tool choice against the tools offered.

Dialect-neutral: each dialect passes its own validation-error mapping and field names, so
errors still come out in its own words. It must not know any dialect's wire shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from pydantic import BaseModel, ValidationError

from moonflower import errors
from moonflower.generation import Tool, ToolChoice

log = logging.getLogger(__name__)

Body = TypeVar("Body", bound=BaseModel)
ToolMode = Literal["auto", "none", "required", "function"]


def validate_body(
    model: type[Body],
    payload: object,
    *,
    to_error: Callable[[ValidationError], errors.InvalidRequest],
    endpoint: str,
) -> Body:
    """`payload` as `model`, or the dialect's `InvalidRequest` naming the first bad field.
    Unknown fields are accepted; only their names are logged, at debug level."""
    if not isinstance(payload, dict):
        raise errors.InvalidRequest("The request body must be a JSON object.", param=None)
    try:
        body = model.model_validate(payload)
    except ValidationError as exc:
        raise to_error(exc) from None
    if body.model_extra:
        log.debug("ignoring unknown %s fields: %s", endpoint, sorted(body.model_extra))
    return body


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
