"""Cross-origin requests from browsers (CORS), as a pure ASGI middleware around the app.

Two tiers. The public read-only routes — `GET` (and `HEAD`) of the model list and each
model, `/health`, `/v1/pricing`, `/v1/stats`, the attestation feed, the encryption key and
the OpenAPI document — answer every origin with `Access-Control-Allow-Origin: *`. The models answer
anyone who holds a key, and what they list is public through the pricing and attestation
routes anyway; since an API key travels in a header the calling page itself sets, never in
a cookie, `*` lends a page nothing it did not already have. Every other route (inference,
payments, receipts, admin) answers only the origins the operator lists
(`cors_allowed_origins`), each named back in `Access-Control-Allow-Origin` with
`Vary: Origin`.

Owns answering pre-flights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
before the app runs, so before authentication, the sealed transport and the catch-all
route: a pre-flight that may proceed is answered 204 with the methods, the request headers
the OpenAI and Anthropic SDKs and Moonflower's own clients send, and how long a browser
may remember that; one that may not (its origin, method or a header not allowed) is
answered 403 with an error in the route's dialect and no `Access-Control-Allow-Origin`.
On other requests from an allowed origin it adds `Access-Control-Allow-Origin` and
`Access-Control-Expose-Headers` (the headers naming the provider, cost, receipt and
sealing, and `Retry-After`) to the response start, errors included, so a web app can read
them; it touches nothing else, so streamed bodies pass through as they are sent. A request
from an origin not allowed gets its answer unchanged, without CORS headers, and the browser
keeps it from the page. Credentials (cookies) are never allowed: there are none to send.

It does not decide who may call a route (the API key does), and it is not Starlette's
`CORSMiddleware`, whose single origin list cannot say "any origin here, only these there".
An error the app's outermost handler renders (an unexpected 500) is sent from outside this
middleware and carries no CORS headers.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moonflower import errors
from moonflower.client.sealed import ERROR_HEADER, KEY_PATH, KID_HEADER
from moonflower.coordinator.error_response import render_error
from moonflower.coordinator.request_reading import MIN_TRUST_HEADER

PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/openapi.json",
        "/v1/models",
        "/v1/pricing",
        "/v1/providers/attestation",
        "/v1/stats",
        KEY_PATH,
    }
)
PUBLIC_PREFIXES = ("/v1/models/",)
PUBLIC_METHODS = frozenset({"GET", "HEAD"})
PRIVATE_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})

ALLOWED_REQUEST_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "content-language",
        "content-type",
        "authorization",
        "x-api-key",
        "idempotency-key",
        # Anthropic's SDK; it sends the last only when a page opts in to calling from a browser.
        "anthropic-version",
        "anthropic-beta",
        "anthropic-dangerous-direct-browser-access",
        # OpenAI's SDK.
        "openai-organization",
        "openai-project",
        # Moonflower's own.
        MIN_TRUST_HEADER,
        "x-request-id",
    }
)
ALLOWED_REQUEST_HEADER_PREFIXES = ("x-stainless-",)
"""Both SDKs describe themselves in `x-stainless-*` headers (os, lang, package-version,
runtime, runtime-version, arch, retry-count, timeout, helper-method, …)."""

EXPOSED_RESPONSE_HEADERS = (
    "x-moonflower-job-id",
    "x-provider-id",
    "x-provider-trust-level",
    "x-provider-attested",
    "x-provider-chip",
    "x-provider-serial",
    "x-moonflower-cost-usd",
    "x-response-hash",
    "x-se-signature",
    KID_HEADER,
    ERROR_HEADER,
    "retry-after",
    "x-request-id",
)
"""What a web app may read of an answer, beyond what browsers always show (content-type, …)."""

MAX_AGE_S = 600
"""How long a browser may reuse a pre-flight's answer (Chrome caps it at two hours)."""


def is_public(path: str, method: str) -> bool:
    """Whether `method path` is a public read-only route, which any origin may call."""
    if method not in PUBLIC_METHODS:
        return False
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def is_allowed_request_header(name: str) -> bool:
    return name in ALLOWED_REQUEST_HEADERS or name.startswith(ALLOWED_REQUEST_HEADER_PREFIXES)


class Cors:
    """ASGI middleware: `app.add_middleware(Cors, allowed_origins=[...])`."""

    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str]) -> None:
        self.app = app
        self._allowed = frozenset(allowed_origins)
        self._exposed = ", ".join(EXPOSED_RESPONSE_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
        elif scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(scope, receive, send, headers, origin)
        elif is_public(scope["path"], scope["method"]):
            await self.app(scope, receive, self._adding(send, "*"))
        elif origin in self._allowed:
            await self.app(scope, receive, self._adding(send, origin))
        else:
            await self.app(scope, receive, send)

    def _adding(self, send: Send, allow_origin: str) -> Send:
        """`send`, with the CORS headers added to the response start."""

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["access-control-allow-origin"] = allow_origin
                headers["access-control-expose-headers"] = self._exposed
                if allow_origin != "*":
                    headers.add_vary_header("Origin")
            await send(message)

        return send_with_cors

    async def _preflight(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, origin: str
    ) -> None:
        method = headers["access-control-request-method"].strip().upper()
        requested = [
            name.strip().lower()
            for name in headers.get("access-control-request-headers", "").split(",")
            if name.strip()
        ]
        is_listed = origin in self._allowed
        public = is_public(scope["path"], method)
        problem = _refusal(origin, method, requested, is_listed=is_listed, is_public=public)
        if problem is not None:
            response = render_error(Request(scope), errors.PermissionDenied(problem))
            await response(scope, receive, send)
            return
        allowed_headers = sorted({*ALLOWED_REQUEST_HEADERS, *requested})
        response = Response(status_code=204)
        response.headers.update(
            {
                "access-control-allow-origin": "*" if public else origin,
                "access-control-allow-methods": ", ".join(
                    sorted(PUBLIC_METHODS if public else PRIVATE_METHODS)
                ),
                "access-control-allow-headers": ", ".join(allowed_headers),
                "access-control-max-age": str(MAX_AGE_S),
                "vary": "Origin",
            }
        )
        # Chrome asks before a public site's page may reach a coordinator on a private
        # address (a local `moonflower up`); only a listed origin is let through.
        if is_listed and "access-control-request-private-network" in headers:
            response.headers["access-control-allow-private-network"] = "true"
        await response(scope, receive, send)


def _refusal(
    origin: str, method: str, requested: list[str], *, is_listed: bool, is_public: bool
) -> str | None:
    """Why a pre-flight may not proceed, or None when it may."""
    if not is_public and not is_listed:
        return (
            f"Cross-origin requests from {origin[:200]} are not allowed on this route: only "
            "the public read-only routes answer every origin; the coordinator's operator "
            "lists the origins allowed on the others (cors_allowed_origins)."
        )
    if not is_public and method not in PRIVATE_METHODS:
        return f"Cross-origin {method[:20]} requests are not allowed."
    refused = [name for name in requested if not is_allowed_request_header(name)]
    if refused:
        return f"Cross-origin requests may not send the header(s): {', '.join(refused)[:400]}."
    return None
