"""Anthropic's `/v1/messages/count_tokens` (not a generation; `/v1/messages` itself is built
with the other inference routes, in `inference`).

Wiring only: authenticate, parse with the dialect, count. The `anthropic-version` and
`anthropic-beta` headers are accepted and not required (there is one version). Errors
raised here are rendered in Anthropic's shape by the app's one exception handler.
"""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from moonflower.coordinator.deps import ApiCaller, ServicesDep
from moonflower.coordinator.dialects import anthropic_answers, anthropic_messages
from moonflower.coordinator.dialects.inference_apis import MESSAGES
from moonflower.coordinator.exchange import served_elsewhere
from moonflower.coordinator.openapi_bodies import json_body
from moonflower.coordinator.provider_headers import job_headers
from moonflower.coordinator.request_reading import read_json, trust_floor
from moonflower.coordinator.routes.inference import speaking
from moonflower.coordinator.services import json_response

router = APIRouter()


@router.post(
    "/v1/messages/count_tokens",
    dependencies=[Depends(speaking(MESSAGES))],
    openapi_extra=json_body(
        anthropic_messages.CountTokensBody,
        answer=anthropic_answers.MessageTokensCount,
        streams=False,
    ),
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
