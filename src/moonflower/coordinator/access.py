"""`Access`: the request id, the access log and the request metrics, as a pure ASGI
middleware around the app.

Every request gets an id: the caller's `X-Request-ID` if it is a sane token (1 to 128
visible ASCII characters), else a new one; it is in `request.state.request_id` for the app
and in the response's `X-Request-ID`, errors and streams included. When the answer has been
sent in full (a stream: when it ends), one access-log line says who asked what and how it
went — request id, method, route template, status, duration, account and job when there
were — and the request counters and latency histogram move. Never a body, a query string,
a header value other than the request id, or a key: nothing a prompt or a secret could be
in. Routes say whose request it was through `request.state.account_id`, and the job id is
read from the answer's own `x-moonflower-job-id` header.

A plain ASGI middleware (not Starlette's `BaseHTTPMiddleware`), so streamed answers pass
through as they are sent.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Literal

import orjson
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moonflower.coordinator.metrics import Metrics

log = logging.getLogger("moonflower.access")

REQUEST_ID_HEADER = "x-request-id"
JOB_ID_HEADER = b"x-moonflower-job-id"
MAX_REQUEST_ID = 128
UNMATCHED = "unmatched"
"""The route label of a request no route took (404s): paths must not become labels."""

AccessLog = Literal["off", "text", "json"]


def is_sane_request_id(value: str) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID and all(33 <= ord(ch) <= 126 for ch in value)


class Access:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, access_log: AccessLog) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        presented = _header(scope, REQUEST_ID_HEADER)
        request_id = presented if presented and is_sane_request_id(presented) else uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        job_id: str | None = None
        is_done = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, job_id, is_done
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                job_id = headers.get(JOB_ID_HEADER.decode())
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                is_done = True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = _route_template(scope)
            method = scope["method"]
            if not is_done and status < 500:
                status = 499  # the consumer left before the answer ended
            self.metrics.request_done(route, method, status, seconds)
            if self.access_log != "off" and log.isEnabledFor(logging.INFO):
                self._log(
                    {
                        "request_id": request_id,
                        "method": method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 1),
                        "account_id": state.get("account_id"),
                        "job_id": job_id,
                    }
                )

    def _log(self, fields: dict[str, Any]) -> None:
        if self.access_log == "json":
            log.info(orjson.dumps(fields).decode())
            return
        extra = " ".join(
            f"{name}={fields[name]}" for name in ("account_id", "job_id") if fields[name]
        )
        log.info(
            "%s %s %s %.1fms request_id=%s%s",
            fields["method"],
            fields["route"],
            fields["status"],
            fields["duration_ms"],
            fields["request_id"],
            f" {extra}" if extra else "",
        )


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode()
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return str(value.decode("latin-1"))
    return None


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    if isinstance(route, BaseRoute):
        path = getattr(route, "path", None)
        if isinstance(path, str) and "{path:path}" not in path:
            return path
    return UNMATCHED
