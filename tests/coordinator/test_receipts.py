"""Receipts: the coordinator checks each provider receipt against the request it sent and the
output it relayed, stores it for the consumer, and exposes hash and signature in headers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from moonflower.crypto.receipt import receipt_hash, verify_receipt, verify_receipt_hash
from moonflower.crypto.signing import b64d
from moonflower.generation import Finished, GenerationRequest, Started, TextDelta, Usage
from tests.support.handmade_provider import handmade, serve_one_job
from tests.support.inprocess import InProcessNetwork, inprocess_network

EVENTS: list[Any] = [
    Started(prompt_tokens=4),
    TextDelta("<think>hmm</think>", tokens=1),
    TextDelta("Receipts bind output.", tokens=2),
    Finished(reason="stop", usage=Usage(4, 3)),
]


async def run_job(net: InProcessNetwork, provider: Any, **serving: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client:
        asking = asyncio.create_task(
            client.post(
                "/v1/chat/completions",
                json={"model": "handmade", "messages": [{"role": "user", "content": "hi"}]},
            )
        )
        await serve_one_job(provider, EVENTS, **serving)
        return await asking


async def start(net: InProcessNetwork, provider: Any) -> None:
    await provider.register(statement=provider.signed())
    await provider.send(provider.answer(await provider.next_challenge()))
    await net.wait_routable(1)


async def test_an_honest_receipt_is_checked_stored_and_shown(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, []) as net,
        handmade(net.base_url, await net.enroll()) as provider,
    ):
        await start(net, provider)
        response = await run_job(net, provider)
        assert response.status_code == 200
        body = response.json()
        assert body["choices"][0]["message"]["content"] == "Receipts bind output."
        assert body["choices"][0]["message"]["reasoning_content"] == "hmm"
        key = provider.signer.public_key()
        assert verify_receipt_hash(
            response.headers["x-response-hash"], response.headers["x-se-signature"], key
        )
        job_id = response.headers["x-moonflower-job-id"]
        async with httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client:
            stored = (await client.get(f"/v1/receipts/{job_id}")).json()
            stranger = await client.get(
                f"/v1/receipts/{job_id}", headers={"Authorization": "Bearer mf-nobody"}
            )
        assert stranger.status_code == 401
        assert receipt_hash(stored["receipt"]) == response.headers["x-response-hash"]
        receipt = verify_receipt(
            stored["receipt"], stored["signature"], b64d(stored["signing_public_key"])
        )
        assert (receipt.job_id, receipt.prompt_tokens, receipt.completion_tokens) == (job_id, 4, 3)


def other_request() -> GenerationRequest:
    return GenerationRequest(model="handmade", max_tokens=1)


@pytest.mark.parametrize(
    "serving",
    [
        {"corrupt_signature": True},
        {"receipt_request": other_request()},
        {"receipt_events": [Started(prompt_tokens=4), TextDelta("Other words."), EVENTS[-1]]},
    ],
    ids=["tampered", "another_request", "other_output"],
)
async def test_a_receipt_that_does_not_hold_fails_the_job_and_untrusts(
    tmp_path: Path, serving: dict[str, Any]
) -> None:
    async with (
        inprocess_network(tmp_path, []) as net,
        handmade(net.base_url, await net.enroll()) as provider,
    ):
        await start(net, provider)
        response = await run_job(net, provider, **serving)
        assert response.status_code == 502
        async with httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client:
            feed = (await client.get("/v1/providers/attestation")).json()["data"]
            job_id = response.headers.get("x-moonflower-job-id")
            assert job_id is None or (await client.get(f"/v1/receipts/{job_id}")).status_code == 404
        assert feed[0]["is_untrusted"] is True
        assert "receipt rejected" in feed[0]["untrusted_reason"]
