"""`moonflower keys create|list|revoke`: manage API keys and provider tokens directly in the
coordinator's store. Also home of `with_database`, which the other store commands share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from moonflower.cli.coordinator import (
    DatabaseUrlFileOption,
    DatabaseUrlOption,
    coordinator_settings,
)
from moonflower.errors import InvalidRequest
from moonflower.ledger import keys
from moonflower.ledger.database import Database, default_database_url

app = typer.Typer(
    help="Create, list and revoke API keys and provider tokens.", no_args_is_help=True
)

T = TypeVar("T")

DataDir = Annotated[Path | None, typer.Option(help="The coordinator's data directory.")]
DatabaseUrl = DatabaseUrlOption
DatabaseUrlFile = DatabaseUrlFileOption


def with_database(
    data_dir: Path | None,
    database_url: str | None,
    work: Callable[[Database], Awaitable[T]],
    *,
    database_url_file: Path | None = None,
) -> T:
    """Run `work` against the coordinator's (migrated) database. A request the ledger refuses
    is the user's mistake, not a crash: its message goes to stderr and the exit code is 1."""
    settings = coordinator_settings(
        None, None, data_dir, database_url, database_url_file=database_url_file
    )
    url = settings.database_url or default_database_url(settings.data_dir)

    async def main() -> T:
        db = await Database.open(url)
        try:
            return await work(db)
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except InvalidRequest as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None


@app.command("create")
def create(
    account: Annotated[str, typer.Option(help="Account the key belongs to.")] = "default",
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    is_provider: Annotated[
        bool,
        typer.Option(
            "--provider",
            help="Issue a provider token (for provider machines earning for a provider "
            "account) instead of an API key.",
        ),
    ] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Create a key and print it. It is shown only this once."""
    purpose: keys.KeyPurpose = "provider" if is_provider else "api"
    created = with_database(
        data_dir,
        database_url,
        lambda db: keys.create_key(db, account_name=account, name=name, purpose=purpose),
        database_url_file=database_url_file,
    )
    print_created_key(created)


def print_created_key(created: keys.CreatedKey) -> None:
    """The raw key on stdout (so it can be piped), how to treat it on stderr."""
    what = "provider token" if created.purpose == "provider" else "key"
    typer.echo(created.key)
    typer.echo(
        f"{what} id {created.key_id} ({created.display_prefix}); store it now, it is not shown "
        "again",
        err=True,
    )


@app.command("list")
def list_keys(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """List keys and provider tokens (prefixes only)."""
    rows = with_database(
        data_dir, database_url, keys.list_keys, database_url_file=database_url_file
    )
    for info in rows:
        state = "revoked" if info.revoked_at else "active"
        typer.echo(
            f"{info.key_id}  {info.display_prefix}  {info.purpose}  {info.account_name}  {state}  "
            f"{info.name or ''}  created {info.created_at:%Y-%m-%d %H:%M}"
        )


@app.command("revoke")
def revoke(
    key: Annotated[str, typer.Argument(help="Key id or display prefix.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Revoke a key or provider token so it can no longer be used."""
    is_revoked = with_database(
        data_dir,
        database_url,
        lambda db: keys.revoke_key(db, key),
        database_url_file=database_url_file,
    )
    if not is_revoked:
        typer.echo(f"no single key matches {key!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key}")
