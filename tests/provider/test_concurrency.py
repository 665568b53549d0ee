"""A provider runs several jobs at once: the context pool lends each context to one job at a
time, the llama.cpp engine with two slots really generates two answers in parallel (each the
same as it gives alone), and heartbeats tell the coordinator how many slots are free."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from moonflower import wire
from moonflower.generation import (
    Finished,
    GenerationEvent,
    GenerationRequest,
    Message,
    SamplingParams,
    Started,
    TextDelta,
)
from moonflower.model_files import resolve_model
from moonflower.provider.engines import context_pool
from moonflower.provider.engines.context_pool import ContextPool
from moonflower.provider.engines.llama_cpp import LlamaCppEngine, threads_per_slot
from moonflower.settings import ProviderSettings
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import inprocess_network

# --- the pool, with plain objects for contexts ------------------------------------------


def test_a_context_is_never_lent_to_two_holders_at_once() -> None:
    pool = ContextPool(["a", "b"])
    held: set[str] = set()
    guard = threading.Lock()
    most_at_once = 0
    clashes: list[str] = []
    lends = 0

    def worker() -> None:
        nonlocal most_at_once, lends
        for _ in range(20):
            with pool.lend(threading.Event()) as context:
                assert context is not None
                with guard:
                    if context in held:
                        clashes.append(context)
                    held.add(context)
                    most_at_once = max(most_at_once, len(held))
                    lends += 1
                time.sleep(0.001)
                with guard:
                    held.discard(context)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert clashes == []
    assert most_at_once == 2
    assert lends == 80


def test_a_holder_waiting_for_a_context_gives_up_when_cancelled() -> None:
    pool = ContextPool(["only"])
    cancel = threading.Event()
    with pool.lend(threading.Event()) as busy:
        assert busy == "only"
        threading.Timer(0.1, cancel.set).start()
        t0 = time.monotonic()
        with pool.lend(cancel) as waited:
            assert waited is None
        assert time.monotonic() - t0 < 0.1 + 5 * context_pool.POLL_S
    with pool.lend(threading.Event()) as again:
        assert again == "only"


def test_a_context_comes_back_when_its_holder_fails() -> None:
    pool = ContextPool(["only"])
    with pytest.raises(RuntimeError), pool.lend(threading.Event()):
        raise RuntimeError("the job broke")
    cancel = threading.Event()
    cancel.set()  # a context that did not come back would make this wait, then give None
    with pool.lend(cancel) as context:
        assert context == "only"


def test_close_waits_for_lent_contexts() -> None:
    pool = ContextPool(["a", "b"])
    closed: list[str] = []
    with pool.lend(threading.Event()) as lent:
        assert lent is not None
        closer = threading.Thread(target=pool.close, args=(closed.append,))
        closer.start()
        time.sleep(0.2)
        assert lent not in closed
    closer.join(timeout=5)
    assert sorted(closed) == ["a", "b"]


def test_threads_share_the_cores_between_slots() -> None:
    assert [threads_per_slot(2, slots) for slots in (1, 2, 3, 4)] == [2, 1, 1, 1]
    assert [threads_per_slot(16, slots) for slots in (1, 2, 4, 32)] == [16, 8, 4, 1]


def test_slots_must_be_positive() -> None:
    assert ProviderSettings().slots >= 1
    with pytest.raises(ValueError, match="slots"):
        ProviderSettings(slots=0)


# --- heartbeats -------------------------------------------------------------------------


async def test_heartbeats_report_free_slots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "HEARTBEAT_INTERVAL_S", 0.05)
    engine = ScriptedEngine(script=" ".join(["word"] * 40), token_delay_s=0.05)
    async with inprocess_network(tmp_path, [engine]) as net:
        (session,) = list(net.services.registry)

        async def reported(free: int) -> None:
            async with asyncio.timeout(10):
                while session.reported_free_slots != free:
                    await asyncio.sleep(0.01)

        await reported(engine.max_concurrent_jobs)
        async with httpx.AsyncClient(base_url=net.base_url, timeout=30) as client:
            body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
            job = asyncio.create_task(
                client.post("/v1/chat/completions", json=body, headers=net.headers)
            )
            await reported(engine.max_concurrent_jobs - 1)
            response = await job
        assert response.status_code == 200
        await reported(engine.max_concurrent_jobs)


def test_a_heartbeat_without_free_slots_still_decodes() -> None:
    frame = '{"type": "heartbeat", "active_jobs": 0, "jobs_served": 1, "tokens_generated": 2}'
    beat = wire.decode_from_provider(frame)
    assert isinstance(beat, wire.Heartbeat)
    assert beat.free_slots is None


# --- the real model with two slots ------------------------------------------------------

GREEDY = SamplingParams(temperature=0.0)
SEEDED = SamplingParams(temperature=0.8, seed=1234)
ESSAY = (Message("user", "Write a long, detailed essay about the history of Rome."),)
STORY = (Message("user", "Write a long story about a lighthouse keeper and a whale."),)
RECIPE = (Message("user", "Explain step by step how to bake bread at home."),)
MAPPING_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")
LETTER = (Message("user", "Write a long letter to a friend about a trip to the mountains."),)


def chat(
    messages: tuple[Message, ...], sampling: SamplingParams, max_tokens: int = 48
) -> GenerationRequest:
    return GenerationRequest(model="m", max_tokens=max_tokens, messages=messages, sampling=sampling)


@dataclass
class Run:
    """One job's events, with the time each arrived."""

    events: list[GenerationEvent] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))

    @property
    def token_times(self) -> list[float]:
        return [t for e, t in zip(self.events, self.times, strict=True) if isinstance(e, TextDelta)]

    @property
    def ending(self) -> Finished:
        assert isinstance(self.events[-1], Finished), self.events[-1]
        return self.events[-1]


