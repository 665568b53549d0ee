"""`GET /v1/stats` after known traffic: the real app on a loopback socket with scripted
providers (the counting is under test; no model is needed to count)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.fake_engine import ScriptedEngine
from tests.support.inprocess import inprocess_network

SCRIPT = "one two three four five"


async def test_stats_count_the_traffic(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, [ScriptedEngine(script=SCRIPT)], stats_cache_s=0) as net,
        httpx.AsyncClient(base_url=net.base_url, timeout=30) as client,
    ):
        empty = (await client.get("/v1/stats")).json()
        assert empty["all_time"]["requests"] == 0
        assert empty["providers_online"] == 1
        tokens = 0
        for _ in range(3):
            answer = await client.post(
                "/v1/chat/completions",
                headers=net.headers,
                json={"model": "fake-model", "messages": [{"role": "user", "content": "a b"}]},
            )
            assert answer.status_code == 200
            tokens += answer.json()["usage"]["total_tokens"]
        await net.services.settler.drain(10)
        stats = (await client.get("/v1/stats")).json()
        public = await client.get("/v1/stats", headers={"Origin": "https://anyone.example"})
    assert stats["all_time"] == {
        "requests": 3,
        "prompt_tokens": 3 * 2,
        "completion_tokens": 3 * len(SCRIPT.split()),
        "tokens": tokens,
    }
    assert stats["window"] == {"requests": 3, "tokens": tokens}
    assert len(stats["per_minute"]) == stats["window_minutes"] == 30
    assert sum(minute["tokens"] for minute in stats["per_minute"]) == tokens
    assert stats["tokens_per_second"] == round(tokens / 1800, 3)
    assert stats["models"] == [
        {"model": "fake-model", "providers": 1, "by_trust_level_here": {"self_signed": 1}}
    ]
    assert public.status_code == 200  # no key: the numbers are public
