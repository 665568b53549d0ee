"""Prices: integer cost arithmetic, the minimum charge, the fee, and stored overrides."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from moonflower.errors import InvalidRequest
from moonflower.ledger.database import Database
from moonflower.ledger.pricing import (
    MAX_PRICE,
    Price,
    PriceList,
    load_price_list,
    percent_to_bps,
    set_model_price,
    set_policy,
)
from moonflower.ledger.tables import ModelPrice, PricingPolicy

HALF = Price(500_000, 500_000)  # $0.50 per million tokens either way
BASE = PriceList(
    Price(150_000, 600_000),
    {"big": Price(3_000_000, 15_000_000), "tiny": HALF},
    minimum_charge_micro_usd=0,
    platform_fee_bps=500,
)


def test_cost_is_floored_once_over_the_whole_request() -> None:
    # Each side alone is half a micro-dollar; floored apart they would cost nothing.
    assert BASE.cost("tiny", 1, 1) == 1
    assert BASE.cost("tiny", 1, 0) == 0
    assert BASE.cost("tiny", 3, 0) == 1
    assert BASE.cost("default-priced", 7, 3) == 2  # (1_050_000 + 1_800_000) // 10^6
    assert BASE.cost("big", 1_234, 567) == 12_207  # (3_702_000_000 + 8_505_000_000) // 10^6


def test_a_model_without_its_own_price_pays_the_default() -> None:
    assert BASE.price_of("big") == Price(3_000_000, 15_000_000)
    assert BASE.price_of("unknown") == BASE.default
    assert BASE.cost("unknown", 1_000_000, 1_000_000) == 750_000


def test_the_minimum_charge_applies_to_small_requests_only() -> None:
    priced = PriceList(Price(150_000, 600_000), minimum_charge_micro_usd=100)
    assert priced.cost("m", 0, 0) == 100
    assert priced.cost("m", 100, 100) == 100  # 75 would be below the minimum
    assert priced.cost("m", 1_000, 1_000) == 750


def test_huge_requests_stay_exact() -> None:
    priced = PriceList(Price(MAX_PRICE, MAX_PRICE))
    assert priced.cost("m", 10**9, 10**9 + 1) == 2 * 10**15 + 10**6


def test_the_fee_is_floored_and_the_rest_is_the_providers() -> None:
    assert BASE.fee(0) == 0
    assert BASE.fee(19) == 0
    assert BASE.fee(20) == 1
    assert BASE.fee(123_457) == 6_172
    assert PriceList(HALF, platform_fee_bps=10_000).fee(123_457) == 123_457
    assert PriceList(HALF, platform_fee_bps=0).fee(123_457) == 0


@pytest.mark.parametrize("value", [-1, MAX_PRICE + 1])
def test_prices_out_of_range_are_refused(value: int) -> None:
    with pytest.raises(InvalidRequest) as refused:
        Price(value, 0)
    assert refused.value.param == "input_price"
    with pytest.raises(InvalidRequest) as refused:
        Price(0, value)
    assert refused.value.param == "output_price"


@pytest.mark.parametrize(
    ("minimum", "bps", "param"),
    [
        (-1, 500, "minimum_charge"),
        (MAX_PRICE + 1, 500, "minimum_charge"),
        (0, -1, "platform_fee_percent"),
        (0, 10_001, "platform_fee_percent"),
    ],
)
def test_policies_out_of_range_are_refused(minimum: int, bps: int, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        PriceList(HALF, minimum_charge_micro_usd=minimum, platform_fee_bps=bps)
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("percent", "bps"), [(0, 0), (5, 500), (2.5, 250), (0.01, 1), (0.29, 29), (100, 10_000)]
)
def test_percent_becomes_basis_points(percent: float, bps: int) -> None:
    assert percent_to_bps(percent) == bps


@pytest.mark.parametrize("percent", [0.001, 12.345])
def test_percent_with_more_than_two_decimals_is_refused(percent: float) -> None:
    with pytest.raises(InvalidRequest):
        percent_to_bps(percent)


async def test_without_overrides_the_base_list_stands(ledger_db: Database) -> None:
    assert await load_price_list(ledger_db, BASE) == BASE


async def test_stored_overrides_win_over_the_base_list(ledger_db: Database) -> None:
    await set_model_price(ledger_db, "big", Price(1, 2))
    await set_model_price(ledger_db, "big", Price(2_000_000, 8_000_000))  # replaces the first
    await set_model_price(ledger_db, "new", Price(10, 20))
    await set_model_price(ledger_db, "*", Price(100_000, 400_000))
    await set_policy(ledger_db, minimum_charge_micro_usd=50, platform_fee_bps=1_250)

    listed = await load_price_list(ledger_db, BASE)
    assert listed == PriceList(
        Price(100_000, 400_000),
        {"big": Price(2_000_000, 8_000_000), "tiny": HALF, "new": Price(10, 20)},
        minimum_charge_micro_usd=50,
        platform_fee_bps=1_250,
    )
    assert listed.cost("unknown", 1_000, 1_000) == 500
    assert listed.cost("big", 1_000, 1_000) == 10_000
    assert listed.fee(10_000) == 1_250
    async with ledger_db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(ModelPrice)) == 3


async def test_a_bad_policy_or_model_name_stores_nothing(ledger_db: Database) -> None:
    with pytest.raises(InvalidRequest):
        await set_policy(ledger_db, minimum_charge_micro_usd=0, platform_fee_bps=10_001)
    with pytest.raises(InvalidRequest):
        await set_policy(ledger_db, minimum_charge_micro_usd=-1, platform_fee_bps=0)
    for model in ("", "m" * 257):
        with pytest.raises(InvalidRequest):
            await set_model_price(ledger_db, model, HALF)

    async with ledger_db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(PricingPolicy)) == 0
        assert await session.scalar(select(func.count()).select_from(ModelPrice)) == 0
    assert await load_price_list(ledger_db, BASE) == BASE
