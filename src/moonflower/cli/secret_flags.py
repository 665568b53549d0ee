"""Settings built from command-line flags, for the commands that take a secret: each secret
comes as a pair of flags, the value itself (`--token`, visible to every local user in the
process list) or a file holding it (`--token-file`), and either flag overrides both
environment variables of the pair. A setting that does not validate ends the command with
its error on stderr and exit code 2, never a traceback, and never the value.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import ValidationError

Settings = TypeVar("Settings")


def secret_overrides(field: str, value: object | None, file: Path | None) -> dict[str, Any]:
    """Overrides for the secret `field` given on the command line as a value or as a file
    (field `<field>_file`, flags `--<field>` and `--<field>-file`); the other one of the
    pair is cleared so an environment variable cannot contradict the flag."""
    flag = "--" + field.replace("_", "-")
    if value is not None and file is not None:
        raise typer.BadParameter(f"give {flag} or {flag}-file, not both", param_hint=flag)
    if value is not None:
        return {field: value, f"{field}_file": None}
    if file is not None:
        return {f"{field}_file": file, field: None}
    return {}


def build_settings(make: Callable[..., Settings], overrides: dict[str, Any]) -> Settings:
    """`make(**overrides)`, or exit 2 with each problem on stderr (its field and message;
    input values are never shown, as the settings may hold secrets)."""
    try:
        return make(**overrides)
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False, include_context=False):
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            typer.echo(f"error: {where + ': ' if where else ''}{message}", err=True)
        raise typer.Exit(2) from None
