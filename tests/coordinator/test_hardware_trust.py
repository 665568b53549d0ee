"""The `hardware` level: an Apple device attestation chain (synthetic, built the way Apple
builds them) that binds the provider's signing key and the challenge's nonce."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from moonflower import wire
from moonflower.crypto.apple_mda import freshness_code
from moonflower.crypto.signing import b64d, b64e
from tests.support.handmade_provider import HandmadeProvider, handmade
from tests.support.inprocess import InProcessNetwork, inprocess_network
from tests.support.mda_chain import SyntheticPki, apple_values, make_pki

SERIAL = "C02TESTSERIAL"


def chain_for(pki: SyntheticPki, provider: HandmadeProvider, nonce: str, serial: str) -> list[str]:
    now = datetime.now(UTC)
    bound = freshness_code(b64d(nonce), bound_key=provider.signer.public_key())
    device_key = ec.generate_private_key(ec.SECP384R1())  # Apple's own attestation key
    leaf = pki.issue_leaf(
        device_key.public_key(),
        apple_values(freshness=bound, serial=serial),
        not_before=now - timedelta(minutes=5),
    )
    return [b64e(der) for der in pki.chain(leaf)]


async def trust_level(net: InProcessNetwork) -> str:
    async with httpx.AsyncClient(base_url=net.base_url) as client:
        (entry,) = (await client.get("/v1/providers/attestation")).json()["data"]
    return str(entry["trust_level"])


async def passed_challenges(net: InProcessNetwork, count: int) -> None:
    """Wait until the provider has passed `count` challenges (its device chain, if any,
    judged with the last)."""
    async with asyncio.timeout(10), httpx.AsyncClient(base_url=net.base_url) as client:
        while True:
            (entry,) = (await client.get("/v1/providers/attestation")).json()["data"]
            if entry["challenges_passed"] >= count:
                return
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("attested_serial", "nonce_of", "level"),
    [
        (SERIAL, "this", "hardware"),
        ("OTHER", "this", "self_signed"),
        (SERIAL, "earlier", "self_signed"),
    ],
    ids=["bound", "another_serial", "replayed_chain"],
)
async def test_a_device_chain_for_this_key_and_nonce_grants_hardware(
    tmp_path: Path, attested_serial: str, nonce_of: str, level: str
) -> None:
    pki = make_pki(datetime.now(UTC))
    settings: dict[str, Any] = {
        "challenge_interval_s": 0.05,
        "mda_root_pems": (pki.root.public_bytes(Encoding.PEM).decode(),),
    }
    async with (
        inprocess_network(tmp_path, [], **settings) as net,
        handmade(net.base_url, await net.enroll(), serial=SERIAL) as provider,
    ):
        await provider.register(statement=provider.signed())
        earlier = await provider.next_challenge()
        await provider.send(provider.answer(earlier))
        challenge = await provider.next_challenge()
        answer = provider.answer(challenge)
        bound_to = challenge if nonce_of == "this" else earlier
        chain = chain_for(pki, provider, bound_to.nonce, attested_serial)
        await provider.send(
            wire.ChallengeAnswer(nonce=answer.nonce, status=answer.status, mda_chain=tuple(chain))
        )
        await net.wait_routable(1)
        await passed_challenges(net, 2)  # the answer with the chain was judged
        assert await trust_level(net) == level
        if level != "hardware":
            async with httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client:
                response = await client.post(
                    "/v1/chat/completions",
                    json={"model": "handmade", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"x-moonflower-min-trust": "hardware"},
                )
            assert response.status_code == 503
            assert "hardware" in response.json()["error"]["message"]
