"""What every inference route shares once its dialect has parsed the request: running the
admitted job, the job's response headers, and answering it in the dialect — its stream, or
its whole answer folded from that stream (`dialect.whole`). Reading the body and the
caller's trust floor come before, in `request_reading`.

Dialect-neutral: the `Dialect` object knows the wire shapes, nothing here does. Errors are
raised as domain errors for the app's one exception handler to render in the dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from moonflower import errors
from moonflower.coordinator import sse
from moonflower.coordinator.dialects.dialect import Call, Dialect, Renderer, whole
from moonflower.coordinator.holds import Admission
from moonflower.coordinator.job import Job
from moonflower.coordinator.provider_headers import job_headers
from moonflower.coordinator.request_reading import trust_floor
from moonflower.coordinator.services import Services, json_response
from moonflower.crypto.receipt import receipt_hash
from moonflower.generation import Failed, Finished, OutputEvent
from moonflower.ledger.book import format_usd


def settled_headers(job: Job) -> dict[str, str]:
    """For a whole (non-streaming) answer: what it cost, the hash of the provider's verified
    receipt and its signature over that receipt, which anyone holding its attested key can
    check. (A stream carries the same in its receipt event.)"""
    headers = {}
    if job.settlement is not None:
        headers["x-moonflower-cost-usd"] = format_usd(job.settlement.charged_micro_usd)
    if job.receipt is not None:
        headers["x-response-hash"] = receipt_hash(job.receipt.json_text)
        headers["x-se-signature"] = job.receipt.signature
    return headers


async def served_elsewhere(request: Request, services: Services, model: str) -> Response | None:
    """The answer of another replica, when that one can serve `model` and this one cannot
    now (`forwarding`); None to serve the request here."""
    if services.forwarder is None:
        return None
    return await services.forwarder.elsewhere(request, model, trust_floor(request))


async def serve(
    request: Request, admission: Admission, dialect: Dialect[Any], call: Call
) -> Response:
    """Run an admitted request and answer it in its dialect.

    The response waits for the provider's first output, so its headers can name the
    provider (`job_headers`). A stream that must first wait for a free provider waits like
    that for at most the keep-alive interval, the longest silence a stream allows; if no
    provider has taken it by then it starts — headers with the job id only, then SSE
    keep-alive comments while it waits — and a failure to start then arrives as the
    dialect's error event (`dialect.errors.stream_event`) rather than as an HTTP status."""
    services = Services.of(request)
    dispatcher = services.dispatcher
    if not (call.is_stream and dispatcher.must_wait(admission)):
        job = await dispatcher.run(admission)
        return await _answer_started(job, request, dialect, call)
    # Once the headers are out a refusal can only be an error event: await the hold first.
    await dispatcher.hold_taken(admission)
    starting = asyncio.create_task(dispatcher.run(admission))
    if await _starts_within(starting, request, services.settings.sse_keepalive_s):
        return await _answer_started(starting.result(), request, dialect, call)

    async def opening() -> AsyncIterator[sse.Event]:
        job = await starting
        return dialect.renderer(call, job, False).stream(job.events())

    return sse.EventStreamResponse(
        sse.deferred(opening, on_error=dialect.errors.stream_event),
        on_close=functools.partial(_stop_starting, starting),
        headers={"x-moonflower-job-id": admission.job_id},
        keepalive_s=services.settings.sse_keepalive_s,
        trailer=dialect.trailer,
    )


async def _answer_started(
    job: Job, request: Request, dialect: Dialect[Any], call: Call
) -> Response:
    try:
        renderer = dialect.renderer(call, job, not call.is_stream)
        return await answer(
            job, request, renderer, is_stream=call.is_stream, trailer=dialect.trailer
        )
    except BaseException:  # no response will own the job: end it here (a no-op if ended)
        await job.close()
        raise


async def _starts_within(starting: asyncio.Task[Job], request: Request, timeout_s: float) -> bool:
    """Whether `starting` gave a job within `timeout_s`. A failure, or a wait that runs out,
    is left for the stream to report; if the client hangs up first, the start is stopped."""
    hangup = asyncio.create_task(wait_for_disconnect(request))
    try:
        await asyncio.wait({starting, hangup}, timeout=timeout_s, return_when=FIRST_COMPLETED)
    except BaseException:  # the request itself was cancelled: nobody will read this start
        await _stop_starting(starting)
        raise
    finally:
        hangup.cancel()
    if hangup.done() and not hangup.cancelled() and not starting.done():
        await _stop_starting(starting)
        raise errors.ProviderFailed("The client disconnected before a provider was free.")
    return starting.done() and not starting.cancelled() and starting.exception() is None


async def _stop_starting(starting: asyncio.Task[Job]) -> None:
    """Stop a start nobody will read (leaving the queue), or close the job it gave."""
    starting.cancel()
    await asyncio.wait({starting})
    if not starting.cancelled() and starting.exception() is None:
        await starting.result().close()


async def answer(
    job: Job, request: Request, renderer: Renderer, *, is_stream: bool, trailer: bytes = b""
) -> Response:
    """The response to an accepted job: `renderer`'s SSE stream (followed by `trailer`) when
    `is_stream`, else its whole answer once the job ends. Either way the job is closed (and
    so cancelled if the client leaves) and its headers say who served it."""
    headers = job_headers(job)
    job.is_whole = not is_stream
    if is_stream:
        return sse.EventStreamResponse(
            renderer.stream(job.events()),
            on_close=job.close,
            headers=headers,
            keepalive_s=Services.of(request).settings.sse_keepalive_s,
            trailer=trailer,
        )
    try:
        body = await collect(job, request, renderer)
    finally:
        await job.close()
    return json_response(body, headers={**headers, **settled_headers(job)})


async def collect(job: Job, request: Request, renderer: Renderer) -> dict[str, Any]:
    """The whole answer, folded from `renderer`'s stream of the job's events; stops early
    (the caller's `job.close()` then cancels the provider's work) if the client hangs up
    before it is ready. A failed job raises its error instead."""
    gathering = asyncio.create_task(whole(renderer, succeeded(job.events())))
    hangup = asyncio.create_task(wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({gathering, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hangup.cancel()
        if not gathering.done():
            gathering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gathering
    if gathering not in done:
        raise errors.ProviderFailed("The client disconnected before the answer was ready.")
    return gathering.result()


async def succeeded(events: AsyncIterator[OutputEvent]) -> AsyncIterator[OutputEvent]:
    """A job's events up to its `Finished`, for a whole answer: a failure, a cancelled
    finish or an end without a result is raised as the domain error it is, since a whole
    answer has no place for an error event."""
    async for event in events:
        if isinstance(event, Failed):
            raise errors.from_failure(event)
        if isinstance(event, Finished):
            if event.reason == "cancelled":
                raise errors.ProviderFailed("The provider stopped the generation.")
            yield event
            return
        yield event
    raise errors.ProviderFailed("The provider's stream ended without a result.")


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
