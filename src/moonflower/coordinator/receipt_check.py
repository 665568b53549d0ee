"""Checking a job's receipt against what the coordinator relayed.

A receipt binds the provider's attested signing key to this job, these weights, this request
and exactly the output the coordinator relayed, with the token counts the provider claimed
in its stream (the coordinator's tally of claims). What it proves, or why it proves nothing,
is a `settlement.ReceiptCheck`; the settlement decides what follows from it. The wait is
bounded and shielded: a caller cancelled meanwhile does not turn into a verdict.
"""

from __future__ import annotations

import asyncio

from moonflower import wire
from moonflower.coordinator.channel import JobChannel
from moonflower.coordinator.session import ProviderSession
from moonflower.coordinator.settlement import ReceiptCheck
from moonflower.crypto.receipt import request_digest, verify_receipt
from moonflower.errors import ReceiptError
from moonflower.generation import GenerationRequest


async def check_receipt(
    channel: JobChannel,
    provider: ProviderSession,
    request: GenerationRequest,
    card: wire.ModelCard,
    job_id: str,
    *,
    is_expected: bool,
    timeout_s: float,
) -> tuple[ReceiptCheck, wire.SignedBlob | None]:
    """What the receipt of `job_id` proves, and the receipt when it is valid.

    `is_expected`: the provider ended the job or was asked to (only then does a receipt
    follow)."""
    statement = provider.trust.statement
    if statement is None:
        return ReceiptCheck.NOT_EXPECTED, None
    if channel.violation is not None or (channel.is_gone and not channel.receipt.done()):
        return ReceiptCheck.GONE, None
    if not is_expected or channel.tally.terminal is None:
        return ReceiptCheck.MISSING, None
    try:
        signed = await asyncio.wait_for(asyncio.shield(channel.receipt), timeout_s)
    except TimeoutError:
        return ReceiptCheck.MISSING, None
    if signed is None:
        return ReceiptCheck.GONE, None
    try:
        receipt = verify_receipt(
            signed.json_text,
            signed.signature,
            statement.signing_key,
            job_id=job_id,
            model_sha256=card.sha256,
            request_sha256=request_digest(request),
            output_sha256=channel.output.digest(),
        )
    except ReceiptError:
        return ReceiptCheck.INVALID, None
    tally = channel.tally
    if (receipt.prompt_tokens, receipt.completion_tokens) != (
        tally.claimed_prompt_tokens or 0,
        tally.claimed_tokens,
    ):
        return ReceiptCheck.INVALID, None
    return ReceiptCheck.VALID, signed
