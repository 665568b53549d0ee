"""Wire hygiene: a provider is a stranger, so every frame it sends is bounded and checked.

Played over the real protocol against a real coordinator process: a coordinator-only failure
code sent by a provider, a low-order X25519 key, hostile hardware strings that end up in HTTP
headers, a registration with tens of thousands of model cards, a heartbeat flood, a binary
frame, and counts out of range. Each test checks the money, the trust outcome and that the
coordinator keeps serving others while it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from moonflower import wire
from moonflower.crypto.signing import b64e
from moonflower.crypto.statement import AttestedHardware
from moonflower.generation import Failed, Finished, GenerationEvent, Started, TextDelta, Usage
from tests.adversarial.conftest import (
    ONE_OR_TWO_REPLICAS,
    PRICES,
    Books,
    Consumer,
    EnrolledProvider,
    Liveness,
    RunningCoordinator,
    StartCoordinator,
    one_or_two_replicas,
)
from tests.support.scripted_provider import (
    HARDWARE,
    RegistrationRefused,
    ScriptedProvider,
    honest_register,
    is_routable_entry,
    model_card,
    provider_entry,
    signed_statement,
    websocket_url,
)

Enroll = Callable[[str], Awaitable[EnrolledProvider]]

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008


@pytest.fixture(params=ONE_OR_TWO_REPLICAS)
def coordinator(
    request: pytest.FixtureRequest, start_coordinator: StartCoordinator
) -> RunningCoordinator:
    """These attacks run against one coordinator and against two replicas."""
    return one_or_two_replicas(request, start_coordinator)


# --- helpers ---------------------------------------------------------------------------------


async def stream_chat(consumer: Consumer, model: str = "scripted") -> tuple[int, str, list[Any]]:
    """A streaming chat completion read to its end: status, the text received, every chunk."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "stream": True}
    chunks: list[Any] = []
    async with consumer.client.stream("POST", "/v1/chat/completions", json=body) as response:
        status = response.status_code
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(orjson.loads(line.removeprefix("data: ")))
    text = "".join(
        chunk["choices"][0]["delta"].get("content") or ""
        for chunk in chunks
        if chunk.get("choices")
    )
    return status, text, chunks


async def charged(books: Books, consumer: Consumer, before: dict[str, int]) -> int:
    return before[consumer.name] - await books.balance(consumer.name)


async def assert_paid_for_at_most(
    books: Books, consumer: Consumer, before: dict[str, int], delivered_tokens: int
) -> None:
    """The consumer paid for at most `delivered_tokens` completion tokens (and a prompt of
    sane size), whatever the provider claimed; the books balance and no hold is left."""
    await books.wait_settled()
    jobs = [job for job in await books.jobs() if job.model == "scripted"]
    for job in jobs:
        assert 0 <= job.billed_completion_tokens <= delivered_tokens, job
        assert 0 <= job.billed_prompt_tokens < 10_000, job
    prompt = max((job.billed_prompt_tokens for job in jobs), default=0)
    assert await charged(books, consumer, before) <= PRICES.cost(prompt, delivered_tokens)
    assert await books.open_holds() == []
    await books.assert_balanced()


async def assert_out_of_routing(
    running: RunningCoordinator, cut: ScriptedProvider, enrolled: EnrolledProvider
) -> None:
    """The identity that broke the protocol is not routed to, also when it comes back."""
    assert not is_routable_entry(await provider_entry(running.base_url, cut.provider_id))
    async with contextlib.AsyncExitStack() as stack:
        try:
            again = await stack.enter_async_context(
                ScriptedProvider.connect(
                    running.base_url, token=enrolled.token, signer=cut.signer, keys=cut.keys
                )
            )
        except RegistrationRefused as refused:
            refusal = str(refused)
        else:
            with contextlib.suppress(TimeoutError):  # admitted, it must never become routable
                await again.wait_routable(running.base_url, timeout=3)
                raise AssertionError("the identity that broke the protocol is routable again")
            return
    assert "untrusted" in refusal


def assert_clean_log(running: RunningCoordinator) -> None:
    assert "Traceback" not in running.log()


# --- a coordinator-only failure code -----------------------------------------------------------


