"""Prices: `GET /v1/pricing` (public) and `PUT /v1/admin/pricing` (admin key).

Prices are micro-USD per million tokens. An admin's change is stored in the ledger and
takes effect on this coordinator at once, and on every replica as soon as the broadcast
reaches it (`broadcast`); within `price_list_cache_s` if that message is lost. Requests
already holding credit keep their hold; their charge uses the prices in force when they
settle, never more than they hold.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from moonflower import errors
from moonflower.coordinator.deps import AdminKey, ServicesDep
from moonflower.coordinator.dialects.openai_errors import from_validation_error
from moonflower.coordinator.request_reading import read_json
from moonflower.coordinator.routes.public import network_supply
from moonflower.coordinator.services import json_response
from moonflower.ledger.book import format_usd
from moonflower.ledger.pricing import (
    DEFAULT_MODEL,
    MAX_PRICE,
    Price,
    PriceList,
    percent_to_bps,
    store_pricing,
)

router = APIRouter()


class PricingUpdate(BaseModel):
    """A model's price (`model` `*` is the default for every unlisted model), the minimum
    charge, the platform fee, or any of them together."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1, max_length=256)
    input_price: StrictInt | None = Field(default=None, ge=0, le=MAX_PRICE)
    output_price: StrictInt | None = Field(default=None, ge=0, le=MAX_PRICE)
    minimum_charge_micro_usd: StrictInt | None = Field(default=None, ge=0, le=MAX_PRICE)
    platform_fee_percent: float | None = Field(default=None, ge=0, le=100)


@router.get("/v1/pricing")
async def get_pricing(services: ServicesDep) -> Response:
    prices = await services.pricing.current()
    return json_response(pricing_body(prices, set(await network_supply(services))))


@router.put("/v1/admin/pricing")
async def put_pricing(request: Request, services: ServicesDep, admin: AdminKey) -> Response:
    try:
        update = PricingUpdate.model_validate(await read_json(request))
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    changes_price = update.input_price is not None or update.output_price is not None
    if update.model is None and changes_price:
        raise errors.InvalidRequest(
            "Name the 'model' the prices are for ('*' for the default).", param="model"
        )
    if update.model is not None and (update.input_price is None or update.output_price is None):
        raise errors.InvalidRequest(
            "A model's price needs both 'input_price' and 'output_price'.",
            param="input_price" if update.input_price is None else "output_price",
        )
    is_policy = (
        update.minimum_charge_micro_usd is not None or update.platform_fee_percent is not None
    )
    if update.model is None and not is_policy:
        raise errors.InvalidRequest(
            "Nothing to change: give a model's prices, 'minimum_charge_micro_usd' or "
            "'platform_fee_percent'."
        )
    current = await services.pricing.current()
    fee_bps = (
        percent_to_bps(update.platform_fee_percent)
        if update.platform_fee_percent is not None
        else current.platform_fee_bps
    )
    minimum = (
        update.minimum_charge_micro_usd
        if update.minimum_charge_micro_usd is not None
        else current.minimum_charge_micro_usd
    )
    model_price = None
    if update.model is not None:
        assert update.input_price is not None
        assert update.output_price is not None
        model_price = (update.model, Price(update.input_price, update.output_price))
    await store_pricing(
        services.db, model_price=model_price, policy=(minimum, fee_bps) if is_policy else None
    )
    await services.broadcast.prices_changed()
    prices = await services.pricing.current()
    return json_response(pricing_body(prices, set(await network_supply(services))))


def pricing_body(prices: PriceList, served: set[str]) -> dict[str, Any]:
    listed = sorted(served | set(prices.models))
    return {
        "object": "pricing",
        "currency": "USD",
        "unit": "micro_usd_per_million_tokens",
        "minimum_charge_micro_usd": prices.minimum_charge_micro_usd,
        "minimum_charge_usd": format_usd(prices.minimum_charge_micro_usd),
        "platform_fee_percent": prices.platform_fee_bps / 100,
        "default": price_body(DEFAULT_MODEL, prices.default),
        "prices": [price_body(model, prices.price_of(model)) for model in listed],
    }


def price_body(model: str, price: Price) -> dict[str, Any]:
    return {
        "model": model,
        "input_price": price.input_micro_usd_per_mtok,
        "output_price": price.output_micro_usd_per_mtok,
        "input_usd_per_million_tokens": format_usd(price.input_micro_usd_per_mtok),
        "output_usd_per_million_tokens": format_usd(price.output_micro_usd_per_mtok),
    }
