"""The console across replicas, as real processes: two coordinators on one PostgreSQL and
one Redis, each remembering API keys for an hour.

A browser signed in through one replica is signed in on the other; a key made through one
and revoked through the other stops on both at once (not after the hour); a device login
started on one and approved on the other yields one token however the machine's polls are
spread; wrong passwords count on both."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.device_login import CLIENT_FORM, DEVICE_GRANT
from tests.support.network import wait_until
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

PASSWORD = "correct horse battery staple"
MAX_FAILURES = 4


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
) -> Iterator[Cluster]:
    redis_server.start()
    cluster = Cluster.on(
        tmp_path_factory.mktemp("replica-console"),
        postgres_server.create_database(),
        redis_server,
        API_KEY_CACHE_S="3600",
        DEVICE_POLL_INTERVAL_S="1",
        SIGN_IN_FAILURES_PER_EMAIL=str(MAX_FAILURES),
    )
    try:
        cluster.operator.cli("keys", "list")  # migrates the ledger before the replicas start
        cluster.start_replicas(2)
        yield cluster
    finally:
        cluster.stop()


def urls(cluster: Cluster) -> tuple[str, str]:
    return cluster.replica(0).base_url, cluster.replica(1).base_url


def signed_up(base: str, email: str) -> tuple[httpx.Client, str]:
    browser = httpx.Client(timeout=30)
    made = browser.post(f"{base}/console/api/signup", json={"email": email, "password": PASSWORD})
    assert made.status_code == 201, made.text
    return browser, made.json()["csrf_token"]


def test_a_session_and_its_keys_hold_on_every_replica(cluster: Cluster) -> None:
    a, b = urls(cluster)
    browser, csrf = signed_up(a, "roaming@example.org")
    assert browser.get(f"{b}/console/api/me").json()["user"]["email"] == "roaming@example.org"
    made = browser.post(
        f"{b}/console/api/keys", json={"name": "made on b"}, headers={"X-CSRF-Token": csrf}
    )
    assert made.status_code == 201, made.text
    key = made.json()
    auth = {"Authorization": f"Bearer {key['key']}"}
    assert httpx.get(f"{a}/v1/models", headers=auth).status_code == 200  # A remembers it
    listed = browser.get(f"{a}/console/api/keys").json()["data"]
    assert [k["name"] for k in listed] == ["made on b"]

    revoked = browser.post(
        f"{b}/console/api/keys/{key['id']}/revoke", headers={"X-CSRF-Token": csrf}
    )
    assert revoked.status_code == 200
    wait_until(
        lambda: httpx.get(f"{a}/v1/models", headers=auth).status_code == 401,
        10,
        "replica A to refuse the key revoked through B",
    )


def test_one_device_login_yields_one_token_across_replicas(cluster: Cluster) -> None:
    a, b = urls(cluster)
    browser, csrf = signed_up(b, "fleet@example.org")
    started = httpx.post(
        f"{a}/oauth/device/code", data={**CLIENT_FORM, "machine_name": "m1"}
    ).json()
    approved = browser.post(
        f"{b}/console/api/device/approve",
        json={"user_code": started["user_code"]},
        headers={"X-CSRF-Token": csrf},
    )
    assert approved.status_code == 200, approved.text
    poll = {**CLIENT_FORM, "grant_type": DEVICE_GRANT, "device_code": started["device_code"]}

    def one_poll(base: str) -> httpx.Response:
        return httpx.post(f"{base}/oauth/token", data=poll, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one_poll, [a, b] * 8))
    tokens = [answer.json()["access_token"] for answer in answers if answer.status_code == 200]
    assert len(tokens) == 1
    assert {answer.json()["error"] for answer in answers if answer.status_code != 200} == {
        "invalid_grant"
    }
    assert tokens[0].startswith("mfp-")


def test_wrong_passwords_count_on_every_replica(cluster: Cluster) -> None:
    a, b = urls(cluster)
    signed_up(a, "guarded@example.org")
    for n in range(MAX_FAILURES):
        base = (a, b)[n % 2]
        wrong = httpx.post(
            f"{base}/console/api/signin",
            json={"email": "guarded@example.org", "password": f"wrong guess {n}"},
        )
        assert wrong.status_code == 401
    for base in (a, b):
        held = httpx.post(
            f"{base}/console/api/signin",
            json={"email": "guarded@example.org", "password": PASSWORD},
        )
        assert held.status_code == 429
