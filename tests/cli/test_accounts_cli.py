"""`moonflower accounts`, `moonflower credit` and `moonflower keys create --provider`, run
in-process against a real SQLite store in a temporary data directory."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner, Result

from moonflower.cli.accounts import format_usd, parse_usd
from moonflower.cli.main import app
from moonflower.ledger.accounts import AccountInfo, find_account, list_accounts
from moonflower.ledger.database import Database, default_database_url
from moonflower.ledger.keys import Caller, KeyInfo, authenticate, authenticate_provider, list_keys
from moonflower.ledger.tables import LedgerTransaction

T = TypeVar("T")


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


def account(data_dir: Path, name: str) -> AccountInfo:
    found = in_store(data_dir, lambda db: find_account(db, name))
    assert found is not None
    return found


def transaction_count(data_dir: Path) -> int:
    async def count(db: Database) -> int:
        async with db.sessions() as session:
            return (await session.scalar(select(func.count()).select_from(LedgerTransaction))) or 0

    return in_store(data_dir, count)


def one_line(text: str) -> str:
    """Typer draws usage errors in a box, wrapped to the terminal: undo both."""
    return " ".join(text.replace("│", " ").split())


def test_create_makes_an_empty_consumer_account(data_dir: Path) -> None:
    result = run(data_dir, "accounts", "create", "alice")

    assert result.exit_code == 0, result.output
    alice = account(data_dir, "alice")
    assert result.stdout == f"created consumer account alice ({alice.id})\n"
    assert (alice.kind, alice.balance_micro_usd, alice.held_micro_usd) == ("consumer", 0, 0)
    assert in_store(data_dir, list_keys) == []


def test_create_provider_prints_a_provider_token_once(data_dir: Path) -> None:
    result = run(data_dir, "accounts", "create", "rig", "--provider")

    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    assert token.startswith("mfp-")
    assert len(token) == 47
    rig = account(data_dir, "rig")
    assert rig.kind == "provider"
    [info] = in_store(data_dir, list_keys)
    assert (info.account_id, info.purpose, info.display_prefix) == (
        rig.id,
        "provider",
        token[:12] + "…",
    )
    assert "created provider account rig" in result.stderr
    assert "not shown again" in result.stderr
    assert token not in result.stderr
    assert in_store(data_dir, lambda db: authenticate_provider(db, token)) == Caller(
        account_id=rig.id, key_id=info.key_id
    )
    assert in_store(data_dir, lambda db: authenticate(db, token)) is None


def test_create_refuses_a_taken_name_without_a_traceback(data_dir: Path) -> None:
    assert run(data_dir, "accounts", "create", "alice").exit_code == 0

    again = run(data_dir, "accounts", "create", "alice", "--provider")

    assert again.exit_code == 1
    assert again.stderr == "An account named 'alice' already exists.\n"
    assert again.stdout == ""
    assert "Traceback" not in again.output
    assert account(data_dir, "alice").kind == "consumer"
    assert in_store(data_dir, list_keys) == []


def test_credit_adds_exactly_the_amount_to_the_micro_dollar(data_dir: Path) -> None:
    run(data_dir, "accounts", "create", "alice")
    alice = account(data_dir, "alice")

    result = run(data_dir, "credit", "alice", "1.234567")

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"credited 1.234567 USD to alice ({alice.id}); balance 1.234567 USD, "
        "available 1.234567 USD\n"
    )
    assert account(data_dir, "alice").balance_micro_usd == 1_234_567
    assert account(data_dir, "external").balance_micro_usd == -1_234_567

    by_id = run(data_dir, "credit", alice.id, "0.000003")  # a float would make this 2

    assert by_id.exit_code == 0, by_id.output
    assert account(data_dir, "alice").balance_micro_usd == 1_234_570
    assert account(data_dir, "external").balance_micro_usd == -1_234_570
    assert transaction_count(data_dir) == 2


@pytest.mark.parametrize(
    ("usd", "message"),
    [
        ("1.2345678", "'1.2345678' has more than 6 decimals"),
        ("0", "the amount must be more than $0, not '0'"),
        ("0.0000000", "the amount must be more than $0"),
        ("-5", "the amount must be more than $0, not '-5'"),
        ("abc", "'abc' is not an amount of dollars"),
        ("NaN", "'NaN' is not an amount of dollars"),
        ("", "'' is not an amount of dollars"),
        ("1e3", "write the amount as plain dollars like 12.50, not '1e3'"),
        ("1_000", "write the amount as plain dollars like 12.50, not '1_000'"),
    ],
)
def test_credit_refuses_amounts_that_are_not_positive_micro_dollars(
    data_dir: Path, usd: str, message: str
) -> None:
    run(data_dir, "accounts", "create", "alice")

    result = run(data_dir, "credit", "alice", usd)

    assert result.exit_code == 2
    assert message in one_line(result.stderr)
    assert account(data_dir, "alice").balance_micro_usd == 0
    assert transaction_count(data_dir) == 0


def test_credit_refuses_unknown_and_system_accounts_and_absurd_sums(data_dir: Path) -> None:
    unknown = run(data_dir, "credit", "nobody", "5")
    assert unknown.exit_code == 1
    assert unknown.stderr == "no account named or with id 'nobody'\n"

    system = run(data_dir, "credit", "platform", "5")
    assert system.exit_code == 1
    assert system.stderr == "Deposits go to consumer or provider accounts.\n"
    assert "Traceback" not in system.output

    assert run(data_dir, "accounts", "create", "alice").exit_code == 0
    huge = run(data_dir, "credit", "alice", "1000000000.000001")
    assert huge.exit_code == 1
    assert "at most $1,000,000,000" in huge.stderr
    assert transaction_count(data_dir) == 0


def test_list_shows_every_account_in_dollars(data_dir: Path) -> None:
    run(data_dir, "accounts", "create", "alice")
    run(data_dir, "accounts", "create", "rig", "--provider")
    run(data_dir, "credit", "alice", "12.5")
    alice, rig = account(data_dir, "alice"), account(data_dir, "rig")

    result = run(data_dir, "accounts", "list")

    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["NAME", "ID", "KIND", "BALANCE", "HELD", "AVAILABLE"]
    assert sorted(rows[1:]) == sorted(
        [
            ["external", "external", "external", "-12.500000", "0.000000", "-12.500000"],
            ["platform", "platform", "platform", "0.000000", "0.000000", "0.000000"],
            ["alice", alice.id, "consumer", "12.500000", "0.000000", "12.500000"],
            ["rig", rig.id, "provider", "0.000000", "0.000000", "0.000000"],
        ]
    )
    assert len(in_store(data_dir, list_accounts)) == 4


def test_keys_create_provider_issues_a_provider_token(data_dir: Path) -> None:
    result = run(data_dir, "keys", "create", "--provider", "--account", "farm", "--name", "m2")

    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("mfp-")
    farm = account(data_dir, "farm")
    assert farm.kind == "provider"
    caller = in_store(data_dir, lambda db: authenticate_provider(db, token))
    assert caller is not None
    assert caller.account_id == farm.id
    assert in_store(data_dir, lambda db: authenticate(db, token)) is None
    assert "provider token id" in result.stderr

    listed = run(data_dir, "keys", "list")
    assert listed.exit_code == 0
    [row] = listed.stdout.splitlines()
    assert row.split()[1:6] == [token[:12] + "…", "provider", "farm", "active", "m2"]
    assert token not in listed.stdout


def test_keys_create_provider_refuses_a_consumer_account(data_dir: Path) -> None:
    run(data_dir, "accounts", "create", "alice")

    result = run(data_dir, "keys", "create", "--provider", "--account", "alice")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Account 'alice' is a consumer account; provider tokens belong to provider accounts.\n"
    )
    assert in_store(data_dir, list_keys) == []


def test_plain_keys_create_still_issues_an_api_key(data_dir: Path) -> None:
    result = run(data_dir, "keys", "create", "--account", "team")

    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("mf-")
    assert len(key) == 46
    keys: list[KeyInfo] = in_store(data_dir, list_keys)
    assert [(k.purpose, k.account_kind) for k in keys] == [("api", "consumer")]
    assert in_store(data_dir, lambda db: authenticate(db, key)) is not None
    assert in_store(data_dir, lambda db: authenticate_provider(db, key)) is None


@pytest.mark.parametrize(
    ("usd", "micro_usd"),
    [
        ("12.50", 12_500_000),
        ("0.000001", 1),
        ("0.000003", 3),
        ("4.35", 4_350_000),  # int(4.35 * 1e6) == 4349999
        (".5", 500_000),
        ("7.", 7_000_000),
        (" 2 ", 2_000_000),
        ("1.2345670", 1_234_567),
        ("1000000000", 10**15),
    ],
)
def test_parse_usd_is_exact(usd: str, micro_usd: int) -> None:
    assert parse_usd(usd) == micro_usd


def test_format_usd_shows_every_micro_dollar() -> None:
    assert format_usd(0) == "0.000000"
    assert format_usd(5) == "0.000005"
    assert format_usd(12_500_000) == "12.500000"
    assert format_usd(-1_234_567) == "-1.234567"
    assert format_usd(10**15 + 1) == "1000000000.000001"
