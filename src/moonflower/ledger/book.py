"""The double-entry book: every movement of money is one transaction whose entries sum to
zero, applied to the accounts' balances in the same database transaction.

Owns posting (`post`, and `post_all` for many transactions at once: used by deposits and
settlements) and deposits themselves. Balances are integer micro-USD. Account rows are
updated in a fixed order (sorted ids) so that two transactions touching the same accounts
cannot deadlock on PostgreSQL.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Literal, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from moonflower.errors import InvalidRequest
from moonflower.ledger.accounts import EXTERNAL_ACCOUNT_ID, SYSTEM_ACCOUNT_IDS
from moonflower.ledger.database import Database
from moonflower.ledger.tables import Account, LedgerEntry, LedgerTransaction

TransactionKind = Literal["deposit", "settlement", "withdrawal"]
EntryKind = Literal[
    "deposit", "funding", "charge", "provider_share", "platform_fee", "withdrawal", "payout"
]
MAX_DEPOSIT_MICRO_USD = 10**15
"""A billion dollars: anything larger is a typo, not a deposit."""

UNTRACKED = {"synchronize_session": False}
"""Execution options of the ledger's UPDATEs: they run in short transactions that load no
ORM objects, so there is nothing in the session for SQLAlchemy to bring up to date."""


# The tables, not the classes, for many rows at once: nobody loads these rows as objects,
# so there is no ORM bookkeeping to do per row.
_ACCOUNTS = cast(Table, Account.__table__)
_TRANSACTIONS = cast(Table, LedgerTransaction.__table__)
_ENTRIES = cast(Table, LedgerEntry.__table__)
_MOVE = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == bindparam("account"))
    .values(
        balance_micro_usd=_ACCOUNTS.c.balance_micro_usd + bindparam("balance"),
        held_micro_usd=_ACCOUNTS.c.held_micro_usd + bindparam("held"),
    )
)
"""One account's move, as a plain table UPDATE: run once per account in one execution."""


@dataclass(frozen=True, slots=True)
class Entry:
    account_id: str
    kind: EntryKind
    amount_micro_usd: int
    """Positive credits the account, negative debits it."""


def format_usd(micro_usd: int) -> str:
    """Micro-USD as dollars with all six decimals, exactly: -1234567 → "-1.234567"."""
    sign = "-" if micro_usd < 0 else ""
    whole, part = divmod(abs(micro_usd), 1_000_000)
    return f"{sign}{whole}.{part:06d}"


MICRO_USD_PER_USD = 1_000_000
_PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")


def parse_usd(text: str) -> int:
    """A positive amount of dollars written like `12.50`, as exact micro-USD (never through
    a float). Raises ValueError saying what is wrong: not a number, not positive, finer than
    a micro-dollar."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"{text!r} is not an amount of dollars (write it like 12.50)") from None
    if not amount.is_finite():
        raise ValueError(f"{text!r} is not an amount of dollars (write it like 12.50)")
    if amount <= 0:
        raise ValueError(f"the amount must be more than $0, not {text!r}")
    # Exponents and digit separators are legal Decimal syntax but easy typos with money.
    if not _PLAIN_DECIMAL.fullmatch(text.strip()):
        raise ValueError(f"write the amount as plain dollars like 12.50, not {text!r}")
    micro_usd = amount * MICRO_USD_PER_USD
    if micro_usd != micro_usd.to_integral_value():
        raise ValueError(f"{text!r} has more than 6 decimals; the smallest amount is $0.000001")
    return int(micro_usd)


class UnbalancedTransaction(ValueError):
    """Entries that do not sum to zero: a bug, never a user error."""


@dataclass(frozen=True, slots=True)
class Posting:
    """One transaction to record: its entries, and what it is for."""

    entries: Sequence[Entry]
    job_id: str | None = None
    memo: str | None = None


async def post(
    session: AsyncSession,
    kind: TransactionKind,
    entries: Sequence[Entry],
    *,
    job_id: str | None = None,
    memo: str | None = None,
    held_changes: Mapping[str, int] | None = None,
) -> str:
    """Record one balanced transaction and apply it (and any change to what accounts hold)
    to the balances, inside the caller's database transaction. Returns its id."""
    [transaction_id] = await post_all(
        session, kind, [Posting(entries, job_id, memo)], held_changes=held_changes
    )
    return transaction_id


