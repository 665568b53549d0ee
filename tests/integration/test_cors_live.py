"""A real `moonflower coordinator serve` process answers browsers: its allowed origins come
from the environment (comma-separated) or from flags, and `*` there stops it at start-up.
A coordinator alone, without providers: CORS is answered before any model is involved."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.network import STARTUP_TIMEOUT_S, LocalNetwork, wait_until

pytestmark = pytest.mark.slow

APP = "https://app.example"


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    settings = {"CORS_ALLOWED_ORIGINS": f"{APP}, http://127.0.0.1:5173"}
    net = LocalNetwork(tmp_path_factory.mktemp("cors"), settings=settings)
    try:
        net.start_coordinator()
        yield net
    finally:
        net.stop()


def preflight(net: LocalNetwork, path: str, origin: str) -> httpx.Response:
    return httpx.options(
        net.base_url + path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=10,
    )


def test_a_preflight_from_an_origin_in_the_environment_is_allowed(
    coordinator: LocalNetwork,
) -> None:
    for origin in (APP, "http://127.0.0.1:5173"):
        response = preflight(coordinator, "/v1/chat/completions", origin)
        assert response.status_code == 204, response.text
        assert response.headers["access-control-allow-origin"] == origin
        assert {"authorization", "content-type"} <= {
            name.strip() for name in response.headers["access-control-allow-headers"].split(",")
        }
    refused = preflight(coordinator, "/v1/chat/completions", "https://elsewhere.example")
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers


def test_origins_on_the_command_line_are_allowed(tmp_path: Path) -> None:
    net = LocalNetwork(tmp_path)
    flags = ["--cors-allowed-origin", "https://one.example", "--cors-allowed-origin", APP]
    try:
        net.spawn(
            "coordinator", "coordinator", "serve", "--port", str(net.port), *net.db_args(), *flags
        )
        wait_until(net.is_healthy, STARTUP_TIMEOUT_S, "the coordinator to answer /health")
        for origin in ("https://one.example", APP):
            response = preflight(net, "/v1/messages", origin)
            assert response.status_code == 204, response.text
            assert response.headers["access-control-allow-origin"] == origin
    finally:
        net.stop()


def test_any_origin_on_the_command_line_stops_the_coordinator(tmp_path: Path) -> None:
    net = LocalNetwork(tmp_path)
    command = [sys.executable, "-m", "moonflower", "coordinator", "serve", "--port"]
    started = subprocess.run(
        [*command, str(net.port), *net.db_args(), "--cors-allowed-origin", "*"],
        capture_output=True,
        text=True,
        env=net.env(),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert started.returncode == 2
    assert "public read-only routes" in started.stderr
