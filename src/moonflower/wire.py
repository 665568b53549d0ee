"""The coordinator⇄provider wire protocol: every message, in one discriminated union.

Frames are UTF-8 JSON text WebSocket messages with a `type` field. `docs/protocol.md` is the
prose version of this module and must change with it. A session is:

    provider                         coordinator
    register            ──────────►
                        ◄──────────  registered | rejected (then close)
    heartbeat (every n s) ────────►
                        ◄──────────  job_request
    job_event (started) ──────────►
    job_event (text)*   ──────────►
    job_event (finished | failed) ►
                        ◄──────────  job_cancel (any time; the provider stops within a token)

This module owns shapes and (de)serialisation only; it must not do I/O.

Every count and string a provider sends is bounded here, so what it claims cannot overflow a
column, flood memory or smuggle a newline into a log line: counts are ranges, strings have a
length and, where they name something (hardware, models, ids, error params), must be
printable (`generation.PRINTABLE_PATTERN`). A frame that breaks a bound is refused as a
whole (`ProtocolError`); only a failure's free-text message is sanitised instead
(`generation.ReadableMessage`). `docs/protocol.md` lists the bounds.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic_core import ErrorDetails

from moonflower.errors import ProtocolError
from moonflower.generation import (
    MAX_TOKEN_COUNT,
    PRINTABLE_PATTERN,
    Failed,
    GenerationEvent,
    GenerationRequest,
    Label,
    SamplingParams,
)

PROTOCOL_VERSION = 3
"""3: per-job flow control (`job_credit`) and `draining`."""

FLOW_WINDOW_EVENTS = 64
"""Events of one job a provider may send beyond those its coordinator granted (`job_credit`)."""

HEARTBEAT_INTERVAL_S = 5.0
"""How often a provider sends a heartbeat; the coordinator drops a provider silent for longer
than its `heartbeat_timeout_s` setting (90 s by default)."""
MAX_FRAME_BYTES = 10 * 1024 * 1024

MAX_MODEL_CARDS = 32
"""Models one provider may register; each card costs the coordinator routing state."""
MAX_CONCURRENT_JOBS = 64
MAX_CONTEXT_LENGTH = MAX_TOKEN_COUNT
MAX_SIZE_BYTES = 1 << 50
"""Sizes (memory, weight files) above a pebibyte are not a machine's."""
MAX_LIFETIME_COUNT = 1 << 53
"""Counters over a provider process's life (heartbeat): they may pass 2**31, never 2**53."""
MAX_SIGNED_JSON_CHARS = 64 * 1024
MAX_CERTIFICATE_CHARS = 64 * 1024
MAX_CERTIFICATES = 8

COORDINATOR_FAILURE_CODES = frozenset({"provider_gone", "timeout"})
"""Failure codes only the coordinator makes (the connection was lost, a deadline passed); a
provider that sends one is breaking the protocol."""

ModelId = Annotated[str, Field(min_length=1, max_length=256, pattern=PRINTABLE_PATTERN)]
JobId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
Base64 = Annotated[str, Field(max_length=256, pattern=r"^[A-Za-z0-9+/]*={0,2}$")]
Cores = Annotated[int, Field(ge=1, le=1 << 16)]
Bytes = Annotated[int, Field(ge=0, le=MAX_SIZE_BYTES)]
LifetimeCount = Annotated[int, Field(ge=0, le=MAX_LIFETIME_COUNT)]


