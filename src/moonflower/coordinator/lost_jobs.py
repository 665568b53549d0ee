"""Settling the jobs of a coordinator replica that died mid-job, from their lease tallies.

While a job runs, the replica running it keeps, beside the job's hold lease, a `LeaseTally`:
the job's record as if it ended now — its consumer gone, paying (as `settlement.decide` rules
for a consumer who leaves) for the output already relayed to it — and the provider account
to pay. When that replica dies, its consumers' connections are gone with it, and no one
renews the lease; once it has run out, any surviving replica turns the last tally into a
settlement order (`order_of`) for its own settler. Settlement is idempotent per job id, so
several survivors sweeping at once, or a replica that was only slow to renew, still charge
the job exactly once. Output relayed after the last renewal is not paid for: a tally is at
most a third of a lease old.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime

import orjson

from moonflower.coordinator.closing import job_record
from moonflower.coordinator.job import Job
from moonflower.coordinator.settlement import (
    Decision,
    Ending,
    Facts,
    ReceiptCheck,
    Verdict,
    decide,
)
from moonflower.coordinator.settler import SettlementOrder, Settler
from moonflower.generation import Usage
from moonflower.ledger.jobs import JobRecord

LOST_CODE = "coordinator_lost"
"""The error code a job settled by a survivor is recorded with."""


@dataclass(frozen=True, slots=True)
class LeaseTally:
    record: JobRecord
    """Status "failed", error `LOST_CODE`, billed counts those of a consumer who left now."""
    provider_account_id: str | None

    def to_text(self) -> str:
        fields = asdict(self.record)
        fields["created_at"] = self.record.created_at.isoformat()
        return orjson.dumps(
            {"record": fields, "provider_account_id": self.provider_account_id}
        ).decode()

    @classmethod
    def from_text(cls, text: str) -> LeaseTally:
        data = orjson.loads(text)
        fields = dict(data["record"])
        fields["created_at"] = datetime.fromisoformat(fields["created_at"])
        return cls(JobRecord(**fields), data["provider_account_id"])


def tally_of(job: Job) -> str | None:
    """`job`'s lease tally as text, or None once its own settlement is decided."""
    if job.outcome is not None:
        return None
    facts = Facts(
        ending=Ending.CONSUMER_LEFT,
        receipt=ReceiptCheck.GONE,
        prompt_tokens=job.prompt_tokens,
        delivered_tokens=job.relay.delivered_tokens,
        max_tokens=job.request.max_tokens or 0,
    )
    record = replace(job_record(job, decide(facts)), status="failed", error_code=LOST_CODE)
    return LeaseTally(record, job.provider.account_id).to_text()


def order_of(tally: LeaseTally) -> SettlementOrder:
    """What a survivor writes for a job whose replica died: the tally's billed counts."""
    record = tally.record
    billed = None
    if record.billed_completion_tokens > 0:
        billed = Usage(record.billed_prompt_tokens, record.billed_completion_tokens)
    decision = Decision(
        billed, Verdict.NONE, "its coordinator stopped: what was relayed to the consumer is paid"
    )
    return SettlementOrder(
        record=record,
        decision=decision,
        provider_account_id=tally.provider_account_id,
        receipt=None,
    )


async def settle_lost(settler: Settler, text: str) -> None:
    """Settle the job of `text`'s tally through `settler` (`leases.SettleLost`)."""
    await settler.settle(order_of(LeaseTally.from_text(text)))
