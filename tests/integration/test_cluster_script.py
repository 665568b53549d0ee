"""scripts/cluster as a person would run it (its Python part; the shell wrapper only installs
first): it prints a key and one port that answers with the real model through two replicas,
and Ctrl-C stops every process it started and deletes its directory."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.network import STARTUP_TIMEOUT_S, free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

REPO = Path(__file__).resolve().parents[2]


def test_the_cluster_script_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    output = tmp_path / "cluster.out"
    with output.open("wb") as sink:
        cluster = subprocess.Popen(
            [sys.executable, "scripts/cluster.py", "--port", str(port), "--workers", "2"],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: "Ctrl-C stops" in output.read_text() or cluster.poll() is not None,
            2 * STARTUP_TIMEOUT_S,
            "the cluster to be ready",
        )
        printed = output.read_text()
        assert cluster.poll() is None, printed
        key = re.search(r"API key \(with \$100\): (\S+)", printed)
        logs = re.search(r"Logs: (\S+)/\*\.log", printed)
        assert key is not None and logs is not None, printed
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": "smollm2-135m-instruct",
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 4,
            },
            headers={"Authorization": f"Bearer {key.group(1)}"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        assert Path(logs.group(1)).is_dir()
        cluster.send_signal(signal.SIGINT)
        assert cluster.wait(90) == 0, output.read_text()[-3000:]
        assert not Path(logs.group(1)).exists()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        if cluster.poll() is None:
            cluster.kill()
            cluster.wait(10)
