"""The console against people who are not who they say: over HTTP, against a real
coordinator process and its database.

Session fixation, cross-site request forgery on every route that changes something, one
user reaching for another's keys and device logins, password guessing, device codes used
twice or late, API keys trying to manage an account, and secrets showing up where they must
not (the database, the logs).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.device_login import CLIENT_FORM, DEVICE_GRANT
from tests.support.network import LocalNetwork, wait_until

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
MAX_FAILURES = 3


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = LocalNetwork(
        tmp_path_factory.mktemp("console"),
        settings={
            "SIGN_IN_FAILURES_PER_EMAIL": str(MAX_FAILURES),
            "DEVICE_POLL_INTERVAL_S": "1",
        },
    )
    try:
        net.start_coordinator()
        yield net
    finally:
        net.stop()


class Browser:
    """A person's browser: its own cookie jar, and the CSRF token its pages would send."""

    def __init__(self, network: LocalNetwork) -> None:
        self.http = httpx.Client(base_url=network.base_url, timeout=30)
        self.csrf = ""

    def sign_up(self, email: str, password: str = PASSWORD) -> httpx.Response:
        response = self.http.post(
            "/console/api/signup", json={"email": email, "password": password}
        )
        if response.status_code == 201:
            self.csrf = response.json()["csrf_token"]
        return response

    def sign_in(self, email: str, password: str = PASSWORD) -> httpx.Response:
        response = self.http.post(
            "/console/api/signin", json={"email": email, "password": password}
        )
        if response.status_code == 200:
            self.csrf = response.json()["csrf_token"]
        return response

    def send(
        self, method: str, path: str, *, origin: str | None = None, **kwargs: object
    ) -> httpx.Response:
        headers = {"X-CSRF-Token": self.csrf}
        if origin is not None:
            headers["Origin"] = origin
        return self.http.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]

    def new_key(self, name: str = "laptop") -> dict[str, str]:
        response = self.send("POST", "/console/api/keys", json={"name": name})
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    @property
    def session_cookie(self) -> str | None:
        return self.http.cookies.get("mf_session")


def _email(label: str) -> str:
    return f"{label}-{re.sub(r'[^a-z0-9]', '', str(id(label)))}@example.org"


def test_sign_up_sets_an_httponly_samesite_strict_session_cookie(network: LocalNetwork) -> None:
    browser = Browser(network)
    response = browser.sign_up(_email("cookie"))
    assert response.status_code == 201, response.text
    set_cookie = response.headers["set-cookie"].lower()
    assert "httponly" in set_cookie
    assert "samesite=strict" in set_cookie
    assert "path=/" in set_cookie
    me = browser.http.get("/console/api/me")
    assert me.status_code == 200
    assert me.json()["csrf_token"] == browser.csrf


def test_a_planted_session_token_never_becomes_a_signed_in_session(
    network: LocalNetwork,
) -> None:
    email = _email("fixation")
    assert Browser(network).sign_up(email).status_code == 201
    # An attacker makes a session of their own and plants its token in the victim's browser,
    # and also a token they made up; the victim then signs in.
    attacker = Browser(network)
    assert attacker.sign_up(_email("attacker")).status_code == 201
    planted = attacker.session_cookie
    assert planted is not None
    for token in (planted, "made-up-token-of-the-attackers-choosing"):
        victim = httpx.Client(base_url=network.base_url, cookies={"mf_session": token})
        signed_in = victim.post("/console/api/signin", json={"email": email, "password": PASSWORD})
        assert signed_in.status_code == 200
        issued = signed_in.cookies.get("mf_session")
        assert issued not in (None, token)
        assert signed_in.json()["user"]["email"] == email
        # The attacker's token names no session of the victim's (nor, once planted and
        # replaced, any session at all).
        with_planted = httpx.get(
            f"{network.base_url}/console/api/me", cookies={"mf_session": token}
        )
        assert with_planted.status_code == 401
        assert with_planted.json()["error"]["code"] == "sign_in_required"


def _changing_routes(network: LocalNetwork) -> list[tuple[str, str]]:
    document = httpx.get(f"{network.base_url}/openapi.json").json()
    return sorted(
        (method.upper(), path)
        for path, operations in document["paths"].items()
        if path.startswith("/console/api/")
        and path not in ("/console/api/signup", "/console/api/signin")
        for method in operations
        if method in ("post", "put", "patch", "delete")
    )


