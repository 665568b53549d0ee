"""`moonflower provider status` and `provider earnings` for a real provider that served a
real job: status shows it running through its coordinator with its trust level, slots, jobs
and today's earnings; earnings add up to what the ledger credited; a stopped provider is
reported as not running."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import openai

from tests.support.network import STARTUP_TIMEOUT_S, LocalNetwork, wait_until

MODEL = "smollm2-135m-instruct"


def run(network: LocalNetwork, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moonflower", "provider", *args],
        capture_output=True,
        text=True,
        env={**network.env(), "MOONFLOWER_PROVIDER_TOKEN": token},
        timeout=60,
    )


def test_status_and_earnings_of_a_serving_provider(tmp_path: Path) -> None:
    network = LocalNetwork(tmp_path)
    try:
        network.start_coordinator()
        token = network.create_provider_token("earner")
        data_dir = tmp_path / "earner"
        serve = network.spawn(
            "earner",
            "provider",
            "serve",
            "--coordinator",
            network.base_url,
            "--data-dir",
            str(data_dir),
            env={"MOONFLOWER_PROVIDER_TOKEN": token},
        )
        wait_until(lambda: network.provider_count() == 1, STARTUP_TIMEOUT_S, "the provider")
        key = network.create_key()
        client = openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=key)
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8
        )

        def served_one() -> bool:
            shown = run(network, token, "status", "--data-dir", str(data_dir), "--json")
            return json.loads(shown.stdout)["provider"]["jobs_served"] == 1

        wait_until(served_one, 15, "the status file to show the job")
        status = run(network, token, "status", "--data-dir", str(data_dir))
        assert status.returncode == 0, status.stderr
        assert "provider:     running" in status.stdout
        assert f"coordinator:  {network.base_url}" in status.stdout
        assert "trust level:  self_signed" in status.stdout
        assert f"models:       {MODEL}" in status.stdout
        assert "jobs:         1 served" in status.stdout
        earned_today = Decimal(status.stdout.split("earned today: $")[1].split()[0])
        assert earned_today > 0
        assert token not in status.stdout + status.stderr

        earnings = run(network, token, "earnings", "--json", "--data-dir", str(data_dir))
        body = json.loads(earnings.stdout)
        assert Decimal(body["total_earned_usd"]) == earned_today
        assert sum(Decimal(day["earned_usd"]) for day in body["daily"]) == earned_today
        assert len(body["jobs"]) == 1

        serve.stop()
        stopped = run(network, token, "status", "--data-dir", str(data_dir))
        assert "provider: not running" in stopped.stdout
    finally:
        network.stop()
