"""The headers naming a job's provider carry provider-chosen strings; whatever those are, the
headers are printable ASCII that any HTTP server sends, and building them never raises. They
name the machine from the verified statement or else from the provider's registration, a
serial claimed there never decides trust, and a stream that waits for a provider still gets
them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from starlette.responses import Response

from moonflower import wire
from moonflower.coordinator.provider_headers import (
    MAX_HEADER_VALUE_CHARS,
    header_value,
    job_headers,
)
from moonflower.coordinator.trust import TrustLevel
from moonflower.crypto.apple_mda import freshness_code
from moonflower.crypto.signing import b64d, b64e
from moonflower.generation import Finished, Started, TextDelta, Usage
from tests.support.fake_engine import GatedEngine
from tests.support.handmade_provider import MODEL_SHA, HandmadeProvider, handmade, serve_one_job
from tests.support.inprocess import HARDWARE, InProcessNetwork, inprocess_network
from tests.support.mda_chain import SyntheticPki, apple_values, make_pki


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("Apple M4 Pro", "Apple M4 Pro"),
        ("Apple M4 Pró", "Apple M4 Pro"),
        ("Ｆｕｌｌｗｉｄｔｈ", "Fullwidth"),
        ("chip ☃ 日本", "chip ? ??"),
        ("M4\r\nx-injected: yes", "M4  x-injected: yes"),
        ("  padded\t", "padded"),
        ("\x00\x01", ""),
        ("☃☃☃", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_values_become_printable_ascii(raw: str | None, safe: str) -> None:
    assert header_value(raw) == safe


def test_long_values_are_cut() -> None:
    assert header_value("x" * 10_000) == "x" * MAX_HEADER_VALUE_CHARS


def provider_job(chip: str | None, *, serial: str | None = None, attested: bool) -> Any:
    hardware = SimpleNamespace(chip=chip, serial=serial)
    statement = SimpleNamespace(hardware=hardware) if attested else None
    trust = SimpleNamespace(statement=statement, level=TrustLevel.SELF_SIGNED)
    registration = SimpleNamespace(hardware=hardware)
    provider = SimpleNamespace(id="prov_1", trust=trust, registration=registration)
    return SimpleNamespace(id="job1", provider=provider)


@pytest.mark.parametrize("attested", [True, False])
def test_hostile_provider_strings_give_headers_a_response_can_carry(attested: bool) -> None:
    job = provider_job("Chip ☃\u202e\n", serial="SER\u0130AL\r\n", attested=attested)
    headers = job_headers(job)
    assert headers["x-provider-chip"] == "Chip ?"
    if attested:
        assert headers["x-provider-serial"] == "SERIAL"
    for value in headers.values():
        assert value.isascii() and value.isprintable()
    Response(b"{}", headers=headers)  # raises on a header value Latin-1 cannot carry


def test_an_unprintable_chip_name_is_left_out() -> None:
    headers = job_headers(provider_job("\x1b\x07", attested=False))
    assert "x-provider-chip" not in headers
    assert headers["x-provider-id"] == "prov_1"
    assert headers["x-provider-attested"] == "false"


def test_the_statement_names_the_machine_and_the_registration_fills_in() -> None:
    job = provider_job("Apple M4", serial="C02SERIAL", attested=True)
    job.provider.registration.hardware = SimpleNamespace(chip="other", serial="mid-other")
    headers = job_headers(job)
    assert (headers["x-provider-chip"], headers["x-provider-serial"]) == ("Apple M4", "C02SERIAL")
    # A Linux statement names no hardware serial: the provider's own name for its machine.
    job.provider.trust.statement.hardware = SimpleNamespace(chip=None, serial=None)
    headers = job_headers(job)
    assert (headers["x-provider-chip"], headers["x-provider-serial"]) == ("other", "mid-other")
    assert headers["x-provider-attested"] == "true"


def test_an_unattested_provider_is_named_by_its_claims_and_says_so() -> None:
    job = provider_job("AMD EPYC", serial="mid-0123", attested=False)
    job.provider.trust.level = TrustLevel.NONE
    headers = job_headers(job)
    assert headers["x-provider-chip"] == "AMD EPYC"
    assert headers["x-provider-serial"] == "mid-0123"
    assert headers["x-provider-attested"] == "false"
    assert headers["x-provider-trust-level"] == "none"


# --- over the real app ------------------------------------------------------------------------

MODEL = "fake-model"
SERIAL = "C02TESTSERIAL"
EVENTS: list[Any] = [
    Started(prompt_tokens=4),
    TextDelta("Named.", tokens=1),
    Finished(reason="stop", usage=Usage(4, 1)),
]


def chat(tag: str, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": tag}], **extra}


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None


def chain_for(pki: SyntheticPki, provider: HandmadeProvider, nonce: str, serial: str) -> list[str]:
    """A device chain, as Apple would issue it, attesting `serial` for this key and nonce."""
    now = datetime.now(UTC)
    bound = freshness_code(b64d(nonce), bound_key=provider.signer.public_key())
    leaf = pki.issue_leaf(
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        apple_values(freshness=bound, serial=serial),
        not_before=now - timedelta(minutes=5),
    )
    return [b64e(der) for der in pki.chain(leaf)]


async def feed_entry(net: InProcessNetwork) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=net.base_url) as client:
        (entry,) = (await client.get("/v1/providers/attestation")).json()["data"]
    return dict(entry)


async def passed_challenges(net: InProcessNetwork, count: int) -> None:
    async with asyncio.timeout(10):
        while (await feed_entry(net))["challenges_passed"] < count:
            await asyncio.sleep(0.01)


TRUST_HEADERS = (
    "x-moonflower-job-id",
    "x-provider-id",
    "x-provider-trust-level",
    "x-provider-attested",
)


async def test_a_stream_that_waits_briefly_for_a_provider_still_names_it(tmp_path: Path) -> None:
    """A stream queued behind busy slots holds its headers (for up to the keep-alive interval)
    until a provider takes it, so they name that provider as an unqueued answer's do."""
    engine = GatedEngine(script="slow " * 3)  # 2 slots
    async with (
        inprocess_network(tmp_path, [engine]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers, timeout=60) as client,
    ):
        queues = net.services.queues
        try:
            busy = [
                asyncio.create_task(client.post("/v1/chat/completions", json=chat(tag)))
                for tag in ("busy-0", "busy-1")
            ]
            await until(lambda: len(engine.requests) == 2, "both slots to be taken")
            waiting = asyncio.create_task(
                client.post("/v1/chat/completions", json=chat("waiting", stream=True))
            )
            await until(lambda: queues.waiting(MODEL) == 1, "the stream to queue")
            engine.release_all()
            response = await waiting
            await asyncio.gather(*busy)
            provider_id = next(iter(net.services.registry)).id
        finally:
            engine.release_all()
    assert response.status_code == 200
    for name in TRUST_HEADERS:
        assert response.headers.get(name), name
    assert response.headers["x-provider-id"] == provider_id
    assert response.headers["x-provider-trust-level"] == "self_signed"
    assert response.text.startswith("data: {")  # no wait had to be filled
    assert engine.requests[-1].messages[0].content == "waiting"


