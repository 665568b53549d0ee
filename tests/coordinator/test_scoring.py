"""Provider scoring and `Registry.pick`: measured speed, first-token latency, reliability,
trust and load decide; newcomers get measured; full providers are never picked; equals take
turns; a pick only looks at the providers of its model."""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from moonflower import wire
from moonflower.coordinator import registry as registry_module
from moonflower.coordinator.registry import EXPLORE_EVERY, Registry
from moonflower.coordinator.scoring import (
    PRIOR_DECODE_TPS,
    PRIOR_TTFT_S,
    PROVEN_AFTER_JOBS,
    REFERENCE_COMPLETION_TOKENS,
    RELIABILITY_WINDOW,
    ProviderStats,
    score,
)
from moonflower.coordinator.session import ProviderSession
from moonflower.coordinator.trust import ProviderTrust, TrustLevel
from moonflower.crypto.envelope import EncryptionKeyPair
from moonflower.crypto.signing import SoftwareSigner, b64e
from moonflower.crypto.statement import AttestedHardware, build_statement
from moonflower.generation import GenerationRequest, Message
from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import HARDWARE, inprocess_network

FRESHNESS_S = 360.0


async def _send_nowhere(frame: str) -> None:
    return None


def session(
    name: str,
    *,
    model: str = "m",
    slots: int = 4,
    trust: TrustLevel = TrustLevel.NONE,
    kind: type[ProviderSession] = ProviderSession,
) -> ProviderSession:
    keys = EncryptionKeyPair.generate()
    card = wire.ModelCard(
        id=model, sha256="0" * 64, context_length=512, engine="test", size_bytes=0
    )
    registration = wire.Register(
        protocol_version=wire.PROTOCOL_VERSION,
        agent_version="0",
        hardware=HARDWARE,
        models=(card,),
        max_concurrent_jobs=slots,
        encryption_public_key=b64e(keys.public_key),
    )
    return kind(
        id=name,
        registration=registration,
        send_frame=_send_nowhere,
        encryption_public_key=keys.public_key,
        trust=provider_trust(trust, keys.public_key, model),
    )


def provider_trust(level: TrustLevel, encryption_key: bytes, model: str) -> ProviderTrust:
    """Trust as the challenge loop leaves it: at `level`, with a challenge just passed."""
    if level is TrustLevel.NONE:
        return ProviderTrust(statement=None, signed_statement=None)
    statement = build_statement(
        SoftwareSigner.generate(),
        encryption_key,
        hardware=AttestedHardware(
            chip=None, machine_model=None, serial="S1", memory_bytes=1 << 30, gpu=None, cpu="c"
        ),
        os_version="TestOS 1",
        posture={},
        code_hash="c" * 64,
        runtime_hash="d" * 64,
        model_hashes={model: "0" * 64},
        protocol_version=wire.PROTOCOL_VERSION,
        now=time.time(),
    )
    return ProviderTrust(
        statement=statement,
        signed_statement=None,
        is_hardware=level is TrustLevel.HARDWARE,
        last_challenge_passed=time.monotonic(),
    )


def registry_of(*sessions: ProviderSession) -> Registry:
    registry = Registry(default_floor=TrustLevel.NONE, freshness_s=FRESHNESS_S)
    for each in sessions:
        registry.add(each)
    return registry


def measured(
    provider: ProviderSession,
    *,
    tps: float = 100.0,
    ttft_s: float = 0.2,
    failures: int = 0,
    jobs: int = PROVEN_AFTER_JOBS,
) -> ProviderSession:
    """Report `jobs` finished jobs at these rates, then `failures` failed ones."""
    for _ in range(jobs):
        provider.stats.job_started(ttft_s)
        provider.stats.job_finished(100, 100 / tps)
    for _ in range(failures):
        provider.stats.job_failed()
    return provider


def picks(registry: Registry, count: int, model: str = "m") -> Counter[str | None]:
    chosen = (registry.pick(model) for _ in range(count))
    return Counter(p.id if p is not None else None for p in chosen)


async def occupy(provider: ProviderSession, jobs: int) -> None:
    request = GenerationRequest(
        model="m", max_tokens=8, messages=(Message(role="user", content="hi"),)
    )
    card = provider.card("m")
    assert card is not None
    for n in range(jobs):
        await provider.start_job(f"{provider.id}-job{n}", request, card)


