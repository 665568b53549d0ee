"""Which dialect a request speaks: Anthropic's or OpenAI's.

Owns the one rule the app's error rendering and the routes both use where no dialect object
says it (an inference route marks its request with its own; see `routes.inference`), such as
the Models API or an error raised before any route runs. `/v1/messages` and everything under
it is Anthropic's; the Models API (`/v1/models…`), which both vendors define at the same
path, speaks Anthropic's when the request carries Anthropic's headers — `anthropic-version`
(which Anthropic's SDKs always send), or `x-api-key` without an `Authorization` header — and
OpenAI's otherwise. Every other route is OpenAI's. It must not render anything nor read a
body.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

_ANTHROPIC_ROUTES = "/v1/messages"
_SHARED_ROUTES = "/v1/models"


def speaks_anthropic(request: HTTPConnection) -> bool:
    path = request.url.path
    if _is_under(path, _ANTHROPIC_ROUTES):
        return True
    return _is_under(path, _SHARED_ROUTES) and has_anthropic_headers(request)


def has_anthropic_headers(request: HTTPConnection) -> bool:
    headers = request.headers
    if "anthropic-version" in headers:
        return True
    return "x-api-key" in headers and "authorization" not in headers


def _is_under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")
