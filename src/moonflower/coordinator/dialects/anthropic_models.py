"""Anthropic's Models API shape: `ModelInfo` and the cursor-paged `ListResponse[ModelInfo]`.

Owns rendering the catalog's entries the way Anthropic's `GET /v1/models` and
`GET /v1/models/{model_id}` do: `{"type": "model", "id", "display_name", "created_at"
(RFC 3339), "capabilities", "max_input_tokens", "max_tokens"}`, and a list `{"data",
"has_more", "first_id", "last_id"}` of at most `limit` entries (20 unless given). As in
Anthropic's API, the list names models, not aliases, and getting an alias answers with the
model it stands for. Entries come in the catalog's order (by id), since every model here
carries the same `created_at` (when the coordinator started): newest-first would be no
order at all. It must not decide the dialect, authenticate, or render errors (it raises
`InvalidRequest` / `ModelNotFound`; the app renders them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from moonflower import errors
from moonflower.coordinator.model_catalog import ListedModel, PageRequest, page

DEFAULT_LIMIT = 20


def list_body(
    entries: Sequence[ListedModel], query: Mapping[str, str], started_at: int
) -> dict[str, Any]:
    models = [entry for entry in entries if entry.alias_of is None]
    found = page(models, PageRequest.from_query(query, default_limit=DEFAULT_LIMIT))
    return {
        "data": [model_info(entry, started_at) for entry in found.entries],
        "has_more": found.has_more,
        "first_id": found.first_id,
        "last_id": found.last_id,
    }


def model_body(entries: Sequence[ListedModel], model_id: str, started_at: int) -> dict[str, Any]:
    by_id = {entry.id: entry for entry in entries}
    entry = by_id.get(model_id)
    if entry is not None and entry.alias_of is not None:
        entry = by_id.get(entry.alias_of)
    if entry is None:
        raise errors.ModelNotFound(model_id)
    return model_info(entry, started_at)


def model_info(entry: ListedModel, started_at: int) -> dict[str, Any]:
    return {
        "type": "model",
        "id": entry.id,
        "display_name": entry.id,
        "created_at": rfc3339(started_at),
        "capabilities": None,
        "max_input_tokens": entry.context_length,
        "max_tokens": entry.context_length,
    }


def rfc3339(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