# ProviderStats


def test_a_new_provider_is_scored_on_neutral_priors() -> None:
    stats = ProviderStats()
    assert stats.decode_tps is None and stats.ttft_s is None
    assert stats.expected_s == pytest.approx(
        PRIOR_TTFT_S + REFERENCE_COMPLETION_TOKENS / PRIOR_DECODE_TPS
    )
    assert 0.8 < stats.reliability < 1.0
    assert not stats.is_proven


def test_measurements_replace_the_priors_and_then_move_gradually() -> None:
    stats = ProviderStats()
    stats.job_started(2.0)
    stats.job_finished(200, 1.0)
    assert (stats.ttft_s, stats.decode_tps) == (2.0, 200.0)
    stats.job_started(0.0)
    stats.job_finished(100, 1.0)
    assert stats.ttft_s is not None and stats.decode_tps is not None
    assert 0.0 < stats.ttft_s < 2.0
    assert 100.0 < stats.decode_tps < 200.0


def test_very_short_jobs_and_broken_timings_are_not_measurements() -> None:
    stats = ProviderStats()
    stats.job_finished(1, 1e-6)
    stats.job_finished(50, 0.0)
    stats.job_finished(50, math.inf)
    stats.job_started(math.nan)
    assert stats.decode_tps is None and stats.ttft_s is None
    assert stats.expected_s == ProviderStats().expected_s
    assert stats.jobs_ended == 3


def test_reliability_only_remembers_the_recent_window() -> None:
    old_failures, clean = ProviderStats(), ProviderStats()
    for _ in range(RELIABILITY_WINDOW):
        old_failures.job_failed()
    assert old_failures.reliability < 0.25
    for _ in range(RELIABILITY_WINDOW):
        old_failures.job_finished(10, 0.1)
        clean.job_finished(10, 0.1)
    assert old_failures.reliability == clean.reliability > 0.95


def test_a_failure_counts_for_exactly_the_window() -> None:
    once_failed, clean = ProviderStats(), ProviderStats()
    once_failed.job_failed()
    for _ in range(RELIABILITY_WINDOW - 1):
        once_failed.job_finished(10, 0.1)
        clean.job_finished(10, 0.1)
    assert once_failed.reliability < clean.reliability
    once_failed.job_finished(10, 0.1)
    clean.job_finished(10, 0.1)
    assert once_failed.reliability == clean.reliability


def test_score_orders_each_input_the_right_way() -> None:
    base = measured(session("x")).stats
    neutral = score(base, trust=TrustLevel.SELF_SIGNED, load=0.0)
    assert score(base, trust=TrustLevel.HARDWARE, load=0.0) > neutral
    assert score(base, trust=TrustLevel.NONE, load=0.0) < neutral
    assert score(base, trust=TrustLevel.SELF_SIGNED, load=0.5) < neutral
    assert score(base, trust=TrustLevel.SELF_SIGNED, load=0.0, is_loaded=False) < neutral


# Registry.pick


def test_the_faster_provider_wins() -> None:
    fast = measured(session("fast"), tps=120)
    slow = measured(session("slow"), tps=30)
    assert picks(registry_of(slow, fast), 50) == {"fast": 50}


def test_the_provider_quicker_to_a_first_token_wins() -> None:
    quick = measured(session("quick"), ttft_s=0.1)
    sluggish = measured(session("sluggish"), ttft_s=3.0)
    assert picks(registry_of(sluggish, quick), 50) == {"quick": 50}


def test_the_more_reliable_provider_wins() -> None:
    steady = measured(session("steady"), jobs=10)
    flaky = measured(session("flaky"), jobs=7, failures=3)
    assert picks(registry_of(flaky, steady), 50) == {"steady": 50}


def test_higher_trust_wins_among_equals() -> None:
    providers = [
        measured(session(level.label, trust=level))
        for level in (TrustLevel.NONE, TrustLevel.HARDWARE, TrustLevel.SELF_SIGNED)
    ]
    registry = registry_of(*providers)
    assert picks(registry, 30) == {"hardware": 30}
    assert registry.pick("m", TrustLevel.HARDWARE) is providers[1]


