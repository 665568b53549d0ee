"""Money end to end: real coordinator and provider processes, the real model, the official
SDKs. Every amount is checked to the micro-dollar against the ledger's own accounts, with
the expected figures computed from the `usage` the consumer received (tests.support.money).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support.money import Prices, accounts, usd
from tests.support.network import LocalNetwork, Process, wait_until

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
# Odd prices, so a wrong rounding shows up in the last digit.
PRICES = Prices(input=1_234_567, output=7_654_321, minimum=100, fee_bps=500)
EARNER = "earner"
ADMIN_KEY = "admin-" + uuid.uuid4().hex
QUESTION = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def start_billed_network(root: Path) -> tuple[LocalNetwork, Process]:
    """A coordinator at `PRICES` and one provider earning for the provider account
    `EARNER`, ready to serve."""
    network = LocalNetwork(root, settings={**PRICES.settings(), "ADMIN_KEY": ADMIN_KEY})
    network.start_coordinator()
    token = network.cli("accounts", "create", EARNER, "--provider").strip().splitlines()[-1]
    network.provider_token = token  # type: ignore[attr-defined]
    provider = network.start_provider("provider", "default", "--token", token)
    watcher = network.create_key("watcher", credit_usd=None)
    wait_until(lambda: serves(network, watcher), 60, "the provider to pass its first challenge")
    return network, provider


def serves(network: LocalNetwork, key: str) -> bool:
    response = httpx.get(f"{network.base_url}/v1/models", headers={"x-api-key": key}, timeout=5)
    return any(m["id"] == MODEL for m in response.json()["data"])


@pytest.fixture(scope="module")
def billed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network, _provider = start_billed_network(tmp_path_factory.mktemp("billed"))
    try:
        yield network
    finally:
        network.stop()


def new_consumer(network: LocalNetwork, credit_usd: str = "1") -> tuple[str, str]:
    name = f"consumer-{uuid.uuid4().hex[:8]}"
    return name, network.create_key(name, credit_usd=credit_usd)


def assert_settled(network: LocalNetwork, before: dict[str, Any], consumer: str, cost: int) -> None:
    """The consumer paid exactly `cost`, the provider earned it less the fee, the platform
    the fee; nothing is left on hold."""
    after = accounts(network)
    fee = PRICES.fee(cost)
    assert before[consumer].balance_micro_usd - after[consumer].balance_micro_usd == cost
    assert after[consumer].held_micro_usd == 0
    assert after[EARNER].balance_micro_usd - before[EARNER].balance_micro_usd == cost - fee
    assert after["platform"].balance_micro_usd - before["platform"].balance_micro_usd == fee
    assert sum(a.balance_micro_usd for a in after.values()) == 0  # external balances the rest


def wait_settled(network: LocalNetwork, consumer: str) -> None:
    wait_until(lambda: accounts(network)[consumer].held_micro_usd == 0, 30, "the job to be settled")


def test_openai_whole_answer_costs_exactly_its_usage(billed: LocalNetwork) -> None:
    consumer, key = new_consumer(billed)
    before = accounts(billed)
    client = openai.OpenAI(base_url=f"{billed.base_url}/v1", api_key=key)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=24,  # type: ignore[arg-type]
    )
    usage = raw.parse().usage
    assert usage is not None
    cost = PRICES.cost(usage.prompt_tokens, usage.completion_tokens)
    assert cost > PRICES.minimum
    assert raw.headers["x-moonflower-cost-usd"] == usd(cost)
    assert_settled(billed, before, consumer, cost)


def test_openai_stream_costs_exactly_its_usage_and_says_so(billed: LocalNetwork) -> None:
    consumer, key = new_consumer(billed)
    before = accounts(billed)
    client = openai.OpenAI(base_url=f"{billed.base_url}/v1", api_key=key)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage, stated = None, None
    for chunk in stream:
        usage = chunk.usage or usage
        receipt = (chunk.model_extra or {}).get("moonflower_receipt")
        stated = receipt["cost_usd"] if receipt else stated
    assert usage is not None
    cost = PRICES.cost(usage.prompt_tokens, usage.completion_tokens)
    assert stated == usd(cost)
    wait_settled(billed, consumer)
    assert_settled(billed, before, consumer, cost)


def test_anthropic_message_costs_exactly_its_usage(billed: LocalNetwork) -> None:
    consumer, key = new_consumer(billed)
    before = accounts(billed)
    client = anthropic.Anthropic(base_url=billed.base_url, api_key=key)
    message = client.messages.create(
        model=MODEL,
        max_tokens=24,
        messages=QUESTION,  # type: ignore[arg-type]
    )
    cost = PRICES.cost(message.usage.input_tokens, message.usage.output_tokens)
    assert_settled(billed, before, consumer, cost)


def test_the_minimum_charge_applies(billed: LocalNetwork) -> None:
    consumer, key = new_consumer(billed)
    before = accounts(billed)
    client = openai.OpenAI(base_url=f"{billed.base_url}/v1", api_key=key)
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1
    )
    assert completion.usage is not None
    exact = PRICES.cost(completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert exact == PRICES.minimum  # a few tokens at these prices cost less than the minimum
    assert_settled(billed, before, consumer, PRICES.minimum)


def test_usage_and_balance_endpoints_report_the_same_charges(billed: LocalNetwork) -> None:
    _consumer, key = new_consumer(billed)
    client = openai.OpenAI(base_url=f"{billed.base_url}/v1", api_key=key)
    costs = []
    for _ in range(3):
        completion = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)  # type: ignore[arg-type]
        assert completion.usage is not None
        costs.append(
            PRICES.cost(completion.usage.prompt_tokens, completion.usage.completion_tokens)
        )
    headers = {"Authorization": f"Bearer {key}"}
    first = httpx.get(f"{billed.base_url}/v1/payments/usage?limit=2", headers=headers).json()
    rest = httpx.get(
        f"{billed.base_url}/v1/payments/usage?limit=2&after={first['last_id']}", headers=headers
    ).json()
    lines = first["data"] + rest["data"]
    assert first["has_more"] is True
    assert rest["has_more"] is False
    assert [line["cost_micro_usd"] for line in lines] == costs[::-1]
    assert all(len(line["receipt_hash"]) == 64 for line in lines)
    assert not any("content" in line or "text" in line for line in lines)
    balance = httpx.get(f"{billed.base_url}/v1/payments/balance", headers=headers).json()
    assert balance["balance_micro_usd"] == 1_000_000 - sum(costs)
    assert balance["available_usd"] == usd(1_000_000 - sum(costs))


def test_not_enough_credit_is_a_402_in_each_dialect(billed: LocalNetwork) -> None:
    consumer, key = new_consumer(billed, credit_usd="0.001")
    before = accounts(billed)
    client = openai.OpenAI(base_url=f"{billed.base_url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
    assert raised.value.status_code == 402
    error: Any = raised.value.body  # the SDK unwraps OpenAI's {"error": ...}
    assert error["type"] == "insufficient_quota"
    assert "$0.001000 available" in error["message"]
    assert "max_tokens" in error["message"]
    claude = anthropic.Anthropic(base_url=billed.base_url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as refused:
        claude.messages.create(model=MODEL, max_tokens=8000, messages=QUESTION)  # type: ignore[arg-type]
    assert refused.value.status_code == 402
    assert refused.value.body["error"]["type"] == "billing_error"  # type: ignore[index]
    assert accounts(billed)[consumer] == before[consumer]


def test_a_prompt_the_model_refuses_costs_nothing(billed: LocalNetwork) -> None:
    consumer, key = new_consumer(billed)
    before = accounts(billed)
    response = httpx.post(
        f"{billed.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "lighthouse " * 9000}],
            "max_tokens": 8,
        },
        timeout=120,
    )
    assert response.status_code == 400
    assert accounts(billed)[consumer] == before[consumer]


def logprob_count(chunk: dict[str, Any]) -> int:
    choices = chunk.get("choices") or [{}]
    return len((choices[0].get("logprobs") or {}).get("content") or [])


def stream_lines(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: {"):
            yield json.loads(line.removeprefix("data: "))


def test_a_consumer_leaving_mid_stream_pays_for_the_tokens_generated(
    billed: LocalNetwork,
) -> None:
    consumer, key = new_consumer(billed)
    before = accounts(billed)
    received = 0
    with httpx.stream(
        "POST",
        f"{billed.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": MODEL,
            "messages": QUESTION,
            "max_tokens": 400,
            "stream": True,
            "logprobs": True,
        },
        timeout=60,
    ) as response:
        assert response.status_code == 200
        job_id = response.headers["x-moonflower-job-id"]
        for chunk in stream_lines(response):
            received += logprob_count(chunk)
            if received >= 5:
                break  # hang up mid-stream
    wait_settled(billed, consumer)
    headers = {"Authorization": f"Bearer {key}"}
    receipt = httpx.get(f"{billed.base_url}/v1/receipts/{job_id}", headers=headers).json()
    signed = json.loads(receipt["receipt"])
    assert signed["finish_reason"] == "cancelled"
    assert received <= signed["completion_tokens"] < 400
    usage = httpx.get(f"{billed.base_url}/v1/payments/usage", headers=headers).json()["data"][0]
    assert usage["id"] == job_id
    assert usage["completion_tokens"] == signed["completion_tokens"]
    cost = PRICES.cost(signed["prompt_tokens"], signed["completion_tokens"])
    assert usage["cost_micro_usd"] == cost
    assert_settled(billed, before, consumer, cost)


def test_a_provider_killed_mid_stream_is_paid_only_what_the_consumer_received(
    tmp_path: Path,
) -> None:
    network, provider = start_billed_network(tmp_path)
    try:
        consumer, key = new_consumer(network)
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": MODEL, "messages": QUESTION, "logprobs": True}
        probe = httpx.post(
            f"{network.base_url}/v1/chat/completions",
            headers=headers,
            json={**body, "max_tokens": 1},
            timeout=60,
        ).json()
        prompt_tokens = probe["usage"]["prompt_tokens"]
        before = accounts(network)
        received, saw_error = 0, False
        with httpx.stream(
            "POST",
            f"{network.base_url}/v1/chat/completions",
            headers=headers,
            json={**body, "max_tokens": 400, "stream": True},
            timeout=60,
        ) as response:
            assert response.status_code == 200
            for chunk in stream_lines(response):
                received += logprob_count(chunk)
                saw_error = saw_error or "error" in chunk
                if received >= 5 and provider.is_running:
                    provider.stop(signal.SIGKILL)
        assert saw_error
        assert 5 <= received < 400
        wait_settled(network, consumer)
        assert_settled(network, before, consumer, PRICES.cost(prompt_tokens, received))
    finally:
        network.stop()


def test_a_provider_killed_before_the_first_token_costs_nothing(tmp_path: Path) -> None:
    network, provider = start_billed_network(tmp_path)
    try:
        consumer, key = new_consumer(network)
        before = accounts(network)
        long_prompt = [{"role": "user", "content": "lighthouse keeper " * 1000}]
        out: dict[str, httpx.Response] = {}

        def ask() -> None:
            out["response"] = httpx.post(
                f"{network.base_url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": MODEL, "messages": long_prompt, "max_tokens": 50, "stream": True},
                timeout=120,
            )

        asking = threading.Thread(target=ask)
        asking.start()
        assert network.coordinator is not None
        coordinator = network.coordinator
        wait_until(lambda: "sent to provider" in coordinator.log(), 30, "the job to be sent")
        provider.stop(signal.SIGKILL)  # while it is still reading the prompt
        asking.join(timeout=120)
        response = out["response"]
        # Nothing had reached the consumer, and no other provider could take the job.
        assert response.status_code in (502, 503), response.text
        assert "error" in response.json()
        wait_settled(network, consumer)
        after = accounts(network)
        assert after[consumer] == before[consumer]
        assert after[EARNER].balance_micro_usd == before[EARNER].balance_micro_usd
        assert after["platform"].balance_micro_usd == before["platform"].balance_micro_usd
    finally:
        network.stop()


def test_the_provider_sees_what_each_job_earned_it(billed: LocalNetwork) -> None:
    _consumer, key = new_consumer(billed)
    client = openai.OpenAI(base_url=f"{billed.base_url}/v1", api_key=key)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=16,
    )
    usage = raw.parse().usage
    assert usage is not None
    cost = PRICES.cost(usage.prompt_tokens, usage.completion_tokens)
    token = billed.provider_token  # type: ignore[attr-defined]
    earnings = httpx.get(
        f"{billed.base_url}/v1/provider/earnings", headers={"Authorization": f"Bearer {token}"}
    ).json()
    newest = earnings["data"][0]
    assert newest["id"] == raw.headers["x-moonflower-job-id"]
    assert newest["earned_micro_usd"] == cost - PRICES.fee(cost)
    assert newest["completion_tokens"] == usage.completion_tokens
    assert earnings["total_earned_micro_usd"] == accounts(billed)[EARNER].balance_micro_usd


def test_an_admin_price_change_applies_to_the_next_request(billed: LocalNetwork) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    dearer = Prices(input=2_000_003, output=9_000_001, minimum=PRICES.minimum, fee_bps=700)
    change = {
        "model": MODEL,
        "input_price": dearer.input,
        "output_price": dearer.output,
        "platform_fee_percent": 7,
    }
    response = httpx.put(f"{billed.base_url}/v1/admin/pricing", headers=admin, json=change)
    assert response.status_code == 200, response.text
    try:
        listed = httpx.get(f"{billed.base_url}/v1/pricing").json()
        assert {
            "model": MODEL,
            "input_price": dearer.input,
            "output_price": dearer.output,
        }.items() <= next(p for p in listed["prices"] if p["model"] == MODEL).items()
        consumer, key = new_consumer(billed)
        before = accounts(billed)
        client = openai.OpenAI(base_url=f"{billed.base_url}/v1", api_key=key)
        completion = client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=16,
        )
        assert completion.usage is not None
        cost = dearer.cost(completion.usage.prompt_tokens, completion.usage.completion_tokens)
        after = accounts(billed)
        assert before[consumer].balance_micro_usd - after[consumer].balance_micro_usd == cost
        fee = dearer.fee(cost)
        assert after["platform"].balance_micro_usd - before["platform"].balance_micro_usd == fee
        assert after[EARNER].balance_micro_usd - before[EARNER].balance_micro_usd == cost - fee
    finally:
        restore = {
            "model": MODEL,
            "input_price": PRICES.input,
            "output_price": PRICES.output,
            "platform_fee_percent": PRICES.fee_bps / 100,
        }
        assert httpx.put(
            f"{billed.base_url}/v1/admin/pricing", headers=admin, json=restore
        ).is_success


def held(network: LocalNetwork, consumer: str) -> int:
    return accounts(network)[consumer].held_micro_usd


def test_holds_of_a_crashed_coordinator_are_released_once_their_lease_ran_out(
    tmp_path: Path,
) -> None:
    network, _provider = start_billed_network(tmp_path)
    try:
        consumer, key = new_consumer(network)
        before = accounts(network)
        with httpx.stream(
            "POST",
            f"{network.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": MODEL, "messages": QUESTION, "max_tokens": 400, "stream": True},
            timeout=60,
        ) as response:
            assert response.status_code == 200
            assert network.coordinator is not None
            network.coordinator.stop(signal.SIGKILL)  # mid-request: nobody settles
            with pytest.raises(httpx.HTTPError):
                list(response.iter_lines())
        reserved = held(network, consumer)
        assert reserved > 0
        network.start_coordinator()
        assert held(network, consumer) == reserved  # leased: it may belong to a live request
        assert network.coordinator is not None
        network.coordinator.stop(signal.SIGKILL)
        expire_leases(network)  # nobody renewed them: their lease ran out
        network.start_coordinator()
        after = accounts(network)
        assert after[consumer] == before[consumer]
    finally:
        network.stop()


def expire_leases(network: LocalNetwork) -> None:
    database = network.data_dir / "moonflower.db"
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE holds SET lease_expires_at = datetime('now', '-1 minute')")
