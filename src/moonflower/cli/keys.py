"""`moonflower keys create|list|revoke`: manage API keys and provider tokens directly in the
coordinator's store. Also home of `with_database`, which the other store commands share.

A revocation written here is also announced over Redis when one is configured, so running
coordinator replicas forget the key at once rather than when their key cache expires."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from moonflower.cli.coordinator import (
    DatabaseUrlFileOption,
    DatabaseUrlOption,
    RedisUrlOption,
    coordinator_settings,
)
from moonflower.coordinator import broadcast
from moonflower.coordinator.redis_store import RedisStore
from moonflower.errors import InvalidRequest, StoreUnavailable
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
    redis_url: RedisUrlOption = None,
) -> None:
    """Revoke a key or provider token so it can no longer be used; with a Redis URL (or
    MOONFLOWER_REDIS_URL), running coordinators are told at once."""
    announce_to = coordinator_settings(None, None, None, None, redis_url=redis_url).redis_url
    key_hash = with_database(
        data_dir,
        database_url,
        lambda db: keys.revoke_key(db, key),
        database_url_file=database_url_file,
    )
    if key_hash is None:
        typer.echo(f"no single key matches {key!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key}")
    if announce_to is not None and not asyncio.run(announce_revoked(announce_to, key_hash)):
        typer.echo(
            "Redis did not answer: running coordinators stop accepting the key when their "
            "key cache expires",
            err=True,
        )


async def announce_revoked(redis_url: str, key_hash: str) -> bool:
    """Tell the coordinators subscribed through `redis_url`; whether Redis took it."""
    store = RedisStore.connect(redis_url)
    try:
        await broadcast.publish(store, ("key_revoked", key_hash))
    except StoreUnavailable:
        return False
    finally:
        await store.aclose()
    return True
