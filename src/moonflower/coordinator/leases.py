"""Leases on holds: this coordinator vouches for the holds of the jobs it runs.

Every hold is written with a lease (`ledger.billing.reserve`). While a job lives — queued,
running, or waiting for its settlement to land — its job id is in `HoldLeases`, and a
renewer extends all of them in one statement every third of the lease. A sweep releases
holds whose lease ran out: their coordinator stopped and can no longer renew them. A hold is
never released by age alone, so a long job, a long queue or several coordinators sharing a
database can never lose a live job's hold.
"""

from __future__ import annotations

import asyncio
import logging

from moonflower.ledger import billing
from moonflower.ledger.database import Database

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 60.0


class HoldLeases:
    """The job ids whose holds this coordinator keeps alive."""

    def __init__(self, db: Database, lease_s: float) -> None:
        self._db = db
        self.lease_s = lease_s
        self._live: set[str] = set()

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._live

    def __len__(self) -> int:
        return len(self._live)

    def keep(self, job_id: str) -> None:
        """Vouch for `job_id`'s hold until `drop`."""
        self._live.add(job_id)

    def drop(self, job_id: str) -> None:
        """The hold is closed (settled or released): stop renewing it."""
        self._live.discard(job_id)

    async def renew(self) -> int:
        if not self._live:
            return 0
        return await billing.renew_leases(self._db, sorted(self._live), lease_s=self.lease_s)

    async def release_expired(self) -> int:
        """Give back the holds nobody vouches for any more."""
        released = await billing.release_expired(self._db)
        if released:
            log.warning(
                "released %d holds whose lease ran out (their coordinator stopped)", released
            )
        return released

    async def run(self) -> None:
        """Renew every third of the lease and sweep expired holds every minute, until
        cancelled. A failed round is logged and tried again next time."""
        interval_s = self.lease_s / 3
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while True:
            try:
                await self.renew()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + SWEEP_INTERVAL_S
                    await self.release_expired()
            except Exception:
                log.exception("could not renew or sweep hold leases")
            await asyncio.sleep(interval_s)
