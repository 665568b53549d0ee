"""The adversarial harness itself works: a scripted provider speaking the real wire protocol
is served jobs by a real coordinator process, the books it leaves are read back exactly, and
each way the harness observes the coordinator (cancels, credits, rejections, closes) sees
what happened."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from moonflower import wire
from tests.adversarial.conftest import (
    PRICES,
    Books,
    Consumer,
    EnrolledProvider,
    Liveness,
    RunningCoordinator,
)
from tests.support.scripted_provider import (
    ScriptedJob,
    ScriptedProvider,
    honest_register,
    provider_entry,
)

Enroll = Callable[[str], Awaitable[EnrolledProvider]]


async def serve_one_honest_answer(
    running: RunningCoordinator, books: Books, consumer: Consumer, enrolled: EnrolledProvider
) -> None:
    before = await books.balances()
    async with ScriptedProvider.connect(running.base_url, token=enrolled.token) as provider:
        await provider.wait_routable(running.base_url)
        entry = await provider_entry(running.base_url, provider.provider_id)
        assert entry is not None
        assert entry["trust_level"] == "self_signed"

        async def serve() -> None:
            job = await provider.next_job()
            assert job.request.messages[0].content == "Say hello"
            await job.serve_honestly(["Hello", ",", " world"], prompt_tokens=5)

        response, _ = await asyncio.gather(consumer.chat("Say hello"), serve())
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["message"]["content"] == "Hello, world"
        assert body["usage"]["completion_tokens"] == 3
        await books.wait_settled()

    after = await books.balances()
    cost = PRICES.cost(body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
    assert cost > 0
    fee = PRICES.fee(cost)
    assert before[consumer.name] - after[consumer.name] == cost
    assert after[enrolled.name] - before[enrolled.name] == cost - fee
    assert after["platform"] - before["platform"] == fee
    assert await books.open_holds() == []
    await books.assert_balanced()
    [job] = await books.jobs()
    assert (job.status, job.completion_tokens) == ("completed", 3)


async def test_an_honest_scripted_provider_is_paid_what_the_consumer_is_charged(
    coordinator: RunningCoordinator, books: Books, consumer: Consumer, provider_token: Enroll
) -> None:
    await serve_one_honest_answer(coordinator, books, consumer, await provider_token("honest"))


@pytest.mark.postgres
async def test_the_same_on_postgresql(
    pg_coordinator: RunningCoordinator, books: Books, consumer: Consumer, provider_token: Enroll
) -> None:
    assert pg_coordinator.is_postgres
    await serve_one_honest_answer(pg_coordinator, books, consumer, await provider_token("honest"))


async def test_a_consumer_hanging_up_is_seen_as_a_cancel_with_credit_granted_on_the_way(
    coordinator: RunningCoordinator, books: Books, consumer: Consumer, provider_token: Enroll
) -> None:
    enrolled = await provider_token("honest")
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as provider:
        await provider.wait_routable(coordinator.base_url)
        body = {
            "model": "scripted",
            "messages": [{"role": "user", "content": "go on"}],
            "stream": True,
        }

        async def begin() -> ScriptedJob:
            job = await provider.next_job()
            await job.started(5)
            for n in range(40):
                await job.text(f" w{n}")
            return job

        # The coordinator answers a stream's headers only once its first output arrived.
        beginning = asyncio.create_task(begin())
        async with consumer.client.stream("POST", "/v1/chat/completions", json=body) as stream:
            job = await beginning
            lines = stream.aiter_lines()
            async with asyncio.timeout(10):
                while "w39" not in await anext(lines):
                    pass
            await job.wait_credit(16)
        await job.wait_cancelled()
        await job.finish("cancelled")
        await job.receipt()
        await books.wait_settled()
    await books.assert_balanced()


async def test_a_refused_registration_is_observed_with_its_close_code(
    coordinator: RunningCoordinator, provider_token: Enroll
) -> None:
    enrolled = await provider_token("old")

    def old_version(provider: ScriptedProvider) -> wire.Register:
        frame = honest_register(provider.signer, provider.keys)
        return frame.model_copy(update={"protocol_version": wire.PROTOCOL_VERSION - 1})

    async with ScriptedProvider.connect(
        coordinator.base_url, token=enrolled.token, register=old_version, expect_registered=False
    ) as provider:
        reply = await provider.registration_reply()
        assert isinstance(reply, wire.Rejected)
        assert "protocol version" in reply.reason
        assert await provider.closed() == 1008


async def test_the_liveness_probe_is_served_by_its_own_honest_provider(
    coordinator: RunningCoordinator, books: Books, assert_live: Liveness
) -> None:
    await assert_live()
    await assert_live()
    await books.wait_settled()
    assert await books.balance("live-provider") > 0
    await books.assert_balanced()
