"""The inference routes, built from the dialects (`dialects.inference_apis`): one factory
(`routes_for`) makes `POST <path>` for each `Dialect` — authenticate, parse with the
dialect, answer from another replica or dispatch here, then stream or fold the job's events
in the dialect.

Wiring only: parsing and rendering belong to the dialect, provider choice and cancellation
to the dispatcher, body reading and answering to `request_reading` and `exchange`. The
route marks the request with its dialect (`speaking`) before anything else runs, so the
app's one exception handler renders every error raised here in that dialect's shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from moonflower.coordinator.deps import ApiCaller, ServicesDep
from moonflower.coordinator.dialects import inference_apis
from moonflower.coordinator.dialects.dialect import Dialect
from moonflower.coordinator.exchange import serve, served_elsewhere
from moonflower.coordinator.openapi_bodies import json_body
from moonflower.coordinator.request_reading import read_json, trust_floor


def speaking(dialect: Dialect[Any]) -> Callable[[Request], Awaitable[None]]:
    """A dependency marking the request as one in `dialect`, for error rendering
    (`error_response`); a route lists it first, so it runs before authentication."""

    async def mark(request: Request) -> None:
        request.state.dialect = dialect

    return mark


def routes_for(dialects: Sequence[Dialect[Any]]) -> APIRouter:
    """`POST <path>` for each of `dialects`, with its body and whole answer published."""
    routes = APIRouter()
    for dialect in dialects:
        routes.add_api_route(
            dialect.path,
            endpoint(dialect),
            methods=["POST"],
            name=dialect.name,
            summary=dialect.summary,
            dependencies=[Depends(speaking(dialect))],
            openapi_extra=json_body(dialect.body, answer=dialect.answer),
        )
    return routes


def endpoint(dialect: Dialect[Any]) -> Callable[..., Awaitable[Response]]:
    """The route's handler; its parameters are FastAPI dependencies, so authentication
    shows in `/openapi.json`."""

    async def generate(request: Request, services: ServicesDep, caller: ApiCaller) -> Response:
        call = dialect.parse(await read_json(request), services.settings)
        if (answer := await served_elsewhere(request, services, call.request.model)) is not None:
            return answer
        admission = await services.dispatcher.admit(call.request, caller, trust_floor(request))
        return await serve(request, admission, dialect, call)

    return generate


router = routes_for(inference_apis.ALL)
