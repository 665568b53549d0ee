"""OpenAI Responses route: authenticate, parse with the dialect, dispatch, render.

Wiring only, like the chat route: parsing and rendering belong to the `openai_responses`
dialect, provider choice and cancellation to the dispatcher. Errors raised here are
rendered by the app's one exception handler in OpenAI's shape.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from moonflower.coordinator.deps import ApiCaller, ServicesDep
from moonflower.coordinator.dialects import openai_responses, openai_responses_render
from moonflower.coordinator.dialects.openai_responses_body import ResponsesBody
from moonflower.coordinator.exchange import Rendering, serve, served_elsewhere
from moonflower.coordinator.job import Job
from moonflower.coordinator.openapi_bodies import json_body
from moonflower.coordinator.request_reading import read_json, trust_floor

router = APIRouter()


@router.post("/v1/responses", openapi_extra=json_body(ResponsesBody))
async def responses(request: Request, services: ServicesDep, caller: ApiCaller) -> Response:
    call = openai_responses.parse(
        await read_json(request), max_messages=services.settings.max_messages
    )
    if (answer := await served_elsewhere(request, services, call.request.model)) is not None:
        return answer
    admission = await services.dispatcher.admit(call.request, caller, trust_floor(request))

    def render(job: Job) -> Rendering:
        renderer = openai_responses_render.ResponsesRenderer(
            model=call.request.model,
            max_output_tokens=job.request.max_tokens,
            sampling=job.request.sampling,  # as the job runs: recommended defaults filled in
            echo=call.echo,
        )
        return Rendering(
            stream=(lambda: renderer.stream(job.events())) if call.is_stream else None,
            whole=renderer.response,
        )

    return await serve(
        request,
        admission,
        render,
        is_stream=call.is_stream,
        error_frames=openai_responses_render.stream_error_frames,
    )
