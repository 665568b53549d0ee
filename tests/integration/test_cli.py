"""The command line against a real network: key management and `moonflower chat`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.network import LocalNetwork

pytestmark = pytest.mark.slow


def moonflower(network: LocalNetwork, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moonflower", *args],
        capture_output=True,
        text=True,
        env=network.env(),
        timeout=120,
        check=False,
    )


def test_keys_are_listed_by_prefix_only_and_revoked(network: LocalNetwork) -> None:
    key = network.create_key(account="listing")
    listed = moonflower(network, "keys", "list", *network.db_args())
    assert listed.returncode == 0
    assert key[:11] in listed.stdout
    assert key not in listed.stdout
    assert "listing" in listed.stdout
    revoked = moonflower(network, "keys", "revoke", key[:11], *network.db_args())
    assert revoked.returncode == 0
    relisted = moonflower(network, "keys", "list", *network.db_args())
    row = next(line for line in relisted.stdout.splitlines() if key[:11] in line)
    assert "revoked" in row
    again = moonflower(network, "keys", "revoke", "mf-nosuchkey", *network.db_args())
    assert again.returncode == 1


def test_chat_one_shot_streams_an_answer(network: LocalNetwork, api_key: str) -> None:
    result = moonflower(
        network,
        "chat",
        "What is the capital of France?",
        "--base-url",
        f"{network.base_url}/v1",
        "--api-key",
        api_key,
        "--max-tokens",
        "16",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_chat_with_a_bad_key_says_so(network: LocalNetwork) -> None:
    result = moonflower(
        network, "chat", "Hi", "--base-url", f"{network.base_url}/v1", "--api-key", "mf-wrong"
    )
    assert result.returncode == 1
    assert "401" in result.stderr
