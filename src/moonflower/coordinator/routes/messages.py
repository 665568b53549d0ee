"""Anthropic Messages routes: `/v1/messages` and `/v1/messages/count_tokens`.

Wiring only: authenticate, parse with the dialect, dispatch, render. The `anthropic-version`
and `anthropic-beta` headers are accepted and not required (there is one version). Errors
raised here are rendered in Anthropic's shape by the app's one exception handler.
"""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from moonflower.coordinator.deps import ApiCaller, ServicesDep
from moonflower.coordinator.dialects import anthropic_errors, anthropic_messages, anthropic_render
from moonflower.coordinator.exchange import Rendering, serve, served_elsewhere
from moonflower.coordinator.job import Job
from moonflower.coordinator.openapi_bodies import json_body
from moonflower.coordinator.provider_headers import job_headers
from moonflower.coordinator.request_reading import read_json, trust_floor
from moonflower.coordinator.services import json_response

router = APIRouter()


@router.post("/v1/messages", openapi_extra=json_body(anthropic_messages.MessagesBody))
async def create_message(request: Request, services: ServicesDep, caller: ApiCaller) -> Response:
    call = anthropic_messages.parse(
        await read_json(request), max_messages=services.settings.max_messages
    )
    if (answer := await served_elsewhere(request, services, call.request.model)) is not None:
        return answer
    admission = await services.dispatcher.admit(call.request, caller, trust_floor(request))

    def render(job: Job) -> Rendering:
        renderer = anthropic_render.MessageRenderer(
            model=call.request.model,
            prompt_tokens=job.prompt_tokens,
            is_thinking=call.is_thinking,
        )
        return Rendering(
            stream=(lambda: renderer.stream(job.events())) if call.is_stream else None,
            whole=renderer.message,
        )

    return await serve(
        request,
        admission,
        render,
        is_stream=call.is_stream,
        error_frames=anthropic_errors.stream_error_frames,
    )


@router.post(
    "/v1/messages/count_tokens",
    openapi_extra=json_body(anthropic_messages.CountTokensBody, streams=False),
)
async def count_tokens(request: Request, services: ServicesDep, caller: ApiCaller) -> Response:
    """The prompt's size as the serving model tokenizes it: a job that generates nothing
    (`max_tokens=0`), so the count includes the chat template, system prompt and tools."""
    conversation = anthropic_messages.parse_count(
        await read_json(request), max_messages=services.settings.max_messages
    )
    if (answer := await served_elsewhere(request, services, conversation.model)) is not None:
        return answer
    job = await services.dispatcher.start(
        dataclasses.replace(conversation, max_tokens=0),
        caller,
        trust_floor(request),
        is_billed=False,  # counting is free
    )
    try:
        # The engine ends at once; draining lets the job be recorded as completed rather
        # than cancelled.
        async for _event in job.events():
            pass
    finally:
        await job.close()
    return json_response({"input_tokens": job.prompt_tokens}, headers=job_headers(job))
