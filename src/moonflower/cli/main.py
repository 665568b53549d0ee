"""The `moonflower` entry point: assembles the command groups; each lives in its own module."""

from __future__ import annotations

import typer

from moonflower.cli import (
    accounts,
    chat,
    coordinator,
    keys,
    provider,
    provider_doctor,
    provider_login,
    provider_status,
    providers,
    up,
    users,
    verify,
)

app = typer.Typer(
    name="moonflower",
    help="Moonflower: a private, decentralized LLM inference network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(coordinator.app, name="coordinator")
provider.app.command("login")(provider_login.login)
provider.app.command("status")(provider_status.status)
provider.app.command("earnings")(provider_status.earnings)
provider.app.command("doctor")(provider_doctor.doctor)
app.add_typer(provider.app, name="provider")
app.add_typer(keys.app, name="keys")
app.add_typer(accounts.app, name="accounts")
app.add_typer(providers.app, name="providers")
app.add_typer(users.app, name="users")
# So that `credit alice -5` is refused as a negative amount, not as an unknown option.
app.command("credit", context_settings={"ignore_unknown_options": True})(accounts.credit)
app.command("up")(up.up)
app.command("chat")(chat.chat)
app.command("verify")(verify.verify)


def run() -> None:
    app()
