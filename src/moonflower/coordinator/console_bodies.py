"""The bodies the console's JSON routes accept, and reading one from a request.

Validated with pydantic at the edge; a body that does not fit is an `InvalidRequest` naming
the field, rendered like every other error. Passwords are only ever held as `SecretStr`, so
no repr, log line or error message shows one.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from starlette.requests import Request

from moonflower.coordinator.dialects.openai_errors import from_validation_error
from moonflower.coordinator.request_reading import read_json
from moonflower.ledger.users import MAX_EMAIL_LENGTH, MAX_PASSWORD_LENGTH

Body = TypeVar("Body", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class SignUp(_Strict):
    email: str = Field(min_length=3, max_length=MAX_EMAIL_LENGTH)
    password: SecretStr = Field(max_length=MAX_PASSWORD_LENGTH)
    invite_code: str | None = Field(default=None, max_length=100)


class SignIn(_Strict):
    email: str = Field(max_length=MAX_EMAIL_LENGTH)
    password: SecretStr = Field(max_length=MAX_PASSWORD_LENGTH)


class KeyName(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)


class DeviceDecision(_Strict):
    user_code: str = Field(min_length=1, max_length=32)


async def read_model(request: Request, model: type[Body]) -> Body:
    """The request's JSON body as `model`, or `InvalidRequest`."""
    try:
        return model.model_validate(await read_json(request))
    except ValidationError as exc:
        raise from_validation_error(exc) from None
