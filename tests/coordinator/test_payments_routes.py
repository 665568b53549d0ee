"""Payments routes through the real coordinator and real provider agents on loopback, with
scripted engines: balance, usage and earnings pages, who may read what, the 402 a request
gets when its account cannot cover it, and provider tokens at WebSocket registration.

These tests are about routing, authentication and shapes; the arithmetic of real charges is
checked against the real model in tests/integration/test_billing.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from moonflower import errors
from moonflower.crypto.signing import SoftwareSigner
from moonflower.ledger import jobs as job_ledger
from moonflower.ledger.accounts import get_account, list_accounts
from moonflower.ledger.book import deposit
from moonflower.ledger.keys import CreatedKey, create_key, revoke_key
from moonflower.ledger.tables import Hold
from moonflower.provider.agent import ProviderAgent
from moonflower.settings import ProviderSettings
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import HARDWARE, InProcessNetwork, inprocess_network

# Prices at which a job of the scripted engine ("hi": 1 prompt token, 10 completion tokens)
# costs 1 + 100 = 101 micro-USD, of which the platform keeps floor(10.1) = 10.
PRICED = {
    "default_price": {"input": 1_000_000, "output": 10_000_000},
    "minimum_charge_micro_usd": 0,
    "platform_fee_percent": 10.0,
}
JOB_COST = 101
JOB_SHARE = 91

# At these prices a request to an engine with a 64-token context and max_tokens 100 must
# hold 64 * 1 + 100 * 2 = 264 micro-USD: the prompt bound is the context length, since
# the JSON of any request is longer than 64 bytes.
STEEP = {
    "default_price": {"input": 1_000_000, "output": 2_000_000},
    "minimum_charge_micro_usd": 0,
}
SMALL_CONTEXT = 64
NEEDED = 264


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], **extra}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def run_jobs(net: InProcessNetwork, count: int) -> list[str]:
    """`count` whole chat completions with the network's key; their job ids, oldest first."""
    job_ids = []
    async with httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client:
        for _ in range(count):
            response = await client.post("/v1/chat/completions", json=chat())
            assert response.status_code == 200
            job_ids.append(response.headers["x-moonflower-job-id"])
    return job_ids


