"""`moonflower users create|admin|invite`: the console's people, directly in the
coordinator's store, for its operator.

A password is read from standard input (one line, for scripts) or asked for twice at a
terminal, never taken as an argument, where every local user could read it in the process
list. An invitation code is printed once, alone on stdout, so it can be captured.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from moonflower.cli.keys import DatabaseUrl, DatabaseUrlFile, DataDir, with_database
from moonflower.ledger import users
from moonflower.ledger.database import Database

app = typer.Typer(help="People who sign in to the console.", no_args_is_help=True)


def _password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = typer.prompt("Password", hide_input=True)
    second = typer.prompt("Password again", hide_input=True)
    if first != second:
        raise typer.BadParameter("the two passwords differ")
    return str(first)


@app.command("create")
def create(
    email: Annotated[str, typer.Argument(help="The person's email; how they sign in.")],
    is_admin: Annotated[
        bool, typer.Option("--admin", help="An operator: sees the fleet, grants credit.")
    ] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Make a user with its consumer and provider accounts. The password comes from stdin
    (or is asked for at a terminal)."""
    password = _password()

    async def work(db: Database) -> users.User:
        return await users.create_user(db, email, password, is_admin=is_admin)

    user = with_database(data_dir, database_url, work, database_url_file=database_url_file)
    role = "admin" if user.is_admin else "user"
    typer.echo(f"created {role} {user.email} ({user.id})")


@app.command("admin")
def make_admin(
    email: Annotated[str, typer.Argument(help="The user's email.")],
    revoke: Annotated[bool, typer.Option("--revoke", help="Take admin away instead.")] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Make a user an operator of this coordinator's console (or, with --revoke, not)."""

    async def work(db: Database) -> users.User | None:
        return await users.set_admin(db, email, not revoke)

    user = with_database(data_dir, database_url, work, database_url_file=database_url_file)
    if user is None:
        typer.echo(f"no user has the email {email!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{user.email} is {'now' if user.is_admin else 'no longer'} an admin")


@app.command("invite")
def invite(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Print a single-use invitation code (for `signup` set to `invite`)."""
    code = with_database(
        data_dir, database_url, users.create_invite, database_url_file=database_url_file
    )
    typer.echo(code)
