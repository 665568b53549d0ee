"""`moonflower coordinator serve`: run the coordinator's HTTP and WebSocket server.

Also home of `coordinator_settings`, which every command that opens the coordinator's
store shares: the database URL may carry a password, so besides `--database-url` it comes
from `MOONFLOWER_DATABASE_URL`, or from a file (`--database-url-file`,
`MOONFLOWER_DATABASE_URL_FILE`) that no other local user can read. The sealed-transport key
file defaults to `<data_dir>/transport-key`, so coordinators sharing a data directory
publish one key.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from fastapi import FastAPI

from moonflower import eventloop, wire
from moonflower.cli import logs
from moonflower.cli.secret_flags import build_settings, secret_overrides
from moonflower.cli.workers import run_workers, worker_sockets
from moonflower.coordinator.app import create_app
from moonflower.coordinator.services import Services
from moonflower.coordinator.shutdown import DrainingServer
from moonflower.coordinator.transport_key import (
    TransportKeyError,
    default_key_file,
    transport_keys,
)
from moonflower.crypto.envelope import EncryptionKeyPair
from moonflower.ledger.database import Database, default_database_url
from moonflower.settings import CoordinatorSettings

log = logging.getLogger(__name__)

app = typer.Typer(help="Run the coordinator.", no_args_is_help=True)


DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        help="SQLAlchemy async URL, e.g. postgresql+asyncpg://… Other local users can read "
        "a command line: prefer MOONFLOWER_DATABASE_URL or --database-url-file.",
    ),
]
DatabaseUrlFileOption = Annotated[
    Path | None,
    typer.Option(
        help="A file holding the database URL on one line (or MOONFLOWER_DATABASE_URL_FILE).",
        dir_okay=False,
    ),
]
RedisUrlOption = Annotated[
    str | None,
    typer.Option(
        help="Redis URL (redis://host:port/db) that replicas share rate limits and news of "
        "revoked keys and changed prices through; without it they stay in memory. Other "
        "local users can read a command line: prefer MOONFLOWER_REDIS_URL when it carries a "
        "password.",
    ),
]


def coordinator_settings(
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    database_url: str | None,
    aliases: list[str] | None = None,
    *,
    database_url_file: Path | None = None,
    cors_allowed_origins: list[str] | None = None,
    redis_url: str | None = None,
) -> CoordinatorSettings:
    """Settings from the environment, with the flags given (not None) overriding them; a
    setting that does not validate ends the command (exit code 2)."""
    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "data_dir": data_dir,
        "model_aliases": parse_aliases(aliases) if aliases else None,
        "cors_allowed_origins": cors_allowed_origins or None,
        "redis_url": redis_url,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    given.update(secret_overrides("database_url", database_url, database_url_file))
    settings = build_settings(CoordinatorSettings, given)
    if settings.transport_key_file is None:  # so replicas sharing a data dir share the key
        key_file = default_key_file(settings.data_dir)
        settings = settings.model_copy(update={"transport_key_file": key_file})
    return settings


def serving_transport_keys(settings: CoordinatorSettings) -> EncryptionKeyPair:
    """The sealed-transport key in `settings.transport_key_file` (created when missing); a
    file that cannot be used ends the command (exit code 2) saying why."""
    try:
        return transport_keys(settings.transport_key_file)
    except TransportKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


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
        ws_max_size=wire.MAX_FRAME_BYTES,  # larger provider frames are refused unbuffered
        # Provider frames are sealed, so compressing them gains nothing; its state would
        # double the memory each connected provider costs.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=5,
    )

    async def drain() -> None:
        services: Services | None = getattr(app.state, "services", None)
        if services is not None:
            await services.presence.withdraw()  # no replica sends it more requests
            await services.dispatcher.drain(settings.shutdown_grace_s)

    return DrainingServer(config, drain)


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the SQLite database lives.")] = None,
    database_url: DatabaseUrlOption = None,
    database_url_file: DatabaseUrlFileOption = None,
    redis_url: RedisUrlOption = None,
    alias: Annotated[
        list[str] | None,
        typer.Option(help="Serve MODEL under another public NAME (NAME=MODEL; repeatable)."),
    ] = None,
    cors_allowed_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="A web origin (https://app.example) whose pages may call the private routes "
            "from a browser (repeatable; or MOONFLOWER_CORS_ALLOWED_ORIGINS, comma-separated). "
            "Public read-only routes answer every origin.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Run this many replicas on this machine behind the one port, each a process "
            "with its own event loop; needs --redis-url, which they share live state through.",
        ),
    ] = 1,
    listen_fd: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Serve the OpenAI- and Anthropic-compatible API and the provider WebSocket."""
    settings = coordinator_settings(
        host,
        port,
        data_dir,
        database_url,
        alias,
        database_url_file=database_url_file,
        cors_allowed_origins=cors_allowed_origin,
        redis_url=redis_url,
    )
    logs.configure(settings.log_level, access_log=settings.access_log)
    keys = serving_transport_keys(settings)  # made here, before any worker may race for it
    if workers > 1:
        if not settings.redis_url:
            typer.echo("error: --workers needs --redis-url (or MOONFLOWER_REDIS_URL)", err=True)
            raise typer.Exit(2)
        eventloop.run(migrate(settings))  # once, before the workers open the ledger
        raise typer.Exit(run_workers(workers, settings))
    sockets = None
    if listen_fd is not None:
        sockets, settings = worker_sockets(settings, listen_fd)
        log.info("serving as replica %s (pid %d)", settings.reachable_url, os.getpid())
    app = create_app(settings, transport_keys=keys)
    server = uvicorn_server(settings, app)
    eventloop.run(server.serve(sockets))


async def migrate(settings: CoordinatorSettings) -> None:
    """Bring the ledger to the newest revision."""
    url = settings.database_url or default_database_url(settings.data_dir)
    db = await Database.open(url, timeout_s=settings.database_timeout_s)
    await db.close()