def test_every_route_that_changes_something_needs_the_csrf_token_and_our_origin(
    network: LocalNetwork,
) -> None:
    victim = Browser(network)
    assert victim.sign_up(_email("csrf")).status_code == 201
    key = victim.new_key()
    routes = _changing_routes(network)
    assert ("POST", "/console/api/keys") in routes
    assert ("POST", "/console/api/keys/{key_id}/revoke") in routes
    assert ("POST", "/console/api/signout") in routes
    for method, template in routes:
        path = template.replace("{key_id}", key["id"]).replace("{user_code}", "BCDF-GHJK")
        forged = [
            {},  # a form on another site: the cookie, no token
            {"X-CSRF-Token": "0" * 64},  # a guessed token
            {"X-CSRF-Token": victim.csrf, "Origin": "https://evil.example"},  # a stolen one
        ]
        for headers in forged:
            response = victim.http.request(method, path, headers=headers, json={"name": "x"})
            assert response.status_code == 403, (method, path, headers, response.text)
            assert response.json()["error"]["code"] == "permission_denied"
    # Nothing the forged requests asked for happened.
    listed = victim.http.get("/console/api/keys").json()["data"]
    assert [(k["id"], k["name"], k["revoked"]) for k in listed] == [(key["id"], "laptop", None)]
    assert victim.http.get("/console/api/me").status_code == 200
    # With the token, from our own origin, the same requests work.
    renamed = victim.send(
        "PATCH",
        f"/console/api/keys/{key['id']}",
        json={"name": "desk"},
        origin=network.base_url,
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "desk"


def test_sign_in_from_another_origin_is_refused(network: LocalNetwork) -> None:
    email = _email("login-csrf")
    assert Browser(network).sign_up(email).status_code == 201
    response = httpx.post(
        f"{network.base_url}/console/api/signin",
        json={"email": email, "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert "set-cookie" not in response.headers


def test_another_users_keys_are_invisible_and_unchangeable(network: LocalNetwork) -> None:
    alice, mallory = Browser(network), Browser(network)
    assert alice.sign_up(_email("alice")).status_code == 201
    assert mallory.sign_up(_email("mallory")).status_code == 201
    alices = alice.new_key("alice's")
    network.cli("credit", alice.http.get("/console/api/me").json()["user"]["email"], "1")
    assert mallory.http.get("/console/api/keys").json()["data"] == []
    for method, path, body in [
        ("PATCH", f"/console/api/keys/{alices['id']}", {"name": "mine now"}),
        ("POST", f"/console/api/keys/{alices['id']}/revoke", None),
    ]:
        response = mallory.send(method, path, json=body)
        assert response.status_code == 404, response.text
    listed = alice.http.get("/console/api/keys").json()["data"]
    assert [(k["name"], k["revoked"]) for k in listed] == [("alice's", None)]
    models = httpx.get(
        f"{network.base_url}/v1/models", headers={"Authorization": f"Bearer {alices['key']}"}
    )
    assert models.status_code == 200


def test_revoking_a_key_stops_it_at_once(network: LocalNetwork) -> None:
    owner = Browser(network)
    assert owner.sign_up(_email("revoker")).status_code == 201
    key = owner.new_key()
    auth = {"Authorization": f"Bearer {key['key']}"}
    assert httpx.get(f"{network.base_url}/v1/models", headers=auth).status_code == 200
    revoked = owner.send("POST", f"/console/api/keys/{key['id']}/revoke")
    assert revoked.status_code == 200
    assert revoked.json()["revoked"] is not None
    assert httpx.get(f"{network.base_url}/v1/models", headers=auth).status_code == 401
    again = owner.send("POST", f"/console/api/keys/{key['id']}/revoke")
    assert again.status_code == 404


def test_api_keys_and_provider_tokens_do_not_manage_accounts(network: LocalNetwork) -> None:
    owner = Browser(network)
    assert owner.sign_up(_email("keyholder")).status_code == 201
    key = owner.new_key()["key"]
    token = network.create_provider_token("someone's machines")
    for credential in (key, token):
        for headers in ({"Authorization": f"Bearer {credential}"}, {"x-api-key": credential}):
            stranger = httpx.Client(base_url=network.base_url, headers=headers)
            assert stranger.get("/console/api/keys").status_code == 401
            assert stranger.get("/console/api/me").status_code == 401
            made = stranger.post("/console/api/keys", json={"name": "x"})
            assert made.status_code == 401
    assert len(owner.http.get("/console/api/keys").json()["data"]) == 1


def test_password_guessing_is_slowed_for_the_email(network: LocalNetwork) -> None:
    email = _email("guessed")
    assert Browser(network).sign_up(email).status_code == 201
    guesser = httpx.Client(base_url=network.base_url)
    for n in range(MAX_FAILURES):
        wrong = guesser.post(
            "/console/api/signin", json={"email": email, "password": f"guess {n}!!"}
        )
        assert wrong.status_code == 401
    # Now even the right password is refused, with when to try again.
    refused = guesser.post("/console/api/signin", json={"email": email, "password": PASSWORD})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_sign_ins"
    assert 1 <= int(refused.headers["Retry-After"]) <= 900
    assert "set-cookie" not in refused.headers
    # Another person's sign-in from elsewhere is not held up by it.
    other = _email("unaffected")
    assert Browser(network).sign_up(other).status_code == 201
    assert Browser(network).sign_in(other).status_code == 200


def _start_device_login(network: LocalNetwork, machine: str) -> dict[str, object]:
    started = httpx.post(
        f"{network.base_url}/oauth/device/code", data={**CLIENT_FORM, "machine_name": machine}
    )
    assert started.status_code == 200, started.text
    return started.json()  # type: ignore[no-any-return]


def _poll(network: LocalNetwork, device_code: object) -> httpx.Response:
    return httpx.post(
        f"{network.base_url}/oauth/token",
        data={**CLIENT_FORM, "grant_type": DEVICE_GRANT, "device_code": str(device_code)},
    )


def test_a_device_code_yields_one_token_and_is_then_spent(network: LocalNetwork) -> None:
    owner = Browser(network)
    assert owner.sign_up(_email("operator")).status_code == 201
    started = _start_device_login(network, "rack 7")
    assert started["verification_uri"] == f"{network.base_url}/console/device"
    pending = _poll(network, started["device_code"])
    assert pending.status_code == 400
    assert pending.json()["error"] == "authorization_pending"

    looked = owner.http.get(f"/console/api/device/{started['user_code']}")
    assert looked.json()["machine_name"] == "rack 7"
    approved = owner.send(
        "POST", "/console/api/device/approve", json={"user_code": started["user_code"]}
    )
    assert approved.status_code == 200, approved.text

    def collected() -> httpx.Response | None:
        answer = _poll(network, started["device_code"])
        return answer if answer.status_code == 200 else None

    wait_until(lambda: collected() is not None, 10, "the token after approval")
    # The poll that succeeded is gone; every later one is refused, and approving again too.
    reused = _poll(network, started["device_code"])
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    again = owner.send(
        "POST", "/console/api/device/approve", json={"user_code": started["user_code"]}
    )
    assert again.status_code == 400
    assert owner.http.get("/console/api/device").json()["data"][0]["status"] == "issued"


def test_an_expired_device_code_is_refused(tmp_path: Path) -> None:
    net = LocalNetwork(tmp_path, settings={"DEVICE_CODE_LIFETIME_S": "1"})
    try:
        net.start_coordinator()
        owner = Browser(net)
        assert owner.sign_up(_email("late")).status_code == 201
        started = _start_device_login(net, "slow machine")
        wait_until(
            lambda: _poll(net, started["device_code"]).json().get("error") == "expired_token",
            10,
            "the device code to expire",
        )
        late = owner.send(
            "POST", "/console/api/device/approve", json={"user_code": started["user_code"]}
        )
        assert late.status_code == 400
        assert late.json()["error"]["code"] == "login_expired"
    finally:
        net.stop()


def test_device_endpoints_refuse_what_is_not_the_device_flow(network: LocalNetwork) -> None:
    base = network.base_url
    assert httpx.post(f"{base}/oauth/device/code", data={"client_id": "x"}).json()["error"] == (
        "invalid_client"
    )
    assert (
        httpx.post(f"{base}/oauth/device/code", json=CLIENT_FORM).json()["error"]
        == "invalid_request"
    )
    wrong_grant = httpx.post(
        f"{base}/oauth/token", data={**CLIENT_FORM, "grant_type": "password", "device_code": "x"}
    )
    assert wrong_grant.json()["error"] == "unsupported_grant_type"
    unknown = _poll(network, "no-such-device-code")
    assert (unknown.status_code, unknown.json()["error"]) == (400, "invalid_grant")


def test_no_raw_key_password_or_session_token_in_the_database_or_logs(
    network: LocalNetwork,
) -> None:
    owner = Browser(network)
    secret_password = "an unguessable passphrase 8d1f"
    email = _email("secretive")
    assert owner.sign_up(email, secret_password).status_code == 201
    assert owner.sign_in(email, secret_password).status_code == 200
    wrong = httpx.post(
        f"{network.base_url}/console/api/signin",
        json={"email": email, "password": "a wrong passphrase 3c9a"},
    )
    assert wrong.status_code == 401
    key = owner.new_key()["key"]
    session = owner.session_cookie
    assert session is not None
    secrets_ = [secret_password, "a wrong passphrase 3c9a", key, session, owner.csrf]
    database = sqlite3.connect(network.data_dir / "moonflower.db")
    try:
        dump = "\n".join(database.iterdump())
    finally:
        database.close()
    assert email in dump  # the dump does hold what it should
    logs = network.logs()
    for secret in secrets_:
        assert secret not in dump
        assert secret not in logs


def test_invite_only_sign_up_takes_each_code_once(tmp_path: Path) -> None:
    net = LocalNetwork(tmp_path, settings={"SIGNUP": "invite"})
    try:
        net.start_coordinator()
        signup = f"{net.base_url}/console/api/signup"
        body = {"email": "first@example.org", "password": PASSWORD}
        uninvited = httpx.post(signup, json=body)
        assert uninvited.status_code == 400
        assert uninvited.json()["error"]["code"] == "invite_required"
        code = net.cli("users", "invite").strip()
        assert httpx.post(signup, json={**body, "invite_code": code}).status_code == 201
        reused = httpx.post(
            signup, json={"email": "second@example.org", "password": PASSWORD, "invite_code": code}
        )
        assert reused.status_code == 400
        assert reused.json()["error"]["code"] == "invalid_invite"
    finally:
        net.stop()


def test_closed_sign_up_refuses_everyone(tmp_path: Path) -> None:
    net = LocalNetwork(tmp_path, settings={"SIGNUP": "closed"})
    try:
        net.start_coordinator()
        refused = httpx.post(
            f"{net.base_url}/console/api/signup",
            json={"email": "someone@example.org", "password": PASSWORD},
        )
        assert refused.status_code == 403
        assert "set-cookie" not in refused.headers
    finally:
        net.stop()


def test_another_users_usage_machines_and_device_logins_are_invisible(
    network: LocalNetwork,
) -> None:
    alice, mallory = Browser(network), Browser(network)
    assert alice.sign_up(_email("alice-owner")).status_code == 201
    assert mallory.sign_up(_email("mallory-peer")).status_code == 201
    started = _start_device_login(network, "alice's rig")
    approved = alice.send(
        "POST", "/console/api/device/approve", json={"user_code": started["user_code"]}
    )
    assert approved.status_code == 200
    alice_me = alice.http.get("/console/api/me").json()["user"]
    mallory_me = mallory.http.get("/console/api/me").json()["user"]
    assert mallory.http.get("/console/api/device").json()["data"] == []
    assert mallory.http.get("/console/api/machines").json()["data"] == []
    assert mallory.http.get("/console/api/usage").json()["data"] == []
    balance = mallory.http.get("/console/api/balance").json()
    assert balance["account_id"] == mallory_me["consumer_account_id"]
    assert balance["provider"]["account_id"] == mallory_me["provider_account_id"]
    assert alice_me["consumer_account_id"] not in str(balance)
    # The operator's routes are the operator's alone.
    for method, path, body in [
        ("GET", "/console/api/admin/providers", None),
        ("GET", "/console/api/admin/accounts", None),
        (
            "POST",
            "/console/api/admin/credit",
            {"account_id": mallory_me["consumer_account_id"], "usd": "100"},
        ),
        ("POST", "/console/api/admin/prices", {"model": "*", "input_price": 0, "output_price": 0}),
    ]:
        refused = mallory.send(method, path, json=body)
        assert refused.status_code == 403, (path, refused.text)
    assert mallory.http.get("/console/api/balance").json()["balance_micro_usd"] == 0


def test_console_pages_forbid_framing_and_foreign_scripts(network: LocalNetwork) -> None:
    for path in ("/console/", "/console/device", "/status"):
        page = httpx.get(f"{network.base_url}{path}")
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "<script>" not in page.text  # no inline script for the policy to allow


def test_sign_ups_from_one_address_are_bounded(tmp_path: Path) -> None:
    net = LocalNetwork(tmp_path, settings={"SIGN_IN_FAILURES_PER_ADDRESS": "2"})
    try:
        net.start_coordinator()
        made = [Browser(net).sign_up(f"bulk-{n}@example.org").status_code for n in range(3)]
        assert made == [201, 201, 429]
        refused = httpx.post(
            f"{net.base_url}/console/api/signup",
            json={"email": "bulk-9@example.org", "password": PASSWORD},
        )
        assert refused.json()["error"]["code"] == "too_many_sign_ins"
        assert int(refused.headers["Retry-After"]) >= 1
    finally:
        net.stop()
