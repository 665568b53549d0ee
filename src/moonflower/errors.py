"""Moonflower's one exception tree.

Domain errors carry fields (what went wrong, which request field), never HTTP status codes or
wire shapes: each dialect owns exactly one mapping from these to its own error body.

    MoonflowerError
    ├── InvalidRequest            the caller's input is wrong (names the field in `param`)
    │   ├── ContextLengthExceeded the prompt does not fit the model's context window
    │   ├── BodyTooLarge          the request body exceeds the coordinator's limit
    │   ├── ChatTemplateMissing   the model cannot format chat messages at all
    │   └── ChatTemplateRejected  the model's own template refused the conversation
    ├── AuthenticationFailed      missing, unknown or revoked API key
    │   └── SignInRequired        no console session, or it expired or was closed
    ├── PermissionDenied          a valid key that may not do this (admin, provider-only)
    ├── InsufficientFunds         the account cannot cover the request's reservation
    ├── RouteNotFound             no such endpoint
    ├── ModelNotFound             no provider has ever served this model
    ├── NoProviderAvailable       the model is known but nobody serving it is connected
    ├── ShuttingDown              the coordinator is draining for a restart
    ├── Overloaded                every provider for the model is busy and the wait for one
    │   │                         is full or timed out (`retry_after_s`)
    │   └── ProviderOverloaded    the provider running a job turned it away at capacity
    ├── RateLimited               the API key used up its requests or tokens per minute
    │   │                         (`limit`, `retry_after_s`)
    │   └── SignInThrottled       too many wrong passwords for an email or from an address
    ├── StoreUnavailable          the ledger's database is locked, down or too slow
    │                             (`retry_after_s`)
    ├── ProviderFailed            the provider broke or went away mid-job
    ├── UpstreamTimeout           the provider did not answer in time
    ├── ProtocolError             a peer sent a message the wire protocol does not allow
    ├── UnreadableResponse        a saved answer is not a body or stream of its dialect
    ├── TrustFailure              something signed or sealed did not hold (`reason` says why)
    │   ├── AttestationError      a statement or challenge status
    │   ├── ReceiptError          a job receipt
    │   ├── MdaError              an Apple device attestation chain
    │   └── SealError             a sealed value would not seal or open
    └── ProviderSetupError        a provider cannot start as asked
        ├── ModelSourceError      the model spec names nothing loadable
        ├── EngineUnavailable     unknown engine, or its library is not installed
        ├── RegistrationRejected  the coordinator refused this provider
        ├── KeyFileError          the signing-key file is unsafe or unreadable
        └── CodeIdentityUnavailable  the running code cannot be hashed

Messages never quote prompt or completion text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from moonflower.generation import Failed


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


class BodyTooLarge(InvalidRequest):
    code = "request_too_large"


class AuthenticationFailed(MoonflowerError):
    code = "invalid_api_key"


class SignInRequired(AuthenticationFailed):
    code = "sign_in_required"


class PermissionDenied(MoonflowerError):
    code = "permission_denied"


class InsufficientFunds(MoonflowerError):
    """Available credit (balance minus holds) is below what the request could cost."""

    code = "insufficient_funds"

    def __init__(self, *, needed_micro_usd: int, available_micro_usd: int) -> None:
        super().__init__(
            f"Insufficient funds: this request needs up to ${needed_micro_usd / 1e6:.6f} "
            f"reserved but the account has ${available_micro_usd / 1e6:.6f} available. "
            "Add credit, or lower max_tokens (the reservation assumes the whole token "
            "budget is used)."
        )
        self.needed_micro_usd = needed_micro_usd
        self.available_micro_usd = available_micro_usd


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

    def __init__(self, model: str, *, required_trust: str | None = None) -> None:
        if required_trust is None:
            message = f"No provider serving '{model}' is connected right now; try again shortly."
        else:
            message = (
                f"No provider serving '{model}' meets the required trust level "
                f"'{required_trust}' right now; try again shortly."
            )
        super().__init__(message)
        self.model = model
        self.required_trust = required_trust


class Overloaded(MoonflowerError):
    """Every provider serving the model is busy, and the queue for one is full or the wait
    in it ran out. `retry_after_s` (whole seconds, at least 1) says when to try again."""

    code = "server_is_overloaded"

    def __init__(self, message: str | None = None, *, retry_after_s: int) -> None:
        super().__init__(
            message or f"Every provider serving this model is busy; try again in {retry_after_s} s."
        )
        self.retry_after_s = retry_after_s


class ProviderOverloaded(Overloaded):
    """The provider running the job turned it away at capacity (reported mid-stream)."""


RateLimit = Literal["requests", "tokens"]


class RateLimited(MoonflowerError):
    """The API key went over its requests or tokens per minute (`limit` says which);
    `retry_after_s` (whole seconds, at least 1) is when it is under again."""

    code = "rate_limit_exceeded"

    def __init__(
        self, *, retry_after_s: int, limit: RateLimit, per_minute: int | None = None
    ) -> None:
        allowed = f" (limit: {per_minute} per minute)" if per_minute is not None else ""
        super().__init__(
            f"Rate limit reached for {limit} per minute on this API key{allowed}; "
            f"try again in {retry_after_s} s."
        )
        self.retry_after_s = retry_after_s
        self.limit = limit


class SignInThrottled(RateLimited):
    """Sign-ins to an email, or from an address, failed too often lately; `retry_after_s`
    says when the oldest failure that counts stops counting."""

    code = "too_many_sign_ins"

    def __init__(self, *, retry_after_s: int) -> None:
        MoonflowerError.__init__(
            self,
            f"Too many failed sign-ins; try again in {retry_after_s} s, or reset your "
            "password with the operator.",
        )
        self.retry_after_s = retry_after_s
        self.limit: RateLimit = "requests"


class StoreUnavailable(MoonflowerError):
    """A store the coordinator needs did not answer within its time bound: the ledger's
    database (locked by another process, down, out of connections, a statement ran too long)
    or the Redis server replicas share live state through. `retry_after_s` (whole seconds,
    at least 1) says when to try again."""

    code = "store_unavailable"

    def __init__(self, *, retry_after_s: int) -> None:
        super().__init__(
            "The coordinator's storage is busy or unreachable right now; "
            f"try again in {retry_after_s} s."
        )
        self.retry_after_s = retry_after_s


class ShuttingDown(MoonflowerError):
    """The coordinator is draining for a restart and takes no new requests."""

    code = "shutting_down"


class ProviderFailed(MoonflowerError):
    code = "provider_error"


class UpstreamTimeout(MoonflowerError):
    code = "timeout"


class ProtocolError(MoonflowerError):
    code = "protocol_error"


class ChatTemplateMissing(InvalidRequest):
    """The model has no chat template we can apply, so it only serves raw completions."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"This model cannot format chat messages ({reason}); "
            "send a raw text prompt to the completions endpoint instead.",
            param="messages",
        )


