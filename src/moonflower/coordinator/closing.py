"""The dispatcher's close path: once a job's relay has wound down, decide what it costs and
what it says about its provider, tell routing, show the consumer how it ended, and settle.

The relay (`relay.py`) knows how the job ended and what its receipt proved; the decision is
`settlement.decide` (pure); writing it down, durably and once, is the `Settler`'s. Nothing
here reads the provider's stream or renders anything: a job's stream only waits for this
close to learn what to say last.
"""

from __future__ import annotations

import time

from moonflower.coordinator.job import Job
from moonflower.coordinator.metrics import Metrics
from moonflower.coordinator.relay import elapsed_ms
from moonflower.coordinator.settlement import Decision, Ending, Facts, Verdict, decide
from moonflower.coordinator.settler import SettlementOrder, Settler
from moonflower.crypto.receipt import receipt_hash
from moonflower.generation import Failed, Finished, Usage
from moonflower.ledger import billing
from moonflower.ledger import jobs as job_ledger
from moonflower.ledger.receipts import ReceiptRecord

BYTES_PER_TOKEN = 4
"""Bytes of output counted as one token when the coordinator measures a provider's speed
(about what English text averages); the same scale for every provider of a model."""

NOTHING_OWED = Decision(None, Verdict.NONE, "no provider answered: the hold goes back whole")


class JobCloser:
    """Closes and settles the jobs of one dispatcher."""

    def __init__(self, settler: Settler, metrics: Metrics | None = None) -> None:
        self._settler = settler
        self._metrics = metrics

    async def close(self, job: Job) -> None:
        """Wait for the job's relay to wind down, then decide, judge its provider and
        settle; the job then holds its outcome and settlement."""
        relay = job.relay
        await relay.wound_down()
        assert relay.ending is not None
        assert relay.receipt_check is not None
        decision = decide(
            Facts(
                ending=relay.ending,
                receipt=relay.receipt_check,
                prompt_tokens=job.prompt_tokens,
                delivered_tokens=relay.delivered_tokens,
                max_tokens=job.request.max_tokens or 0,
            )
        )
        job.outcome = _shown_outcome(job, decision)
        _judge_provider(job, decision)
        job.settlement = await self.settle(job, decision)

    async def settle(self, job: Job, decision: Decision) -> billing.Settlement | None:
        """Write down what `decision` says `job` costs and earns, with the job's record and
        receipt, in one ledger transaction — retried until it lands (`settler.py`). Waits a
        bounded time for the result."""
        order = SettlementOrder(
            record=job_record(job, decision),
            decision=decision,
            provider_account_id=job.provider.account_id,
            receipt=_receipt_record(job),
        )
        if self._metrics is not None:
            self._metrics.job_closed(order.record)
        return await self._settler.settle(order)


def _shown_outcome(job: Job, decision: Decision) -> Finished | Failed:
    """The terminal event the consumer is shown: the coordinator's counts, never the
    provider's claims."""
    relay = job.relay
    ending, terminal = relay.ending, relay.terminal
    if decision.verdict is Verdict.UNTRUSTED:
        return Failed(code="engine_error", message="The provider's answer did not verify.")
    if ending is Ending.COMPLETED and isinstance(terminal, Finished):
        usage = Usage(job.prompt_tokens, relay.relayed_tokens)
        return Finished(terminal.reason, usage, stop_sequence=terminal.stop_sequence)
    if ending is Ending.TIMED_OUT:
        return Failed(code="timeout", message="The provider stopped answering.")
    if ending is Ending.DEADLINE:
        return Failed(code="timeout", message="The job reached its maximum duration.")
    if ending is Ending.CONSUMER_LEFT:
        return Finished("cancelled", Usage(job.prompt_tokens, relay.delivered_tokens))
    if isinstance(terminal, Failed):
        return terminal
    return Failed(code="provider_gone", message="The provider stopped mid-job.")


def _judge_provider(job: Job, decision: Decision) -> None:
    """Tell routing how the provider did, from the coordinator's own clock and tally."""
    stats = job.provider.stats
    if decision.verdict is Verdict.UNTRUSTED:
        job.provider.mark_untrusted(decision.reason)
        stats.job_failed()
    elif decision.verdict is Verdict.UNRELIABLE:
        stats.job_failed()
    elif decision.verdict is Verdict.SERVED:
        # Speed in output the coordinator relayed, not in tokens a provider says it
        # sampled: bytes cannot be claimed, only sent (and the consumer receives them).
        relay = job.relay
        first_s = (relay.first_token_ms or 0) / 1000
        decode_s = max(time.monotonic() - relay.t0 - first_s, 0.0)
        stats.job_finished(relay.output_bytes // BYTES_PER_TOKEN, decode_s)


def job_record(job: Job, decision: Decision | None) -> job_ledger.JobRecord:
    """The job's metadata as stored: the coordinator's counts, never the provider's
    claims, and never content."""
    ending = job.ending
    if ending is Ending.COMPLETED:
        status = "completed"
    elif ending is Ending.CONSUMER_LEFT:
        status = "cancelled"
    else:
        status = "failed"
    outcome = job.outcome or job.attempt_failure
    billed = decision.billed if decision is not None else None
    return job_ledger.JobRecord(
        id=job.id,
        account_id=job.account_id,
        key_id=job.key_id,
        model=job.request.model,
        provider_id=job.provider.id,
        status=status,
        finish_reason=outcome.reason if isinstance(outcome, Finished) else None,
        prompt_tokens=job.prompt_tokens,
        completion_tokens=job.relay.relayed_tokens,
        created_at=job.created_at,
        first_token_ms=job.relay.first_token_ms,
        duration_ms=elapsed_ms(job.relay.t0),
        error_code=outcome.code if isinstance(outcome, Failed) else None,
        billed_prompt_tokens=billed.prompt_tokens if billed else 0,
        billed_completion_tokens=billed.completion_tokens if billed else 0,
        receipt_hash=receipt_hash(job.receipt.json_text) if job.receipt else None,
    )


def _receipt_record(job: Job) -> ReceiptRecord | None:
    statement = job.provider.trust.statement
    if job.receipt is None or statement is None:
        return None
    return ReceiptRecord(
        job_id=job.id,
        account_id=job.account_id,
        provider_id=job.provider.id,
        receipt_json=job.receipt.json_text,
        signature=job.receipt.signature,
        signing_public_key=statement.signing_public_key,
    )
