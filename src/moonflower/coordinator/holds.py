"""Holds on a consumer's credit: taking the hold on a request's worst case before any output
reaches it, and giving it back whole when no job came of it.

A hold's write is never cut off half-way: a requester cancelled while it is written leaves
it to finish, and a hold that lands for nobody is released at once. While held, it stays
leased (`leases.HoldLeases`); `KnownCredit` remembers what the last hold left, so the next
one may be written while the provider already works on the prompt (`Admission.hold`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from moonflower.coordinator.billing import KnownCredit
from moonflower.coordinator.job import PromptMeasures
from moonflower.coordinator.leases import HoldLeases
from moonflower.coordinator.trust import TrustLevel
from moonflower.generation import GenerationRequest
from moonflower.ledger import billing
from moonflower.ledger.database import Database
from moonflower.ledger.keys import Caller

log = logging.getLogger(__name__)


@dataclass
class Admission:
    """A request the dispatcher accepted and holds credit for, not yet sent anywhere."""

    request: GenerationRequest
    """With the served model id and `max_tokens` set."""
    caller: Caller
    floor: TrustLevel | None
    job_id: str
    is_held: bool
    prompts: PromptMeasures
    """The request's prompt, measured once for every provider it is weighed for or sent to."""
    hold: asyncio.Task[None] | None = None
    """The hold being written while the job already runs, when it was not awaited."""


class Holds:
    """The holds this coordinator takes and gives back."""

    def __init__(self, db: Database, leases: HoldLeases) -> None:
        self._db = db
        self._leases = leases
        self.known_credit = KnownCredit()
        self._background: set[asyncio.Task[None]] = set()

    async def take(self, job_id: str, account_id: str, amount: int) -> None:
        """Take the hold. Its write is never cut off half-way: a caller cancelled meanwhile
        leaves it to finish, and a hold that lands for nobody is released at once."""
        since = self.known_credit.reports(account_id)
        self._leases.keep(job_id)
        writing = asyncio.create_task(
            billing.reserve(self._db, job_id, account_id, amount, lease_s=self._leases.lease_s)
        )
        try:
            left = await asyncio.shield(writing)
        except asyncio.CancelledError:
            writing.add_done_callback(lambda task: self._forget(task, job_id, account_id, amount))
            raise
        except BaseException:
            self._leases.drop(job_id)
            self.known_credit.refused(account_id, amount)
            raise
        self.known_credit.written(account_id, left, amount, since)

    def _forget(
        self, writing: asyncio.Task[int], job_id: str, account_id: str, amount: int
    ) -> None:
        """A hold whose requester was cancelled while it was being written: release it if
        it landed."""
        self.known_credit.refused(account_id, amount)
        if writing.cancelled() or writing.exception() is not None:
            self._leases.drop(job_id)
            return
        releasing = asyncio.create_task(self.release(job_id))
        self._background.add(releasing)
        releasing.add_done_callback(self._background.discard)

    async def release(self, job_id: str) -> None:
        """Give the hold of `job_id` back whole (a no-op once it is settled)."""
        try:
            await billing.release(self._db, job_id)  # a no-op once settled
        except Exception:
            log.exception("could not release the hold of job %s; its lease will", job_id)
        self._leases.drop(job_id)

    @staticmethod
    async def taken(admission: Admission) -> None:
        """Wait for a hold written alongside the job; raises `InsufficientFunds` if refused."""
        if admission.hold is not None:
            await admission.hold

    async def give_back(self, admission: Admission) -> None:
        """Release the hold of a request that no job came of, once it is written."""
        if not admission.is_held:
            return
        try:
            await self.taken(admission)  # never release before the hold is written
        except Exception:
            return  # refused (or failed): there is nothing to give back
        await self.release(admission.job_id)
