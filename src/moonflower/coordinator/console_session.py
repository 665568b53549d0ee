"""Who is signed in to the console, as FastAPI dependencies: `Session` (the signed-in
browser), `SignedInUser` and `AdminUser`; and the session cookie.

A console session is a cookie (`mf_session`: HttpOnly, SameSite=Strict, Path=/, Secure over
HTTPS) holding a token only `ledger.console_sessions` makes. Every request that may change
something (any method but GET, HEAD and OPTIONS) must also carry the session's CSRF token in
`X-CSRF-Token`, and, if the browser says where it comes from (`Origin`), come from this
coordinator's own origin: another site's page can make a browser send the cookie (were it
not SameSite) but can read neither the cookie nor `/console/api/me`, so it cannot know the
token. API keys never sign in here: the console's routes take no key, and the inference
routes take no session. Owns no state.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Security
from fastapi.security import APIKeyCookie
from starlette.requests import Request
from starlette.responses import Response

from moonflower import errors
from moonflower.coordinator.deps import ServicesDep
from moonflower.ledger import console_sessions
from moonflower.ledger.console_sessions import SignedIn
from moonflower.ledger.users import User
from moonflower.settings import CoordinatorSettings

SESSION_COOKIE = "mf_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_SESSION_COOKIE = APIKeyCookie(
    name=SESSION_COOKIE,
    scheme_name="ConsoleSession",
    description="A console sign-in (`POST /console/api/signin`). Requests other than GET "
    f"also send the session's CSRF token (from `GET /console/api/me`) in `{CSRF_HEADER}`.",
    auto_error=False,
)


async def signed_in_session(
    request: Request,
    services: ServicesDep,
    token: Annotated[str | None, Security(_SESSION_COOKIE)],
) -> SignedIn:
    """The signed-in session; `SignInRequired` without one, `PermissionDenied` when a
    request that may change something lacks the CSRF token or comes from another origin."""
    found = None if not token else await console_sessions.signed_in(services.db, token)
    if found is None:
        raise errors.SignInRequired("Sign in to the console first.")
    request.state.account_id = found.user.consumer_account_id  # for the access log
    if request.method not in SAFE_METHODS:
        check_same_origin(request)
        if not console_sessions.is_csrf_token(token or "", request.headers.get(CSRF_HEADER)):
            raise errors.PermissionDenied(
                f"This request needs the session's CSRF token in the {CSRF_HEADER} header."
            )
    return found


def check_same_origin(request: Request) -> None:
    """`PermissionDenied` if the browser says the request comes from a page of another
    host than the one it was sent to. Hosts, not schemes, are compared: behind a proxy
    that ends TLS the app may see `http` for a page the browser loaded over `https`, and a
    page of the same host is ours whatever its scheme."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    host = request.headers.get("host", request.url.netloc).lower()
    if urlsplit(origin).netloc.lower() != host:
        raise errors.PermissionDenied("Console requests come from the console's own pages.")


async def signed_in_user(session: Annotated[SignedIn, Depends(signed_in_session)]) -> User:
    return session.user


async def admin_user(user: Annotated[User, Depends(signed_in_user)]) -> User:
    if not user.is_admin:
        raise errors.PermissionDenied("Only the coordinator's operators may do this.")
    return user


Session = Annotated[SignedIn, Depends(signed_in_session)]
SignedInUser = Annotated[User, Depends(signed_in_user)]
AdminUser = Annotated[User, Depends(admin_user)]


def set_session_cookie(
    response: Response, request: Request, token: str, settings: CoordinatorSettings
) -> None:
    secure = settings.secure_cookies
    if secure is None:
        secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(timedelta(hours=settings.console_session_hours).total_seconds()),
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


def presented_token(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or None
