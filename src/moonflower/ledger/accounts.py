"""Accounts: who money belongs to, and what each one holds right now.

Owns account kinds and their rules: `consumer` accounts prepay and are charged, `provider`
accounts earn, the one `platform` account collects fees, and the one `external` account is
the world outside (deposits come from it, so it alone goes below zero). A balance is the sum
of the account's ledger entries; `held` is what open holds set aside; `available` is the
difference, and is what a new hold may take.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

from sqlalchemy import or_, select

from moonflower.errors import InvalidRequest
from moonflower.ledger.database import Database
from moonflower.ledger.tables import Account

AccountKind = Literal["consumer", "provider", "platform", "external"]
ACCOUNT_KINDS: tuple[str, ...] = get_args(AccountKind)
PLATFORM_ACCOUNT_ID = "platform"
EXTERNAL_ACCOUNT_ID = "external"
SYSTEM_ACCOUNT_IDS = frozenset({PLATFORM_ACCOUNT_ID, EXTERNAL_ACCOUNT_ID})
"""Created by the migrations; nobody else may be of these kinds."""
MAX_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class AccountInfo:
    id: str
    name: str
    kind: str
    balance_micro_usd: int
    held_micro_usd: int
    created_at: datetime

    @property
    def available_micro_usd(self) -> int:
        return self.balance_micro_usd - self.held_micro_usd

    @property
    def withdrawable_micro_usd(self) -> int:
        """What a provider could be paid out: its earnings not set aside for its own use."""
        return max(self.available_micro_usd, 0) if self.kind == "provider" else 0


def _info(row: Account) -> AccountInfo:
    return AccountInfo(
        id=row.id,
        name=row.name,
        kind=row.kind,
        balance_micro_usd=row.balance_micro_usd,
        held_micro_usd=row.held_micro_usd,
        created_at=row.created_at,
    )


def check_name(name: str) -> None:
    if not 0 < len(name) <= MAX_NAME_LENGTH or name != name.strip():
        raise InvalidRequest(
            f"An account name must be 1 to {MAX_NAME_LENGTH} characters without surrounding "
            "spaces.",
            param="name",
        )


def _check_kind(kind: str) -> None:
    if kind not in ("consumer", "provider"):
        raise InvalidRequest("Only consumer and provider accounts can be created.", param="kind")


async def create_account(db: Database, name: str, kind: AccountKind = "consumer") -> AccountInfo:
    """A new, empty account. Refuses a name already taken and the system kinds."""
    check_name(name)
    _check_kind(kind)
    async with db.sessions.begin() as session:
        if await session.scalar(select(Account.id).where(Account.name == name)) is not None:
            raise InvalidRequest(f"An account named {name!r} already exists.", param="name")
        row = Account(
            id=uuid.uuid4().hex,
            name=name,
            kind=kind,
            balance_micro_usd=0,
            held_micro_usd=0,
            created_at=datetime.now(UTC),
        )
        session.add(row)
    return _info(row)


async def ensure_account(db: Database, name: str, kind: AccountKind = "consumer") -> AccountInfo:
    """The account called `name`, created (of `kind`) if it does not exist yet. Refuses the
    system kinds, like `create_account`, and a name already taken by another kind."""
    check_name(name)
    _check_kind(kind)
    insert = db.insert_on_conflict(Account).values(
        id=uuid.uuid4().hex,
        name=name,
        kind=kind,
        balance_micro_usd=0,
        held_micro_usd=0,
        created_at=datetime.now(UTC),
    )
    async with db.sessions.begin() as session:
        await session.execute(insert.on_conflict_do_nothing(index_elements=[Account.name]))
        row = (await session.execute(select(Account).where(Account.name == name))).scalar_one()
        if row.kind != kind:  # money meant for one kind of account must not reach another
            raise InvalidRequest(
                f"The account named {name!r} is a {row.kind} account, not a {kind} one.",
                param="name",
            )
        return _info(row)


async def find_account(db: Database, name_or_id: str) -> AccountInfo | None:
    query = select(Account).where(or_(Account.id == name_or_id, Account.name == name_or_id))
    async with db.sessions() as session:
        rows = (await session.execute(query)).scalars().all()
    # An id match wins over a name that happens to look like another account's id.
    by_id = [r for r in rows if r.id == name_or_id]
    chosen = by_id or rows
    return _info(chosen[0]) if chosen else None


async def get_account(db: Database, account_id: str) -> AccountInfo:
    async with db.sessions() as session:
        row = await session.get(Account, account_id)
    if row is None:
        raise LookupError(f"no account {account_id}")
    return _info(row)


async def list_accounts(db: Database) -> list[AccountInfo]:
    async with db.sessions() as session:
        rows = await session.execute(select(Account).order_by(Account.created_at, Account.name))
        return [_info(r) for r in rows.scalars()]
