"""Signing up, in and out of the console: `/console/api/signup`, `signin`, `signout`, `me`.

Each sign-up or sign-in opens a new session with a token made on the server, and closes the
one the browser came with, if any: a token planted in a browser before sign-in never becomes
a signed-in session (session fixation). Wrong passwords are counted per email and per address
in the ledger, so every replica slows guessing alike (`SignInThrottled`, 429 with
Retry-After); a wrong email costs as long as a wrong password. Who may sign up is the
`signup` setting's: anyone, holders of an invitation code, or nobody.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from moonflower import errors
from moonflower.coordinator.console_bodies import SignIn, SignUp, read_model
from moonflower.coordinator.console_session import (
    Session,
    check_same_origin,
    clear_session_cookie,
    presented_token,
    set_session_cookie,
)
from moonflower.coordinator.deps import ServicesDep
from moonflower.coordinator.services import Services, json_response
from moonflower.ledger import console_sessions, users
from moonflower.ledger.users import User

router = APIRouter(prefix="/console/api", tags=["console"])


def user_body(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "is_admin": user.is_admin,
        "consumer_account_id": user.consumer_account_id,
        "provider_account_id": user.provider_account_id,
        "created": int(user.created_at.timestamp()),
    }


def _me(user: User, token: str) -> dict[str, Any]:
    return {"user": user_body(user), "csrf_token": console_sessions.csrf_token(token)}


async def _start_session(
    request: Request, services: Services, user: User, *, status_code: int
) -> Response:
    planted = presented_token(request)
    if planted:
        await console_sessions.close_session(services.db, planted)
    lifetime = timedelta(hours=services.settings.console_session_hours)
    token = await console_sessions.open_session(services.db, user.id, lifetime)
    response = json_response(_me(user, token), status_code=status_code)
    set_session_cookie(response, request, token, services.settings)
    return response


@router.post("/signup", status_code=201)
async def sign_up(request: Request, services: ServicesDep) -> Response:
    """Make a user (and its two accounts) and sign it in."""
    check_same_origin(request)
    body = await read_model(request, SignUp)
    mode = services.settings.signup
    if mode == "closed":
        raise errors.PermissionDenied(
            "Sign-up is closed on this coordinator; ask its operator for an account."
        )
    if mode == "invite" and not body.invite_code:
        raise errors.InvalidRequest(
            "Signing up here needs an invitation code.",
            param="invite_code",
            code="invite_required",
        )
    settings = services.settings
    window = timedelta(seconds=settings.sign_in_failure_window_s)
    address = _address(request)
    # Each sign-up costs a password hash: it counts against its address like a failed
    # sign-in, so one address cannot make accounts (or burn CPU) without bound.
    attempts = await console_sessions.recent_failures(services.db, SIGN_UP, address, window)
    if attempts.from_address >= settings.sign_in_failures_per_address:
        raise errors.SignInThrottled(retry_after_s=int(window.total_seconds()))
    await console_sessions.note_failure(services.db, SIGN_UP, address, window)
    user = await users.create_user(
        services.db,
        body.email,
        body.password.get_secret_value(),
        invite_code=body.invite_code if mode == "invite" else None,
    )
    return await _start_session(request, services, user, status_code=201)


SIGN_UP = "sign-up"
"""What a sign-up is counted under, in place of an email's hash."""


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/signin")
async def sign_in(request: Request, services: ServicesDep) -> Response:
    check_same_origin(request)
    body = await read_model(request, SignIn)
    settings = services.settings
    window = timedelta(seconds=settings.sign_in_failure_window_s)
    email_hash = users.email_digest(body.email)
    address = _address(request)
    failures = await console_sessions.recent_failures(services.db, email_hash, address, window)
    if (
        failures.for_email >= settings.sign_in_failures_per_email
        or failures.from_address >= settings.sign_in_failures_per_address
    ):
        raise errors.SignInThrottled(retry_after_s=_retry_after(failures, window))
    user = await users.verify_password(services.db, body.email, body.password.get_secret_value())
    if user is None:
        await console_sessions.note_failure(services.db, email_hash, address, window)
        raise errors.SignInRequired("Wrong email or password.")
    await console_sessions.forget_failures(services.db, email_hash)
    return await _start_session(request, services, user, status_code=200)


def _retry_after(failures: console_sessions.Failures, window: timedelta) -> int:
    if failures.oldest_at is None:
        return max(1, int(window.total_seconds()))
    lifts_at = failures.oldest_at + window
    return max(1, int((lifts_at - datetime.now(UTC)).total_seconds()) + 1)


@router.post("/signout", status_code=204)
async def sign_out(session: Session, services: ServicesDep) -> Response:
    await console_sessions.close_session(services.db, session.token)
    response = Response(status_code=204)
    clear_session_cookie(response)
    return response


@router.get("/me")
async def me(session: Session) -> Response:
    """Who is signed in, and the CSRF token the console's pages send with every change."""
    return json_response(_me(session.user, session.token))