class _Frame(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Hardware(_Frame):
    """What the machine is, as the OS reports it. `serial` is what the provider calls its
    machine (a hardware serial, or a `mid-`/`key-` stand-in): a claim, never a trust key."""

    cpu: Label
    cpu_cores: Cores
    chip: Label | None = None
    gpu: Label | None = None
    memory_bytes: Bytes
    os: Label
    serial: Label | None = None


class SamplingDefaults(_Frame):
    """The sampling a model's authors recommend, for the knobs a request leaves unset.

    Whoever runs the model fills these in (the coordinator before it seals a job, the
    provider's engine for anything still unset) so that an answer's reported settings are
    the ones used. Bounded like the requests' own values."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=1000)
    repeat_penalty: float | None = Field(default=None, gt=0, le=2)
    """llama.cpp's penalty on tokens repeated within the last 64. No API sets it, so the
    engine applies it to every sampled (temperature > 0) generation; 1.0, none, when unset."""

    def params(self) -> SamplingParams:
        """The knobs a request can also set."""
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)


class ModelCard(_Frame):
    """One model a provider serves."""

    id: ModelId
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    context_length: int = Field(gt=0, le=MAX_CONTEXT_LENGTH)
    quantization: Label | None = None
    engine: Label
    size_bytes: Bytes
    sampling_defaults: SamplingDefaults = Field(default_factory=SamplingDefaults)


# provider → coordinator


class SignedBlob(_Frame):
    """Canonical JSON text and a base64 DER ECDSA P-256 signature over its exact bytes."""

    json_text: str = Field(alias="json", max_length=MAX_SIGNED_JSON_CHARS)
    signature: Base64

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Register(_Frame):
    type: Literal["register"] = "register"
    protocol_version: int
    agent_version: Label
    hardware: Hardware
    models: tuple[ModelCard, ...] = Field(min_length=1, max_length=MAX_MODEL_CARDS)
    max_concurrent_jobs: int = Field(ge=1, le=MAX_CONCURRENT_JOBS)
    encryption_public_key: Base64
    """Base64 X25519 key of this provider process; jobs are sealed to it."""
    statement: SignedBlob | None = None
    """The signed attestation statement; without one the provider's trust level is `none`."""

    @field_validator("models")
    @classmethod
    def _distinct_models(cls, models: tuple[ModelCard, ...]) -> tuple[ModelCard, ...]:
        if len({card.id for card in models}) != len(models):
            raise ValueError("model ids must be distinct")
        return models


class Heartbeat(_Frame):
    type: Literal["heartbeat"] = "heartbeat"
    active_jobs: int = Field(ge=0, le=1 << 16)
    """Jobs running or waiting for a slot on the provider (so it may exceed its slots)."""
    jobs_served: LifetimeCount
    tokens_generated: LifetimeCount
    free_slots: int | None = Field(default=None, ge=0, le=MAX_CONCURRENT_JOBS)
    """Jobs the provider could start right now; absent from providers that predate it."""


class Draining(_Frame):
    """The provider is stopping: it finishes the jobs it has, takes no new ones, and closes
    the connection when they are done."""

    type: Literal["draining"] = "draining"


class JobEvent(_Frame):
    """One generation event, sealed to the job's ephemeral key: `base64(nonce ‖ box)` of the
    event's JSON. There is no plaintext form."""

    type: Literal["job_event"] = "job_event"
    job_id: JobId
    sealed_event: str = Field(max_length=MAX_FRAME_BYTES)


class JobReceipt(_Frame):
    """The provider's signed receipt for a job, sent right after its terminal event."""

    type: Literal["job_receipt"] = "job_receipt"
    job_id: JobId
    receipt: SignedBlob


class ChallengeAnswer(_Frame):
    type: Literal["challenge_answer"] = "challenge_answer"
    nonce: Base64
    status: SignedBlob
    mda_chain: tuple[Annotated[str, Field(max_length=MAX_CERTIFICATE_CHARS)], ...] = Field(
        default=(), max_length=MAX_CERTIFICATES
    )
    """Base64 DER certificates (leaf first) from Apple Managed Device Attestation, whose
    freshness code is SHA-256 of this challenge's nonce; empty where the OS has none."""


# coordinator → provider


class Registered(_Frame):
    type: Literal["registered"] = "registered"
    provider_id: str
    heartbeat_interval_s: float
    trust_level: str | None = None
    """The trust level the coordinator gave this connection (`none`, `self_signed`,
    `hardware`), for the operator's `provider status`; absent from older coordinators."""


class Rejected(_Frame):
    """Registration refused; the coordinator closes the socket after sending it."""

    type: Literal["rejected"] = "rejected"
    reason: str


class JobRequest(_Frame):
    """A job sealed to the provider's encryption key with a fresh ephemeral key: the
    provider opens `sealed_request` (the GenerationRequest's JSON) with
    `ephemeral_public_key`, and seals every event of the job back to that key."""

    type: Literal["job_request"] = "job_request"
    job_id: str
    ephemeral_public_key: str
    sealed_request: str


class Challenge(_Frame):
    """Prove liveness and posture: sign a fresh status over this nonce within the deadline."""

    type: Literal["challenge"] = "challenge"
    nonce: str
    timestamp: int


class JobCancel(_Frame):
    type: Literal["job_cancel"] = "job_cancel"
    job_id: str


class JobCredit(_Frame):
    """The consumer of a job read `events` more of its events: the provider may send that
    many more (beyond its window)."""

    type: Literal["job_credit"] = "job_credit"
    job_id: str
    events: int = Field(gt=0)


ProviderMessage = Annotated[
    Register | Heartbeat | Draining | JobEvent | JobReceipt | ChallengeAnswer,
    Field(discriminator="type"),
]
CoordinatorMessage = Annotated[
    Registered | Rejected | JobRequest | JobCancel | JobCredit | Challenge,
    Field(discriminator="type"),
]

_provider_messages: TypeAdapter[ProviderMessage] = TypeAdapter(ProviderMessage)
_coordinator_messages: TypeAdapter[CoordinatorMessage] = TypeAdapter(CoordinatorMessage)

_T = TypeVar("_T")

FromProvider = Register | Heartbeat | Draining | JobEvent | JobReceipt | ChallengeAnswer
FromCoordinator = Registered | Rejected | JobRequest | JobCancel | JobCredit | Challenge
AnyMessage = FromProvider | FromCoordinator


def encode(message: AnyMessage) -> str:
    return orjson.dumps(message.model_dump(mode="json", by_alias=True)).decode()


_events: TypeAdapter[GenerationEvent] = TypeAdapter(GenerationEvent)
_requests: TypeAdapter[GenerationRequest] = TypeAdapter(GenerationRequest)


def event_bytes(event: GenerationEvent) -> bytes:
    """The JSON of one generation event: what a `job_event` seals."""
    return _events.dump_json(event)


def event_from_bytes(data: bytes) -> GenerationEvent:
    return _decode(_events, data)


def event_from_provider_bytes(data: bytes) -> GenerationEvent:
    """A generation event as a provider may send it: also refuses the failure codes only the
    coordinator makes (`COORDINATOR_FAILURE_CODES`)."""
    event = _decode(_events, data)
    if isinstance(event, Failed) and event.code in COORDINATOR_FAILURE_CODES:
        raise ProtocolError(f"a provider may not send failed/{event.code}")
    return event


def request_bytes(request: GenerationRequest) -> bytes:
    """The JSON of a generation request: what a `job_request` seals."""
    return _requests.dump_json(request)


def request_from_bytes(data: bytes) -> GenerationRequest:
    return _decode(_requests, data)


def decode_from_provider(frame: str | bytes) -> FromProvider:
    return _decode(_provider_messages, frame)


def decode_from_coordinator(frame: str | bytes) -> FromCoordinator:
    return _decode(_coordinator_messages, frame)


_TEMPLATED_ERRORS = frozenset(
    {
        "too_long",
        "too_short",
        "string_too_long",
        "string_too_short",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "value_error",
    }
)
"""Validation errors whose message states a bound or our own words, never the input."""


def _decode(adapter: TypeAdapter[_T], frame: str | bytes) -> _T:
    if len(frame) > MAX_FRAME_BYTES // 4 and _frame_bytes(frame) > MAX_FRAME_BYTES:
        raise ProtocolError("frame exceeds the maximum size")
    try:
        return adapter.validate_json(frame)
    except ValidationError as exc:
        # The error text names fields, types and bounds only; frame content (which could be
        # anything, newlines included) stays out of logs.
        summary = "; ".join(_error_summary(err) for err in exc.errors(include_input=False)[:5])
        raise ProtocolError(f"invalid frame ({summary})") from None


def _frame_bytes(frame: str | bytes) -> int:
    """The frame's size in UTF-8 bytes (a frame of at most a quarter of the limit in
    characters is within it whatever they are: callers skip this for those)."""
    if isinstance(frame, bytes):
        return len(frame)
    return len(frame.encode("utf-8", "surrogatepass"))


def _error_summary(err: ErrorDetails) -> str:
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "string_pattern_mismatch":
        return f"{where}: characters not allowed"
    if err["type"] in _TEMPLATED_ERRORS:
        return f"{where}: {err['msg']}"
    return f"{where}: {err['type']}"
