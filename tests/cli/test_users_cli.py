"""`moonflower users create|admin|invite`, run in-process against a real SQLite store; the
password comes from standard input, never from an argument."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from moonflower.cli.main import app
from moonflower.ledger import users
from moonflower.ledger.database import Database, default_database_url

PASSWORD = "correct horse battery staple"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for variable in ("MOONFLOWER_DATABASE_URL", "MOONFLOWER_DATA_DIR"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path / "data"


def run(data_dir: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)], input=stdin)


def check(data_dir: Path, email: str, password: str) -> users.User | None:
    async def main() -> users.User | None:
        async with await Database.open(default_database_url(data_dir)) as db:
            return await users.verify_password(db, email, password)

    return asyncio.run(main())


def test_create_takes_the_password_from_stdin(data_dir: Path) -> None:
    made = run(data_dir, "users", "create", "Ada@Example.org", "--admin", stdin=PASSWORD + "\n")
    assert made.exit_code == 0, made.output
    assert "created admin ada@example.org" in made.output
    assert PASSWORD not in made.output
    user = check(data_dir, "ada@example.org", PASSWORD)
    assert user is not None
    assert user.is_admin


def test_a_short_password_is_refused_without_a_traceback(data_dir: Path) -> None:
    refused = run(data_dir, "users", "create", "ada@example.org", stdin="short\n")
    assert refused.exit_code == 1
    assert "10 to 1024 characters" in refused.output


def test_admin_grants_and_revokes(data_dir: Path) -> None:
    assert run(data_dir, "users", "create", "ada@example.org", stdin=PASSWORD).exit_code == 0
    granted = run(data_dir, "users", "admin", "ada@example.org")
    assert "is now an admin" in granted.output
    revoked = run(data_dir, "users", "admin", "ada@example.org", "--revoke")
    assert "is no longer an admin" in revoked.output
    user = check(data_dir, "ada@example.org", PASSWORD)
    assert user is not None
    assert not user.is_admin
    unknown = run(data_dir, "users", "admin", "nobody@example.org")
    assert unknown.exit_code == 1


def test_invite_prints_a_fresh_code_each_time(data_dir: Path) -> None:
    first = run(data_dir, "users", "invite").output.strip()
    second = run(data_dir, "users", "invite").output.strip()
    assert first.startswith("mfi-")
    assert first != second