def consume(
    engine: LlamaCppEngine,
    request: GenerationRequest,
    run: Run,
    cancel: threading.Event | None = None,
    on_event: threading.Event | None = None,
) -> None:
    for event in engine.generate(request, cancel or threading.Event()):
        run.events.append(event)
        run.times.append(time.monotonic())
        if on_event is not None:
            on_event.set()


def alone(engine: LlamaCppEngine, request: GenerationRequest) -> Run:
    run = Run()
    consume(engine, request, run)
    return run


def together(engine: LlamaCppEngine, requests: list[GenerationRequest]) -> list[Run]:
    """Run `requests` at once, one thread each, released together."""
    runs = [Run() for _ in requests]
    start = threading.Barrier(len(requests))

    def job(request: GenerationRequest, run: Run) -> None:
        start.wait(timeout=30)
        consume(engine, request, run)

    threads = [threading.Thread(target=job, args=pair) for pair in zip(requests, runs, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return runs


@pytest.fixture(scope="module")
def two_slots() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine.load(resolve_model("default"), slots=2)
    yield engine
    engine.close()


@pytest.mark.slow
def test_two_slots_generate_two_answers_at_the_same_time(two_slots: LlamaCppEngine) -> None:
    assert two_slots.max_concurrent_jobs == 2
    first, second = together(two_slots, [chat(ESSAY, GREEDY, 64), chat(STORY, SEEDED, 64)])
    a, b = first.token_times, second.token_times
    assert len(a) == len(b) == 64
    # One after the other, the windows would not overlap and no token of one job would fall
    # inside the other's window; in parallel, most of each job's tokens do.
    overlap = min(a[-1], b[-1]) - max(a[0], b[0])
    assert overlap > 0.5 * min(a[-1] - a[0], b[-1] - b[0])
    assert sum(a[0] < t < a[-1] for t in b) > len(b) // 2
    assert sum(b[0] < t < b[-1] for t in a) > len(a) // 2


@pytest.mark.slow
def test_each_answer_is_the_one_it_gives_alone(two_slots: LlamaCppEngine) -> None:
    requests = [chat(ESSAY, GREEDY), chat(STORY, SEEDED)]
    expected = [alone(two_slots, request) for request in requests]
    for run in together(two_slots, requests):
        want = expected.pop(0)
        assert run.text == want.text
        assert run.ending == want.ending
        assert run.text  # the comparison is between real answers


@pytest.mark.slow
def test_cancelling_one_job_leaves_the_other_to_finish(two_slots: LlamaCppEngine) -> None:
    kept_request = chat(STORY, SEEDED, 64)
    expected = alone(two_slots, kept_request)
    cancelled, kept = Run(), Run()
    cancel = threading.Event()
    progressed = threading.Event()
    victim = threading.Thread(
        target=consume, args=(two_slots, chat(ESSAY, GREEDY, 2000), cancelled, cancel, progressed)
    )
    other = threading.Thread(target=consume, args=(two_slots, kept_request, kept))
    victim.start()
    other.start()
    assert progressed.wait(timeout=30)
    while len(cancelled.token_times) < 5 and victim.is_alive():
        time.sleep(0.005)
    seen = len(cancelled.token_times)
    cancel.set()
    victim.join(timeout=30)
    other.join(timeout=60)
    assert not victim.is_alive() and not other.is_alive()
    assert cancelled.ending.reason == "cancelled"
    assert cancelled.ending.usage.completion_tokens <= seen + 2
    assert kept.text == expected.text
    assert kept.ending == expected.ending
    assert kept.ending.usage.completion_tokens == 64


@pytest.mark.slow
def test_four_jobs_on_two_slots_take_turns(two_slots: LlamaCppEngine) -> None:
    requests = [
        chat(ESSAY, GREEDY, 32),
        chat(STORY, SEEDED, 32),
        chat(RECIPE, GREEDY, 32),
        chat(LETTER, SamplingParams(temperature=0.7, seed=99), 32),
    ]
    expected = [alone(two_slots, request).text for request in requests]
    runs = together(two_slots, requests)
    # Between a job's `Started` and its terminal event it holds a context (it is lent
    # before the first and returned after the last), so these windows lie inside the
    # pool's lending: more than two overlapping would mean a context lent twice.
    edges: list[tuple[float, int]] = []
    for run in runs:
        assert isinstance(run.events[0], Started)
        edges += [(run.times[0], 1), (run.times[-1], -1)]
    generating = most = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        generating += step
        most = max(most, generating)
    assert most == 2
    assert [run.text for run in runs] == expected
    assert all(run.ending.usage.completion_tokens == 32 for run in runs)


@pytest.mark.slow
def test_the_slots_share_the_weights_in_memory(two_slots: LlamaCppEngine) -> None:
    """Every slot maps the same GGUF file: its pages are resident once, not once per slot."""
    smaps = Path("/proc/self/smaps")
    if not smaps.exists():
        pytest.skip("needs Linux's /proc/self/smaps")
    path = str(resolve_model("default").path)
    mappings, pss_kb = 0, 0
    inside = False
    for line in smaps.read_text().splitlines():
        if MAPPING_HEADER.match(line):
            inside = line.endswith(path)
            mappings += inside
        elif inside and line.startswith("Pss:"):
            pss_kb += int(line.split()[1])
    assert mappings >= 2  # one per slot
    assert pss_kb * 1024 <= 1.05 * Path(path).stat().st_size
