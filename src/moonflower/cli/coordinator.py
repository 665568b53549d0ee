"""`moonflower coordinator serve`: run the coordinator's HTTP and WebSocket server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from fastapi import FastAPI

from moonflower import eventloop
from moonflower.cli import logs
from moonflower.coordinator.app import create_app
from moonflower.coordinator.services import Services
from moonflower.coordinator.shutdown import DrainingServer
from moonflower.settings import CoordinatorSettings

app = typer.Typer(help="Run the coordinator.", no_args_is_help=True)


def coordinator_settings(
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    database_url: str | None,
    aliases: list[str] | None = None,
) -> CoordinatorSettings:
    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "data_dir": data_dir,
        "database_url": database_url,
        "model_aliases": parse_aliases(aliases) if aliases else None,
    }
    return CoordinatorSettings(**{k: v for k, v in overrides.items() if v is not None})


def parse_aliases(pairs: list[str]) -> dict[str, str]:
    aliases: dict[str, str] = {}
    for pair in pairs:
        alias, separator, target = pair.partition("=")
        if not separator or not alias.strip() or not target.strip():
            raise typer.BadParameter(f"expected NAME=MODEL, got {pair!r}", param_hint="--alias")
        aliases[alias.strip()] = target.strip()
    return aliases


def uvicorn_server(settings: CoordinatorSettings, app: FastAPI) -> uvicorn.Server:
    """The coordinator's server: on SIGTERM it stops accepting, lets requests in flight
    finish (up to `shutdown_grace_s`), then closes."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        ws_max_size=16 * 1024 * 1024,
        # Provider frames are sealed, so compressing them gains nothing; its state would
        # double the memory each connected provider costs.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=5,
    )

    async def drain() -> None:
        services: Services | None = getattr(app.state, "services", None)
        if services is not None:
            await services.dispatcher.drain(settings.shutdown_grace_s)

    return DrainingServer(config, drain)


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the SQLite database lives.")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy async URL, e.g. postgresql+asyncpg://…")
    ] = None,
    alias: Annotated[
        list[str] | None,
        typer.Option(help="Serve MODEL under another public NAME (NAME=MODEL; repeatable)."),
    ] = None,
) -> None:
    """Serve the OpenAI- and Anthropic-compatible API and the provider WebSocket."""
    settings = coordinator_settings(host, port, data_dir, database_url, alias)
    logs.configure(settings.log_level)
    server = uvicorn_server(settings, create_app(settings))
    eventloop.run(server.serve())