async def test_a_serial_claimed_at_registration_never_grants_hardware(tmp_path: Path) -> None:
    """The registration's serial names the provider in headers; device attestation is
    checked against the signed statement's serial only, so naming a device's serial there
    (as a Linux provider names its machine id) proves nothing."""
    pki = make_pki(datetime.now(UTC))
    settings: dict[str, Any] = {
        "challenge_interval_s": 0.05,
        "mda_root_pems": (pki.root.public_bytes(Encoding.PEM).decode(),),
    }
    async with (
        inprocess_network(tmp_path, [], **settings) as net,
        handmade(net.base_url, await net.enroll()) as provider,  # statement serial: None
    ):
        await register_claiming(provider, serial=SERIAL)
        await provider.send(provider.answer(await provider.next_challenge()))
        challenge = await provider.next_challenge()
        answer = provider.answer(challenge)
        chain = chain_for(pki, provider, challenge.nonce, SERIAL)
        await provider.send(
            wire.ChallengeAnswer(nonce=answer.nonce, status=answer.status, mda_chain=tuple(chain))
        )
        await net.wait_routable(1)
        await passed_challenges(net, 2)  # the answer with the chain was judged
        assert (await feed_entry(net))["trust_level"] == "self_signed"
        async with httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client:
            asking = asyncio.create_task(
                client.post(
                    "/v1/chat/completions",
                    json={"model": "handmade", "messages": [{"role": "user", "content": "hi"}]},
                )
            )
            await serve_one_job(provider, EVENTS)
            response = await asking
    assert response.status_code == 200
    assert response.headers["x-provider-serial"] == SERIAL  # what it claims, shown as such
    assert response.headers["x-provider-chip"] == "Test Chip"
    assert response.headers["x-provider-trust-level"] == "self_signed"


async def register_claiming(provider: HandmadeProvider, *, serial: str) -> None:
    card = wire.ModelCard(
        id=provider.model, sha256=MODEL_SHA, context_length=512, engine="hand", size_bytes=0
    )
    await provider.send(
        wire.Register(
            protocol_version=wire.PROTOCOL_VERSION,
            agent_version="0",
            hardware=HARDWARE.model_copy(update={"serial": serial}),
            models=(card,),
            max_concurrent_jobs=1,
            encryption_public_key=b64e(provider.keys.public_key),
            statement=provider.signed(),
        )
    )
    reply = wire.decode_from_coordinator(await provider.socket.recv())
    assert isinstance(reply, wire.Registered)
