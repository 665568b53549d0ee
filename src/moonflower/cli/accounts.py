"""`moonflower accounts create|list` and `moonflower credit`: accounts and admin deposits,
directly in the coordinator's store.

Owns turning dollars typed by a person into exact micro-USD (never through a float) and back
into text. Account rules and money movements belong to the ledger; nothing here changes a
balance except through `book.deposit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from moonflower.cli.keys import (
    DatabaseUrl,
    DatabaseUrlFile,
    DataDir,
    print_created_key,
    with_database,
)
from moonflower.ledger import accounts, book, keys
from moonflower.ledger.book import format_usd, parse_usd
from moonflower.ledger.database import Database

app = typer.Typer(help="Create and list accounts.", no_args_is_help=True)

MAX_MEMO_LENGTH = 200


@dataclass(frozen=True, slots=True)
class _Created:
    account: accounts.AccountInfo
    token: keys.CreatedKey | None


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The new account's name.")],
    is_provider: Annotated[
        bool,
        typer.Option(
            "--provider",
            help="A provider account, which earns; also issues its first provider token.",
        ),
    ] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Create an empty account. A provider account's token is printed, only this once."""

    async def work(db: Database) -> _Created:
        if not is_provider:
            return _Created(await accounts.create_account(db, name, "consumer"), None)
        account = await accounts.create_account(db, name, "provider")
        token = await keys.create_key(db, account_name=name, purpose="provider")
        return _Created(account, token)

    created = with_database(data_dir, database_url, work, database_url_file=database_url_file)
    account = created.account
    described = f"created {account.kind} account {account.name} ({account.id})"
    if created.token is None:
        typer.echo(described)
    else:  # stdout carries the token alone, so it can be captured
        typer.echo(described, err=True)
        print_created_key(created.token)


@app.command("list")
def list_accounts(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """List every account with its balance, what is held and what is available, in USD."""
    rows = with_database(
        data_dir, database_url, accounts.list_accounts, database_url_file=database_url_file
    )
    table = [("NAME", "ID", "KIND", "BALANCE", "HELD", "AVAILABLE")] + [
        (
            info.name,
            info.id,
            info.kind,
            format_usd(info.balance_micro_usd),
            format_usd(info.held_micro_usd),
            format_usd(info.available_micro_usd),
        )
        for info in rows
    ]
    widths = [max(len(cell) for cell in column) for column in zip(*table, strict=True)]
    for row in table:
        cells = [
            cell.ljust(width) if index < 3 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        typer.echo("  ".join(cells).rstrip())


def credit(
    account: Annotated[str, typer.Argument(help="The account's name or id.")],
    usd: Annotated[str, typer.Argument(help="Dollars to add, like 12.50 (at most 6 decimals).")],
    memo: Annotated[str, typer.Option(help="Why, for the ledger's record.")] = "admin credit",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Deposit money into an account (an admin grant or a payment received elsewhere)."""
    try:
        amount_micro_usd = parse_usd(usd)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="USD") from None
    if not 0 < len(memo) <= MAX_MEMO_LENGTH:
        raise typer.BadParameter(f"1 to {MAX_MEMO_LENGTH} characters", param_hint="--memo")

    async def work(db: Database) -> accounts.AccountInfo | None:
        found = await accounts.find_account(db, account)
        if found is None:
            return None
        await book.deposit(db, found.id, amount_micro_usd, memo=memo)
        return await accounts.get_account(db, found.id)

    credited = with_database(data_dir, database_url, work, database_url_file=database_url_file)
    if credited is None:
        typer.echo(f"no account named or with id {account!r}", err=True)
        raise typer.Exit(1)
    typer.echo(
        f"credited {format_usd(amount_micro_usd)} USD to {credited.name} ({credited.id}); "
        f"balance {format_usd(credited.balance_micro_usd)} USD, "
        f"available {format_usd(credited.available_micro_usd)} USD"
    )