async def add_earning_provider(
    net: InProcessNetwork, engine: ScriptedEngine, token: str
) -> ProviderAgent:
    """A provider agent that presents `token`, left running until the network stops."""
    settings = ProviderSettings(
        coordinator=net.base_url,
        token=SecretStr(token),
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    agent = ProviderAgent(settings, engine, HARDWARE, SoftwareSigner.generate())
    net.agents.append(agent)
    net.agent_tasks.append(asyncio.create_task(agent.run()))
    await net.wait_routable(len(net.agents))
    return agent


async def broke_key(net: InProcessNetwork, name: str = "broke") -> CreatedKey:
    """An API key whose account has never been credited."""
    return await create_key(net.services.db, account_name=name)


# --- balance ---------------------------------------------------------------------------


async def test_balance_states_a_deposit_exactly(tmp_path: Path) -> None:
    async with inprocess_network(tmp_path, []) as net:
        created = await create_key(net.services.db, account_name="alice")
        await deposit(net.services.db, created.account_id, 1_234_567)
        async with httpx.AsyncClient(base_url=net.base_url) as client:
            response = await client.get("/v1/payments/balance", headers=bearer(created.key))
    assert response.status_code == 200
    assert response.json() == {
        "object": "balance",
        "account_id": created.account_id,
        "account_name": "alice",
        "kind": "consumer",
        "balance_micro_usd": 1_234_567,
        "balance_usd": "1.234567",
        "held_micro_usd": 0,
        "held_usd": "0.000000",
        "available_micro_usd": 1_234_567,
        "available_usd": "1.234567",
        "withdrawable_micro_usd": 0,
        "withdrawable_usd": "0.000000",
    }


async def test_balance_takes_the_key_from_x_api_key_too(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, []) as net,
        httpx.AsyncClient(base_url=net.base_url) as client,
    ):
        response = await client.get("/v1/payments/balance", headers={"x-api-key": net.key})
    assert response.status_code == 200
    assert response.json()["balance_micro_usd"] == 100_000_000
    assert response.json()["balance_usd"] == "100.000000"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer mf-not-a-key"}, {"x-api-key": ""}],
    ids=["none", "unknown", "empty"],
)
async def test_balance_needs_a_valid_key(tmp_path: Path, headers: dict[str, str]) -> None:
    async with (
        inprocess_network(tmp_path, []) as net,
        httpx.AsyncClient(base_url=net.base_url) as client,
    ):
        response = await client.get("/v1/payments/balance", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- usage pages -----------------------------------------------------------------------


async def test_usage_pages_run_newest_first_and_continue_after_the_last_id(
    tmp_path: Path,
) -> None:
    async with inprocess_network(tmp_path, [ScriptedEngine()], **PRICED) as net:
        oldest, middle, newest = await run_jobs(net, 3)
        async with httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client:
            first = (await client.get("/v1/payments/usage?limit=2")).json()
            rest = (await client.get(f"/v1/payments/usage?limit=2&after={first['last_id']}")).json()
            whole = (await client.get("/v1/payments/usage")).json()
            exact = (await client.get("/v1/payments/usage?limit=3")).json()
    assert [line["id"] for line in first["data"]] == [newest, middle]
    assert (first["object"], first["has_more"]) == ("list", True)
    assert (first["first_id"], first["last_id"]) == (newest, middle)
    assert [line["id"] for line in rest["data"]] == [oldest]
    assert (rest["has_more"], rest["first_id"], rest["last_id"]) == (False, oldest, oldest)
    assert [line["id"] for line in whole["data"]] == [newest, middle, oldest]
    assert whole["has_more"] is False
    assert exact["has_more"] is False  # exactly `limit` lines left is not "more"
    line = first["data"][0]
    assert set(line) == {
        "object",
        "id",
        "created",
        "model",
        "provider_id",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "cost_micro_usd",
        "cost_usd",
        "receipt_hash",
    }
    assert line["object"] == "usage"
    assert (line["model"], line["status"]) == ("fake-model", "completed")
    assert (line["prompt_tokens"], line["completion_tokens"]) == (1, 10)
    assert (line["cost_micro_usd"], line["cost_usd"]) == (JOB_COST, "0.000101")
    assert line["provider_id"].startswith("prov_")
    assert len(line["receipt_hash"]) == 64


async def test_usage_is_empty_for_a_new_account_and_never_shows_another_accounts_jobs(
    tmp_path: Path,
) -> None:
    async with inprocess_network(tmp_path, [ScriptedEngine()]) as net:
        [job_id] = await run_jobs(net, 1)
        other = await create_key(net.services.db, account_name="other")
        async with httpx.AsyncClient(base_url=net.base_url, headers=bearer(other.key)) as client:
            fresh = (await client.get("/v1/payments/usage")).json()
            # Another account's job id as the cursor reveals nothing either.
            after = (await client.get(f"/v1/payments/usage?after={job_id}")).json()
    empty = {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
    assert fresh == empty
    assert after == empty


@pytest.mark.parametrize("limit", ["0", "101", "x", "-1", "", "1.5"])
@pytest.mark.parametrize("path", ["/v1/payments/usage", "/v1/provider/earnings"])
async def test_a_bad_page_limit_is_a_400_naming_limit(
    tmp_path: Path, path: str, limit: str
) -> None:
    async with inprocess_network(tmp_path, []) as net:
        token = await create_key(net.services.db, account_name="earner", purpose="provider")
        async with httpx.AsyncClient(base_url=net.base_url, headers=bearer(token.key)) as client:
            response = await client.get(path, params={"limit": limit})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "limit"
    assert error["type"] == "invalid_request_error"
    assert "'limit' must be a whole number from 1 to 100" in error["message"]


@pytest.mark.parametrize("limit", ["1", "100"])
async def test_page_limits_at_the_bounds_are_accepted(tmp_path: Path, limit: str) -> None:
    async with (
        inprocess_network(tmp_path, []) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        response = await client.get("/v1/payments/usage", params={"limit": limit})
    assert response.status_code == 200


async def test_a_superscript_digit_limit_is_a_400_not_a_500(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, []) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        response = await client.get("/v1/payments/usage", params={"limit": "²"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "limit"


# --- provider tokens and earnings ------------------------------------------------------


async def test_a_provider_token_reads_its_account_but_cannot_call_models(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    async with inprocess_network(tmp_path, [engine]) as net:
        token = await create_key(net.services.db, account_name="earner", purpose="provider")
        async with httpx.AsyncClient(base_url=net.base_url, headers=bearer(token.key)) as client:
            balance = await client.get("/v1/payments/balance")
            earnings = await client.get("/v1/provider/earnings")
            usage = await client.get("/v1/payments/usage")
            chat_response = await client.post("/v1/chat/completions", json=chat())
            message = await client.post(
                "/v1/messages",
                json={
                    "model": "fake-model",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
    assert balance.status_code == 200
    assert balance.json()["account_id"] == token.account_id
    assert (balance.json()["account_name"], balance.json()["kind"]) == ("earner", "provider")
    assert earnings.status_code == 200
    assert earnings.json()["data"] == []
    assert earnings.json()["total_earned_micro_usd"] == 0
    assert usage.status_code == 200
    assert chat_response.status_code == 401
    assert chat_response.json()["error"]["code"] == "invalid_api_key"
    assert message.status_code == 401
    assert message.json()["error"]["type"] == "authentication_error"
    assert engine.requests == []


async def test_a_consumer_key_may_not_read_earnings(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, []) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        response = await client.get("/v1/provider/earnings")
    assert response.status_code == 403
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "permission_denied")
    assert "provider accounts" in error["message"]


async def test_earnings_lines_sum_to_the_provider_accounts_balance(tmp_path: Path) -> None:
    async with inprocess_network(tmp_path, [], **PRICED) as net:
        token = await create_key(net.services.db, account_name="earner", purpose="provider")
        await add_earning_provider(net, ScriptedEngine(), token.key)
        job_ids = await run_jobs(net, 3)
        async with httpx.AsyncClient(base_url=net.base_url, headers=bearer(token.key)) as client:
            body = (await client.get("/v1/provider/earnings")).json()
            first = (await client.get("/v1/provider/earnings?limit=2")).json()
            rest = (
                await client.get(f"/v1/provider/earnings?limit=2&after={first['last_id']}")
            ).json()
            balance = (await client.get("/v1/payments/balance")).json()
        account = await get_account(net.services.db, token.account_id)
    lines = body["data"]
    assert [line["id"] for line in lines] == job_ids[::-1]
    assert [line["earned_micro_usd"] for line in lines] == [JOB_SHARE] * 3
    assert [line["earned_usd"] for line in lines] == ["0.000091"] * 3
    assert all(line["object"] == "earning" for line in lines)
    assert all((line["prompt_tokens"], line["completion_tokens"]) == (1, 10) for line in lines)
    assert sum(line["earned_micro_usd"] for line in lines) == account.balance_micro_usd
    assert body["total_earned_micro_usd"] == account.balance_micro_usd == 3 * JOB_SHARE
    assert body["total_earned_usd"] == "0.000273"
    assert body["balance"] == balance
    assert balance["balance_micro_usd"] == balance["withdrawable_micro_usd"] == 3 * JOB_SHARE
    assert [line["id"] for line in first["data"]] == job_ids[:0:-1]
    assert first["has_more"] is True
    assert [line["id"] for line in rest["data"]] == job_ids[:1]
    assert rest["has_more"] is False


@pytest.mark.parametrize("kind", ["unknown", "api_key", "revoked"])
async def test_a_bad_provider_token_is_refused_at_registration(tmp_path: Path, kind: str) -> None:
    async with inprocess_network(tmp_path, []) as net:
        if kind == "unknown":
            token = "mfp-" + "A" * 43
        elif kind == "api_key":
            token = net.key  # an API key is not a provider token
        else:
            created = await create_key(net.services.db, account_name="gone", purpose="provider")
            assert await revoke_key(net.services.db, created.key_id)
            token = created.key
        names_before = {a.name for a in await list_accounts(net.services.db)}
        settings = ProviderSettings(coordinator=net.base_url, token=SecretStr(token))
        agent = ProviderAgent(settings, ScriptedEngine(), HARDWARE, SoftwareSigner.generate())
        with pytest.raises(errors.RegistrationRejected, match="unknown or revoked provider token"):
            async with asyncio.timeout(10):
                await agent.run()
        assert not agent.is_connected.is_set()
        assert not net.services.registry.connected_for("fake-model")
        assert {a.name for a in await list_accounts(net.services.db)} == names_before


# --- not enough credit -----------------------------------------------------------------


def assert_insufficient(message: str, *, needed: str, available: str) -> None:
    assert f"needs up to ${needed} reserved" in message
    assert f"${available} available" in message
    assert "max_tokens" in message


async def test_no_credit_is_a_402_in_the_openai_dialect(tmp_path: Path) -> None:
    engine = ScriptedEngine(context_length=SMALL_CONTEXT)
    async with inprocess_network(tmp_path, [engine], **STEEP) as net:
        broke = await broke_key(net)
        async with httpx.AsyncClient(base_url=net.base_url, headers=bearer(broke.key)) as client:
            whole = await client.post("/v1/chat/completions", json=chat(max_tokens=100))
            streamed = await client.post(
                "/v1/chat/completions", json=chat(max_tokens=100, stream=True)
            )
    for response in (whole, streamed):
        assert response.status_code == 402
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"], error["param"]) == (
            "insufficient_quota",
            "insufficient_funds",
            None,
        )
        assert_insufficient(error["message"], needed="0.000264", available="0.000000")
    assert engine.requests == []


async def test_no_credit_is_a_402_in_the_anthropic_dialect(tmp_path: Path) -> None:
    engine = ScriptedEngine(context_length=SMALL_CONTEXT)
    async with inprocess_network(tmp_path, [engine], **STEEP) as net:
        broke = await broke_key(net)
        async with httpx.AsyncClient(
            base_url=net.base_url, headers={"x-api-key": broke.key}
        ) as client:
            response = await client.post(
                "/v1/messages",
                json={
                    "model": "fake-model",
                    "max_tokens": 100,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
    assert response.status_code == 402
    body = response.json()
    assert set(body) == {"type", "error", "request_id"}
    assert body["type"] == "error"
    assert body["error"]["type"] == "billing_error"
    assert body["request_id"].startswith("req_")
    assert_insufficient(body["error"]["message"], needed="0.000264", available="0.000000")
    assert engine.requests == []


async def test_a_402_states_what_is_available_and_leaves_no_hold_and_no_job(
    tmp_path: Path,
) -> None:
    engine = ScriptedEngine(context_length=SMALL_CONTEXT)
    async with inprocess_network(tmp_path, [engine], **STEEP) as net:
        db = net.services.db
        short = await create_key(db, account_name="short")
        await deposit(db, short.account_id, NEEDED - 1)
        async with httpx.AsyncClient(base_url=net.base_url, headers=bearer(short.key)) as client:
            refused = await client.post("/v1/chat/completions", json=chat(max_tokens=100))
            usage = (await client.get("/v1/payments/usage")).json()
            # One token less to generate fits what the account has.
            accepted = await client.post("/v1/chat/completions", json=chat(max_tokens=99))
        async with db.sessions() as session:
            holds = (await session.execute(select(Hold))).scalars().all()
        jobs = await job_ledger.list_jobs(db, account_id=short.account_id)
        after = await get_account(db, short.account_id)
    assert refused.status_code == 402
    assert_insufficient(refused.json()["error"]["message"], needed="0.000264", available="0.000263")
    assert usage["data"] == []
    assert accepted.status_code == 200
    # The only hold and the only job are the accepted request's; both are closed.
    assert [(h.job_id, h.status) for h in holds] == [
        (accepted.headers["x-moonflower-job-id"], "settled")
    ]
    assert [j.id for j in jobs] == [accepted.headers["x-moonflower-job-id"]]
    assert after.held_micro_usd == 0
    assert len(engine.requests) == 1


async def test_counting_tokens_is_free_and_works_without_credit(tmp_path: Path) -> None:
    async with inprocess_network(tmp_path, [ScriptedEngine()], **STEEP) as net:
        broke = await broke_key(net)
        async with httpx.AsyncClient(
            base_url=net.base_url, headers={"x-api-key": broke.key}
        ) as client:
            counted = await client.post(
                "/v1/messages/count_tokens",
                json={
                    "model": "fake-model",
                    "messages": [{"role": "user", "content": "one two three"}],
                },
            )
            refused = await client.post(
                "/v1/messages",
                json={
                    "model": "fake-model",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": "one two three"}],
                },
            )
        async with net.services.db.sessions() as session:
            holds = (await session.execute(select(Hold))).scalars().all()
        account = await get_account(net.services.db, broke.account_id)
    assert counted.status_code == 200
    assert counted.json() == {"input_tokens": 3}
    assert refused.status_code == 402  # the same account cannot afford a generation
    assert holds == []
    assert (account.balance_micro_usd, account.held_micro_usd) == (0, 0)
