"""One request walked from its route through a real provider agent and back to settlement
touches each part once: its prompt is measured once, it is serialised once to be sealed and
digested once on each side of the receipt, each event the provider sends is counted by one tally
and split by one splitter on each side, and what was relayed is counted in one place.

Every step is wrapped to count its calls while a streaming chat completion with `<think>`
tags split across frames runs through the real coordinator (the engine is scripted: this
says nothing about inference). A change that adds a second split, serialisation, digest or
tally of the same request fails here."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import httpx
import pytest

from moonflower import receipts, wire
from moonflower.coordinator import channel, job, receipt_check
from moonflower.coordinator.tally import JobTally, billable_tokens
from moonflower.generation import GeneratedEvent, GenerationEvent, GenerationRequest, TextDelta
from moonflower.ledger.jobs import list_jobs
from moonflower.reasoning import EventSplitter, ThinkSplitter
from moonflower.receipts import ReceiptOutput
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import inprocess_network

P = ParamSpec("P")
R = TypeVar("R")

PIECES = ["<th", "ink>", "The user", " says hi.", "</thi", "nk>", "\n\n", "Hello", " <", "b>", "!"]
PIECE_DELAY_S = 0.03
"""Longer than the provider's batching interval: each piece comes in a frame of its own."""


class Calls:
    """How often each wrapped step ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count: Counter[str] = Counter()
        self._monkeypatch = monkeypatch

    def wrap(self, owner: Any, name: str, label: str | None = None) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count[label or name] += 1
            return original(*args, **kwargs)

        self._monkeypatch.setattr(owner, name, counted)


class CountingPromptCounter:
    def __init__(self) -> None:
        self.calls = 0

    async def count(self, request: GenerationRequest, card: wire.ModelCard) -> int | None:
        self.calls += 1
        return None


async def test_one_request_is_measured_serialised_digested_split_and_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(monkeypatch)
    calls.wrap(wire, "request_bytes")
    calls.wrap(job, "prompt_size")
    calls.wrap(receipt_check, "request_digest", "coordinator request_digest")
    calls.wrap(receipts, "request_digest", "provider request_digest")
    # Per event: the coordinator's tally, its splitter and its receipt output.
    tallies: list[JobTally] = []
    added: list[GenerationEvent] = []
    original_add = JobTally.add

    def tally_add(self: JobTally, event: GenerationEvent) -> str | None:
        if self not in tallies:
            tallies.append(self)
        added.append(event)
        return original_add(self, event)

    monkeypatch.setattr(JobTally, "add", tally_add)
    splits: list[GenerationEvent] = []

    class CountingSplitter(EventSplitter):
        def split(self, event: GenerationEvent) -> Sequence[GeneratedEvent]:
            splits.append(event)
            return super().split(event)

    monkeypatch.setattr(channel, "EventSplitter", CountingSplitter)
    gathered: Counter[int] = Counter()
    gather = ReceiptOutput.add

    def gathering(self: ReceiptOutput, pieces: Sequence[GeneratedEvent]) -> None:
        gathered[id(self)] += 1
        gather(self, pieces)

    monkeypatch.setattr(ReceiptOutput, "add", gathering)
    # Every splitter in the process, the provider's included, by the texts it examined.
    examined: dict[int, list[str]] = {}
    passes_through = ThinkSplitter.passes_through

    def examining(self: ThinkSplitter, text: str) -> bool:
        examined.setdefault(id(self), []).append(text)
        return passes_through(self, text)

    monkeypatch.setattr(ThinkSplitter, "passes_through", examining)

    engine = ScriptedEngine(pieces=PIECES, token_delay_s=PIECE_DELAY_S)
    async with inprocess_network(tmp_path, [engine]) as net:
        counter = CountingPromptCounter()
        net.services.dispatcher.prompt_counter = counter
        calls.count.clear()  # registration and challenges are not the request's
        async with httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client:
            content, reasoning = await stream_chat(client)
        jobs = await list_jobs(net.services.db)

    assert content == "Hello <b>!"
    assert reasoning == "The user says hi."
    # Measured once (the prompt's size and, per weights, its count), serialised once more
    # to be sealed, digested once to check the receipt.
    assert counter.calls == 1
    assert calls.count["prompt_size"] == 1
    assert calls.count["request_bytes"] == 2  # the size measured, the request sealed
    assert calls.count["coordinator request_digest"] == 1
    assert calls.count["provider request_digest"] == 1
    # One tally on the coordinator counts each event once, and is split once per event.
    assert len(tallies) == 1
    texts = [event.text for event in added if isinstance(event, TextDelta)]
    assert "".join(texts) == "".join(PIECES)
    assert splits == added
    # Each side's receipt output is gathered from those pieces, once per event.
    assert sorted(gathered.values()) == [len(added), len(added)]
    # Two splitters saw the text in the whole walk: the provider's (for its receipt) and the
    # coordinator's channel (for the consumer and the receipt check), each every delta once.
    seen = [texts_seen for texts_seen in examined.values() if texts_seen]
    assert len(seen) == 2
    assert all(texts_seen == texts for texts_seen in seen)
    # What was relayed is counted by the tally alone; the record and bill read from it.
    tally = tallies[0]
    assert tally.relayed_tokens == sum(billable_tokens(event) for event in added)
    (record,) = jobs
    assert record.status == "completed"
    assert record.receipt_hash is not None, "the receipt matched what was relayed"
    assert record.completion_tokens == tally.relayed_tokens == len(PIECES)
    assert record.billed_completion_tokens == tally.relayed_tokens


async def stream_chat(client: httpx.AsyncClient) -> tuple[str, str]:
    body = {
        "model": "fake-model",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    content, reasoning = "", ""
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line.removeprefix("data: "))["choices"]:
                content += choice["delta"].get("content") or ""
                reasoning += choice["delta"].get("reasoning_content") or ""
    return content, reasoning
