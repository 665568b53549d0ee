"""Prices: what a token costs, the minimum charge, and the platform's fee.

Owns the arithmetic (integer micro-USD, floored once over the whole request) and the
admin's overrides stored in the ledger, which take precedence over the coordinator's
settings. Prices are micro-USD per million tokens, input (prompt) and output (completion)
apart; a model without its own price pays the default (`*`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sqlalchemy import select

from moonflower.errors import InvalidRequest
from moonflower.ledger.database import Database
from moonflower.ledger.tables import ModelPrice, PricingPolicy

DEFAULT_MODEL = "*"
TOKENS_PER_PRICE_UNIT = 1_000_000
BASIS_POINTS = 10_000
MAX_PRICE = 10**12
"""$1,000,000 per million tokens: anything above is a typo."""


@dataclass(frozen=True, slots=True)
class Price:
    input_micro_usd_per_mtok: int
    output_micro_usd_per_mtok: int

    def __post_init__(self) -> None:
        for value, param in (
            (self.input_micro_usd_per_mtok, "input_price"),
            (self.output_micro_usd_per_mtok, "output_price"),
        ):
            if not 0 <= value <= MAX_PRICE:
                raise InvalidRequest(
                    f"'{param}' must be a whole number of micro-USD per million tokens "
                    f"between 0 and {MAX_PRICE}.",
                    param=param,
                )


@dataclass(frozen=True, slots=True)
class PriceList:
    default: Price
    models: Mapping[str, Price] = field(default_factory=dict)
    minimum_charge_micro_usd: int = 100
    platform_fee_bps: int = 500

    def __post_init__(self) -> None:
        if not 0 <= self.minimum_charge_micro_usd <= MAX_PRICE:
            raise InvalidRequest(
                "'minimum_charge' must be between 0 and 10^12 micro-USD.", param="minimum_charge"
            )
        if not 0 <= self.platform_fee_bps <= BASIS_POINTS:
            raise InvalidRequest(
                "'platform_fee_percent' must be between 0 and 100.", param="platform_fee_percent"
            )

    def price_of(self, model: str) -> Price:
        return self.models.get(model, self.default)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> int:
        """floor((prompt * input + completion * output) / 10^6), at least the minimum."""
        price = self.price_of(model)
        exact = (
            prompt_tokens * price.input_micro_usd_per_mtok
            + completion_tokens * price.output_micro_usd_per_mtok
        )
        return max(exact // TOKENS_PER_PRICE_UNIT, self.minimum_charge_micro_usd)

    def fee(self, charged_micro_usd: int) -> int:
        """The platform's part of a charge (floored); the provider gets the rest."""
        return charged_micro_usd * self.platform_fee_bps // BASIS_POINTS


def percent_to_bps(percent: float) -> int:
    """5 → 500; accepts at most two decimals (0.01 % steps)."""
    bps = round(percent * 100)
    if abs(bps - percent * 100) > 1e-6:
        raise InvalidRequest(
            "'platform_fee_percent' allows at most two decimals.", param="platform_fee_percent"
        )
    return bps


async def load_price_list(db: Database, base: PriceList) -> PriceList:
    """`base` (from settings) with the admin's stored overrides applied."""
    async with db.reads() as session:
        prices = (await session.execute(select(ModelPrice))).scalars().all()
        policy = await session.get(PricingPolicy, 1)
    models = dict(base.models)
    default = base.default
    for row in prices:
        price = Price(row.input_micro_usd_per_mtok, row.output_micro_usd_per_mtok)
        if row.model == DEFAULT_MODEL:
            default = price
        else:
            models[row.model] = price
    listed = replace(base, default=default, models=models)
    if policy is not None:
        listed = replace(
            listed,
            minimum_charge_micro_usd=policy.minimum_charge_micro_usd,
            platform_fee_bps=policy.platform_fee_bps,
        )
    return listed


async def set_model_price(db: Database, model: str, price: Price) -> None:
    """Store the admin's price for `model` (`*` for the default)."""
    await store_pricing(db, model_price=(model, price))


async def set_policy(db: Database, *, minimum_charge_micro_usd: int, platform_fee_bps: int) -> None:
    """Store the admin's minimum charge and fee (validated like a `PriceList`)."""
    await store_pricing(db, policy=(minimum_charge_micro_usd, platform_fee_bps))


async def store_pricing(
    db: Database,
    *,
    model_price: tuple[str, Price] | None = None,
    policy: tuple[int, int] | None = None,
) -> None:
    """Store a model's price and/or the (minimum charge, fee bps) policy, all or nothing:
    everything is validated before anything is written, and written in one transaction."""
    now = datetime.now(UTC)
    statements = []
    if model_price is not None:
        model, price = model_price
        if not 0 < len(model) <= 256:
            raise InvalidRequest("'model' must be 1 to 256 characters.", param="model")
        values = {
            "model": model,
            "input_micro_usd_per_mtok": price.input_micro_usd_per_mtok,
            "output_micro_usd_per_mtok": price.output_micro_usd_per_mtok,
            "updated_at": now,
        }
        insert = db.insert_on_conflict(ModelPrice).values(**values)
        statements.append(
            insert.on_conflict_do_update(index_elements=[ModelPrice.model], set_=values)
        )
    if policy is not None:
        minimum, fee_bps = policy
        PriceList(Price(0, 0), minimum_charge_micro_usd=minimum, platform_fee_bps=fee_bps)
        values = {
            "id": 1,
            "minimum_charge_micro_usd": minimum,
            "platform_fee_bps": fee_bps,
            "updated_at": now,
        }
        insert = db.insert_on_conflict(PricingPolicy).values(**values)
        statements.append(
            insert.on_conflict_do_update(index_elements=[PricingPolicy.id], set_=values)
        )
    async with db.sessions.begin() as session:
        for statement in statements:
            await session.execute(statement)
