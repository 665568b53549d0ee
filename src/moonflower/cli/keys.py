"""`moonflower keys create|list|revoke`: manage API keys directly in the coordinator's store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from moonflower.cli.coordinator import coordinator_settings
from moonflower.ledger import keys
from moonflower.ledger.database import Database, default_database_url

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)

T = TypeVar("T")

DataDir = Annotated[Path | None, typer.Option(help="The coordinator's data directory.")]
DatabaseUrl = Annotated[str | None, typer.Option(help="The coordinator's database URL.")]


def with_database(
    data_dir: Path | None, database_url: str | None, work: Callable[[Database], Awaitable[T]]
) -> T:
    settings = coordinator_settings(None, None, data_dir, database_url)
    url = settings.database_url or default_database_url(settings.data_dir)

    async def main() -> T:
        db = await Database.open(url)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(main())


@app.command("create")
def create(
    account: Annotated[str, typer.Option(help="Account the key belongs to.")] = "default",
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a key and print it. It is shown only this once."""
    created = with_database(
        data_dir, database_url, lambda db: keys.create_key(db, account_name=account, name=name)
    )
    typer.echo(created.key)
    typer.echo(
        f"key id {created.key_id} ({created.display_prefix}); store it now, it is not shown again",
        err=True,
    )


@app.command("list")
def list_keys(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List keys (prefixes only)."""
    rows = with_database(data_dir, database_url, keys.list_keys)
    for info in rows:
        state = "revoked" if info.revoked_at else "active"
        typer.echo(
            f"{info.key_id}  {info.display_prefix}  {info.account_name}  {state}  "
            f"{info.name or ''}  created {info.created_at:%Y-%m-%d %H:%M}"
        )


@app.command("revoke")
def revoke(
    key: Annotated[str, typer.Argument(help="Key id or display prefix.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a key so it can no longer be used."""
    is_revoked = with_database(data_dir, database_url, lambda db: keys.revoke_key(db, key))
    if not is_revoked:
        typer.echo(f"no single key matches {key!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key}")
