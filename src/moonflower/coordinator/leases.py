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
from collections.abc import Awaitable, Callable

from moonflower.ledger import billing, lost_jobs
from moonflower.ledger.database import Database

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 60.0


Tally = Callable[[], str | None]
"""A running job's lease tally as text (`lost_jobs.LeaseTally`), or None while it has none."""
SettleLost = Callable[[str], Awaitable[object]]
"""Settles a job whose replica died, from its last tally's text."""


class HoldLeases:
    """The job ids whose holds this coordinator keeps alive."""

    def __init__(self, db: Database, lease_s: float) -> None:
        self._db = db
        self.lease_s = lease_s
        self._live: set[str] = set()
        self._tallies: dict[str, Tally] = {}

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._live

    def __len__(self) -> int:
        return len(self._live)

    def keep(self, job_id: str) -> None:
        """Vouch for `job_id`'s hold until `drop`."""
        self._live.add(job_id)

    def follow(self, job_id: str, tally: Tally) -> None:
        """Write `tally` beside `job_id`'s lease at each renewal, for a survivor to settle
        the job from should this coordinator die (until `drop`)."""
        self._tallies[job_id] = tally

    def drop(self, job_id: str) -> None:
        """The hold is closed (settled or released): stop renewing it."""
        self._live.discard(job_id)
        self._tallies.pop(job_id, None)

    async def renew(self) -> int:
        if not self._live:
            return 0
        renewed = await billing.renew_leases(self._db, sorted(self._live), lease_s=self.lease_s)
        tallies = {job_id: tally() for job_id, tally in self._tallies.items()}
        await lost_jobs.write_tallies(
            self._db, {job_id: text for job_id, text in tallies.items() if text is not None}
        )
        return renewed

    async def release_expired(self, settle_lost: SettleLost | None = None) -> int:
        """Settle, with `settle_lost`, the jobs whose lease ran out with a tally (their
        coordinator died mid-job), then give back the holds nobody vouches for any more."""
        if settle_lost is not None:
            lost = await lost_jobs.expired_tallies(self._db)
            for job_id, text in lost.items():
                log.warning("settling job %s, whose coordinator stopped, from its tally", job_id)
                try:
                    await settle_lost(text)
                except Exception:
                    log.exception("could not settle job %s from its tally", job_id)
        released = await billing.release_expired(self._db)
        if released:
            log.warning(
                "released %d holds whose lease ran out (their coordinator stopped)", released
            )
        return released

    async def run(self, settle_lost: SettleLost | None = None) -> None:
        """Renew every third of the lease and sweep expired holds every minute (every lease,
        if that is shorter), until cancelled. A failed round is logged and tried again next
        time."""
        interval_s = self.lease_s / 3
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while True:
            try:
                await self.renew()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + min(SWEEP_INTERVAL_S, self.lease_s)
                    await self.release_expired(settle_lost)
            except Exception:
                log.exception("could not renew or sweep hold leases")
            await asyncio.sleep(interval_s)