def test_a_much_faster_provider_outweighs_a_trust_level_above_the_floor() -> None:
    hardware = measured(session("hardware", trust=TrustLevel.HARDWARE), tps=20)
    self_signed = measured(session("self_signed", trust=TrustLevel.SELF_SIGNED), tps=200)
    assert picks(registry_of(hardware, self_signed), 10) == {"self_signed": 10}


async def test_the_less_loaded_provider_wins() -> None:
    busy = measured(session("busy", slots=4))
    idle = measured(session("idle", slots=4))
    await occupy(busy, 2)
    assert picks(registry_of(busy, idle), 20) == {"idle": 20}


async def test_a_provider_with_no_free_slot_is_never_picked() -> None:
    full = measured(session("full", slots=2), tps=500, ttft_s=0.01)
    slow = measured(session("slow", slots=2), tps=5, ttft_s=5.0, failures=3)
    newcomer_full = session("newcomer_full", slots=1)
    await occupy(full, 2)
    await occupy(newcomer_full, 1)
    registry = registry_of(full, slow, newcomer_full)
    assert picks(registry, 3 * EXPLORE_EVERY) == {"slow": 3 * EXPLORE_EVERY}
    assert registry.has_free_slot_for("m")
    await occupy(slow, 2)
    assert picks(registry, EXPLORE_EVERY) == {None: EXPLORE_EVERY}
    assert not registry.has_free_slot_for("m")
    # Still serving: the dispatcher can tell "busy" from "nobody serves it".
    assert len(registry.serving("m")) == 3
    full.forget_job("full-job0")
    assert registry.pick("m") is full


def test_newcomers_get_a_bounded_share_of_picks_until_measured() -> None:
    veteran = measured(session("veteran"), tps=150, ttft_s=0.1)
    newcomer = session("newcomer")
    registry = registry_of(veteran, newcomer)
    counts = picks(registry, 10 * EXPLORE_EVERY)
    assert counts == {"veteran": 10 * EXPLORE_EVERY - 10, "newcomer": 10}
    # Measured, and slower: it only gets what the veteran cannot take.
    measured(newcomer, tps=20, ttft_s=1.0)
    assert picks(registry, 10 * EXPLORE_EVERY) == {"veteran": 10 * EXPLORE_EVERY}


def test_a_newcomer_that_measures_well_takes_over() -> None:
    veteran = measured(session("veteran"), tps=50)
    newcomer = measured(session("newcomer"), tps=200, jobs=1)
    assert picks(registry_of(veteran, newcomer), 20) == {"newcomer": 20}


class ColdSession(ProviderSession):
    """A provider whose model would have to be loaded before its first token."""

    def is_loaded(self, model: str) -> bool:
        return False


def test_a_provider_with_the_model_loaded_beats_one_that_must_load_it() -> None:
    cold = measured(session("cold", kind=ColdSession), tps=200)
    warm = measured(session("warm"), tps=100)
    assert picks(registry_of(cold, warm), 10) == {"warm": 10}
    assert picks(registry_of(cold), 1) == {"cold": 1}


def test_equal_providers_take_turns() -> None:
    providers = [measured(session(f"p{n}")) for n in range(4)]
    assert picks(registry_of(*providers), 40) == {f"p{n}": 10 for n in range(4)}


def test_measurement_noise_counts_as_equal() -> None:
    a = measured(session("a"), tps=100)
    b = measured(session("b"), tps=101)
    assert picks(registry_of(a, b), 40) == {"a": 20, "b": 20}


async def test_jobs_spread_over_equal_providers_as_they_fill() -> None:
    providers = [session(f"p{n}", slots=2) for n in range(5)]
    registry = registry_of(*providers)
    for n in range(10):
        chosen = registry.pick("m")
        assert chosen is not None
        await occupy_one(chosen, f"job{n}")
    assert [p.active_jobs for p in providers] == [2] * 5
    assert registry.pick("m") is None


async def occupy_one(provider: ProviderSession, job_id: str) -> None:
    request = GenerationRequest(
        model="m", max_tokens=8, messages=(Message(role="user", content="hi"),)
    )
    card = provider.card("m")
    assert card is not None
    await provider.start_job(job_id, request, card)


