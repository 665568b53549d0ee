"""`moonflower up`: a whole local network in one process — coordinator, one provider with the
default model, and a fresh API key — printed as lines to paste into a shell.

The local provider is enrolled like any other: `up` issues it a provider token of the
`local-provider` account (handed over in memory, never on a command line) and revokes that
token when it stops."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr

from moonflower import errors, eventloop
from moonflower.cli import logs
from moonflower.cli.coordinator import (
    coordinator_settings,
    serving_transport_keys,
    uvicorn_server,
)
from moonflower.cli.provider import load
from moonflower.coordinator.app import create_app
from moonflower.coordinator.assembly import build_services
from moonflower.crypto.envelope import EncryptionKeyPair
from moonflower.crypto.signing import load_signer
from moonflower.ledger import keys
from moonflower.ledger.accounts import get_account
from moonflower.ledger.book import deposit
from moonflower.ledger.database import Database
from moonflower.provider.agent import ProviderAgent
from moonflower.provider.engines.base import Engine
from moonflower.provider.hardware import detect_hardware
from moonflower.settings import CoordinatorSettings, ProviderSettings

READY_TIMEOUT_S = 60.0
DEMO_ACCOUNT = "demo"
PROVIDER_ACCOUNT = "local-provider"
DEMO_CREDIT_MICRO_USD = 10_000_000
"""$10: thousands of requests to the default model at the default prices."""


async def top_up(db: Database, account_id: str) -> None:
    """Bring the demo account back up to its starting credit."""
    account = await get_account(db, account_id)
    if account.available_micro_usd < DEMO_CREDIT_MICRO_USD:
        await deposit(
            db,
            account_id,
            DEMO_CREDIT_MICRO_USD - account.available_micro_usd,
            memo="moonflower up demo credit",
        )


def up(
    port: Annotated[int, typer.Option(help="Port for the coordinator.")] = 8000,
    data_dir: Annotated[Path | None, typer.Option(help="Where state is kept.")] = None,
    model: Annotated[str, typer.Option(help="Model for the local provider.")] = "default",
) -> None:
    """Run coordinator + provider + default model, and print a ready API key."""
    settings = coordinator_settings("127.0.0.1", port, data_dir, None)
    logs.configure("warning")
    transport_keys = serving_transport_keys(settings)
    base = f"http://127.0.0.1:{settings.port}"
    provider_settings = ProviderSettings(coordinator=base, model=model, data_dir=settings.data_dir)
    engine = load(provider_settings)
    try:
        eventloop.run(run_network(settings, provider_settings, engine, transport_keys))
    except KeyboardInterrupt:
        pass
    finally:
        engine.close()
    logs.progress("stopped")


async def run_network(
    settings: CoordinatorSettings,
    provider_settings: ProviderSettings,
    engine: Engine,
    transport_keys: EncryptionKeyPair | None = None,
) -> None:
    services = await build_services(settings)
    app = create_app(settings, services, transport_keys=transport_keys)
    server = uvicorn_server(settings, app)
    signer = load_signer(provider_settings.data_dir / "provider")
    earning = await keys.create_key(
        services.db, account_name=PROVIDER_ACCOUNT, name="moonflower up", purpose="provider"
    )
    provider_settings = provider_settings.model_copy(update={"token": SecretStr(earning.key)})
    hardware = detect_hardware(signing_key=signer.public_key())
    agent = ProviderAgent(provider_settings, engine, hardware, signer)
    serving = asyncio.create_task(server.serve())
    providing: asyncio.Task[None] | None = None
    try:
        while not server.started:
            if serving.done():
                return  # uvicorn could not bind; it already said why
            await asyncio.sleep(0.05)
        providing = asyncio.create_task(agent.run())
        await wait_connected(agent, providing)
        for _ in range(int(READY_TIMEOUT_S / 0.05)):  # until it passes its first challenge
            if services.registry.routable_count():
                break
            await asyncio.sleep(0.05)
        created = await keys.create_key(
            services.db, account_name=DEMO_ACCOUNT, name="moonflower up"
        )
        await top_up(services.db, created.account_id)
        print_ready(settings.port, created.key, engine.card.id)
        await serving
    finally:
        if providing is not None:
            providing.cancel()
            await asyncio.gather(providing, return_exceptions=True)
        server.should_exit = True
        await asyncio.gather(serving, return_exceptions=True)
        await keys.revoke_key(services.db, earning.key_id)
        await services.db.close()


async def wait_connected(agent: ProviderAgent, providing: asyncio.Task[None]) -> None:
    """Until the local provider is registered; if the coordinator refused it (its account
    holds a verdict from an earlier run, say), say why and how to restore it."""
    connected = asyncio.create_task(agent.is_connected.wait())
    try:
        await asyncio.wait(
            {connected, providing}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        connected.cancel()
    if providing.done():
        try:
            providing.result()
        except errors.RegistrationRejected as exc:
            logs.progress(f"{exc}")
            logs.progress(f"to restore it: moonflower providers clear --account {PROVIDER_ACCOUNT}")
            raise typer.Exit(1) from None
    if not agent.is_connected.is_set():
        raise TimeoutError(f"the local provider did not connect within {READY_TIMEOUT_S:.0f}s")


def print_ready(port: int, key: str, model: str) -> None:
    base = f"http://127.0.0.1:{port}"
    lines = [
        "",
        "Moonflower is up. Paste these into a shell:",
        "",
        f"export OPENAI_BASE_URL={base}/v1",
        f"export OPENAI_API_KEY={key}",
        f"export ANTHROPIC_BASE_URL={base}",
        f"export ANTHROPIC_API_KEY={key}",
        "",
        "Then try:",
        "",
        f'curl {base}/v1/chat/completions -H "Authorization: Bearer $OPENAI_API_KEY" '
        "-H 'Content-Type: application/json' "
        f"""-d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'""",
        "",
        f"The key's account '{DEMO_ACCOUNT}' has ${DEMO_CREDIT_MICRO_USD / 1e6:.2f} of credit;"
        f" the local provider earns for '{PROVIDER_ACCOUNT}'.",
        "",
        f"The console is at {base}/console/: sign up there, and make yourself its operator",
        "with `moonflower users admin YOUR-EMAIL`.",
        "",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)
    sys.stdout.flush()
