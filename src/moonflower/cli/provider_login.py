"""`moonflower provider login`: let this machine in through the console, with no token on
any command line (RFC 8628 device login; `provider/device_login.py`).

Prints a short code and where to approve it, waits with a spinner while someone signed in to
the console approves it, then saves the provider token owner-only in the data directory,
where `provider serve` finds it.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from moonflower.provider import device_login
from moonflower.settings import default_data_dir


def login(
    coordinator: Annotated[str, typer.Option(metavar="URL", help="The coordinator's base URL.")],
    data_dir: Annotated[Path | None, typer.Option(help="The provider's data directory.")] = None,
    name: Annotated[
        str | None, typer.Option(help="How the console shows this machine (its hostname).")
    ] = None,
) -> None:
    """Get a provider token by approving this machine in the console."""
    base = coordinator.rstrip("/")
    directory = data_dir or default_data_dir()
    console = Console(stderr=True)
    with httpx.Client(timeout=30) as client:
        try:
            code = device_login.start(client, base, name or socket.gethostname())
            typer.echo(f"To let this machine in, open {code.verification_uri}")
            typer.echo(f"and enter the code {code.user_code}")
            if code.verification_uri_complete:
                typer.echo(f"(or open {code.verification_uri_complete})")
            with console.status("waiting for approval in the console…") as status:

                def show(remaining_s: float) -> None:
                    minutes, seconds = divmod(int(remaining_s), 60)
                    status.update(
                        f"waiting for approval in the console ({minutes}:{seconds:02d} left)"
                    )

                token = device_login.wait_for_token(client, base, code, on_wait=show)
        except device_login.LoginFailed as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    path = device_login.save(directory, token, [base])
    typer.echo(f"approved: the provider token is saved in {path} (readable by you only).")
    typer.echo(
        "Start serving with: moonflower provider serve"
        + (f" --data-dir {directory}" if data_dir else "")
    )
