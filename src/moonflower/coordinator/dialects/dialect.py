"""What an inference dialect is, as one object: how it parses a body into a call, renders a
job's events as its stream, folds that stream into its whole answer, and shapes its errors
(whole and in a stream), with the models `/openapi.json` publishes for its route.

A dialect renders one way only: its renderer turns output events into the stream's objects
(`sse.Event`s), and a whole (non-streaming) answer is a fold of those same objects, as the
vendors' SDKs accumulate a stream. The trailer (`[DONE]` for OpenAI's dialects) is the SSE
layer's to send. It owns no state, dispatches nothing and reads no request.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from moonflower import errors
from moonflower.coordinator import sse
from moonflower.generation import GenerationRequest, OutputEvent
from moonflower.settings import CoordinatorSettings

if TYPE_CHECKING:
    from moonflower.coordinator.job import Job


class Call(Protocol):
    """A parsed request: the neutral request, and whether the caller asked for a stream."""

    @property
    def request(self) -> GenerationRequest: ...

    @property
    def is_stream(self) -> bool: ...


class Fold(Protocol):
    """Accumulates a dialect's stream objects into its whole answer."""

    def add(self, item: sse.Event) -> None: ...

    def result(self) -> dict[str, Any]: ...


class Renderer(Protocol):
    """Renders one job's events as a dialect's stream objects, and folds them."""

    def stream(self, events: AsyncIterator[OutputEvent]) -> AsyncGenerator[sse.Event, None]: ...

    def fold(self) -> Fold: ...


async def whole(renderer: Renderer, events: AsyncIterator[OutputEvent]) -> dict[str, Any]:
    """The whole answer: `renderer`'s stream of `events`, folded."""
    fold = renderer.fold()
    stream = renderer.stream(events)
    try:
        async for item in stream:
            fold.add(item)
    finally:
        await stream.aclose()
    return fold.result()


CallT = TypeVar("CallT", bound=Call)


@dataclass(frozen=True, slots=True)
class ErrorShape:
    """How a dialect reports a domain error: as a whole HTTP body with its status, and as
    the one stream event sent when a stream fails before its first object."""

    body: Callable[[errors.MoonflowerError], tuple[int, dict[str, Any]]]
    stream_event: Callable[[errors.MoonflowerError], sse.Event]


@dataclass(frozen=True, slots=True)
class Dialect(Generic[CallT]):
    """One inference API as the coordinator speaks it at `path`."""

    name: str
    path: str
    summary: str
    body: type[BaseModel]
    """The request body model the parser validates with (published in `/openapi.json`)."""
    parse: Callable[[Any, CoordinatorSettings], CallT]
    renderer: Callable[[CallT, Job, bool], Renderer]
    """The renderer for one job; its last argument says whether the answer is whole."""
    errors: ErrorShape
    trailer: bytes = b""
    """What the stream sends after its last object (`sse.DONE`, or nothing)."""
    answer: type[Any] | None = None
    """The whole answer's typed dict, describing what the fold produces (`/openapi.json`)."""