async def test_a_provider_sending_provider_gone_is_cut_off_untrusted_and_not_paid_beyond_delivery(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("liar")
    before = await books.balances()
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as liar:
        await liar.wait_routable(coordinator.base_url)

        async def lie() -> None:
            job = await liar.next_job()
            await job.started(5)
            await job.text("one", 1)
            await job.text(" two", 1)
            # Skips the receipt check today if believed, and bills its own claims.
            await job.event(Failed(code="provider_gone", message="I left"))
            await assert_live()  # meanwhile the coordinator serves others

        (status, text, chunks), _ = await asyncio.gather(stream_chat(consumer), lie())
        assert status == 200
        assert text == "one two"
        assert "error" in chunks[-1]
        assert await liar.closed() == CLOSE_PROTOCOL_ERROR
        await assert_paid_for_at_most(books, consumer, before, delivered_tokens=2)
        earned = await books.balance("liar") - before["liar"]
        assert earned <= await charged(books, consumer, before)
    await assert_out_of_routing(coordinator, liar, enrolled)
    await assert_live()
    assert_clean_log(coordinator)


# --- a low-order encryption key ----------------------------------------------------------------


def zero_key_register(provider: ScriptedProvider) -> wire.Register:
    """A register whose (validly signed) statement binds the all-zero X25519 key."""
    zero = SimpleNamespace(public_key=bytes(32))
    card = model_card("scripted")
    frame = honest_register(provider.signer, provider.keys, model="scripted")
    return frame.model_copy(
        update={
            "encryption_public_key": b64e(bytes(32)),
            "statement": signed_statement(provider.signer, zero, (card,)),  # type: ignore[arg-type]
        }
    )


async def test_an_all_zero_encryption_key_is_refused_and_its_jobs_go_to_the_honest_provider(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    attacker, honest_account = await provider_token("zero-key"), await provider_token("honest")
    async with ScriptedProvider.connect(
        coordinator.base_url,
        token=attacker.token,
        register=zero_key_register,
        expect_registered=False,
    ) as zero:
        reply = await zero.registration_reply()
        assert isinstance(reply, wire.Rejected), reply
        assert "low-order" in reply.reason
        assert await zero.closed() == CLOSE_POLICY_VIOLATION
    async with ScriptedProvider.connect(coordinator.base_url, token=honest_account.token) as honest:
        await honest.wait_routable(coordinator.base_url)
        for n in range(3):
            words = ["served", f" {n}"]

            async def serve(words: list[str] = words) -> None:
                job = await honest.next_job()
                await job.serve_honestly(words)

            response, _ = await asyncio.gather(consumer.chat(), serve())
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == "".join(words)
        assert zero.jobs == {}
        await books.wait_settled()
    assert await books.balance("zero-key") == 0
    await books.assert_balanced()
    await assert_live()
    assert_clean_log(coordinator)


# --- provider strings that reach HTTP headers --------------------------------------------------

HOSTILE_CHIP = "Apple M4 ☃ 芯片 Pró"


def hostile_chip_register(provider: ScriptedProvider) -> wire.Register:
    card = model_card("scripted")
    hardware = AttestedHardware(
        chip=HOSTILE_CHIP,
        machine_model="Mac☃,1",
        serial="SN-☃-42",
        memory_bytes=1 << 30,
        gpu=None,
        cpu="scripted cpu",
    )
    frame = honest_register(provider.signer, provider.keys, model="scripted")
    return frame.model_copy(
        update={
            "hardware": HARDWARE.model_copy(update={"chip": HOSTILE_CHIP}),
            "statement": signed_statement(
                provider.signer, provider.keys, (card,), hardware=hardware
            ),
        }
    )


def assert_safe_headers(response: httpx.Response) -> None:
    assert response.headers["x-provider-chip"] == "Apple M4 ? ?? Pro"
    assert response.headers["x-provider-serial"] == "SN-?-42"
    for value in response.headers.values():
        assert value.isascii() and value.isprintable()


async def test_a_non_latin1_chip_name_still_gets_answers_with_safe_headers(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("snowman")
    before = await books.balances()
    async with ScriptedProvider.connect(
        coordinator.base_url, token=enrolled.token, register=hostile_chip_register
    ) as provider:
        await provider.wait_routable(coordinator.base_url)

        async def serve() -> None:
            job = await provider.next_job()
            await job.serve_honestly(["whole", " answer"])

        response, _ = await asyncio.gather(consumer.chat(), serve())
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "whole answer"
        assert_safe_headers(response)

        body = {
            "model": "scripted",
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": True,
        }

        async def read_stream() -> tuple[httpx.Response, str]:
            async with consumer.client.stream(
                "POST", "/v1/chat/completions", json=body
            ) as streamed:
                return streamed, "".join([line async for line in streamed.aiter_lines()])

        async def serve_stream() -> None:
            job = await provider.next_job()
            await job.serve_honestly(["streamed", " answer"])

        (streamed, text), _ = await asyncio.gather(read_stream(), serve_stream())
        assert streamed.status_code == 200
        assert_safe_headers(streamed)
        assert "streamed" in text and "[DONE]" in text
        await books.wait_settled()
    jobs = await books.jobs()
    assert [job.status for job in jobs[-2:]] == ["completed", "completed"]
    expected = sum(PRICES.cost(job.prompt_tokens, job.completion_tokens) for job in jobs[-2:])
    assert await charged(books, consumer, before) == expected
    assert await books.balance("snowman") > 0
    assert await books.open_holds() == []
    await books.assert_balanced()
    await assert_live()
    assert_clean_log(coordinator)


# --- model cards and heartbeats ---------------------------------------------------------------


def many_cards(count: int, *, distinct: bool = True) -> Callable[[ScriptedProvider], wire.Register]:
    """A register with `count` cards, built without the wire's own checks."""

    def build(provider: ScriptedProvider) -> wire.Register:
        card = model_card("scripted")
        cards = tuple(
            card.model_copy(update={"id": f"m{n}" if distinct else "m"}) for n in range(count)
        )
        frame = honest_register(provider.signer, provider.keys, statement=False)
        return wire.Register.model_construct(**{**dict(frame), "models": cards})

    return build


@pytest.mark.parametrize(
    ("register", "reason"),
    [
        # Far over the register limit, yet under the frame limit, so the coordinator's own
        # check (not the WebSocket layer's) is what refuses it.
        (many_cards(30_000), "larger than"),
        (many_cards(wire.MAX_MODEL_CARDS + 1), "at most 32"),
        (many_cards(2, distinct=False), "distinct"),
    ],
    ids=["30000-cards", "33-cards", "duplicated-ids"],
)
async def test_registrations_with_too_many_or_duplicated_model_cards_are_refused(
    coordinator: RunningCoordinator,
    books: Books,
    provider_token: Enroll,
    assert_live: Liveness,
    register: Callable[[ScriptedProvider], wire.Register],
    reason: str,
) -> None:
    enrolled = await provider_token("collector")
    began = time.monotonic()
    async with ScriptedProvider.connect(
        coordinator.base_url,
        token=enrolled.token,
        register=register,
        expect_registered=False,
        heartbeats=False,
    ) as provider:
        reply = await provider.registration_reply()
        assert isinstance(reply, wire.Rejected), reply
        assert reason in reply.reason
        assert await provider.closed() == CLOSE_POLICY_VIOLATION
    assert time.monotonic() - began < 5
    await assert_live()
    assert_clean_log(coordinator)


class HealthProbe(threading.Thread):
    """Times `/health` back to back, from its own thread (the test's event loop is busy
    flooding), until stopped."""

    def __init__(self, running: RunningCoordinator) -> None:
        super().__init__(daemon=True)
        self.url = f"{running.base_url}/health"
        self.latencies: list[float] = []
        self.statuses: set[int] = set()
        self.is_stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.is_stopping.is_set():
                began = time.monotonic()
                self.statuses.add(client.get(self.url).status_code)
                self.latencies.append(time.monotonic() - began)

    def stop(self) -> list[float]:
        self.is_stopping.set()
        self.join(15)
        return self.latencies


HEALTH_WITHIN_S = 1.0
"""The issue this guards against took `/health` from 0.08 s to 5.9 s."""


async def test_a_heartbeat_flood_is_cut_off_and_never_freezes_the_coordinator(
    coordinator: RunningCoordinator,
    books: Books,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("flooder")
    cards = tuple(model_card(f"flood-{n}") for n in range(wire.MAX_MODEL_CARDS))

    def full_register(provider: ScriptedProvider) -> wire.Register:
        return honest_register(provider.signer, provider.keys, models=cards, slots=4)

    async with ScriptedProvider.connect(
        coordinator.base_url, token=enrolled.token, register=full_register, heartbeats=False
    ) as flooder:
        await flooder.wait_routable(coordinator.base_url)
        probe = HealthProbe(coordinator)
        probe.start()

        # Steady, under the budget: free slots flapping so every other beat could wake queues.
        for n in range(300):
            await flooder.heartbeat(free_slots=n % 2)
            await asyncio.sleep(1 / 150)
        assert not flooder.is_closed

        # Then as fast as the socket takes them, until the coordinator closes it.
        sent = 0
        with contextlib.suppress(ConnectionClosed):
            while sent < 20_000 and not flooder.is_closed:
                await flooder.heartbeat(free_slots=sent % 2)
                sent += 1
        assert await flooder.closed() == CLOSE_POLICY_VIOLATION
        latencies = probe.stop()
    assert probe.statuses == {200}
    assert len(latencies) >= 5
    assert max(latencies) < HEALTH_WITHIN_S, sorted(latencies)[-5:]
    await assert_live(health_within_s=HEALTH_WITHIN_S)
    assert "sent frames too fast" in coordinator.log()
    assert_clean_log(coordinator)


# --- a binary frame ---------------------------------------------------------------------------


async def test_a_binary_frame_closes_the_socket_cleanly(
    coordinator: RunningCoordinator,
    books: Books,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    enrolled = await provider_token("binary")
    async with ScriptedProvider.connect(coordinator.base_url, token=enrolled.token) as provider:
        await provider.send_raw(b"\x00\xff\x00 not text")
        assert await provider.closed() == CLOSE_UNSUPPORTED_DATA
    # Instead of `register`, too: refused like any malformed registration.
    headers = {"Authorization": f"Bearer {enrolled.token}"}
    async with connect(websocket_url(coordinator.base_url), additional_headers=headers) as socket:
        await socket.send(b"\x01\x02")
        reply = wire.decode_from_coordinator(await socket.recv())
        assert isinstance(reply, wire.Rejected)
        assert "binary" in reply.reason
        with contextlib.suppress(ConnectionClosed):
            await socket.recv()
        assert socket.close_code == CLOSE_POLICY_VIOLATION
    await assert_live()
    assert "sent a binary frame" in coordinator.log()
    assert_clean_log(coordinator)


# --- counts out of range ------------------------------------------------------------------------

OUT_OF_RANGE: dict[str, list[GenerationEvent]] = {
    "negative-prompt": [Started(-1)],
    "huge-prompt": [Started(2**31)],
    "negative-delta": [Started(5), TextDelta("one", tokens=1), TextDelta(" two", tokens=-1)],
    "huge-delta": [Started(5), TextDelta("one", tokens=1), TextDelta(" two", tokens=2**31)],
    "huge-usage": [
        Started(5),
        TextDelta("one", tokens=1),
        Finished("stop", Usage(prompt_tokens=5, completion_tokens=2**31)),
    ],
}


@pytest.mark.parametrize("events", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
async def test_out_of_range_counts_are_protocol_errors(
    coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
    events: list[GenerationEvent],
) -> None:
    await send_out_of_range(coordinator, books, consumer, provider_token, assert_live, events)


async def test_counts_past_a_32_bit_column_never_reach_postgresql(
    pg_coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
) -> None:
    events = OUT_OF_RANGE["huge-usage"]
    await send_out_of_range(pg_coordinator, books, consumer, provider_token, assert_live, events)


async def send_out_of_range(
    running: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    provider_token: Enroll,
    assert_live: Liveness,
    events: list[GenerationEvent],
) -> None:
    """A provider whose last event states a count out of range is cut off as a protocol
    breaker; the consumer pays for what reached it, no more."""
    enrolled = await provider_token("counter")
    before = await books.balances()
    delivered = sum(1 for event in events[:-1] if isinstance(event, TextDelta))
    async with ScriptedProvider.connect(running.base_url, token=enrolled.token) as provider:
        await provider.wait_routable(running.base_url)

        async def send_all() -> None:
            job = await provider.next_job()
            for event in events:
                await job.event(event)

        (status, text, _), _ = await asyncio.gather(stream_chat(consumer), send_all())
        if delivered:  # the stream had begun: the failure arrives as its last event
            assert status == 200
        assert text == "".join(e.text for e in events[:-1] if isinstance(e, TextDelta))
        assert await provider.closed() == CLOSE_PROTOCOL_ERROR
        await assert_paid_for_at_most(books, consumer, before, delivered_tokens=delivered)
    await assert_out_of_routing(running, provider, enrolled)
    await assert_live()
    assert_clean_log(running)