class ChatTemplateRejected(InvalidRequest):
    """The model's own template refused the conversation (e.g. roles that do not alternate).

    The message is the one the template author wrote; it never quotes message content.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"The model's chat template rejected the messages: {reason}", param="messages"
        )


class UnreadableResponse(MoonflowerError):
    """A saved answer is not a body or stream of the dialect it was read as."""

    code = "unreadable_response"


class TrustFailure(MoonflowerError):
    """Something signed or sealed did not hold. `reason` is a short code for machines (each
    raising module lists its own); messages never carry secrets or payloads."""

    what = "check"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{self.what} rejected ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


class AttestationError(TrustFailure):
    code = "attestation_failed"
    what = "attestation"


class ReceiptError(TrustFailure):
    code = "receipt_invalid"
    what = "receipt"


class MdaError(TrustFailure):
    code = "device_attestation_invalid"
    what = "Apple device attestation"


class SealError(TrustFailure):
    code = "seal_failed"
    what = "sealed value"


class ProviderSetupError(MoonflowerError):
    code = "provider_setup"


class ModelSourceError(ProviderSetupError):
    """A model spec names nothing we can load (no such file, or a missing weights package)."""

    code = "model_source_invalid"


class EngineUnavailable(ProviderSetupError):
    """The named engine does not exist or cannot run on this machine."""

    code = "engine_unavailable"


class RegistrationRejected(ProviderSetupError):
    """The coordinator refused this provider; retrying the same registration is pointless."""

    code = "registration_rejected"


PROVIDER_BUSY_RETRY_AFTER_S = 1
"""A provider at capacity says nothing about when it frees up; clients back off from here."""


def from_failure(failure: Failed) -> MoonflowerError:
    """Translate a provider's failure event into this tree."""
    if failure.code == "context_length_exceeded":
        return ContextLengthExceeded(failure.message, param=failure.param or "messages")
    if failure.code == "invalid_request":
        return InvalidRequest(failure.message, param=failure.param)
    if failure.code == "timeout":
        return UpstreamTimeout(failure.message)
    if failure.code == "overloaded":
        # The provider turned the job away at capacity: a busy model, not a broken one.
        return ProviderOverloaded(failure.message, retry_after_s=PROVIDER_BUSY_RETRY_AFTER_S)
    return ProviderFailed(failure.message)


class KeyFileError(ProviderSetupError):
    """The signing-key file cannot be used: unsafe permissions, not a file, or not a key."""

    code = "signing_key_unusable"


class CodeIdentityUnavailable(ProviderSetupError):
    """The code or runtime to hash cannot be read, so the provider cannot say what it runs."""

    code = "code_identity_unavailable"
