"""Prices over HTTP: the public price list comes from the settings overlaid by the admin's
stored changes; only the admin key may change it, a change takes effect at once and is
stored in the ledger; a bad change is a 400 naming the field and changes nothing.

Through the real coordinator on loopback, with a scripted engine where a request is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from moonflower.coordinator.billing import Pricing, base_price_list
from moonflower.ledger.book import deposit
from moonflower.ledger.keys import create_key
from moonflower.ledger.pricing import Price, load_price_list
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import InProcessNetwork, inprocess_network

ADMIN_KEY = "admin-key-for-tests-0123456789"
SETTINGS: dict[str, Any] = {
    "default_price": {"input": 111, "output": 222},
    "model_prices": {"priced": {"input": 3_000_000, "output": 4_500_001}},
    "minimum_charge_micro_usd": 7,
    "platform_fee_percent": 2.5,
}
WITH_ADMIN: dict[str, Any] = {**SETTINGS, "admin_key": ADMIN_KEY}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def price(model: str, input_price: int, output_price: int) -> dict[str, Any]:
    whole_in, part_in = divmod(input_price, 1_000_000)
    whole_out, part_out = divmod(output_price, 1_000_000)
    return {
        "model": model,
        "input_price": input_price,
        "output_price": output_price,
        "input_usd_per_million_tokens": f"{whole_in}.{part_in:06d}",
        "output_usd_per_million_tokens": f"{whole_out}.{part_out:06d}",
    }


async def get_pricing(net: InProcessNetwork) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=net.base_url) as client:
        response = await client.get("/v1/pricing")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def put_pricing(
    net: InProcessNetwork, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=net.base_url) as client:
        return await client.put(
            "/v1/admin/pricing", json=body, headers=ADMIN if headers is None else headers
        )


async def test_the_price_list_is_public_and_comes_from_the_settings(tmp_path: Path) -> None:
    async with inprocess_network(tmp_path, [ScriptedEngine()], **SETTINGS) as net:
        body = await get_pricing(net)
    assert body == {
        "object": "pricing",
        "currency": "USD",
        "unit": "micro_usd_per_million_tokens",
        "minimum_charge_micro_usd": 7,
        "minimum_charge_usd": "0.000007",
        "platform_fee_percent": 2.5,
        "default": price("*", 111, 222),
        # Every served model and every priced one; a served model without its own price
        # shows the default.
        "prices": [price("fake-model", 111, 222), price("priced", 3_000_000, 4_500_001)],
    }


async def test_without_an_admin_key_configured_the_admin_api_is_forbidden(tmp_path: Path) -> None:
    async with inprocess_network(tmp_path, [], **SETTINGS) as net:
        before = await get_pricing(net)
        for headers in ({}, ADMIN, net.headers):
            response = await put_pricing(net, {"minimum_charge_micro_usd": 1}, headers)
            assert response.status_code == 403
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("invalid_request_error", "permission_denied")
            assert "no admin key is configured" in error["message"]
        assert await get_pricing(net) == before


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {ADMIN_KEY}x"},
        {"Authorization": f"Bearer {ADMIN_KEY[:-1]}"},
    ],
    ids=["missing", "wrong", "longer", "shorter"],
)
async def test_a_wrong_or_missing_admin_key_is_a_401(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    async with inprocess_network(tmp_path, [], **WITH_ADMIN) as net:
        before = await get_pricing(net)
        response = await put_pricing(net, {"minimum_charge_micro_usd": 1}, headers)
        consumer = await put_pricing(net, {"minimum_charge_micro_usd": 1}, net.headers)
        assert await get_pricing(net) == before
    for refused in (response, consumer):
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"


async def test_the_admin_key_is_accepted_as_x_api_key_too(tmp_path: Path) -> None:
    async with inprocess_network(tmp_path, [], **WITH_ADMIN) as net:
        response = await put_pricing(net, {"minimum_charge_micro_usd": 1}, {"x-api-key": ADMIN_KEY})
    assert response.status_code == 200
    assert response.json()["minimum_charge_micro_usd"] == 1


async def test_admin_changes_take_effect_at_once_and_are_stored(tmp_path: Path) -> None:
    async with inprocess_network(tmp_path, [ScriptedEngine()], **WITH_ADMIN) as net:
        changes: list[dict[str, Any]] = [
            {"model": "fake-model", "input_price": 5, "output_price": 6},
            {"model": "*", "input_price": 10, "output_price": 20},
            {"model": "priced", "input_price": 0, "output_price": 1_000_000_000_000},
            {"minimum_charge_micro_usd": 42},
            {"platform_fee_percent": 12.5},
            {"model": "new-model", "input_price": 1, "output_price": 2, "platform_fee_percent": 0},
        ]
        for change in changes:
            response = await put_pricing(net, change)
            assert response.status_code == 200, response.text
            assert response.json() == await get_pricing(net)
        body = await get_pricing(net)
        stored = await load_price_list(net.services.db, base_price_list(net.services.settings))
        fresh = await Pricing(net.services.db, net.services.settings).current()
    assert body["default"] == price("*", 10, 20)
    assert body["prices"] == [
        price("fake-model", 5, 6),
        price("new-model", 1, 2),
        price("priced", 0, 1_000_000_000_000),
    ]
    # A policy change keeps the part it does not name.
    assert (body["minimum_charge_micro_usd"], body["minimum_charge_usd"]) == (42, "0.000042")
    assert body["platform_fee_percent"] == 0
    for prices in (stored, fresh):
        assert prices.default == Price(10, 20)
        assert prices.price_of("fake-model") == Price(5, 6)
        assert prices.price_of("new-model") == Price(1, 2)
        assert prices.price_of("priced") == Price(0, 1_000_000_000_000)
        assert prices.price_of("unlisted") == Price(10, 20)
        assert (prices.minimum_charge_micro_usd, prices.platform_fee_bps) == (42, 0)


async def test_a_fee_change_alone_keeps_the_minimum_and_vice_versa(tmp_path: Path) -> None:
    async with inprocess_network(tmp_path, [], **WITH_ADMIN) as net:
        await put_pricing(net, {"platform_fee_percent": 33.33})
        body = await get_pricing(net)
        assert (body["platform_fee_percent"], body["minimum_charge_micro_usd"]) == (33.33, 7)
        await put_pricing(net, {"minimum_charge_micro_usd": 0})
        body = await get_pricing(net)
        assert (body["platform_fee_percent"], body["minimum_charge_micro_usd"]) == (33.33, 0)
        stored = await load_price_list(net.services.db, base_price_list(net.services.settings))
    assert (stored.platform_fee_bps, stored.minimum_charge_micro_usd) == (3333, 0)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fake-model", "input_price": -1, "output_price": 1}, "input_price"),
        ({"model": "fake-model", "input_price": 1, "output_price": -1}, "output_price"),
        ({"model": "fake-model", "input_price": 1.5, "output_price": 1}, "input_price"),
        ({"model": "fake-model", "input_price": "1", "output_price": 1}, "input_price"),
        ({"model": "fake-model", "input_price": 1, "output_price": True}, "output_price"),
        ({"model": "fake-model", "input_price": 1}, "output_price"),
        ({"model": "fake-model", "output_price": 1}, "input_price"),
        ({"input_price": 1, "output_price": 1}, "model"),
        ({"model": "", "input_price": 1, "output_price": 1}, "model"),
        ({"model": "m" * 257, "input_price": 1, "output_price": 1}, "model"),
        ({"model": "fake-model", "input_price": 10**12 + 1, "output_price": 1}, "input_price"),
        ({"model": "fake-model", "input_price": 1, "output_price": 1, "colour": "red"}, "colour"),
        ({"platform_fee_percent": 100.01}, "platform_fee_percent"),
        ({"platform_fee_percent": -0.01}, "platform_fee_percent"),
        ({"platform_fee_percent": 1.234}, "platform_fee_percent"),
        ({"minimum_charge_micro_usd": -1}, "minimum_charge_micro_usd"),
        ({"minimum_charge_micro_usd": 1.0}, "minimum_charge_micro_usd"),
    ],
)
async def test_an_invalid_change_is_a_400_naming_the_field_and_changes_nothing(
    tmp_path: Path, body: dict[str, Any], param: str
) -> None:
    async with inprocess_network(tmp_path, [], **WITH_ADMIN) as net:
        before = await get_pricing(net)
        response = await put_pricing(net, body)
        after = await get_pricing(net)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert param in error["message"]
    assert after == before


@pytest.mark.parametrize("body", [{}, {"model": None}, {"platform_fee_percent": None}])
async def test_an_empty_change_is_a_400_saying_what_could_be_changed(
    tmp_path: Path, body: dict[str, Any]
) -> None:
    async with inprocess_network(tmp_path, [], **WITH_ADMIN) as net:
        response = await put_pricing(net, body)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith("Nothing to change")
    for field in ("minimum_charge_micro_usd", "platform_fee_percent"):
        assert field in message


async def test_a_body_that_is_not_json_is_a_400(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, [], **WITH_ADMIN) as net,
        httpx.AsyncClient(base_url=net.base_url) as client,
    ):
        response = await client.put("/v1/admin/pricing", content=b"{", headers=ADMIN)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_a_minimum_charge_too_large_names_the_field_sent(tmp_path: Path) -> None:
    async with inprocess_network(tmp_path, [], **WITH_ADMIN) as net:
        response = await put_pricing(net, {"minimum_charge_micro_usd": 10**12 + 1})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "minimum_charge_micro_usd"


async def test_a_refused_change_stores_no_part_of_itself(tmp_path: Path) -> None:
    async with inprocess_network(tmp_path, [], **WITH_ADMIN) as net:
        response = await put_pricing(
            net,
            {
                "model": "fake-model",
                "input_price": 1,
                "output_price": 2,
                "minimum_charge_micro_usd": 10**12 + 1,
            },
        )
        assert response.status_code == 400
        stored = await load_price_list(net.services.db, base_price_list(net.services.settings))
    assert stored.price_of("fake-model") == Price(111, 222)


async def test_a_raised_price_raises_the_amount_a_402_asks_for(tmp_path: Path) -> None:
    # With a 64-token context the prompt bound is 64 (any request's JSON is longer) and
    # max_tokens is 100: 64 * 1 + 100 * 2 = 264 micro-USD, then 64 * 3 + 100 * 5 = 692.
    engine = ScriptedEngine(context_length=64)
    settings = {**WITH_ADMIN, "minimum_charge_micro_usd": 0}
    settings["default_price"] = {"input": 1_000_000, "output": 2_000_000}
    async with inprocess_network(tmp_path, [engine], **settings) as net:
        key = await create_key(net.services.db, account_name="thrifty")
        await deposit(net.services.db, key.account_id, 100)
        request = {
            "model": "fake-model",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}],
        }
        async with httpx.AsyncClient(
            base_url=net.base_url, headers={"Authorization": f"Bearer {key.key}"}
        ) as client:
            before = await client.post("/v1/chat/completions", json=request)
            raised = await put_pricing(
                net, {"model": "fake-model", "input_price": 3_000_000, "output_price": 5_000_000}
            )
            after = await client.post("/v1/chat/completions", json=request)
            anthropic = await client.post("/v1/messages", json=request)
    assert raised.status_code == 200
    assert before.status_code == after.status_code == anthropic.status_code == 402
    assert "needs up to $0.000264 reserved" in before.json()["error"]["message"]
    for message in (after.json()["error"]["message"], anthropic.json()["error"]["message"]):
        assert "needs up to $0.000692 reserved" in message
        assert "$0.000100 available" in message
    assert engine.requests == []
