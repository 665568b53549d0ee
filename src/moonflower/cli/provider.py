"""`moonflower provider serve`: load a model and serve it to a coordinator.

The provider token is a secret: besides `--token` it comes from `MOONFLOWER_PROVIDER_TOKEN`
or from a file (`--token-file`, `MOONFLOWER_PROVIDER_TOKEN_FILE`), so it need never be on a
command line, where every local user can read it. Given none of these, `serve` uses the
token (and the coordinator) that `moonflower provider login` saved in the data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from moonflower import eventloop
from moonflower.cli import logs
from moonflower.cli.secret_flags import build_settings, secret_overrides
from moonflower.crypto.signing import load_signer
from moonflower.model_files import resolve_model, with_weight_hash
from moonflower.provider import device_login, status_file
from moonflower.provider.agent import ProviderAgent
from moonflower.provider.engines import load_engine
from moonflower.provider.engines.base import Engine
from moonflower.provider.hardware import detect_hardware
from moonflower.settings import ProviderSettings

app = typer.Typer(help="Run a provider.", no_args_is_help=True)


def load(settings: ProviderSettings) -> Engine:
    """Resolve and load the model, telling the person at the terminal what is happening."""
    t0 = time.monotonic()
    source = resolve_model(settings.model)
    logs.progress(f"model {source.id} at {source.path}")
    source = with_weight_hash(source, settings.data_dir, logs.progress)
    engine = load_engine(
        settings.engine,
        source,
        context_length=settings.context_length,
        slots=settings.slots,
        progress=logs.progress,
    )
    card = engine.card
    logs.progress(
        f"{card.id} ready ({card.engine}, context {card.context_length}, "
        f"sha256 {card.sha256[:12]}…) in {time.monotonic() - t0:.1f}s"
    )
    return engine


@app.command("serve")
def serve(
    coordinator: Annotated[
        list[str] | None,
        typer.Option(
            metavar="URL",
            help="The coordinator's base URL, e.g. http://127.0.0.1:8000. Repeat it (or give "
            "MOONFLOWER_PROVIDER_COORDINATOR comma-separated) for replicas of one network: "
            "the provider serves through one and moves on to the next when it is lost.",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="'default', 'gemma3-270m' or a path to a .gguf file.")
    ] = None,
    engine: Annotated[str | None, typer.Option(help="Inference engine.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="The provider's data directory.")] = None,
    context_length: Annotated[int | None, typer.Option(help="Context window to load.")] = None,
    slots: Annotated[
        int | None,
        typer.Option(
            min=1, help="Jobs run at once, each on its own context (memory: a KV cache each)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Provider token (mfp-…) of the account that earns for this provider's work. "
            "Other local users can read a command line: prefer MOONFLOWER_PROVIDER_TOKEN or "
            "--token-file.",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="A file holding the provider token on one line "
            "(or MOONFLOWER_PROVIDER_TOKEN_FILE).",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Connect out to a coordinator and run the jobs it sends."""
    overrides: dict[str, Any] = {
        "coordinator": coordinator or None,
        "model": model,
        "engine": engine,
        "data_dir": data_dir,
        "context_length": context_length,
        "slots": slots,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    given.update(secret_overrides("token", token, token_file))
    given.update(saved_login_overrides(given))
    settings = build_settings(ProviderSettings, given)
    logs.configure(settings.log_level)
    loaded = load(settings)
    signer = load_signer(settings.data_dir)
    agent = ProviderAgent(
        settings, loaded, detect_hardware(signing_key=signer.public_key()), signer
    )
    try:
        eventloop.run(serve_until_stopped(agent, settings.drain_timeout_s, settings.data_dir))
    except KeyboardInterrupt:
        pass
    finally:
        loaded.close()


def saved_login_overrides(given: dict[str, Any], *, is_strict: bool = True) -> dict[str, Any]:
    """What `provider login` saved, for whatever neither a flag nor the environment gave:
    the token file (refused, exit 2, if others can read it, unless not `is_strict`) and the
    coordinator."""
    data_dir = given.get("data_dir") or build_settings(ProviderSettings, {}).data_dir
    saved = device_login.saved_login(Path(data_dir))
    if saved is None:
        return {}
    overrides: dict[str, Any] = {}
    environment = os.environ
    if not ({"token", "token_file"} & given.keys()) and not (
        {"MOONFLOWER_PROVIDER_TOKEN", "MOONFLOWER_PROVIDER_TOKEN_FILE"} & environment.keys()
    ):
        problem = device_login.loose_permissions(saved.token_file)
        if problem is not None and is_strict:
            typer.echo(f"error: {problem}", err=True)
            raise typer.Exit(2)
        overrides["token_file"] = saved.token_file
    is_coordinator_given = "coordinator" in given or (
        "MOONFLOWER_PROVIDER_COORDINATOR" in environment
    )
    if saved.coordinators and not is_coordinator_given:
        overrides["coordinator"] = saved.coordinators
    return overrides


async def serve_until_stopped(agent: ProviderAgent, drain_timeout_s: float, data_dir: Path) -> None:
    """Run the agent; SIGTERM drains it (its jobs finish, no new ones), a second stops it.
    Meanwhile `provider status` can read what it does in `data_dir`."""
    loop = asyncio.get_running_loop()
    running = asyncio.current_task()
    assert running is not None
    stopping: list[asyncio.Task[None]] = []

    def on_sigterm() -> None:
        if agent.is_draining:
            running.cancel()
        else:
            stopping.append(loop.create_task(agent.stop_gracefully(drain_timeout_s)))

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    reporting = asyncio.create_task(status_file.keep_written(agent, data_dir))
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await agent.run()
    finally:
        reporting.cancel()
        await asyncio.gather(reporting, return_exceptions=True)
