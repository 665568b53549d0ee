"""Consumer inference routes: authenticate, parse with a dialect, dispatch, render.

Each route is a few lines of wiring; parsing and rendering belong to the dialect, provider
choice and cancellation to the dispatcher. Errors raised here are rendered by the app's one
exception handler in the caller's dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from moonflower import errors
from moonflower.coordinator import sse
from moonflower.coordinator.auth import authenticate
from moonflower.coordinator.dialects import openai_chat
from moonflower.coordinator.dispatch import Job, failure_to_error
from moonflower.coordinator.services import Services, json_response
from moonflower.generation import Failed, Finished

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    services = Services.of(request)
    caller = await authenticate(request, services.db)
    call = openai_chat.parse(await read_json(request))
    job = await services.dispatcher.start(call.request, caller)
    renderer = openai_chat.ChatRenderer(
        model=call.request.model,
        fingerprint="fp_" + job.card.sha256[:12],
        prompt_tokens=job.prompt_tokens,
    )
    headers = job_headers(job)
    if call.is_stream:
        body = renderer.stream(job.events(), include_usage=call.include_usage)
        return sse.EventStreamResponse(body, on_close=job.close, headers=headers)
    try:
        text, finished = await collect(job, request)
    finally:
        await job.close()
    return json_response(renderer.completion(text, finished), headers=headers)


MAX_BODY_BYTES = 8 * 1024 * 1024
"""Larger bodies are refused before parsing; a job must also fit one wire frame."""


async def read_json(request: Request) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise errors.InvalidRequest(
            "We could not parse the JSON body of your request: it must be a valid JSON object.",
            param=None,
            code="invalid_json",
        ) from None


def _too_large() -> errors.BodyTooLarge:
    return errors.BodyTooLarge(
        f"The request body is larger than the {MAX_BODY_BYTES // (1024 * 1024)} MiB limit.",
        param=None,
    )


def job_headers(job: Job) -> dict[str, str]:
    return {"x-moonflower-job-id": job.id, "x-moonflower-provider-id": job.provider.id}


async def collect(job: Job, request: Request) -> tuple[str, Finished]:
    """The whole completion text; stops early (cancelling the job) if the client hangs up."""

    async def gather() -> tuple[str, Finished]:
        parts: list[str] = []
        async for event in job.events():
            if isinstance(event, Failed):
                raise failure_to_error(event)
            if isinstance(event, Finished):
                if event.reason == "cancelled":
                    raise errors.ProviderFailed("The provider stopped the generation.")
                return "".join(parts), event
            parts.append(event.text)
        raise errors.ProviderFailed("The provider's stream ended without a result.")

    gathering = asyncio.create_task(gather())
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
        # Nobody is listening any more; job.close() in the caller cancels the provider's work.
        raise errors.ProviderFailed("The client disconnected before the answer was ready.")
    return gathering.result()


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
