"""Attestation and challenges through the real coordinator: every way a provider can fail to
prove itself ends with it not serving, and nothing restores trust on the same connection."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from moonflower import wire
from moonflower.crypto.signing import SoftwareSigner, b64d, b64e
from moonflower.crypto.statement import verify_statement
from tests.support.fake_engine import ScriptedEngine
from tests.support.handmade_provider import HandmadeProvider, handmade
from tests.support.inprocess import InProcessNetwork, inprocess_network

# Challenge timestamps are whole seconds, so a deadline under about 1.5 s would be flaky.
FAST_CHALLENGES: dict[str, Any] = {"challenge_interval_s": 0.05, "challenge_deadline_s": 2.0}


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


async def feed(net: InProcessNetwork) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=net.base_url) as client:
        entries = (await client.get("/v1/providers/attestation")).json()["data"]
    return {entry["provider_id"]: entry for entry in entries}


async def ask(net: InProcessNetwork, model: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client:
        return await client.post("/v1/chat/completions", json=chat(model), headers=headers)


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.02)


async def test_an_honest_provider_is_self_signed_and_its_statement_reverifies(
    tmp_path: Path,
) -> None:
    async with inprocess_network(tmp_path, [ScriptedEngine(script="fine")]) as net:
        response = await ask(net, "fake-model")
        assert response.status_code == 200
        assert response.headers["x-provider-trust-level"] == "self_signed"
        assert response.headers["x-provider-attested"] == "true"
        assert response.headers["x-provider-id"].startswith("prov_")
        (entry,) = (await feed(net)).values()
        assert entry["trust_level"] == "self_signed"
        assert entry["is_attested"] is True
        assert entry["last_challenge_passed_at"] is not None
        statement = verify_statement(
            entry["statement"]["json"], entry["statement"]["signature"], now=time.time()
        )
        assert statement.model_hashes == {"fake-model": "0" * 64}


async def test_no_statement_serves_only_below_the_default_floor(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, [], min_trust="none") as net,
        handmade(net.base_url, await net.enroll()) as provider,
    ):
        await provider.register(statement=None)
        await net.wait_routable(1)
        assert (await feed(net))[next(iter(await feed(net)))]["trust_level"] == "none"
        asking = asyncio.create_task(
            ask(net, "handmade", **{"x-moonflower-min-trust": "self_signed"})
        )
        response = await asking
        assert response.status_code == 503
        assert "self_signed" in response.json()["error"]["message"]
        bad = await ask(net, "handmade", **{"x-moonflower-min-trust": "godlike"})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "x-moonflower-min-trust"


def forged(provider: HandmadeProvider) -> wire.SignedBlob:
    signed = provider.signed()
    raw = bytearray(b64d(signed.signature))
    raw[-1] ^= 1
    return wire.SignedBlob(json_text=signed.json_text, signature=b64e(bytes(raw)))


def truncated(provider: HandmadeProvider) -> wire.SignedBlob:
    signed = provider.signed()
    return wire.SignedBlob(json_text=signed.json_text, signature=signed.signature[:20])


def other_key(provider: HandmadeProvider) -> wire.SignedBlob:
    statement = provider.statement()
    impostor = SoftwareSigner.generate()
    signature = b64e(impostor.sign(statement.canonical_bytes()))
    return wire.SignedBlob(json_text=statement.canonical_bytes().decode(), signature=signature)


def unbound_encryption_key(provider: HandmadeProvider) -> wire.SignedBlob:
    other = b64e(b"\x07" * 32)
    return provider.signed(provider.statement(encryption_public_key=other))


def stale(provider: HandmadeProvider) -> wire.SignedBlob:
    return provider.signed(provider.statement(timestamp=int(time.time()) - 3600))


def future(provider: HandmadeProvider) -> wire.SignedBlob:
    return provider.signed(provider.statement(timestamp=int(time.time()) + 3600))


def other_weights(provider: HandmadeProvider) -> wire.SignedBlob:
    return provider.signed(provider.statement(model_hashes={provider.model: "ee" * 32}))


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (forged, "bad_signature"),
        (truncated, "bad_signature"),
        (other_key, "bad_signature"),
        (unbound_encryption_key, "encryption key not bound to the statement"),
        (stale, "stale"),
        (future, "future"),
        (other_weights, "model hashes differ from the models registered"),
    ],
)
async def test_a_statement_that_does_not_hold_leaves_the_provider_unserving(
    tmp_path: Path, make: Any, problem: str
) -> None:
    async with (
        inprocess_network(tmp_path, []) as net,
        handmade(net.base_url, await net.enroll()) as provider,
    ):
        await provider.register(statement=make(provider))
        await wait_for(lambda: _listed(net, 1))
        (entry,) = (await feed(net)).values()
        assert entry["trust_level"] == "none"
        assert entry["statement_problem"] == problem
        response = await ask(net, "handmade")
        assert response.status_code == 503
        assert "self_signed" in response.json()["error"]["message"]


async def honest_start(net: InProcessNetwork, provider: HandmadeProvider) -> None:
    await provider.register(statement=provider.signed())
    await provider.send(provider.answer(await provider.next_challenge()))
    await net.wait_routable(1)


@pytest.mark.parametrize("breach", ["replayed_nonce", "silent", "late"])
async def test_three_failed_challenges_in_a_row_make_the_provider_untrusted(
    tmp_path: Path, breach: str
) -> None:
    async with (
        inprocess_network(tmp_path, [], **FAST_CHALLENGES) as net,
        handmade(net.base_url, await net.enroll()) as provider,
    ):
        await provider.register(statement=provider.signed())
        first = await provider.next_challenge()
        await provider.send(provider.answer(first))
        await net.wait_routable(1)
        for _ in range(3):
            challenge = await provider.next_challenge()
            if breach == "replayed_nonce":
                # A correctly signed status for an earlier challenge, offered for this one.
                replay = provider.answer(first)
                await provider.send(
                    wire.ChallengeAnswer(nonce=challenge.nonce, status=replay.status)
                )
            elif breach == "late":
                await asyncio.sleep(FAST_CHALLENGES["challenge_deadline_s"] + 0.1)
                await provider.send(provider.answer(challenge))
            # "silent": no answer at all
        await wait_for(lambda: _untrusted(net))
        (entry,) = (await feed(net)).values()
        assert entry["untrusted_reason"] == "3 challenges failed in a row"
        assert (await ask(net, "handmade")).status_code == 503


async def _listed(net: InProcessNetwork, count: int) -> bool:
    return len(await feed(net)) >= count


async def _untrusted(net: InProcessNetwork) -> bool:
    return any(e["is_untrusted"] for e in (await feed(net)).values())


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        ({"posture": {"secure_boot": False, "kernel_lockdown": None}}, "negative security posture"),
        ({"model_hashes": {"handmade": "ff" * 32}}, "model weights changed"),
        ({"code_hash": "9" * 64}, "running code changed"),
    ],
)
async def test_a_bad_answer_untrusts_at_once_and_nothing_restores_it(
    tmp_path: Path, facts: dict[str, Any], reason: str
) -> None:
    async with (
        inprocess_network(tmp_path, [], **FAST_CHALLENGES) as net,
        handmade(net.base_url, await net.enroll()) as provider,
    ):
        await honest_start(net, provider)
        await provider.send(provider.answer(await provider.next_challenge(), **facts))
        await wait_for(lambda: _untrusted(net))
        (entry,) = (await feed(net)).values()
        assert reason in entry["untrusted_reason"]
        # Heartbeats and honest answers afterwards change nothing on this connection.
        await provider.send(wire.Heartbeat(active_jobs=0, jobs_served=0, tokens_generated=0))
        await asyncio.sleep(0.2)
        (entry,) = (await feed(net)).values()
        assert entry["is_untrusted"] is True
        assert (await ask(net, "handmade")).status_code == 503


async def test_a_negative_posture_in_the_statement_is_untrusted_from_the_start(
    tmp_path: Path,
) -> None:
    async with (
        inprocess_network(tmp_path, []) as net,
        handmade(net.base_url, await net.enroll(), posture={"secure_boot": False}) as provider,
    ):
        await provider.register(statement=provider.signed())
        await wait_for(lambda: _untrusted(net))


async def test_claiming_another_providers_serial_inherits_nothing(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, [], **FAST_CHALLENGES) as net,
        handmade(net.base_url, await net.enroll(), serial="C02SERIAL") as original,
    ):
        await honest_start(net, original)
        async with handmade(net.base_url, await net.enroll(), serial="C02SERIAL") as copycat:
            await copycat.register(statement=copycat.signed())
            await wait_for(lambda: _listed(net, 2))  # it never answers its challenges
            entries = list((await feed(net)).values())
            trusted = [e for e in entries if e["is_attested"]]
            assert len(entries) == 2
            assert len(trusted) == 1
            statement = verify_statement(
                trusted[0]["statement"]["json"],
                trusted[0]["statement"]["signature"],
                now=time.time(),
            )
            assert statement.signing_key == original.signer.public_key()


def test_statement_fields_are_replaceable_for_tests() -> None:
    # The forging helpers above rely on statements being plain frozen dataclasses.
    assert dataclasses.is_dataclass(HandmadeProvider)
