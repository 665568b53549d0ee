"""Secrets never need the command line: the provider token and the database URL come from
the environment (`MOONFLOWER_PROVIDER_TOKEN`, `MOONFLOWER_DATABASE_URL`) or from a file
(`--token-file`, `--database-url-file`, `MOONFLOWER_*_FILE`); the old flags still work; a
flag beats the environment; a bad file is a clean error that never shows a secret. The
store commands run in-process against a real SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner, Result

from moonflower.cli import provider as provider_cli
from moonflower.cli.main import app
from moonflower.ledger.database import Database, default_database_url
from moonflower.ledger.keys import list_keys
from moonflower.settings import CoordinatorSettings, ProviderSettings

SECRET_VARIABLES = (
    "MOONFLOWER_DATABASE_URL",
    "MOONFLOWER_DATABASE_URL_FILE",
    "MOONFLOWER_DATA_DIR",
    "MOONFLOWER_PROVIDER_TOKEN",
    "MOONFLOWER_PROVIDER_TOKEN_FILE",
)
TOKEN = "mfp-secret-token-0123456789"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in SECRET_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def secret_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def one_line(text: str) -> str:
    """Typer draws help and errors in boxes, wrapped to the terminal: undo both."""
    return " ".join(text.replace("│", " ").split())


def key_count(url: str) -> int:
    async def count() -> int:
        async with await Database.open(url) as db:
            return len(await list_keys(db))

    return asyncio.run(count())


# --- settings ------------------------------------------------------------------------------


def test_the_provider_token_comes_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOONFLOWER_PROVIDER_TOKEN", TOKEN)
    from_variable = ProviderSettings().token
    assert from_variable is not None and from_variable.get_secret_value() == TOKEN
    monkeypatch.delenv("MOONFLOWER_PROVIDER_TOKEN")
    path = secret_file(tmp_path, "token", f"  {TOKEN}\n")
    monkeypatch.setenv("MOONFLOWER_PROVIDER_TOKEN_FILE", str(path))
    from_file = ProviderSettings().token
    assert from_file is not None and from_file.get_secret_value() == TOKEN


def test_the_database_url_comes_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql+asyncpg://moon:pass-word@db.example/ledger"
    monkeypatch.setenv("MOONFLOWER_DATABASE_URL", url)
    assert CoordinatorSettings().database_url == url
    monkeypatch.delenv("MOONFLOWER_DATABASE_URL")
    monkeypatch.setenv("MOONFLOWER_DATABASE_URL_FILE", str(secret_file(tmp_path, "url", url)))
    assert CoordinatorSettings().database_url == url


@pytest.mark.parametrize(
    "content", ["", "\n \n", "line one\nline two\n", "x" * (64 * 1024 + 1)], ids=repr
)
def test_a_secret_file_must_hold_one_line(tmp_path: Path, content: str) -> None:
    path = secret_file(tmp_path, "token", content)
    with pytest.raises(ValidationError) as refused:
        ProviderSettings(token_file=path)
    assert f"the provider token file {path} must hold the provider token alone" in str(
        refused.value
    )


def test_a_value_and_a_file_for_one_secret_are_refused_without_showing_either(
    tmp_path: Path,
) -> None:
    path = secret_file(tmp_path, "url", "sqlite+aiosqlite:///elsewhere.db")
    with pytest.raises(ValidationError) as refused:
        CoordinatorSettings(database_url="sqlite+aiosqlite:///pass-word.db", database_url_file=path)
    text = str(refused.value)
    assert "MOONFLOWER_DATABASE_URL or MOONFLOWER_DATABASE_URL_FILE, not both" in text
    assert "pass-word" not in text and "elsewhere" not in text


# --- store commands ------------------------------------------------------------------------


def test_store_commands_take_the_database_url_from_a_file(tmp_path: Path) -> None:
    url = default_database_url(tmp_path / "ledger")
    path = secret_file(tmp_path, "url", url + "\n")
    created = run("keys", "create", "--database-url-file", str(path))
    assert created.exit_code == 0, created.output
    listed = run("accounts", "list", "--database-url-file", str(path))
    assert listed.exit_code == 0, listed.output
    assert "default" in listed.output
    assert key_count(url) == 1


def test_store_commands_take_the_database_url_file_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = default_database_url(tmp_path / "ledger")
    monkeypatch.setenv("MOONFLOWER_DATABASE_URL_FILE", str(secret_file(tmp_path, "url", url)))
    assert run("keys", "create").exit_code == 0
    assert key_count(url) == 1


def test_the_old_database_url_flag_still_works_and_beats_the_environment_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ignored = default_database_url(tmp_path / "ignored")
    monkeypatch.setenv("MOONFLOWER_DATABASE_URL_FILE", str(secret_file(tmp_path, "u", ignored)))
    url = default_database_url(tmp_path / "ledger")
    assert run("keys", "create", "--database-url", url).exit_code == 0
    assert key_count(url) == 1
    assert not (tmp_path / "ignored").exists()


def test_a_database_url_flag_and_file_together_are_a_usage_error(tmp_path: Path) -> None:
    url = default_database_url(tmp_path / "ledger")
    path = secret_file(tmp_path, "url", url)
    result = run("keys", "list", "--database-url", url, "--database-url-file", str(path))
    assert result.exit_code == 2
    assert "give --database-url or --database-url-file, not both" in one_line(result.output)


def test_an_unreadable_database_url_file_is_a_clean_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file"
    result = run("accounts", "list", "--database-url-file", str(missing))
    assert result.exit_code == 2
    assert f"cannot read the database URL file {missing}" in result.output
    assert "Traceback" not in result.output


# --- the provider --------------------------------------------------------------------------


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[ProviderSettings]:
    """The settings `provider serve` would load its model with (it stops right there)."""
    seen: list[ProviderSettings] = []

    def load(settings: ProviderSettings) -> Any:
        seen.append(settings)
        raise SystemExit(0)

    monkeypatch.setattr(provider_cli, "load", load)
    return seen


def test_provider_serve_reads_its_token_from_a_file(
    tmp_path: Path, loaded: list[ProviderSettings]
) -> None:
    path = secret_file(tmp_path, "token", TOKEN + "\n")
    result = run("provider", "serve", "--token-file", str(path))
    assert result.exit_code == 0, result.output
    [settings] = loaded
    assert settings.token is not None and settings.token.get_secret_value() == TOKEN


def test_provider_serve_still_takes_the_token_flag_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loaded: list[ProviderSettings]
) -> None:
    monkeypatch.setenv("MOONFLOWER_PROVIDER_TOKEN_FILE", str(secret_file(tmp_path, "t", "other")))
    assert run("provider", "serve", "--token", TOKEN).exit_code == 0
    [settings] = loaded
    assert settings.token is not None and settings.token.get_secret_value() == TOKEN


def test_provider_serve_refuses_a_bad_token_file_before_loading_a_model(
    tmp_path: Path, loaded: list[ProviderSettings]
) -> None:
    empty = secret_file(tmp_path, "token", "\n")
    result = run("provider", "serve", "--token-file", str(empty))
    assert result.exit_code == 2
    assert "must hold the provider token alone, on one line" in result.output
    both = run("provider", "serve", "--token", TOKEN, "--token-file", str(empty))
    assert both.exit_code == 2
    assert "give --token or --token-file, not both" in one_line(both.output)
    assert TOKEN not in both.output
    assert loaded == []


def test_the_help_points_to_the_safer_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    provider_help = one_line(run("provider", "serve", "--help").output)
    assert "prefer MOONFLOWER_PROVIDER_TOKEN or --token-file" in provider_help
    assert "MOONFLOWER_PROVIDER_TOKEN_FILE" in provider_help
    coordinator_help = one_line(run("coordinator", "serve", "--help").output)
    assert "prefer MOONFLOWER_DATABASE_URL or --database-url-file" in coordinator_help
    assert "MOONFLOWER_DATABASE_URL_FILE" in coordinator_help
