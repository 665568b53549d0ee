"""Random lives of money: deposits, holds (some unaffordable), settlements at random costs
(some above the hold), cancellations, failures, repeated settlements and coordinator
restarts, checked after every step against the database and against a model kept here."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from moonflower.errors import InsufficientFunds
from moonflower.ledger.accounts import (
    EXTERNAL_ACCOUNT_ID,
    PLATFORM_ACCOUNT_ID,
    create_account,
    list_accounts,
)
from moonflower.ledger.billing import (
    BASIS_POINTS,
    Settlement,
    release,
    release_expired,
    reserve,
    settle,
)
from moonflower.ledger.book import deposit
from moonflower.ledger.database import Database, default_database_url
from moonflower.ledger.keys import create_key
from tests.ledger.test_billing import finished_job
from tests.ledger.test_book import assert_books_balance
from tests.support.postgres import PostgresServer

T = TypeVar("T")
OUTCOMES = ["cancelled", "failed"]


class MoneyMachine(RuleBasedStateMachine):
    """Two consumers and a provider who also spends, paid for the jobs that name it."""

    jobs = Bundle("jobs")
    settled_jobs = Bundle("settled_jobs")

    def __init__(self, database_url: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.url = database_url
        self.db = self.run(Database.open(database_url))
        alice = self.run(create_key(self.db, account_name="alice"))
        bob = self.run(create_key(self.db, account_name="bob"))
        self.provider = self.run(create_account(self.db, "earner", kind="provider")).id
        self.key_id = alice.key_id  # jobs only need some key to point at
        self.people = [alice.account_id, bob.account_id, self.provider]
        self.balances = {a.id: 0 for a in self.run(list_accounts(self.db))}
        self.deposited = 0
        self.owner: dict[str, str] = {}
        self.open_holds: dict[str, tuple[str, int]] = {}
        self.settled: dict[str, Settlement] = {}
        self.job_numbers = itertools.count()

    def run(self, step: Awaitable[T]) -> T:
        return self.loop.run_until_complete(step)

    def teardown(self) -> None:
        self.run(self.db.close())
        self.loop.close()

    def held(self, account_id: str) -> int:
        return sum(amount for owner, amount in self.open_holds.values() if owner == account_id)

    @initialize(opening=st.tuples(*[st.integers(0, 2_000_000)] * 3))
    def open_accounts(self, opening: tuple[int, int, int]) -> None:
        for who, amount in enumerate(opening):
            if amount:
                self.deposit(who, amount)

    @rule(who=st.integers(0, 2), amount=st.integers(1, 2_000_000))
    def deposit(self, who: int, amount: int) -> None:
        self.run(deposit(self.db, self.people[who], amount))
        self.balances[self.people[who]] += amount
        self.balances[EXTERNAL_ACCOUNT_ID] -= amount
        self.deposited += amount

    @rule(target=jobs, who=st.integers(0, 2), amount=st.integers(0, 1_500_000))
    def reserve(self, who: int, amount: int) -> str:
        job_id, account_id = f"job-{next(self.job_numbers)}", self.people[who]
        self.owner[job_id] = account_id
        available = self.balances[account_id] - self.held(account_id)
        if amount > available:
            with pytest.raises(InsufficientFunds) as refused:
                self.run(reserve(self.db, job_id, account_id, amount))
            assert refused.value.needed_micro_usd == amount
            assert refused.value.available_micro_usd == available
        else:
            self.run(reserve(self.db, job_id, account_id, amount))
            self.open_holds[job_id] = (account_id, amount)
        return job_id

    @rule(
        target=settled_jobs,
        job_id=jobs,
        cost=st.integers(0, 2_000_000),
        bps=st.integers(0, BASIS_POINTS),
        pays_provider=st.booleans(),
    )
    def complete(self, job_id: str, cost: int, bps: int, pays_provider: bool) -> str:
        self.settle(job_id, "completed", cost, bps, pays_provider)
        return job_id

    @rule(
        target=settled_jobs,
        job_id=jobs,
        outcome=st.sampled_from(OUTCOMES),
        by_release=st.booleans(),
    )
    def cancel_or_fail(self, job_id: str, outcome: str, by_release: bool) -> MultipleResults[str]:
        if not by_release:
            self.settle(job_id, outcome, 0, 500, pays_provider=True)
            return multiple(job_id)
        was_open = job_id in self.open_holds
        assert self.run(release(self.db, job_id)) is was_open
        self.open_holds.pop(job_id, None)
        return multiple()

    @rule(job_id=settled_jobs, cost=st.integers(0, 2_000_000), pays_provider=st.booleans())
    def settle_again(self, job_id: str, cost: int, pays_provider: bool) -> None:
        """A retried or duplicated settlement: it must change nothing."""
        self.settle(job_id, "completed", cost, BASIS_POINTS // 3, pays_provider)

    @rule()
    def restart(self) -> None:
        """A coordinator stops and starts: every hold still open belonged to a lost job, and
        is released once its lease (unrenewed now) has run out — not before."""
        self.run(self.db.close())
        self.db = self.run(Database.open(self.url))
        now = datetime.now(UTC)
        assert self.run(release_expired(self.db, now=now - timedelta(minutes=1))) == 0
        released = self.run(release_expired(self.db, now=now + timedelta(hours=1)))
        assert released == len(self.open_holds)
        self.open_holds.clear()

    def settle(self, job_id: str, status: str, cost: int, bps: int, pays_provider: bool) -> None:
        job = finished_job(self.owner[job_id], self.key_id, job_id, status)
        payee = self.provider if pays_provider else None
        result = self.run(
            settle(
                self.db, job, cost_micro_usd=cost, platform_fee_bps=bps, provider_account_id=payee
            )
        )
        if job_id not in self.settled:
            self.settled[job_id] = self.expected_settlement(job_id, cost, bps, payee)
        assert result == self.settled[job_id]

    def expected_settlement(
        self, job_id: str, cost: int, bps: int, payee: str | None
    ) -> Settlement:
        if job_id not in self.open_holds:
            return Settlement(job_id, 0, 0, 0, 0)
        account_id, reserved = self.open_holds.pop(job_id)
        charged = min(cost, reserved)
        fee = charged * bps // BASIS_POINTS if payee else charged
        share = charged - fee
        self.balances[account_id] -= charged
        self.balances[self.provider] += share
        self.balances[PLATFORM_ACCOUNT_ID] += fee
        return Settlement(job_id, reserved, charged, share, fee)

    @invariant()
    def books_balance(self) -> None:
        self.run(assert_books_balance(self.db))

    @invariant()
    def accounts_match_the_model(self) -> None:
        accounts = self.run(list_accounts(self.db))
        assert {a.id: a.balance_micro_usd for a in accounts} == self.balances
        assert {a.id: a.held_micro_usd for a in accounts} == {
            a.id: self.held(a.id) for a in accounts
        }
        people = [a for a in accounts if a.kind != "external"]
        assert sum(a.balance_micro_usd for a in people) == self.deposited
        assert all(a.balance_micro_usd >= 0 and a.available_micro_usd >= 0 for a in people)


SQLITE_RUNS = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
POSTGRES_RUNS = settings(SQLITE_RUNS, max_examples=15)
# Passing runs take seconds; a failing one spends minutes shrinking to a short sequence.
SHRINKING_TIMEOUT = pytest.mark.timeout(900)
# run_state_machine_as_test takes any factory of machines; its annotation says a class.


@SHRINKING_TIMEOUT
def test_money_is_conserved_on_sqlite(tmp_path: Path) -> None:
    runs = itertools.count()

    def machine() -> MoneyMachine:
        return MoneyMachine(default_database_url(tmp_path / f"run-{next(runs)}"))

    run_state_machine_as_test(machine, settings=SQLITE_RUNS)  # type: ignore[arg-type]


@pytest.mark.postgres
@SHRINKING_TIMEOUT
def test_money_is_conserved_on_postgres(postgres_server: PostgresServer) -> None:
    def machine() -> MoneyMachine:
        return MoneyMachine(postgres_server.create_database())

    run_state_machine_as_test(machine, settings=POSTGRES_RUNS)  # type: ignore[arg-type]
