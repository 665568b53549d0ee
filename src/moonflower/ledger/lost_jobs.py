"""Jobs whose coordinator stopped mid-way: the tallies they leave beside their holds.

The coordinator running a job writes, each time it renews the job's hold lease
(`billing.renew_leases`), what the job would cost if it ended now: `write_tallies`. If that
coordinator dies, nobody renews the lease; once it has run out, a surviving coordinator
finds the job's last tally (`expired_tallies`) and settles it (`billing.settle`, exactly
once per job id), and gives back whole the expired holds of jobs that had produced nothing.
What a tally holds is the coordinator's business (`coordinator/lost_jobs.py`): here it is
opaque text, never content.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from sqlalchemy import bindparam, select, update

from moonflower.ledger.database import Database
from moonflower.ledger.tables import Hold


async def write_tallies(db: Database, tallies: Mapping[str, str]) -> None:
    """Store each job's tally beside its open hold (one statement for all of them)."""
    if not tallies:
        return
    statement = (
        update(Hold)
        .where(Hold.job_id == bindparam("job"), Hold.status == "held")
        .values(tally=bindparam("text"))
        .execution_options(synchronize_session=False)
    )
    async with db.sessions.begin() as session:
        connection = await session.connection()
        await connection.execute(
            statement, [{"job": job_id, "text": text} for job_id, text in tallies.items()]
        )


async def expired_tallies(db: Database, *, now: datetime | None = None) -> dict[str, str]:
    """The tallies of open holds whose lease ran out before `now`, by job id."""
    now = now or datetime.now(UTC)
    async with db.sessions() as session:
        rows = await session.execute(
            select(Hold.job_id, Hold.tally).where(
                Hold.status == "held", Hold.lease_expires_at < now, Hold.tally.is_not(None)
            )
        )
        return {job_id: tally for job_id, tally in rows if tally is not None}
