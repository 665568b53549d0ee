"""`moonflower provider status` and `moonflower provider earnings`: what this machine is
doing, and what its account earned, for the person who runs it.

`status` reads the running `provider serve`'s status file in the data directory (no
network needed to know whether it runs), then asks the coordinator for today's earnings with
the machine's provider token. `earnings` pages through `GET /v1/provider/earnings`. The
token comes as for `provider serve` (flag file, environment, or what `provider login`
saved) and is never printed. Money is exact decimal dollars, as the ledger keeps it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from moonflower.cli.provider import saved_login_overrides
from moonflower.cli.secret_flags import build_settings
from moonflower.provider import status_file
from moonflower.settings import ProviderSettings

MAX_PAGES = 20
PAGE = 100

DataDirOption = Annotated[Path | None, typer.Option(help="The provider's data directory.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def account_settings(data_dir: Path | None) -> ProviderSettings:
    """The coordinator and token this machine serves with, as `provider serve` finds them."""
    given: dict[str, Any] = {} if data_dir is None else {"data_dir": data_dir}
    given.update(saved_login_overrides(given))
    settings = build_settings(ProviderSettings, given)
    running = status_file.read(settings.data_dir)
    if running is not None and running.coordinator:  # ask the one it serves through
        settings = settings.model_copy(update={"coordinator": [running.coordinator]})
    return settings


def earning_lines(settings: ProviderSettings, *, since: datetime | None) -> dict[str, Any]:
    """The earnings page body with `data` holding every line since `since` (or the last
    `PAGE`), newest first; `SystemExit` with a message if the coordinator refuses."""
    if settings.token is None:
        typer.echo("error: no provider token: run `moonflower provider login` first", err=True)
        raise typer.Exit(1)
    headers = {"Authorization": f"Bearer {settings.token.get_secret_value()}"}
    url = f"{settings.coordinator[0].rstrip('/')}/v1/provider/earnings"
    lines: list[dict[str, Any]] = []
    body: dict[str, Any] = {}
    after: str | None = None
    with httpx.Client(timeout=15) as client:
        for _ in range(MAX_PAGES):
            params = {"limit": str(PAGE), **({"after": after} if after else {})}
            try:
                response = client.get(url, headers=headers, params=params)
            except httpx.HTTPError as exc:
                typer.echo(f"error: cannot reach {url}: {exc}", err=True)
                raise typer.Exit(1) from None
            if response.status_code != 200:
                message = response.json().get("error", {}).get("message", response.text)
                typer.echo(f"error: the coordinator refused: {message}", err=True)
                raise typer.Exit(1)
            body = response.json()
            page = body["data"]
            lines += page
            older = since is None or (page and page[-1]["created"] < since.timestamp())
            if not body["has_more"] or older:
                break
            after = body["last_id"]
    if since is not None:
        lines = [line for line in lines if line["created"] >= since.timestamp()]
    return {**body, "data": lines}


def _today() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


def _sum_usd(lines: list[dict[str, Any]]) -> Decimal:
    return sum((Decimal(line["earned_usd"]) for line in lines), Decimal(0))


def status(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """Is this machine serving, through which coordinator, at what trust, and what has it
    earned today."""
    settings = account_settings(data_dir)
    running = status_file.read(settings.data_dir)
    today = None
    if settings.token is not None:
        try:
            today = _sum_usd(earning_lines(settings, since=_today())["data"])
        except typer.Exit:
            today = None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "running": running is not None,
                    "provider": None if running is None else asdict(running),
                    "earned_today_usd": None if today is None else str(today),
                },
                indent=2,
            )
        )
        return
    if running is None:
        typer.echo("provider: not running (start it with `moonflower provider serve`)")
    else:
        coordinator = running.coordinator or "not connected (reconnecting)"
        models = ", ".join(f"{m['id']} (context {m['context_length']})" for m in running.models)
        typer.echo(f"provider:     running (pid {running.pid})")
        typer.echo(f"coordinator:  {coordinator}")
        typer.echo(f"provider id:  {running.provider_id or '—'}")
        typer.echo(f"trust level:  {running.trust_level or '—'}")
        typer.echo(f"models:       {models}")
        free = max(0, running.slots - running.active_jobs)
        typer.echo(f"slots:        {free} free of {running.slots}")
        typer.echo(
            f"jobs:         {running.jobs_served} served since it started, "
            f"{running.active_jobs} running"
        )
    typer.echo(f"earned today: {'unknown' if today is None else f'${today}'}")


def earnings(
    days: Annotated[int, typer.Option(min=1, max=366, help="Days of daily totals.")] = 7,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """What this machine's account earned: in all, per day, and its last jobs."""
    settings = account_settings(data_dir)
    first_day = _today().date().toordinal() - days + 1
    since = datetime.fromordinal(first_day).replace(tzinfo=UTC)
    body = earning_lines(settings, since=since)
    per_day: dict[date, Decimal] = {}
    for line in body["data"]:
        day = datetime.fromtimestamp(line["created"], UTC).date()
        per_day[day] = per_day.get(day, Decimal(0)) + Decimal(line["earned_usd"])
    daily = [
        (date.fromordinal(first_day + n), per_day.get(date.fromordinal(first_day + n), Decimal(0)))
        for n in range(days)
    ]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "total_earned_usd": body["total_earned_usd"],
                    "withdrawable_usd": body["balance"]["withdrawable_usd"],
                    "daily": [{"day": d.isoformat(), "earned_usd": str(v)} for d, v in daily],
                    "jobs": body["data"][:20],
                },
                indent=2,
            )
        )
        return
    typer.echo(f"earned in all:  ${body['total_earned_usd']}")
    typer.echo(f"withdrawable:   ${body['balance']['withdrawable_usd']}")
    typer.echo("")
    for day, amount in daily:
        typer.echo(f"{day.isoformat()}  ${amount}")
    if body["data"]:
        typer.echo("")
        typer.echo("last jobs:")
        for line in body["data"][:10]:
            when = datetime.fromtimestamp(line["created"], UTC).strftime("%Y-%m-%d %H:%M")
            typer.echo(
                f"  {when}  {line['model']}  {line['completion_tokens']} tokens  "
                f"${line['earned_usd']}"
            )
