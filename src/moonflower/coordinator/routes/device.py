"""Device login for providers (RFC 8628): the machine's endpoints, `POST /oauth/device/code`
and `POST /oauth/token`, and the console's, `/console/api/device`.

The machine's endpoints speak OAuth (form-encoded requests, `{"error": …}` answers with the
RFC's codes), since that is what device-flow clients expect; they need no credentials, and
hand out nothing but a token for a login a signed-in person approved. The console's endpoints
let that person look a user code up, see which machine asks, and approve or deny it; the
token goes to the approver's provider account. What a code may do, and the exactly-once
token, are `ledger.device_logins`'.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from moonflower import errors
from moonflower.coordinator.console_bodies import DeviceDecision, read_model
from moonflower.coordinator.console_session import SignedInUser
from moonflower.coordinator.deps import ServicesDep
from moonflower.coordinator.services import json_response
from moonflower.ledger import device_logins
from moonflower.ledger.device_logins import LoginInfo

router = APIRouter(tags=["device login"])

CLIENT_ID = "moonflower-provider"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MAX_FORM_BYTES = 4096


def _oauth_error(error: str, description: str, status_code: int = 400) -> Response:
    return json_response(
        {"error": error, "error_description": description},
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


async def _form(request: Request) -> dict[str, str] | None:
    """The request's form fields (one value each), or None if it is not a small form."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    if any(len(values) != 1 for values in fields.values()):
        return None
    return {name: values[0] for name, values in fields.items()}


@router.post("/oauth/device/code")
async def device_code(request: Request, services: ServicesDep) -> Response:
    """Start a device login: a device code for the machine, a user code for its owner."""
    form = await _form(request)
    if form is None:
        return _oauth_error("invalid_request", "Send a form (application/x-www-form-urlencoded).")
    if form.get("client_id") != CLIENT_ID:
        return _oauth_error("invalid_client", f"The client_id is {CLIENT_ID!r}.", 401)
    settings = services.settings
    started = await device_logins.start(
        services.db,
        form.get("machine_name") or socket.gethostname(),
        lifetime=timedelta(seconds=settings.device_code_lifetime_s),
        interval_s=settings.device_poll_interval_s,
    )
    base = str(request.base_url).rstrip("/")
    verification_uri = f"{base}/console/device"
    return json_response(
        {
            "device_code": started.device_code,
            "user_code": started.user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": f"{verification_uri}?code={started.user_code}",
            "expires_in": settings.device_code_lifetime_s,
            "interval": started.interval_s,
        },
        headers={"Cache-Control": "no-store"},
    )


_REFUSALS = {
    "authorization_pending": "Waiting for someone to approve this code in the console.",
    "slow_down": "Polling too fast; wait longer between polls.",
    "access_denied": "The login was denied in the console.",
    "expired_token": "The code expired before anyone approved it; start again.",
    "invalid_grant": "Unknown device code, or its token was already collected.",
}


@router.post("/oauth/token")
async def token(request: Request, services: ServicesDep) -> Response:
    """A machine's poll: its provider token once its login is approved, exactly once."""
    form = await _form(request)
    if form is None:
        return _oauth_error("invalid_request", "Send a form (application/x-www-form-urlencoded).")
    if form.get("grant_type") != DEVICE_GRANT:
        return _oauth_error("unsupported_grant_type", f"The grant_type is {DEVICE_GRANT!r}.")
    if form.get("client_id") != CLIENT_ID:
        return _oauth_error("invalid_client", f"The client_id is {CLIENT_ID!r}.", 401)
    code = form.get("device_code", "")
    if not 0 < len(code) <= 100:
        return _oauth_error("invalid_request", "Give the device_code.")
    outcome = await device_logins.poll(services.db, code)
    if isinstance(outcome, str):
        return _oauth_error(outcome, _REFUSALS[outcome])
    return json_response(
        {
            "access_token": outcome.token,
            "token_type": "Bearer",
            "account_id": outcome.account_id,
        },
        headers={"Cache-Control": "no-store"},
    )


def login_body(login: LoginInfo) -> dict[str, Any]:
    return {
        "object": "device_login",
        "user_code": login.user_code,
        "machine_name": login.machine_name,
        "status": login.status,
        "created": int(login.created_at.timestamp()),
        "expires_at": int(login.expires_at.timestamp()),
        "expires_in": max(0, int((login.expires_at - datetime.now(UTC)).total_seconds())),
    }


def _no_such_code() -> errors.MoonflowerError:
    return errors.RouteNotFound("No device login has this code; check it on the machine.")


@router.get("/console/api/device", tags=["console"])
async def my_device_logins(user: SignedInUser, services: ServicesDep) -> Response:
    logins = await device_logins.for_user(services.db, user)
    return json_response({"object": "list", "data": [login_body(login) for login in logins]})


@router.get("/console/api/device/{user_code}", tags=["console"])
async def look_up(user_code: str, user: SignedInUser, services: ServicesDep) -> Response:
    login = await device_logins.look(services.db, user_code[:32], viewer=user)
    if login is None:
        raise _no_such_code()
    return json_response(login_body(login))


async def _decide(
    request: Request, user: SignedInUser, services: ServicesDep, approve: bool
) -> Response:
    body = await read_model(request, DeviceDecision)
    login = await device_logins.decide(services.db, body.user_code, user, approve=approve)
    if login is None:
        raise _no_such_code()
    wanted = "approved" if approve else "denied"
    if login.status != wanted:
        raise errors.InvalidRequest(
            f"This login is {login.status}; only a pending one can be {wanted}.",
            param="user_code",
            code=f"login_{login.status}",
        )
    return json_response(login_body(login))


@router.post("/console/api/device/approve", tags=["console"])
async def approve(request: Request, user: SignedInUser, services: ServicesDep) -> Response:
    """Let the machine with this user code in, earning for the user's provider account."""
    return await _decide(request, user, services, approve=True)


@router.post("/console/api/device/deny", tags=["console"])
async def deny(request: Request, user: SignedInUser, services: ServicesDep) -> Response:
    return await _decide(request, user, services, approve=False)
