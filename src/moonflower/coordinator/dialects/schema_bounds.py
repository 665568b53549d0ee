"""Bounds on the JSON schemas a request carries: `response_format` / `text.format` schemas and
tool parameter schemas, each at most `MAX_SCHEMA_BYTES` serialized and `MAX_SCHEMA_DEPTH`
levels deep.

A provider turns such a schema into a grammar, and its prompt carries every tool's schema, so
what a schema may cost is decided here, at parse time, before a request reaches anyone: a
schema over either bound is an `InvalidRequest` naming the field. Dialect-neutral: each
dialect passes the field's name (`param`) and how its messages name it (`prefix`). It must
not know any dialect's wire shapes, and never quotes the schema in an error. Providers bound
grammar compilation in time as well (`provider/engines/grammar.py`); these bounds keep the
cheap refusals on the coordinator.
"""

from __future__ import annotations

from typing import Any

import orjson

from moonflower import errors

MAX_SCHEMA_BYTES = 64 * 1024
"""The largest schema, as compact JSON (OpenAI's strict-mode limits — a few hundred
properties of ordinary names — fit well inside)."""
MAX_SCHEMA_DEPTH = 64
"""The deepest nesting of JSON objects and arrays in one schema. An object schema level costs
two (`{"properties": {"name": {…}}}`), so this leaves room for about 30 levels of nested
objects, three times OpenAI's structured-output limit of 10."""


def check_schema(schema: Any, *, param: str, prefix: str) -> None:
    """Raise `InvalidRequest` naming `param` when `schema` is nested deeper than
    `MAX_SCHEMA_DEPTH` or serializes to more than `MAX_SCHEMA_BYTES`. `prefix` starts the
    message the way the dialect names the field (`Invalid 'tools[0].function.parameters'`,
    `tools.0.input_schema`)."""
    if is_deeper_than(schema, MAX_SCHEMA_DEPTH):
        raise errors.InvalidRequest(
            f"{prefix}: the JSON schema is nested more than {MAX_SCHEMA_DEPTH} levels deep.",
            param=param,
            code="invalid_value",
        )
    size = len(orjson.dumps(schema))
    if size > MAX_SCHEMA_BYTES:
        raise errors.InvalidRequest(
            f"{prefix}: the JSON schema is {size} bytes; at most {MAX_SCHEMA_BYTES} are allowed.",
            param=param,
            code="invalid_value",
        )


def is_deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests objects and arrays more than `limit` levels deep (a scalar is 0,
    `{}` and `[]` are 1). Walks without recursion, and stops at the first node too deep."""
    if not isinstance(value, dict | list):
        return limit < 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
