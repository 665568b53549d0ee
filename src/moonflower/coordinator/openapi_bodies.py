"""The inference routes' request bodies and whole answers in `/openapi.json`, from the
dialects' own models.

A route reads its body itself (`request_reading.read_json`) and its dialect validates it, so
that a bad field is refused in the caller's dialect; FastAPI never sees a body parameter and
would publish none. `json_body(Model)` gives a route's `openapi_extra`: the body is required
JSON of `#/components/schemas/<Model>`, the schema pydantic derives from the very model the
dialect validates with, so the shape published is the shape accepted (unknown fields
included: they are ignored, not refused); a few values of the right shape are refused by
name after it (content no model here can read, say). A union the dialect tells apart by
`type`, sending types it does not know to a catch-all part (`request_body.type_tag`), is
published the same way: the catch-all branch excludes the known types. The models' nested
definitions are published beside them as `<Model>.<Name>`, since two dialects each have,
say, a `Tool` of their own; `publish(app)` moves them into the document's components when
FastAPI builds it. A route's whole answer is published the same way, from the model that
describes what its dialect's fold produces (`dialects.answer_models`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, TypeAdapter

_COMPONENTS = "x-moonflower-components"
"""Where an operation carries its body's schemas until `publish` moves them."""

_DEFS_REF = "#/$defs/"
_COMPONENTS_REF = "#/components/schemas/"


def json_body(
    model: type[BaseModel], *, answer: type[Any] | None = None, streams: bool = True
) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is `model` and whose whole answer is
    `answer` (the schema of what the route returns as JSON); `streams` says whether the
    answer may also come as server-sent events."""
    components = _components(model)
    whole: dict[str, Any] = {}
    if answer is not None:
        components.update(_components(answer))
        whole = {"schema": {"$ref": _COMPONENTS_REF + answer.__name__}}
    content: dict[str, Any] = {"application/json": whole}
    if streams:
        content["text/event-stream"] = {
            "schema": {
                "type": "string",
                "description": "Server-sent events: the dialect's stream objects as they "
                "are generated; folded, they give the whole `application/json` answer.",
            }
        }
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _COMPONENTS_REF + model.__name__}}},
        },
        "responses": {"200": {"description": "The answer, whole or streamed.", "content": content}},
        _COMPONENTS: components,
    }


def _components(model: type[Any]) -> dict[str, Any]:
    """`model`'s schema (a pydantic model's, or a typed dict's) and its nested definitions,
    as `<Model>` and `<Model>.<Name>`."""
    name = model.__name__
    schema = TypeAdapter(model).json_schema(by_alias=True)
    definitions: dict[str, Any] = schema.pop("$defs", {})
    renamed = {key: f"{name}.{key.lstrip('_')}" for key in definitions}
    components = {renamed[key]: _rewritten(value, renamed) for key, value in definitions.items()}
    components[name] = _rewritten(schema, renamed)
    return {key: _by_type(value, components) for key, value in components.items()}


def publish(app: FastAPI) -> None:
    """Make `app`'s OpenAPI document carry the schemas its routes' `json_body` named."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    schemas.update(operation.pop(_COMPONENTS, {}))
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


def _rewritten(node: Any, renamed: dict[str, str]) -> Any:
    """`node` with local `$defs` references pointing at the published components."""
    if isinstance(node, dict):
        copy = {key: _rewritten(value, renamed) for key, value in node.items()}
        ref = copy.get("$ref")
        if isinstance(ref, str) and ref.startswith(_DEFS_REF):
            copy["$ref"] = _COMPONENTS_REF + renamed[ref.removeprefix(_DEFS_REF)]
        mapping = copy.get("discriminator", {}).get("mapping", {})
        for kind, target in mapping.items():  # a tagged union's targets are references too
            if target.startswith(_DEFS_REF):
                mapping[kind] = _COMPONENTS_REF + renamed[target.removeprefix(_DEFS_REF)]
        if isinstance(copy.get("title"), str):
            copy["title"] = copy["title"].lstrip("_")
        return copy
    if isinstance(node, list):
        return [_rewritten(item, renamed) for item in node]
    return node


def _by_type(node: Any, components: dict[str, Any]) -> Any:
    """`node` with each `oneOf` read as `request_body.type_tag` reads it: a branch whose
    `type` is any string takes only the types no other branch names, and a model tagged
    twice is listed once."""
    if isinstance(node, list):
        return [_by_type(item, components) for item in node]
    if not isinstance(node, dict):
        return node
    copy = {key: _by_type(value, components) for key, value in node.items()}
    branches = copy.get("oneOf")
    if isinstance(branches, list):
        unique = [b for i, b in enumerate(branches) if b not in branches[:i]]
        kinds = [_type_values(branch, components) for branch in unique]
        named = sorted({kind for values in kinds if values for kind in values})
        copy["oneOf"] = [
            {"allOf": [branch, {"properties": {"type": {"not": {"enum": named}}}}]}
            if values is None and named
            else branch
            for branch, values in zip(unique, kinds, strict=True)
        ]
    return copy


def _type_values(branch: Any, components: dict[str, Any]) -> list[str] | None:
    """The `type` values `branch` accepts, or None when it takes any string."""
    ref = branch.get("$ref", "") if isinstance(branch, dict) else ""
    target = components.get(ref.removeprefix(_COMPONENTS_REF), branch)
    kind = target.get("properties", {}).get("type", {})
    if "const" in kind:
        return [kind["const"]]
    if "enum" in kind:
        return list(kind["enum"])
    return None
