"""`moonflower provider doctor` against a healthy set-up (a real coordinator, the real
model, a token only its owner can read) and a broken one (weights that do not match the
remembered hash, a token file others can read, a coordinator nobody answers at): each
problem is reported with how to fix it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from moonflower.model_files import resolve_model, with_weight_hash
from tests.support.network import LocalNetwork, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = LocalNetwork(tmp_path_factory.mktemp("doctor"))
    try:
        net.start_coordinator()
        yield net
    finally:
        net.stop()


def machine(network: LocalNetwork, root: Path, coordinator: str, mode: int) -> Path:
    """A data directory as `provider login` leaves it, with the token file at `mode`."""
    data_dir = root / "machine"
    data_dir.mkdir()
    token_file = data_dir / "provider-token"
    token_file.write_text(network.create_provider_token(f"doctor-{root.name}") + "\n")
    os.chmod(token_file, mode)
    (data_dir / "provider.json").write_text(json.dumps({"coordinator": [coordinator]}))
    return data_dir


def doctor(network: LocalNetwork, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moonflower", "provider", "doctor", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=network.env(),
        timeout=240,
    )


def test_a_healthy_set_up_passes_every_check(network: LocalNetwork, tmp_path: Path) -> None:
    data_dir = machine(network, tmp_path, network.base_url, 0o600)
    result = doctor(network, data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line and line[0] in "✓✗–"]
    names = [line[2:].split(":")[0] for line in lines]
    assert names == [
        "provider token",
        "signing key",
        "model",
        "model hash",
        "engine and memory",
        "coordinator",
        "protocol version",
        "clock",
        "registration",
    ]
    assert all(line.startswith("✓") for line in lines), result.stdout
    assert "trust level self_signed" in result.stdout
    token = (data_dir / "provider-token").read_text().strip()
    assert token not in result.stdout + result.stderr


def test_a_broken_set_up_is_told_each_fix(network: LocalNetwork, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    data_dir = machine(network, tmp_path, nowhere, 0o644)
    source = with_weight_hash(resolve_model("default"), data_dir)
    cache = data_dir / "weight-hashes.json"
    remembered = json.loads(cache.read_text())
    remembered[str(source.path.resolve())]["sha256"] = "0" * 64
    cache.write_text(json.dumps(remembered))
    result = doctor(network, data_dir)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    token_file = data_dir / "provider-token"
    assert "✗ provider token" in out
    assert f"fix: chmod 600 {token_file}" in out
    assert "✗ model hash" in out
    assert f"fix: delete {cache}" in out
    assert "✗ coordinator" in out
    assert f"cannot reach {nowhere}" in out
    assert "fix: check the URL (--coordinator)" in out
    assert "– registration" in out  # could not run, and said so
