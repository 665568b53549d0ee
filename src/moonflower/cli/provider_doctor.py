"""`moonflower provider doctor`: check everything a provider needs, and say how to fix
what is wrong.

Prints one line per check (✓, ✗ with its fix, or a dash when it could not run), with a progress
bar while the weights are hashed and the engine loads; exits 1 if any check failed. The
settings are found as `provider serve` finds them (flags, environment, what `provider
login` saved), except that a token file others can read is reported rather than refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from moonflower.cli.provider import saved_login_overrides
from moonflower.cli.secret_flags import build_settings, secret_overrides
from moonflower.provider import doctor as checks
from moonflower.settings import ProviderSettings

MARKS = {"ok": "✓", "failed": "✗", "skipped": "–"}


def doctor(
    coordinator: Annotated[
        list[str] | None, typer.Option(metavar="URL", help="The coordinator to check against.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="'default', or a path to a .gguf.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="The provider's data directory.")] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="A file holding the provider token.", dir_okay=False)
    ] = None,
    slots: Annotated[int | None, typer.Option(min=1, help="Jobs run at once.")] = None,
    context_length: Annotated[int | None, typer.Option(help="Context window to load.")] = None,
) -> None:
    """Check this machine's provider set-up, and say how to fix each problem."""
    overrides: dict[str, Any] = {
        "coordinator": coordinator or None,
        "model": model,
        "data_dir": data_dir,
        "slots": slots,
        "context_length": context_length,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    given.update(secret_overrides("token", None, token_file))
    given.update(saved_login_overrides(given, is_strict=False))
    settings = build_settings(ProviderSettings, given)
    console = Console()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task("checking", total=1.0)

        def progress(what: str, fraction: float) -> None:
            bar.update(task, description=what, completed=fraction)

        found = checks.run_checks(settings, settings.token_file, progress)
    for check in found.checks:
        console.print(
            f"{MARKS[check.outcome]} {check.name}: {check.detail}", highlight=False, soft_wrap=True
        )
        if check.fix:
            console.print(f"    fix: {check.fix}", highlight=False, soft_wrap=True)
    if not found.is_healthy:
        raise typer.Exit(1)
