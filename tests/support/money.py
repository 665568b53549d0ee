"""Reading a real network's ledger from a test, and the price arithmetic tests check against.

The expected amounts are computed here from the published formula, independently of the
coordinator's code: cost = max(floor((prompt * input + completion * output) / 10^6),
minimum); the platform keeps floor(cost * fee_bps / 10^4); the provider the rest.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from moonflower.ledger.accounts import AccountInfo, list_accounts
from moonflower.ledger.database import Database, default_database_url
from tests.support.network import LocalNetwork


@dataclass(frozen=True)
class Prices:
    input: int
    output: int
    minimum: int
    fee_bps: int

    def settings(self) -> dict[str, str]:
        """The coordinator environment that puts these prices in force."""
        return {
            "DEFAULT_PRICE": f'{{"input": {self.input}, "output": {self.output}}}',
            "MINIMUM_CHARGE_MICRO_USD": str(self.minimum),
            "PLATFORM_FEE_PERCENT": str(self.fee_bps / 100),
        }

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        exact = prompt_tokens * self.input + completion_tokens * self.output
        return max(exact // 1_000_000, self.minimum)

    def fee(self, cost: int) -> int:
        return cost * self.fee_bps // 10_000


def accounts(network: LocalNetwork) -> dict[str, AccountInfo]:
    """Every account of the network's ledger by name, read from its database."""
    url = network.database_url or default_database_url(network.data_dir)

    async def read() -> list[AccountInfo]:
        db = await Database.open(url)
        try:
            return await list_accounts(db)
        finally:
            await db.close()

    return {account.name: account for account in asyncio.run(read())}


def usd(micro_usd: int) -> str:
    whole, part = divmod(micro_usd, 1_000_000)
    return f"{whole}.{part:06d}"
