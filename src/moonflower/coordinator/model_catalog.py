"""The models a caller may name right now, and paging over them by cursor.

Owns which entries the Models API lists (every model a routable provider serves, then every
alias whose target is served and which does not shadow a served model), their one order —
by id, ascending, so a cursor means the same thing from one page to the next — and the
paging rules shared by both dialects: `limit` (1..1000), `after_id` (the page right after
that entry) and `before_id` (the page right before it), as Anthropic's Models API defines
them. It must not know any dialect's wire shape; bad paging parameters raise
`InvalidRequest` for the app's error mapping to render in the caller's dialect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from moonflower import errors, wire

MAX_LIMIT = 1000
_MAX_ECHOED_CHARS = 100


@dataclass(frozen=True, slots=True)
class ListedModel:
    id: str
    context_length: int
    """The longest context among the providers serving it."""
    providers: int
    alias_of: str | None = None
    """For an alias, the served model it stands for."""


@dataclass(frozen=True, slots=True)
class ModelSupply:
    """What one replica has for one model."""

    context_length: int
    """The longest context among its providers serving the model."""
    providers: int


def local_supply(served: Mapping[str, Sequence[wire.ModelCard]]) -> dict[str, list[ModelSupply]]:
    """This replica's providers' cards as supply, one per provider."""
    return {
        model: [ModelSupply(card.context_length, 1) for card in cards]
        for model, cards in served.items()
    }


def listed_models(
    served: Mapping[str, Sequence[ModelSupply]], aliases: Mapping[str, str]
) -> list[ListedModel]:
    """Every served model and every alias of one, ordered by id."""

    def entry(model_id: str, supply: Sequence[ModelSupply], alias_of: str | None) -> ListedModel:
        return ListedModel(
            model_id,
            max(s.context_length for s in supply),
            sum(s.providers for s in supply),
            alias_of,
        )

    entries = [entry(model_id, supply, None) for model_id, supply in served.items() if supply]
    entries += [
        entry(alias, served[target], target)
        for alias, target in aliases.items()
        if served.get(target) and alias not in served
    ]
    return sorted(entries, key=lambda entry: entry.id)


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int | None
    """None: every entry (no `limit` given where the dialect has no default)."""
    before_id: str | None = None
    after_id: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str], *, default_limit: int | None) -> PageRequest:
        """The paging parameters of a query string, or `InvalidRequest` naming the bad one."""
        before_id, after_id = query.get("before_id"), query.get("after_id")
        if before_id is not None and after_id is not None:
            raise errors.InvalidRequest(
                "Give at most one of 'before_id' and 'after_id'.", param="before_id"
            )
        raw = query.get("limit")
        return cls(default_limit if raw is None else _limit(raw), before_id, after_id)


def _limit(raw: str) -> int:
    text = raw.strip()
    value = int(text) if text.isascii() and text.lstrip("-").isdigit() and len(text) < 12 else None
    if value is None or not 1 <= value <= MAX_LIMIT:
        raise errors.InvalidRequest(
            f"Invalid 'limit': expected an integer from 1 to {MAX_LIMIT}, "
            f"got '{raw[:_MAX_ECHOED_CHARS]}'.",
            param="limit",
            code="invalid_value",
        )
    return value


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[ListedModel]
    has_more: bool
    """Whether more entries lie beyond this page in the direction it was asked for."""

    @property
    def first_id(self) -> str | None:
        return self.entries[0].id if self.entries else None

    @property
    def last_id(self) -> str | None:
        return self.entries[-1].id if self.entries else None


def page(entries: Sequence[ListedModel], request: PageRequest) -> Page:
    """The page `request` asks for; a cursor that names no listed entry is `InvalidRequest`
    (the entry may have stopped being served since the previous page: start again)."""
    ids = [entry.id for entry in entries]
    limit = len(ids) if request.limit is None else request.limit
    if request.before_id is not None:
        end = _position(ids, request.before_id, "before_id")
        start = max(0, end - limit)
        return Page(list(entries[start:end]), has_more=start > 0)
    start = 0 if request.after_id is None else _position(ids, request.after_id, "after_id") + 1
    end = start + limit
    return Page(list(entries[start:end]), has_more=end < len(ids))


def _position(ids: list[str], cursor: str, param: str) -> int:
    try:
        return ids.index(cursor)
    except ValueError:
        raise errors.InvalidRequest(
            f"Invalid '{param}': no model '{cursor[:_MAX_ECHOED_CHARS]}' is listed now; "
            f"list again without '{param}'.",
            param=param,
            code="invalid_value",
        ) from None