def test_untrusted_closed_and_unchallenged_providers_are_not_picked() -> None:
    untrusted = measured(session("untrusted", trust=TrustLevel.HARDWARE), tps=500)
    untrusted.mark_untrusted("test")
    stale = measured(session("stale", trust=TrustLevel.HARDWARE), tps=500)
    stale.trust.last_challenge_passed = time.monotonic() - FRESHNESS_S - 1
    closed = measured(session("closed"), tps=500)
    closed.close()
    plain = session("plain")
    registry = registry_of(untrusted, stale, closed, plain)
    assert picks(registry, 2 * EXPLORE_EVERY) == {"plain": 2 * EXPLORE_EVERY}
    assert registry.pick("m", TrustLevel.SELF_SIGNED) is None
    assert registry.serving("m") == [plain]


def test_excluded_providers_are_passed_over_for_the_next_best() -> None:
    fast = measured(session("fast"), tps=200)
    medium = measured(session("medium"), tps=100)
    slow = measured(session("slow"), tps=20)
    registry = registry_of(slow, medium, fast)
    assert registry.pick("m", exclude={"fast"}) is medium
    assert registry.pick("m", exclude={"fast", "medium"}) is slow
    assert registry.pick("m", exclude={"fast", "medium", "slow"}) is None


def test_removed_providers_leave_the_model_index() -> None:
    a, b = session("a"), session("b", model="other")
    registry = registry_of(a, b)
    assert registry.connected_for("m") and registry.connected_for("other")
    registry.remove("a")
    assert registry.pick("m") is None
    assert not registry.connected_for("m")
    assert registry.serving("m") == []
    assert [p.id for p in registry] == ["b"]
    registry.remove("a")  # twice is harmless


def test_a_pick_scores_only_the_providers_of_its_model(monkeypatch: pytest.MonkeyPatch) -> None:
    scored: list[ProviderStats] = []

    def counting_score(stats: ProviderStats, **inputs: Any) -> float:
        scored.append(stats)
        return score(stats, **inputs)

    monkeypatch.setattr(registry_module, "score", counting_score)
    ours = [session(f"m{n}") for n in range(3)]
    registry = registry_of(*ours, *(session(f"o{n}", model="other") for n in range(1000)))
    for _ in range(10):
        assert registry.pick("m") is not None
    assert len(scored) == 30
    assert {id(s) for s in scored} == {id(p.stats) for p in ours}


def test_providers_of_other_models_do_not_slow_a_pick() -> None:
    ours = [session(f"m{n}") for n in range(10)]
    alone = registry_of(*ours)
    crowded = registry_of(*ours, *(session(f"o{n}", model="other") for n in range(2000)))

    def median_pick_ns(registry: Registry) -> float:
        times = []
        for _ in range(500):
            t0 = time.perf_counter_ns()
            registry.pick("m")
            times.append(time.perf_counter_ns() - t0)
        return statistics.median(times)

    median_pick_ns(alone)  # warm up
    # Scanning 2,000 sessions would take ~100x a 10-session pick; allow noise, not that.
    assert median_pick_ns(crowded) < 3 * median_pick_ns(alone) + 20_000


def test_routing_stats_summarise_pick_durations() -> None:
    registry = registry_of(session("a"))
    assert registry.routing_stats() == {
        "count": 0,
        "p50_ms": None,
        "p99_ms": None,
        "max_ms": None,
    }
    for _ in range(100):
        registry.pick("m")
    registry.pick("unknown")
    stats = registry.routing_stats()
    assert stats["count"] == 101
    p50, p99, most = stats["p50_ms"], stats["p99_ms"], stats["max_ms"]
    assert isinstance(p50, float) and isinstance(p99, float) and isinstance(most, float)
    assert 0 < p50 <= p99 <= most < 50


async def test_health_reports_routing(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, [ScriptedEngine()]) as net,
        httpx.AsyncClient(base_url=net.base_url, headers=net.headers) as client,
    ):
        before = (await client.get("/health")).json()["routing"]
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        after = (await client.get("/health")).json()["routing"]
    assert after["count"] == before["count"] + 1
    assert 0 < after["p50_ms"] <= after["p99_ms"] <= after["max_ms"]
