"""`create_app`: the coordinator's app — its lifespan, routes, middleware and error handling.

Wiring only. Its parts are built in one place, `assembly.build_services`, in the lifespan
(the database is opened and migrated there, before the first request), unless the caller
hands in services it built itself.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from moonflower import __version__, errors
from moonflower.coordinator import lost_jobs, openapi_bodies, transport_key
from moonflower.coordinator.access import Access
from moonflower.coordinator.assembly import build_services
from moonflower.coordinator.auth import authenticate
from moonflower.coordinator.cors import Cors
from moonflower.coordinator.error_response import render_error
from moonflower.coordinator.metrics import Metrics
from moonflower.coordinator.routes import (
    attestation,
    console_admin,
    console_auth,
    console_data,
    console_keys,
    console_pages,
    device,
    inference,
    messages,
    payments,
    pricing,
    providers,
    public,
    receipts,
    stats,
)
from moonflower.coordinator.routes import (
    metrics as metrics_route,
)
from moonflower.coordinator.sealed_transport import SealedTransport
from moonflower.coordinator.services import Services
from moonflower.crypto.envelope import EncryptionKeyPair
from moonflower.settings import CoordinatorSettings

log = logging.getLogger(__name__)

REPUTATION_DRAIN_S = 5.0
"""On shutdown, how long provider verdicts and records still being written may take."""


def create_app(
    settings: CoordinatorSettings,
    services: Services | None = None,
    *,
    transport_keys: EncryptionKeyPair | None = None,
) -> FastAPI:
    """The coordinator's app. Its sealed-transport key is `transport_keys` if given, else the
    one in `settings.transport_key_file` (`TransportKeyError` if that file is unusable),
    else a fresh one for this process."""

    metrics = services.metrics if services is not None else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = services or await build_services(settings, metrics)
        app.state.services = built
        leases = built.leases
        settle_lost = functools.partial(lost_jobs.settle_lost, built.settler)
        await leases.release_expired(settle_lost)  # before serving anyone
        renewing = asyncio.create_task(leases.run(settle_lost))
        publishing = asyncio.create_task(built.presence.run())
        try:
            yield
        finally:
            publishing.cancel()
            await asyncio.gather(publishing, return_exceptions=True)
            await built.presence.withdraw()
            await built.settler.drain(settings.shutdown_grace_s)  # pending settlements land
            await built.reputation.drain(REPUTATION_DRAIN_S)  # verdicts land before close
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
            if services is None:
                await built.close()

    app = FastAPI(title="Moonflower coordinator", version=__version__, lifespan=lifespan)
    openapi_bodies.publish(app)
    app.include_router(inference.router)
    app.include_router(messages.router)
    app.include_router(public.router)
    app.include_router(providers.router)
    app.include_router(attestation.router)
    app.include_router(receipts.router)
    app.include_router(payments.router)
    app.include_router(pricing.router)
    app.include_router(console_auth.router)
    app.include_router(console_keys.router)
    app.include_router(device.router)
    app.include_router(metrics_route.router)
    app.include_router(console_data.router)
    app.include_router(console_admin.router)
    app.include_router(console_pages.router)
    app.include_router(stats.router)
    app.mount("/console/static", console_pages.static_files(), name="console-static")
    install_error_handlers(app)
    # Consumers may seal requests to this key (`GET /v1/encryption-key`): the one in
    # `transport_key_file`, shared by every replica given that file, else one per process.
    app.add_middleware(
        SealedTransport,
        keys=transport_keys or transport_key.transport_keys(settings.transport_key_file),
        admits=lambda request: authenticate(request, Services.of(request).callers),
    )
    app.add_middleware(Cors, allowed_origins=settings.cors_allowed_origins)
    # Added last, so outermost: every answer, pre-flights and sealed ones included, carries
    # the request id, is counted and is logged once.
    app.add_middleware(Access, metrics=metrics, access_log=settings.access_log)

    @app.api_route(
        "/v1/{path:path}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    async def unknown_route(request: Request) -> Response:
        raise errors.RouteNotFound(f"Unknown request URL: {request.method} {request.url.path}.")

    return app


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.MoonflowerError)
    async def domain_error(request: Request, exc: errors.MoonflowerError) -> Response:
        return render_error(request, exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return render_error(
                request, errors.RouteNotFound(f"Unknown request URL: {request.url.path}.")
            )
        response = render_error(request, errors.InvalidRequest(str(exc.detail), param=None))
        response.status_code = exc.status_code
        response.headers.update(dict(exc.headers or {}))
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return render_error(request, errors.InvalidRequest("The request is invalid.", param=None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return render_error(request, errors.MoonflowerError("Internal server error."))
