"""A signed-in user's API keys: `/console/api/keys` — list, create, rename, revoke.

Keys belong to the user's consumer account and call the inference API; they are managed
only through a console session, never with an API key. A raw key is in the answer to its
creation and nowhere else. Revoking tells every replica to forget the key at once
(`broadcast`), as `moonflower keys revoke` does.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from moonflower import errors
from moonflower.coordinator.console_bodies import KeyName, read_model
from moonflower.coordinator.console_session import SignedInUser
from moonflower.coordinator.deps import ServicesDep
from moonflower.coordinator.services import Services, json_response
from moonflower.ledger import account_keys
from moonflower.ledger.account_keys import OwnKey

router = APIRouter(prefix="/console/api/keys", tags=["console"])


def _time(value: Any) -> int | None:
    return None if value is None else int(value.timestamp())


def key_body(key: OwnKey) -> dict[str, Any]:
    return {
        "object": "api_key",
        "id": key.key_id,
        "name": key.name,
        "display_prefix": key.display_prefix,
        "created": _time(key.created_at),
        "last_used": _time(key.last_used_at),
        "revoked": _time(key.revoked_at),
    }


def _no_such_key() -> errors.MoonflowerError:
    return errors.RouteNotFound("You have no such API key.")


@router.get("")
async def list_keys(user: SignedInUser, services: ServicesDep) -> Response:
    keys = await account_keys.listed(services.db, user.consumer_account_id)
    return json_response({"object": "list", "data": [key_body(key) for key in keys]})


@router.post("", status_code=201)
async def create_key(request: Request, user: SignedInUser, services: ServicesDep) -> Response:
    """A new API key; the raw key is in this answer once (`key`) and never again."""
    body = await read_model(request, KeyName)
    created = await account_keys.create(services.db, user.consumer_account_id, body.name)
    if created is None:
        raise errors.InvalidRequest(
            f"An account holds at most {account_keys.MAX_KEYS_PER_ACCOUNT} active keys; "
            "revoke one first.",
            code="too_many_keys",
        )
    return json_response(
        {
            "object": "api_key",
            "id": created.key_id,
            "name": body.name,
            "display_prefix": created.display_prefix,
            "key": created.key,
        },
        status_code=201,
    )


@router.patch("/{key_id}")
async def rename_key(
    key_id: str, request: Request, user: SignedInUser, services: ServicesDep
) -> Response:
    body = await read_model(request, KeyName)
    if not await account_keys.rename(services.db, user.consumer_account_id, key_id, body.name):
        raise _no_such_key()
    return await _one(services, user.consumer_account_id, key_id)


@router.post("/{key_id}/revoke")
async def revoke_key(key_id: str, user: SignedInUser, services: ServicesDep) -> Response:
    key_hash = await account_keys.revoke(services.db, user.consumer_account_id, key_id)
    if key_hash is None:
        raise _no_such_key()
    services.callers.forget(key_hash)
    await services.broadcast.key_revoked(key_hash)
    return await _one(services, user.consumer_account_id, key_id)


async def _one(services: Services, account_id: str, key_id: str) -> Response:
    found = [
        key for key in await account_keys.listed(services.db, account_id) if key.key_id == key_id
    ]
    if not found:
        raise _no_such_key()
    return json_response(key_body(found[0]))
