"""Who may call each route shows in its signature and in `/openapi.json`, and refusals keep
their status and body in the caller's dialect.

Every route of the app either takes one of the caller dependencies of
`moonflower.coordinator.deps` or is on the `PUBLIC` list below, so a new route that checks
a key by hand (or forgets to) fails here. The refusals are checked through the real
coordinator on loopback: a missing, wrong or revoked key, in either header, on every route
that needs one, with a body that is also bad (the key is checked first).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import BaseRoute

from moonflower.coordinator import console_session, deps, routes
from moonflower.coordinator.app import create_app
from moonflower.ledger.keys import create_key, revoke_key
from moonflower.settings import CoordinatorSettings
from tests.support.inprocess import InProcessNetwork, inprocess_network
from tests.support.openapi import assert_valid_anthropic

ADMIN_KEY = "admin-key-for-tests-0123456789"

PUBLIC = {
    ("GET", "/health"),
    ("GET", "/v1/pricing"),
    ("GET", "/v1/providers/attestation"),
    ("POST", "/console/api/signup"),
    ("POST", "/console/api/signin"),
    ("POST", "/oauth/device/code"),
    ("POST", "/oauth/token"),
    ("GET", "/v1/stats"),
}
"""Routes anyone may call: no caller dependency, no security in OpenAPI."""

NOT_IN_SCHEMA = {
    "/v1/{path:path}",
    "/metrics",
    "/console",
    "/console/",
    "/console/device",
    "/status",
}
"""Routes left out of `/openapi.json` that need no caller (the unknown-route answer,
Prometheus's scrape, and the console's static pages)."""

API_KEY_ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/some-model"),
    ("GET", "/v1/receipts/job-1"),
]
ACCOUNT_ROUTES = [
    ("GET", "/v1/payments/balance"),
    ("GET", "/v1/payments/usage"),
    ("GET", "/v1/provider/earnings"),
]
ADMIN_ROUTES = [("PUT", "/v1/admin/pricing")]

API_KEY_SCHEMES = [{"ApiKeyBearer": []}, {"ApiKeyHeader": []}]
ADMIN_SCHEMES = [{"AdminKeyBearer": []}, {"AdminKeyHeader": []}]
GUARDS = {deps.api_caller: API_KEY_SCHEMES, deps.account_caller: API_KEY_SCHEMES}
GUARDS[deps.admin_key] = ADMIN_SCHEMES
GUARDS[console_session.signed_in_session] = [{"ConsoleSession": []}]

MISSING = "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
INCORRECT = "Incorrect API key provided."
NOT_ADMIN = "This operation needs the admin key."


def app_routes() -> list[BaseRoute]:
    """The app's own routes and every route module's (the app includes routers lazily, so
    its `routes` do not list theirs)."""
    found = list(create_app(CoordinatorSettings(admin_key=ADMIN_KEY)).routes)
    for module in pkgutil.iter_modules(routes.__path__):
        router: APIRouter = importlib.import_module(f"{routes.__name__}.{module.name}").router
        found.extend(router.routes)
    return found


def calls_in(dependant: Dependant) -> Iterator[object]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from calls_in(sub)


def guards_of(route: APIRoute) -> set[object]:
    return set(calls_in(route.dependant)) & set(GUARDS)


def openapi() -> dict[str, Any]:
    schema: dict[str, Any] = create_app(CoordinatorSettings(admin_key=ADMIN_KEY)).openapi()
    return schema


def test_every_route_takes_a_caller_dependency_or_is_listed_as_public() -> None:
    unguarded, guarded_public = [], []
    for route in app_routes():
        if not isinstance(route, APIRoute):
            continue
        for method in route.methods:
            is_public = (method, route.path) in PUBLIC or route.path in NOT_IN_SCHEMA
            if not guards_of(route) and not is_public:
                unguarded.append((method, route.path))
            if guards_of(route) and is_public:
                guarded_public.append((method, route.path))
    assert unguarded == [], "authenticate through moonflower.coordinator.deps, or list as PUBLIC"
    assert guarded_public == []


def test_each_guarded_route_takes_exactly_one_caller_dependency() -> None:
    for route in app_routes():
        if isinstance(route, APIRoute) and route.path not in NOT_IN_SCHEMA:
            assert len(guards_of(route)) <= 1, route.path


def test_the_provider_websocket_keeps_its_own_token_check() -> None:
    sockets = [route for route in app_routes() if isinstance(route, APIWebSocketRoute)]
    assert [route.path for route in sockets] == ["/ws/provider"]


def test_openapi_declares_the_key_schemes() -> None:
    schemes = openapi()["components"]["securitySchemes"]
    assert schemes["ApiKeyBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["ApiKeyBearer"]["description"],
    }
    for name in ("ApiKeyHeader", "AdminKeyHeader"):
        assert (schemes[name]["type"], schemes[name]["in"], schemes[name]["name"]) == (
            "apiKey",
            "header",
            "x-api-key",
        )
    assert (schemes["AdminKeyBearer"]["type"], schemes["AdminKeyBearer"]["scheme"]) == (
        "http",
        "bearer",
    )


def test_openapi_lists_security_on_guarded_routes_and_none_on_public_ones() -> None:
    paths = openapi()["paths"]
    seen = set()
    for route in app_routes():
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods:
            operation = paths[route.path_format][method.lower()]
            seen.add((method, route.path_format))
            guards = guards_of(route)
            if guards:
                assert operation["security"] == GUARDS[guards.pop()], (method, route.path)
            else:
                assert "security" not in operation, (method, route.path)
    documented = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    assert documented == seen
    assert seen >= PUBLIC


# --- refusals: same status and body as ever, in the caller's dialect ---------------------


def is_anthropic(path: str, headers: dict[str, str]) -> bool:
    if path.startswith("/v1/messages"):
        return True
    return (
        path.startswith("/v1/models")
        and "x-api-key" in headers
        and "authorization" not in {name.lower() for name in headers}
    )


def assert_refused(
    response: httpx.Response, path: str, headers: dict[str, str], status: int, message: str
) -> None:
    where = f"{response.request.method} {path} with {sorted(headers)}"
    assert response.status_code == status, where
    assert "www-authenticate" not in response.headers, where
    body = response.json()
    if is_anthropic(path, headers):
        assert_valid_anthropic("ErrorResponse", body)
        kind = {401: "authentication_error", 403: "permission_error"}[status]
        assert body["request_id"].startswith("req_"), where
        assert body == {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": body["request_id"],
        }, where
    else:
        code = {401: "invalid_api_key", 403: "permission_denied"}[status]
        assert body == {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }, where


async def refusal_cases(net: InProcessNetwork) -> list[tuple[dict[str, str], str]]:
    revoked = await create_key(net.services.db, account_name="gone")
    assert await revoke_key(net.services.db, revoked.key_id)
    return [
        ({}, MISSING),
        ({"Authorization": "Bearer mf-wrong"}, INCORRECT),
        ({"x-api-key": "mf-wrong"}, INCORRECT),
        ({"Authorization": f"Bearer {revoked.key}"}, INCORRECT),
        ({"x-api-key": revoked.key}, INCORRECT),
        # The bearer token wins over x-api-key, whichever is valid.
        ({"Authorization": "Bearer mf-wrong", "x-api-key": net.key}, INCORRECT),
        # Not a bearer token, or an empty one: as if absent.
        ({"Authorization": f"Basic {net.key}"}, MISSING),
        ({"Authorization": "Bearer"}, MISSING),
    ]


async def test_api_key_routes_refuse_missing_wrong_and_revoked_keys(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, []) as net,
        httpx.AsyncClient(base_url=net.base_url) as http,
    ):
        for headers, message in await refusal_cases(net):
            for method, path in API_KEY_ROUTES + ACCOUNT_ROUTES:
                # The body is bad too: the key is checked before the body is read.
                response = await http.request(method, path, headers=headers, content=b"{bad")
                assert_refused(response, path, headers, 401, message)


async def test_account_routes_take_a_provider_token_that_inference_routes_refuse(
    tmp_path: Path,
) -> None:
    async with (
        inprocess_network(tmp_path, []) as net,
        httpx.AsyncClient(base_url=net.base_url) as http,
    ):
        token = await create_key(net.services.db, account_name="earner", purpose="provider")
        for headers in ({"Authorization": f"Bearer {token.key}"}, {"x-api-key": token.key}):
            for method, path in ACCOUNT_ROUTES:
                response = await http.request(method, path, headers=headers)
                assert response.status_code == 200, path
            for method, path in API_KEY_ROUTES:
                response = await http.request(method, path, headers=headers, content=b"{bad")
                assert_refused(response, path, headers, 401, INCORRECT)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "bearer  {key}"},
        {"Authorization": "Basic xyz", "x-api-key": "{key}"},
        {"Authorization": "Bearer", "x-api-key": "{key}"},
        {"Authorization": "Bearer {key}", "x-api-key": "mf-wrong"},
    ],
)
async def test_the_key_is_read_from_either_header_as_before(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    async with (
        inprocess_network(tmp_path, []) as net,
        httpx.AsyncClient(base_url=net.base_url) as http,
    ):
        sent = {name: value.format(key=net.key) for name, value in headers.items()}
        models = await http.get("/v1/models", headers=sent)
        balance = await http.get("/v1/payments/balance", headers=sent)
    assert (models.status_code, balance.status_code) == (200, 200)


async def test_the_admin_route_refuses_anything_but_the_admin_key(tmp_path: Path) -> None:
    async with (
        inprocess_network(tmp_path, [], admin_key=ADMIN_KEY) as net,
        httpx.AsyncClient(base_url=net.base_url) as http,
    ):
        cases: list[dict[str, str]] = [
            {},
            {"Authorization": "Bearer wrong"},
            {"x-api-key": "wrong"},
            {"Authorization": f"Bearer {net.key}"},
            {"Authorization": "Bearer wrong", "x-api-key": ADMIN_KEY},
            {"Authorization": f"Basic {ADMIN_KEY}"},
        ]
        for headers in cases:
            for method, path in ADMIN_ROUTES:
                response = await http.request(method, path, headers=headers, content=b"{bad")
                assert_refused(response, path, headers, 401, NOT_ADMIN)
        for headers in ({"Authorization": f"Bearer {ADMIN_KEY}"}, {"x-api-key": ADMIN_KEY}):
            for method, path in ADMIN_ROUTES:
                response = await http.request(method, path, headers=headers, content=b"{bad")
                assert response.status_code == 400, (path, headers)


async def test_without_an_admin_key_configured_the_admin_route_is_forbidden(
    tmp_path: Path,
) -> None:
    async with (
        inprocess_network(tmp_path, []) as net,
        httpx.AsyncClient(base_url=net.base_url) as http,
    ):
        for headers in ({}, {"Authorization": f"Bearer {net.key}"}):
            for method, path in ADMIN_ROUTES:
                response = await http.request(method, path, headers=headers, content=b"{bad")
                assert_refused(
                    response,
                    path,
                    headers,
                    403,
                    "The admin API is disabled: no admin key is configured.",
                )
