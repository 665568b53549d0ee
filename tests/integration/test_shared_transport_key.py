"""Coordinator replicas and the sealed-transport key, as real processes on loopback: two
coordinators started at once on one data directory (one SQLite ledger) publish one key
with no configuration, a request sealed to the key fetched from one is opened and answered
by the other (its provider running the real model), a restart keeps the key, and a key file
named by MOONFLOWER_TRANSPORT_KEY_FILE is used, or refused at start-up without a traceback
when others may read it."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from moonflower.client.sealed import (
    ERROR_HEADER,
    KID_HEADER,
    CoordinatorKey,
    SealedRequest,
    SealingTransport,
)
from moonflower.crypto.signing import b64e
from tests.support.network import STARTUP_TIMEOUT_S, LocalNetwork, Process, free_port, wait_until

pytestmark = pytest.mark.slow

ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_KID = "300c9c9603b92a4b"
MODEL = "smollm2-135m-instruct"


@dataclass
class Replicas:
    a: LocalNetwork
    """Replica A: no provider."""
    b: LocalNetwork
    """Replica B, on A's data directory and ledger, with a provider of the default model."""
    api_key: str


def spawn_coordinator(net: LocalNetwork, name: str) -> Process:
    net.coordinator = net.spawn(
        name, "coordinator", "serve", "--port", str(net.port), *net.db_args()
    )
    return net.coordinator


def wait_healthy(net: LocalNetwork) -> None:
    process = net.coordinator
    assert process is not None
    wait_until(
        lambda: net.is_healthy() or not process.is_running,
        STARTUP_TIMEOUT_S,
        f"{process.name} to answer /health",
    )
    assert process.is_running, process.log()[-3000:]


def published_key(net: LocalNetwork) -> CoordinatorKey:
    response = httpx.get(f"{net.base_url}/v1/encryption-key", timeout=10)
    assert response.status_code == 200
    return CoordinatorKey.from_document(response.json())


def sealed_chat(net: LocalNetwork, key: CoordinatorKey, api_key: str) -> tuple[int, Any]:
    """POST a chat completion sealed to `key` at `net`, never re-sealed to another key; the
    status and the opened JSON answer."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    sealed = SealedRequest.of_json(key, body)
    response = httpx.post(
        f"{net.base_url}/v1/chat/completions",
        content=sealed.content,
        headers={**sealed.headers, "Authorization": f"Bearer {api_key}"},
        timeout=120,
    )
    assert ERROR_HEADER not in response.headers, response.text  # the envelope opened
    assert response.headers[KID_HEADER] == key.kid
    assert sealed.classify(response.status_code, response.headers) == "sealed_body"
    return response.status_code, sealed.open_json(response)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    a = LocalNetwork(root)
    b = LocalNetwork(root, port=free_port())  # the same root: one data dir, one ledger
    try:
        api_key = a.create_key()  # also migrates the ledger before either replica starts
        spawn_coordinator(a, "coordinator-a")
        spawn_coordinator(b, "coordinator-b")  # at once: both find no key file
        wait_healthy(a)
        wait_healthy(b)
        b.start_provider("provider-b")
        yield Replicas(a, b, api_key)
    finally:
        b.stop()
        a.stop()


def test_replicas_on_one_data_dir_publish_one_key_from_one_private_file(
    replicas: Replicas,
) -> None:
    assert published_key(replicas.a) == published_key(replicas.b)
    key_file = replicas.a.data_dir / "transport-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secret = key_file.read_text().strip()
    for process in replicas.a.processes + replicas.b.processes:
        assert secret not in process.log()


def test_a_request_sealed_to_one_replicas_key_is_answered_by_the_other(
    replicas: Replicas,
) -> None:
    key_from_a = published_key(replicas.a)
    status, answer = sealed_chat(replicas.b, key_from_a, replicas.api_key)
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"]


def test_the_openai_sdk_pinned_to_one_replicas_key_streams_from_the_other(
    replicas: Replicas,
) -> None:
    pinned = SealingTransport(key=published_key(replicas.a))  # never fetches another key
    with httpx.Client(transport=pinned, timeout=120) as http:
        client = openai.OpenAI(
            base_url=f"{replicas.b.base_url}/v1",
            api_key=replicas.api_key,
            max_retries=0,
            # The SDK is typed for httpx2 but still takes an httpx client.
            http_client=http,  # type: ignore[arg-type]
        )
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count to three."}],
            max_tokens=8,
            temperature=0,
            stream=True,
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text


def test_a_restarted_replica_keeps_the_key_and_opens_requests_sealed_before(
    replicas: Replicas,
) -> None:
    before = published_key(replicas.a)
    assert replicas.a.coordinator is not None
    assert replicas.a.coordinator.stop() == 0
    spawn_coordinator(replicas.a, "coordinator-a")
    wait_healthy(replicas.a)
    assert published_key(replicas.a) == before
    # No provider is connected to A: it opens the request and answers, sealed, that none is.
    status, answer = sealed_chat(replicas.a, before, replicas.api_key)
    assert status in (404, 503), answer
    assert answer["error"]["code"] != "kid_mismatch"


def test_a_key_file_setting_is_used_and_an_unsafe_file_is_refused_at_start_up(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("key-file")
    key_file = root / "secrets" / "transport-key"
    key_file.parent.mkdir(mode=0o700)
    key_file.write_text(b64e(ALICE_PRIVATE) + "\n")
    key_file.chmod(0o644)
    net = LocalNetwork(root, settings={"TRANSPORT_KEY_FILE": str(key_file)})
    try:
        refused = spawn_coordinator(net, "coordinator-refused")
        assert refused.popen.wait(STARTUP_TIMEOUT_S) == 2
        log = refused.log()
        assert f"error: The transport key file {key_file} has mode 0644" in log
        assert "Traceback" not in log and b64e(ALICE_PRIVATE) not in log
        key_file.chmod(0o600)
        spawn_coordinator(net, "coordinator")
        wait_healthy(net)
        assert published_key(net).kid == ALICE_KID
        assert not (net.data_dir / "transport-key").exists()
    finally:
        net.stop()
