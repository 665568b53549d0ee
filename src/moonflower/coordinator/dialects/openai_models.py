"""OpenAI's Models API shape: `Model` and `ListModelsResponse`.

Owns rendering the catalog's entries the way OpenAI's `GET /v1/models` and
`GET /v1/models/{model}` do — `{"id", "object": "model", "created", "owned_by"}` — plus what
Moonflower adds: `context_length`, `providers` (how many serve it now) and, for an alias,
`alias_of`. The list is every entry (aliases included, in the catalog's order: by id) unless
the caller pages it with `limit` / `after_id` / `before_id`; it always says `has_more`,
`first_id` and `last_id`, as OpenAI's cursor-paged lists do. It must not decide the dialect,
authenticate, or render errors (it raises `InvalidRequest` / `ModelNotFound`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from moonflower import errors
from moonflower.coordinator.model_catalog import ListedModel, PageRequest, page

OWNER = "moonflower"


def list_body(
    entries: Sequence[ListedModel], query: Mapping[str, str], started_at: int
) -> dict[str, Any]:
    found = page(entries, PageRequest.from_query(query, default_limit=None))
    return {
        "object": "list",
        "data": [model_object(entry, started_at) for entry in found.entries],
        "has_more": found.has_more,
        "first_id": found.first_id,
        "last_id": found.last_id,
    }


def model_body(entries: Sequence[ListedModel], model_id: str, started_at: int) -> dict[str, Any]:
    for entry in entries:
        if entry.id == model_id:
            return model_object(entry, started_at)
    raise errors.ModelNotFound(model_id)


def model_object(entry: ListedModel, started_at: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": entry.id,
        "object": "model",
        "created": started_at,
        "owned_by": OWNER,
    }
    if entry.alias_of is not None:
        body["alias_of"] = entry.alias_of
    body["context_length"] = entry.context_length
    body["providers"] = entry.providers
    return body
