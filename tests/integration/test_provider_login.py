"""`moonflower provider login` against a real coordinator: the machine shows a code, its
owner approves it in the console, the token lands owner-only in the data directory and never
in the output, and a plain `provider serve` then connects with it; a token file others can
read is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.device_login import read_until, start_login
from tests.support.network import STARTUP_TIMEOUT_S, LocalNetwork, wait_until

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = LocalNetwork(tmp_path_factory.mktemp("login"), settings={"DEVICE_POLL_INTERVAL_S": "1"})
    try:
        net.start_coordinator()
        yield net
    finally:
        net.stop()


def approve_in_console(network: LocalNetwork, email: str, user_code: str) -> None:
    browser = httpx.Client(base_url=network.base_url, timeout=30)
    made = browser.post("/console/api/signup", json={"email": email, "password": PASSWORD})
    assert made.status_code == 201, made.text
    csrf = made.json()["csrf_token"]
    looked = browser.get(f"/console/api/device/{user_code}")
    assert looked.json()["status"] == "pending"
    approved = browser.post(
        "/console/api/device/approve",
        json={"user_code": user_code},
        headers={"X-CSRF-Token": csrf},
    )
    assert approved.status_code == 200, approved.text


def log_in(network: LocalNetwork, data_dir: Path, email: str) -> tuple[str, str]:
    """Run `provider login`, approve its code; its stdout and stderr."""
    login = start_login(network, data_dir, "bench-1")
    match, shown = read_until(login, r"enter the code ([A-Z]{4}-[A-Z]{4})")
    approve_in_console(network, email, match.group(1))
    out, err = login.communicate(timeout=60)
    assert login.returncode == 0, out + err
    return shown + out, err


@pytest.mark.slow
def test_login_then_a_plain_serve_connects_with_the_saved_token(
    network: LocalNetwork, tmp_path: Path
) -> None:
    data_dir = tmp_path / "machine"
    out, err = log_in(network, data_dir, "owner@example.org")
    token_file = data_dir / "provider-token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    token = token_file.read_text().strip()
    assert token.startswith("mfp-")
    assert token not in out
    assert token not in err
    assert "approved" in out

    before = network.provider_count()
    serve = network.spawn("served-after-login", "provider", "serve", "--data-dir", str(data_dir))
    wait_until(
        lambda: network.provider_count() > before or not serve.is_running,
        STARTUP_TIMEOUT_S,
        "the logged-in provider to register",
    )
    assert serve.is_running, serve.log()[-2000:]
    assert token not in serve.log()
    serve.stop()


@pytest.mark.slow
def test_serve_refuses_a_token_file_others_can_read(network: LocalNetwork, tmp_path: Path) -> None:
    data_dir = tmp_path / "careless"
    log_in(network, data_dir, "careless@example.org")
    token_file = data_dir / "provider-token"
    os.chmod(token_file, 0o644)
    refused = subprocess.run(
        [sys.executable, "-m", "moonflower", "provider", "serve", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=network.env(),
        timeout=60,
    )
    assert refused.returncode == 2
    assert f"chmod 600 {token_file}" in refused.stderr
