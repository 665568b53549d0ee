"""Moonflower's one exception tree.

Domain errors carry fields (what went wrong, which request field), never HTTP status codes or
wire shapes: each dialect owns exactly one mapping from these to its own error body.

    MoonflowerError
    ├── InvalidRequest            the caller's input is wrong (names the field in `param`)
    │   └── ContextLengthExceeded the prompt does not fit the model's context window
    ├── AuthenticationFailed      missing, unknown or revoked API key
    ├── RouteNotFound             no such endpoint
    ├── ModelNotFound             no provider has ever served this model
    ├── NoProviderAvailable       the model is known but nobody serving it is connected
    ├── ProviderFailed            the provider broke or went away mid-job
    ├── UpstreamTimeout           the provider did not answer in time
    └── ProtocolError             a peer sent a message the wire protocol does not allow

Messages never quote prompt or completion text.
"""

from __future__ import annotations


class MoonflowerError(Exception):
    """Base of every error Moonflower raises on purpose."""

    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(MoonflowerError):
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationFailed(MoonflowerError):
    code = "invalid_api_key"


class RouteNotFound(MoonflowerError):
    code = "unknown_url"


class ModelNotFound(MoonflowerError):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or is not served on this network; "
            "see /v1/models for the models available now."
        )
        self.model = model


class NoProviderAvailable(MoonflowerError):
    code = "no_provider_available"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"No provider serving '{model}' is connected right now; try again shortly."
        )
        self.model = model


class ProviderFailed(MoonflowerError):
    code = "provider_error"


class UpstreamTimeout(MoonflowerError):
    code = "timeout"


class ProtocolError(MoonflowerError):
    code = "protocol_error"
