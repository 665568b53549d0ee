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

PROTOCOL_VERSION = 1

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


class Register(_Frame):
    type: Literal["register"] = "register"
    protocol_version: int
    agent_version: str
    hardware: Hardware
    models: tuple[ModelCard, ...] = Field(min_length=1)
    max_concurrent_jobs: int = Field(ge=1, le=64)


class Heartbeat(_Frame):
    type: Literal["heartbeat"] = "heartbeat"
    active_jobs: int = Field(ge=0)
    jobs_served: int = Field(ge=0)
    tokens_generated: int = Field(ge=0)


class JobEvent(_Frame):
    type: Literal["job_event"] = "job_event"
    job_id: str
    event: GenerationEvent


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
    type: Literal["job_request"] = "job_request"
    job_id: str
    request: GenerationRequest


class JobCancel(_Frame):
    type: Literal["job_cancel"] = "job_cancel"
    job_id: str


ProviderMessage = Annotated[Register | Heartbeat | JobEvent, Field(discriminator="type")]
CoordinatorMessage = Annotated[
    Registered | Rejected | JobRequest | JobCancel, Field(discriminator="type")
]

_provider_messages: TypeAdapter[ProviderMessage] = TypeAdapter(ProviderMessage)
_coordinator_messages: TypeAdapter[CoordinatorMessage] = TypeAdapter(CoordinatorMessage)

_T = TypeVar("_T")

AnyMessage = Register | Heartbeat | JobEvent | Registered | Rejected | JobRequest | JobCancel


def encode(message: AnyMessage) -> str:
    return orjson.dumps(message.model_dump(mode="json")).decode()


def decode_from_provider(frame: str | bytes) -> Register | Heartbeat | JobEvent:
    return _decode(_provider_messages, frame)


def decode_from_coordinator(frame: str | bytes) -> Registered | Rejected | JobRequest | JobCancel:
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
