"""`moonflower providers list|clear`: provider identities, their standing, and an operator
lifting a verdict, directly in the coordinator's store.

Owns turning identities and verdicts into lines for people. What a verdict is and what
clearing lifts belong to the ledger (`ledger.providers`); a cleared provider is admitted the
next time it connects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import typer

from moonflower.cli.keys import DatabaseUrl, DataDir, with_database
from moonflower.ledger import accounts, providers
from moonflower.ledger.database import Database

app = typer.Typer(
    help="List provider identities and clear the verdicts that keep them out of routing.",
    no_args_is_help=True,
)


@dataclass(frozen=True, slots=True)
class _Listing:
    identities: list[providers.IdentityInfo]
    verdicts: list[providers.AccountVerdictInfo]


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def _table(rows: Sequence[Sequence[str]], right_aligned: frozenset[int] = frozenset()) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    for row in rows:
        cells = [
            cell.rjust(width) if index in right_aligned else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        typer.echo("  ".join(cells).rstrip())


def _standing(
    identity: providers.IdentityInfo, held: dict[str, providers.AccountVerdictInfo]
) -> str:
    if identity.untrusted_reason is not None:
        return f"untrusted: {identity.untrusted_reason}"
    verdict = held.get(identity.account_id)
    if verdict is not None:
        return f"account untrusted: {verdict.reason}"
    return "trusted"


@app.command("list")
def list_providers(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List every provider identity (signing-key fingerprint) with its account, standing,
    jobs and failures, and when it was last seen (UTC); then the accounts held untrusted."""

    async def work(db: Database) -> _Listing:
        return _Listing(
            await providers.list_identities(db), await providers.list_account_verdicts(db)
        )

    listing = with_database(data_dir, database_url, work)
    held: dict[str, providers.AccountVerdictInfo] = {}
    for verdict in listing.verdicts:
        held.setdefault(verdict.account_id, verdict)
    if not listing.identities:
        typer.echo("no provider identities yet")
    else:
        header = ("FINGERPRINT", "ACCOUNT", "JOBS", "FAILURES", "LAST SEEN", "STANDING")
        rows = [header] + [
            (
                identity.fingerprint,
                identity.account_name,
                str(identity.jobs),
                str(identity.failures),
                _when(identity.last_seen_at),
                _standing(identity, held),
            )
            for identity in listing.identities
        ]
        _table(rows, right_aligned=frozenset({2, 3}))
    if listing.verdicts:
        typer.echo("")
        typer.echo("untrusted accounts:")
        held_rows = [("ACCOUNT", "SINCE", "KEY", "REASON")] + [
            (
                verdict.account_name,
                _when(verdict.untrusted_at),
                verdict.fingerprint[:16] + "…" if verdict.fingerprint else "(no proven key)",
                verdict.reason,
            )
            for verdict in listing.verdicts
        ]
        _table(held_rows)


@app.command("clear")
def clear(
    fingerprint: Annotated[
        str | None,
        typer.Argument(help="The identity's fingerprint, or a start of it that is unique."),
    ] = None,
    account: Annotated[
        str | None,
        typer.Option(help="Clear every verdict of this provider account (name or id) instead."),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Restore trust: lift the verdict against one provider key (and the account verdicts its
    failures caused), or, with --account, every verdict of an account and of its keys. The
    provider is admitted again the next time it connects."""
    if (fingerprint is None) == (account is None):
        raise typer.BadParameter("name a FINGERPRINT or an --account, not both")
    if fingerprint is not None:
        _clear_key(fingerprint, data_dir, database_url)
    else:
        assert account is not None
        _clear_account(account, data_dir, database_url)


def _clear_key(wanted: str, data_dir: DataDir, database_url: DatabaseUrl) -> None:
    async def work(db: Database) -> tuple[providers.IdentityInfo, providers.Cleared] | None:
        identity = await providers.find_identity(db, wanted)
        if identity is None:
            return None
        return identity, await providers.clear_key(db, identity.fingerprint)

    found = with_database(data_dir, database_url, work)
    if found is None:
        typer.echo(f"no single provider identity matches {wanted!r}", err=True)
        raise typer.Exit(1)
    identity, cleared = found
    where = f"key {identity.fingerprint} (account {identity.account_name})"
    if cleared.is_empty:
        typer.echo(f"{where} had no verdict to clear")
        return
    lifted = "its verdict" if cleared.keys else "no key verdict"
    if cleared.account_verdicts:
        lifted += f" and {cleared.account_verdicts} account verdict(s) it caused"
    typer.echo(f"cleared {where}: lifted {lifted}; it is admitted when it next connects")


def _clear_account(wanted: str, data_dir: DataDir, database_url: DatabaseUrl) -> None:
    async def work(db: Database) -> tuple[accounts.AccountInfo, providers.Cleared] | None:
        found = await accounts.find_account(db, wanted)
        if found is None or found.kind != "provider":
            return None
        return found, await providers.clear_account(db, found.id)

    found = with_database(data_dir, database_url, work)
    if found is None:
        typer.echo(f"no provider account named or with id {wanted!r}", err=True)
        raise typer.Exit(1)
    info, cleared = found
    if cleared.is_empty:
        typer.echo(f"provider account {info.name} had no verdict to clear")
        return
    typer.echo(
        f"cleared provider account {info.name}: lifted {cleared.account_verdicts} account "
        f"verdict(s) and the verdicts of {len(cleared.keys)} key(s); its providers are "
        "admitted when they next connect"
    )
