"""Fault injection with real processes on loopback and the real model: providers killed or
frozen at the worst moments, and a peer that speaks garbage. Consumers see either a whole
answer from another provider or, once text has reached them, an error event in their
dialect; the coordinator carries on."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.network import LocalNetwork, Process, wait_until

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
# Long enough that reading it takes the provider a few seconds: a window to strike in.
LONG_PROMPT = [{"role": "user", "content": "lighthouse keeper " * 400}]
# Greedy decoding: sampled at temperature 1, this prompt's first token is the end of the turn
# about one time in 27, and an empty answer would say nothing about failover.
GREEDY = {"temperature": 0}


Pair = tuple[LocalNetwork, dict[str, Process], str]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """A coordinator and two providers (by provider id), and a funded key."""
    yield from start_pair(tmp_path, {})


@pytest.fixture
def impatient_pair(tmp_path: Path) -> Iterator[Pair]:
    """As `pair`, with a coordinator that waits 10 s at most for a first token — long
    enough for a healthy provider to read LONG_PROMPT on a busy machine."""
    yield from start_pair(tmp_path, {"FIRST_EVENT_TIMEOUT_S": "10", "FIRST_TOKEN_TIMEOUT_S": "10"})


def start_pair(tmp_path: Path, settings: dict[str, str]) -> Iterator[Pair]:
    network = LocalNetwork(tmp_path, settings=settings)
    try:
        network.start_coordinator()
        key = network.create_key()
        providers = {}
        for name in ("provider-a", "provider-b"):
            process = network.start_provider(name)
            wait_until(lambda p=process: provider_id(p) is not None, 30, f"{name} to register")
            providers[provider_id(process) or ""] = process
        wait_until(lambda: serving(network) == 2, 60, "both providers to pass challenges")
        yield network, providers, key
    finally:
        for process in network.processes:
            if process.is_running:
                process.popen.send_signal(signal.SIGCONT)
        network.stop()


def provider_id(process: Process) -> str | None:
    found = re.search(r"registered with \S+ as (prov_\w+)", process.log())
    return found.group(1) if found else None


def serving(network: LocalNetwork) -> int:
    """How many providers have passed a challenge (and so take jobs)."""
    feed = httpx.get(f"{network.base_url}/v1/providers/attestation", timeout=5).json()
    return sum(1 for p in feed["data"] if p["is_attested"])


def sent_to(network: LocalNetwork, job_count: int) -> str:
    """The provider the coordinator sent its `job_count`-th job to."""
    assert network.coordinator is not None
    sent = re.findall(r"job \w+ sent to provider (prov_\w+)", network.coordinator.log())
    return sent[job_count - 1] if len(sent) >= job_count else ""


def jobs_sent(network: LocalNetwork) -> int:
    assert network.coordinator is not None
    return len(re.findall(r"job \w+ sent to provider", network.coordinator.log()))


def post_in_background(
    network: LocalNetwork, key: str, body: dict[str, Any], out: dict[str, Any]
) -> threading.Thread:
    def run() -> None:
        out["response"] = httpx.post(
            f"{network.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json=body,
            timeout=180,
        )

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_provider_killed_before_its_first_token_loses_the_job_to_another(
    pair: Pair,
) -> None:
    network, providers, key = pair
    before = jobs_sent(network)
    out: dict[str, Any] = {}
    thread = post_in_background(
        network, key, {"model": MODEL, "messages": LONG_PROMPT, "max_tokens": 8, **GREEDY}, out
    )
    wait_until(lambda: sent_to(network, before + 1) != "", 30, "the job to be sent")
    victim = sent_to(network, before + 1)
    providers[victim].stop(signal.SIGKILL)
    thread.join(timeout=180)
    response = out["response"]
    assert response.status_code == 200, response.text
    assert response.headers["x-provider-id"] != victim
    assert response.json()["choices"][0]["message"]["content"], response.text


def test_a_provider_frozen_after_accepting_loses_the_job_after_the_timeout(
    impatient_pair: Pair,
) -> None:
    network, providers, key = impatient_pair
    before = jobs_sent(network)
    out: dict[str, Any] = {}
    thread = post_in_background(
        network, key, {"model": MODEL, "messages": LONG_PROMPT, "max_tokens": 8, **GREEDY}, out
    )
    wait_until(lambda: sent_to(network, before + 1) != "", 30, "the job to be sent")
    victim = sent_to(network, before + 1)
    providers[victim].popen.send_signal(signal.SIGSTOP)  # alive, connected, silent
    thread.join(timeout=180)
    providers[victim].popen.send_signal(signal.SIGCONT)
    response = out["response"]
    assert response.status_code == 200, response.text
    assert response.headers["x-provider-id"] != victim
    assert sent_to(network, before + 2) not in ("", victim)  # the retry went elsewhere


def test_a_provider_killed_mid_stream_ends_an_anthropic_stream_with_an_error_event(
    pair: Pair,
) -> None:
    network, providers, key = pair
    before = jobs_sent(network)
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream(
        "POST",
        f"{network.base_url}/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={
            "model": MODEL,
            "max_tokens": 400,
            "stream": True,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
        },
        timeout=60,
    ) as response:
        assert response.status_code == 200
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
                deltas = [e for e in events if e[0] == "content_block_delta"]
                victim = providers.get(sent_to(network, before + 1))
                if len(deltas) == 3 and victim is not None:
                    victim.stop(signal.SIGKILL)
    names = [n for n, _ in events]
    assert names[0] == "message_start"
    assert names[-1] == "error"
    assert events[-1][1]["type"] == "error"
    assert events[-1][1]["error"]["type"] in ("api_error", "overloaded_error")
    assert "message_stop" not in names


def test_a_peer_sending_garbage_is_disconnected_and_nothing_else_changes(
    pair: Pair,
) -> None:
    network, _providers, key = pair
    ws_url = network.base_url.replace("http://", "ws://") + "/ws/provider"

    async def misbehave() -> int | None:
        async with connect(ws_url) as socket:
            await socket.send("this is not a frame")
            await asyncio.wait_for(socket.wait_closed(), 10)
            return socket.close_code

    assert asyncio.run(misbehave()) in (1002, 1008)

    async def half_register() -> int | None:
        async with connect(ws_url) as socket:
            await socket.send(json.dumps({"type": "register", "protocol_version": 2}))
            await asyncio.wait_for(socket.wait_closed(), 10)
            return socket.close_code

    assert asyncio.run(half_register()) in (1002, 1008)
    assert network.is_healthy()
    assert serving(network) == 2
    answer = httpx.post(
        f"{network.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert answer.status_code == 200