async def post_all(
    session: AsyncSession,
    kind: TransactionKind,
    postings: Sequence[Posting],
    *,
    held_changes: Mapping[str, int] | None = None,
) -> list[str]:
    """Record balanced transactions, each with its own entries, and apply their sum (and
    any change to what accounts hold) to the balances with one UPDATE per account, inside
    the caller's database transaction: many settlements move a shared account (the
    platform's) once. Returns their ids, in order."""
    for posting in postings:
        if sum(e.amount_micro_usd for e in posting.entries) != 0:
            raise UnbalancedTransaction(f"{kind} entries sum to a non-zero amount")
    ids = [uuid.uuid4().hex for _ in postings]
    now = datetime.now(UTC)
    balance_changes: dict[str, int] = {}
    entry_rows = []
    for transaction_id, posting in zip(ids, postings, strict=True):
        for entry in posting.entries:
            if entry.amount_micro_usd == 0:
                continue
            entry_rows.append(
                {
                    "transaction_id": transaction_id,
                    "account_id": entry.account_id,
                    "kind": entry.kind,
                    "amount_micro_usd": entry.amount_micro_usd,
                }
            )
            balance_changes[entry.account_id] = (
                balance_changes.get(entry.account_id, 0) + entry.amount_micro_usd
            )
    if postings:  # the transaction rows first: the entries point at them
        await session.execute(
            insert(_TRANSACTIONS),
            [
                {"id": i, "kind": kind, "job_id": p.job_id, "memo": p.memo, "created_at": now}
                for i, p in zip(ids, postings, strict=True)
            ],
        )
    if entry_rows:
        await session.execute(insert(_ENTRIES), entry_rows)
    await apply_changes(session, balance_changes, held_changes or {})
    return ids


async def apply_changes(
    session: AsyncSession, balance_changes: Mapping[str, int], held_changes: Mapping[str, int]
) -> None:
    """Move balances and holds, each account's row once, in sorted id order."""
    moves = [
        (account_id, balance_changes.get(account_id, 0), held_changes.get(account_id, 0))
        for account_id in sorted(set(balance_changes) | set(held_changes))
    ]
    moves = [move for move in moves if move[1] or move[2]]
    if len(moves) == 1:
        [(account_id, balance, held)] = moves
        result = await session.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(
                balance_micro_usd=Account.balance_micro_usd + balance,
                held_micro_usd=Account.held_micro_usd + held,
            ),
            execution_options=UNTRACKED,
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise LookupError(f"no account {account_id}")
    elif moves:
        # Locked first, in id order, so that transactions moving the same accounts cannot
        # deadlock; then one statement run for every account (a single round trip on
        # PostgreSQL), instead of one per account: a batch of settlements moves hundreds.
        # The lock is the one an UPDATE of the balances takes (FOR NO KEY UPDATE), which the
        # key-share locks of entries inserted just before, here or elsewhere, do not block.
        ids = [account_id for account_id, _, _ in moves]
        locked = await session.scalars(
            select(Account.id)
            .where(Account.id.in_(ids))
            .order_by(Account.id)
            .with_for_update(key_share=True)
        )
        missing = set(ids) - set(locked)
        if missing:
            raise LookupError(f"no account {', '.join(sorted(missing))}")
        await session.execute(
            _MOVE,
            [{"account": a, "balance": balance, "held": held} for a, balance, held in moves],
        )


async def deposit(
    db: Database, account_id: str, amount_micro_usd: int, *, memo: str | None = None
) -> str:
    """Credit money from outside (a payment, an admin grant) to a consumer or provider
    account. Returns the transaction id."""
    if not 0 < amount_micro_usd <= MAX_DEPOSIT_MICRO_USD:
        raise InvalidRequest(
            "A deposit must be more than $0 and at most $1,000,000,000.", param="amount"
        )
    if account_id in SYSTEM_ACCOUNT_IDS:
        raise InvalidRequest("Deposits go to consumer or provider accounts.", param="account")
    async with db.sessions.begin() as session:
        if await session.scalar(select(Account.id).where(Account.id == account_id)) is None:
            raise InvalidRequest(f"No account {account_id!r}.", param="account")
        return await post(
            session,
            "deposit",
            [
                Entry(EXTERNAL_ACCOUNT_ID, "funding", -amount_micro_usd),
                Entry(account_id, "deposit", amount_micro_usd),
            ],
            memo=memo,
        )
