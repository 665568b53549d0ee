"""What a route needs from the request, as FastAPI dependencies: the coordinator's `Services`
and who may call it — an API key (`ApiCaller`), an account holder's API key or provider
token (`AccountCaller`), or the admin key (`AdminKey`).

Routes take these in their signature (`caller: ApiCaller`), so a reader sees who may call a
route, and `/openapi.json` documents it: each check reads the key through FastAPI's security
classes (`Authorization: Bearer <key>` and `x-api-key: <key>`, either one), which declare
the security schemes. They are built with `auto_error=False`, so FastAPI never answers for
them; the rules (which header wins, what a blank one means) and the refusals are `auth`'s,
raised as domain errors the app renders in the caller's dialect. Routes read their body
only after these have run, so a bad key is refused before a bad body. Owns no state.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request

from moonflower.coordinator import auth
from moonflower.coordinator.services import Services
from moonflower.ledger import keys

_API_KEY_BEARER = HTTPBearer(
    scheme_name="ApiKeyBearer",
    description="An API key as `Authorization: Bearer <key>` (OpenAI's SDKs); it wins over "
    "`x-api-key`. Account routes also take the account's provider token.",
    auto_error=False,
)
_API_KEY_HEADER = APIKeyHeader(
    name="x-api-key",
    scheme_name="ApiKeyHeader",
    description="An API key as `x-api-key: <key>` (Anthropic's SDKs). Account routes also "
    "take the account's provider token.",
    auto_error=False,
)
_ADMIN_KEY_BEARER = HTTPBearer(
    scheme_name="AdminKeyBearer",
    description="The coordinator's admin key as `Authorization: Bearer <key>`.",
    auto_error=False,
)
_ADMIN_KEY_HEADER = APIKeyHeader(
    name="x-api-key",
    scheme_name="AdminKeyHeader",
    description="The coordinator's admin key as `x-api-key: <key>`.",
    auto_error=False,
)


async def app_services(request: Request) -> Services:
    # A coroutine, not `Services.of` itself: FastAPI runs plain functions in a thread pool.
    return Services.of(request)


ServicesDep = Annotated[Services, Depends(app_services)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return None if credentials is None else credentials.credentials


async def api_caller(
    request: Request,
    services: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_API_KEY_BEARER)],
    x_api_key: Annotated[str | None, Security(_API_KEY_HEADER)],
) -> keys.Caller:
    """Whose API key this is (an inference caller)."""
    raw = auth.presented_key(_token(bearer), x_api_key)
    caller = await auth.api_key_caller(raw, services.callers)
    request.state.account_id = caller.account_id  # for the access log
    return caller


async def account_caller(
    request: Request,
    services: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_API_KEY_BEARER)],
    x_api_key: Annotated[str | None, Security(_API_KEY_HEADER)],
) -> keys.Caller:
    """Whose account this is: an API key, or a provider token reading its own account."""
    raw = auth.presented_key(_token(bearer), x_api_key)
    caller = await auth.account_key_caller(raw, services.callers)
    request.state.account_id = caller.account_id  # for the access log
    return caller


async def admin_key(
    services: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_ADMIN_KEY_BEARER)],
    x_api_key: Annotated[str | None, Security(_ADMIN_KEY_HEADER)],
) -> None:
    """The caller presented the admin key (and the admin API is enabled)."""
    raw = auth.presented_key(_token(bearer), x_api_key)
    auth.check_admin_key(raw, services.settings.admin_key)


ApiCaller = Annotated[keys.Caller, Depends(api_caller)]
AccountCaller = Annotated[keys.Caller, Depends(account_caller)]
AdminKey = Annotated[None, Depends(admin_key)]
