"""The coordinator's side of money: the current price list, what a request must reserve,
and settling a finished job with the ledger.

Owns the price list in force, the conservative prompt bound a reservation takes where the
coordinator has no tokenizer for a model, and the credit hint that lets a hold be written
alongside its job. Which tokens a finished job is charged for is `settlement.decide`; the
ledger does the bookkeeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

from moonflower import wire
from moonflower.generation import GenerationRequest
from moonflower.ledger.database import Database
from moonflower.ledger.pricing import Price, PriceList, load_price_list, percent_to_bps
from moonflower.settings import CoordinatorSettings

log = logging.getLogger(__name__)


def base_price_list(settings: CoordinatorSettings) -> PriceList:
    return PriceList(
        default=Price(settings.default_price.input, settings.default_price.output),
        models={
            model: Price(price.input, price.output)
            for model, price in settings.model_prices.items()
        },
        minimum_charge_micro_usd=settings.minimum_charge_micro_usd,
        platform_fee_bps=percent_to_bps(settings.platform_fee_percent),
    )


class Pricing:
    """The price list in force: settings overlaid by the admin's stored prices, read again
    once `settings.price_list_cache_s` has passed or when told the prices changed (`forget`,
    see `broadcast`)."""

    def __init__(self, db: Database, settings: CoordinatorSettings) -> None:
        self._db = db
        self.base = base_price_list(settings)
        self._ttl_s = settings.price_list_cache_s
        self._current: PriceList | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()
        self._forgettings = 0

    async def current(self) -> PriceList:
        async with self._lock:
            if self._current is None or time.monotonic() - self._read_at >= self._ttl_s:
                forgettings = self._forgettings
                prices = await load_price_list(self._db, self.base)
                # A change announced while reading may be missing from what was read: use
                # it this once, read again next time.
                self._current = prices if forgettings == self._forgettings else None
                self._read_at = time.monotonic()
                return prices
            return self._current

    def forget(self) -> None:
        """Read the stored prices again on next use (after an admin changed them)."""
        self._forgettings += 1
        self._current = None


def prompt_token_bound(request: GenerationRequest, context_length: int) -> int:
    """At most how many tokens the prompt can be. No tokenizer emits more tokens than the
    bytes it reads, and the JSON of the request is longer than the text the chat template
    wraps around it (`prompt_size`); nothing longer than the context window can be processed
    at all."""
    return min(prompt_size(request), context_length)


def prompt_size(request: GenerationRequest) -> int:
    """The size of the request's JSON, whatever provider it goes to (one serialisation).

    Earlier tool calls' arguments are counted as a provider writes them into the prompt —
    parsed and written again as ASCII JSON — since that can be longer than what was sent
    (`1e9` becomes `1000000000.0`, `é` becomes `\u00e9`)."""
    messages = tuple(
        dataclasses.replace(
            m,
            tool_calls=tuple(
                dataclasses.replace(c, arguments=_as_written(c.arguments)) for c in m.tool_calls
            ),
        )
        if m.tool_calls
        else m
        for m in request.messages
    )
    written = dataclasses.replace(request, messages=messages)
    return len(wire.request_bytes(written))


def _as_written(arguments: str) -> str:
    try:
        rewritten = json.dumps(json.loads(arguments))
    except (ValueError, RecursionError):
        return arguments
    return rewritten if len(rewritten) > len(arguments) else arguments


def reservation(
    prices: PriceList,
    request: GenerationRequest,
    card: wire.ModelCard,
    *,
    prompt_tokens: int | None = None,
) -> int:
    """The most `request` (its `max_tokens` set) can cost on a provider serving `card`:
    `prompt_tokens` where the coordinator counted the prompt, else the prompt's bound."""
    assert request.max_tokens is not None
    if prompt_tokens is None:
        prompt_tokens = prompt_token_bound(request, card.context_length)
    return prices.cost(request.model, prompt_tokens, request.max_tokens)


class KnownCredit:
    """What each account had available after its last hold, less the holds still being
    written for requests already sent on.

    It lets a request go to a provider while its own hold is still being written, when the
    account's last hold left enough for it and for every hold still in flight (see
    `Dispatcher.admit`). A hint only: the hold itself decides, and no output reaches the
    consumer before it is taken. A stale hint (another coordinator spent the credit) can
    cost a provider a cancelled job, never anybody money.
    """

    MAX_ACCOUNTS = 10_000

    def __init__(self) -> None:
        self._left: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}
        self._reports: dict[str, int] = {}

    def covers(self, account_id: str, amount_micro_usd: int) -> bool:
        """Whether the hint covers a hold of `amount_micro_usd` on top of the holds in
        flight. Either way that hold is counted as in flight from now until it is
        `written` or `refused`."""
        left = self._left.get(account_id)
        in_flight = self._in_flight.get(account_id, 0)
        self._in_flight[account_id] = in_flight + amount_micro_usd
        return left is not None and left - in_flight >= amount_micro_usd

    def reports(self, account_id: str) -> int:
        """How many holds of the account have reported so far: pass it to `written`."""
        return self._reports.get(account_id, 0)

    def written(
        self, account_id: str, left_micro_usd: int, in_flight_micro_usd: int, since: int
    ) -> None:
        """A hold of `in_flight_micro_usd` was written and left `left_micro_usd` available.

        Holds written side by side report in any order: if another reported while this one
        was being written (`since` is `reports` from before it), the lower report stands,
        since the older one would count the other's credit twice."""
        self._land(account_id, in_flight_micro_usd)
        previous = self._left.get(account_id)
        if previous is not None and self.reports(account_id) != since:
            left_micro_usd = min(previous, left_micro_usd)
        self._count_report(account_id)
        self._left[account_id] = left_micro_usd

    def refused(self, account_id: str, in_flight_micro_usd: int) -> None:
        self._land(account_id, in_flight_micro_usd)
        self._left.pop(account_id, None)
        self._count_report(account_id)

    def _count_report(self, account_id: str) -> None:
        """Count a report; past `MAX_ACCOUNTS` accounts every hint is forgotten (a hint
        forgotten only means holds are awaited again, until the next report)."""
        if len(self._reports) >= self.MAX_ACCOUNTS and account_id not in self._reports:
            self._left.clear()
            self._reports.clear()
        self._reports[account_id] = self.reports(account_id) + 1

    def _land(self, account_id: str, amount_micro_usd: int) -> None:
        if amount_micro_usd:
            remaining = self._in_flight.get(account_id, 0) - amount_micro_usd
            if remaining > 0:
                self._in_flight[account_id] = remaining
            else:
                self._in_flight.pop(account_id, None)
