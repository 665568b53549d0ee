"""`moonflower providers list|clear`, run in-process against a real SQLite store: an operator
sees each identity's standing and lifts exactly the verdicts named."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from typer.testing import CliRunner, Result

from moonflower.cli.main import app
from moonflower.ledger import providers
from moonflower.ledger.accounts import create_account
from moonflower.ledger.database import Database, default_database_url

T = TypeVar("T")

HONEST = hashlib.sha256(b"honest").hexdigest()
CHEAT = hashlib.sha256(b"cheat").hexdigest()
CHEAT_NEW_KEY = hashlib.sha256(b"cheat, new key").hexdigest()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for variable in ("MOONFLOWER_DATABASE_URL", "MOONFLOWER_DATA_DIR"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path / "data"


def run(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])


def in_store(data_dir: Path, work: Callable[[Database], Awaitable[T]]) -> T:
    async def main() -> T:
        async with await Database.open(default_database_url(data_dir)) as db:
            return await work(db)

    return asyncio.run(main())


def one_line(text: str) -> str:
    """Typer draws usage errors in a box, wrapped to the terminal: undo both."""
    return " ".join(text.replace("│", " ").split())


@pytest.fixture
def fleet(data_dir: Path) -> dict[str, str]:
    """Two provider accounts: `honest` with a trusted key; `cheat`, whose key failed a
    receipt check (a verdict against the key and the account), with a second key seen since."""

    async def work(db: Database) -> dict[str, str]:
        honest = await create_account(db, "honest", "provider")
        cheat = await create_account(db, "cheat", "provider")
        await providers.note_seen(db, HONEST, honest.id)
        await providers.add_service(db, HONEST, honest.id, jobs=12, failures=1)
        await providers.note_seen(db, CHEAT_NEW_KEY, cheat.id)
        await providers.untrust(
            db,
            "receipt rejected: bad_signature",
            account_id=cheat.id,
            fingerprint=CHEAT,
            is_account_answerable=True,
        )
        return {"honest": honest.id, "cheat": cheat.id}

    return in_store(data_dir, work)


def standing(data_dir: Path, fingerprint: str, account_id: str) -> providers.Verdict | None:
    return in_store(
        data_dir,
        lambda db: providers.standing(db, fingerprint=fingerprint, account_id=account_id),
    )


def test_list_says_when_there_is_nobody(data_dir: Path) -> None:
    result = run(data_dir, "providers", "list")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "no provider identities yet"


def test_list_shows_each_identity_its_account_record_and_standing(
    data_dir: Path, fleet: dict[str, str]
) -> None:
    result = run(data_dir, "providers", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "  ".join(
        ("FINGERPRINT".ljust(64), "ACCOUNT", "JOBS", "FAILURES", "LAST SEEN".ljust(19), "STANDING")
    )
    rows = {line.split()[0]: line for line in lines[1:4]}
    assert rows[HONEST].split()[1:4] == ["honest", "12", "1"]
    assert rows[HONEST].endswith("trusted")
    assert rows[CHEAT].endswith("untrusted: receipt rejected: bad_signature")
    assert rows[CHEAT_NEW_KEY].endswith("account untrusted: receipt rejected: bad_signature")
    held = lines[lines.index("untrusted accounts:") + 2]
    assert held.split()[0] == "cheat"
    assert CHEAT[:16] in held
    assert held.endswith("receipt rejected: bad_signature")


def test_clearing_a_key_by_a_unique_prefix_restores_it_and_its_account(
    data_dir: Path, fleet: dict[str, str]
) -> None:
    assert standing(data_dir, CHEAT_NEW_KEY, fleet["cheat"]) is not None

    result = run(data_dir, "providers", "clear", CHEAT[:12])
    assert result.exit_code == 0, result.output
    assert f"cleared key {CHEAT} (account cheat)" in result.output
    assert "1 account verdict" in result.output
    assert standing(data_dir, CHEAT, fleet["cheat"]) is None
    assert standing(data_dir, CHEAT_NEW_KEY, fleet["cheat"]) is None
    again = run(data_dir, "providers", "clear", CHEAT)
    assert again.exit_code == 0
    assert "had no verdict to clear" in again.output
    assert "untrusted" not in run(data_dir, "providers", "list").output


def test_clearing_an_account_restores_it_and_touches_no_other(
    data_dir: Path, fleet: dict[str, str]
) -> None:
    async def also_untrust_honest(db: Database) -> None:
        await providers.untrust(
            db,
            "3 challenges failed in a row",
            account_id=fleet["honest"],
            fingerprint=HONEST,
            is_account_answerable=True,
        )

    in_store(data_dir, also_untrust_honest)

    result = run(data_dir, "providers", "clear", "--account", "cheat")
    assert result.exit_code == 0, result.output
    assert "cleared provider account cheat: lifted 1 account verdict(s)" in one_line(result.output)
    assert standing(data_dir, CHEAT, fleet["cheat"]) is None
    assert standing(data_dir, HONEST, fleet["honest"]) is not None
    by_id = run(data_dir, "providers", "clear", "--account", fleet["honest"])
    assert by_id.exit_code == 0, by_id.output
    assert standing(data_dir, HONEST, fleet["honest"]) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("clear",), "name a FINGERPRINT or an --account, not both"),
        (("clear", CHEAT, "--account", "cheat"), "name a FINGERPRINT or an --account, not both"),
    ],
)
def test_clear_needs_exactly_one_thing_to_clear(
    data_dir: Path, fleet: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    result = run(data_dir, "providers", *args)
    assert result.exit_code == 2
    assert message in one_line(result.output)
    assert standing(data_dir, CHEAT, fleet["cheat"]) is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("clear", "ffff"), "no single provider identity matches 'ffff'"),
        (("clear", ""), "no single provider identity matches ''"),
        (("clear", "--account", "nobody"), "no provider account named or with id 'nobody'"),
        (("clear", "--account", "consumer"), "no provider account named or with id 'consumer'"),
    ],
)
def test_clearing_what_does_not_exist_fails_and_changes_nothing(
    data_dir: Path, fleet: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    in_store(data_dir, lambda db: create_account(db, "consumer"))
    result = run(data_dir, "providers", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert standing(data_dir, CHEAT, fleet["cheat"]) is not None
