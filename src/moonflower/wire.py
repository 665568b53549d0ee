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
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from moonflower.errors import ProtocolError
from moonflower.generation import GenerationEvent, GenerationRequest

PROTOCOL_VERSION = 3
"""3: per-job flow control (`job_credit`) and `draining`."""

FLOW_WINDOW_EVENTS = 64
"""Events of one job a provider may send beyond those its coordinator granted (`job_credit`)."""

HEARTBEAT_INTERVAL_S = 5.0
"""How often a provider sends a heartbeat; the coordinator drops a silent provider after
`HEARTBEAT_TIMEOUT_S`."""
HEARTBEAT_TIMEOUT_S = 30.0
MAX_FRAME_BYTES = 10 * 1024 * 1024


class _Frame(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Hardware(_Frame):
    """What the machine is, as the OS reports it."""

    cpu: str
    cpu_cores: int
    chip: str | None = None
    gpu: str | None = None
    memory_bytes: int
    os: str


class ModelCard(_Frame):
    """One model a provider serves."""

    id: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    context_length: int = Field(gt=0)
    quantization: str | None = None
    engine: str
    size_bytes: int = Field(ge=0)


# provider → coordinator


class SignedBlob(_Frame):
    """Canonical JSON text and a base64 DER ECDSA P-256 signature over its exact bytes."""

    json_text: str = Field(alias="json")
    signature: str

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Register(_Frame):
    type: Literal["register"] = "register"
    protocol_version: int
    agent_version: str
    hardware: Hardware
    models: tuple[ModelCard, ...] = Field(min_length=1)
    max_concurrent_jobs: int = Field(ge=1, le=64)
    encryption_public_key: str
    """Base64 X25519 key of this provider process; jobs are sealed to it."""
    statement: SignedBlob | None = None
    """The signed attestation statement; without one the provider's trust level is `none`."""


class Heartbeat(_Frame):
    type: Literal["heartbeat"] = "heartbeat"
    active_jobs: int = Field(ge=0)
    jobs_served: int = Field(ge=0)
    tokens_generated: int = Field(ge=0)
    free_slots: int | None = Field(default=None, ge=0)
    """Jobs the provider could start right now; absent from providers that predate it."""


class Draining(_Frame):
    """The provider is stopping: it finishes the jobs it has, takes no new ones, and closes
    the connection when they are done."""

    type: Literal["draining"] = "draining"


class JobEvent(_Frame):
    """One generation event, sealed to the job's ephemeral key: `base64(nonce ‖ box)` of the
    event's JSON. There is no plaintext form."""

    type: Literal["job_event"] = "job_event"
    job_id: str
    sealed_event: str


class JobReceipt(_Frame):
    """The provider's signed receipt for a job, sent right after its terminal event."""

    type: Literal["job_receipt"] = "job_receipt"
    job_id: str
    receipt: SignedBlob


class ChallengeAnswer(_Frame):
    type: Literal["challenge_answer"] = "challenge_answer"
    nonce: str
    status: SignedBlob
    mda_chain: tuple[str, ...] = ()
    """Base64 DER certificates (leaf first) from Apple Managed Device Attestation, whose
    freshness code is SHA-256 of this challenge's nonce; empty where the OS has none."""


# coordinator → provider


class Registered(_Frame):
    type: Literal["registered"] = "registered"
    provider_id: str
    heartbeat_interval_s: float


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


def request_bytes(request: GenerationRequest) -> bytes:
    """The JSON of a generation request: what a `job_request` seals."""
    return _requests.dump_json(request)


def request_from_bytes(data: bytes) -> GenerationRequest:
    return _decode(_requests, data)


def decode_from_provider(frame: str | bytes) -> FromProvider:
    return _decode(_provider_messages, frame)


def decode_from_coordinator(frame: str | bytes) -> FromCoordinator:
    return _decode(_coordinator_messages, frame)


def _decode(adapter: TypeAdapter[_T], frame: str | bytes) -> _T:
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError("frame exceeds the maximum size")
    try:
        return adapter.validate_json(frame)
    except ValidationError as exc:
        # The error text names fields and types only; frame content stays out of logs.
        summary = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['type']}" for err in exc.errors()
        )
        raise ProtocolError(f"invalid frame ({summary})") from None
