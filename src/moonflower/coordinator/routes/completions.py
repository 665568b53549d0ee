"""OpenAI legacy completions route (`POST /v1/completions`): authenticate, parse with the
dialect, dispatch, render.

Wiring only: parsing and rendering belong to `dialects/openai_completions`, provider choice
and cancellation to the dispatcher, body reading and gathering to `exchange`. Errors raised
here are rendered by the app's one exception handler in OpenAI's shape.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from moonflower.coordinator.deps import ApiCaller, ServicesDep
from moonflower.coordinator.dialects import openai_completions, openai_errors
from moonflower.coordinator.exchange import Rendering, serve, served_elsewhere
from moonflower.coordinator.job import Job
from moonflower.coordinator.openapi_bodies import json_body
from moonflower.coordinator.request_reading import read_json, trust_floor

router = APIRouter()


@router.post("/v1/completions", openapi_extra=json_body(openai_completions.CompletionBody))
async def completions(request: Request, services: ServicesDep, caller: ApiCaller) -> Response:
    call = openai_completions.parse(await read_json(request))
    if (answer := await served_elsewhere(request, services, call.request.model)) is not None:
        return answer
    admission = await services.dispatcher.admit(call.request, caller, trust_floor(request))

    def render(job: Job) -> Rendering:
        renderer = openai_completions.CompletionRenderer(
            call, fingerprint="fp_" + job.card.sha256[:12]
        )
        return Rendering(
            stream=(lambda: renderer.stream(job.events(), include_usage=call.include_usage))
            if call.is_stream
            else None,
            whole=renderer.completion,
        )

    return await serve(
        request,
        admission,
        render,
        is_stream=call.is_stream,
        error_frames=openai_errors.stream_error_frames,
    )
