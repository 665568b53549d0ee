"""The settlement decision: from how a job ended, who ended it, what the coordinator counted
and what the receipt proved, what the consumer pays, what the provider earns, and what the
job says about the provider.

One pure function, `decide`, over plain values: no I/O, no clock, no provider claims it
cannot check. docs/billing.md shows it as a table; the property tests in
tests/coordinator/test_settlement.py cover every ending at every moment. Writing the
decision down (the ledger transaction) is `settler.py`'s job.

The rules, in one place:
- A consumer pays only for output that reached it: the completion tokens of the deltas
  handed to its connection (a whole answer counts only once it was returned whole), each
  delta's count bounded by what its bytes can hold, never more than `max_tokens`. With no
  completion token delivered, nothing is charged, the prompt included.
- The prompt is billed as the coordinator counted it (the model's own tokenizer), or, where
  it has none, as the provider claimed but never above the conservative bound.
- The provider earns its share of exactly that charge; consumer and provider never disagree.
- A provider that broke the protocol (illegal code, counts beyond its window, `max_tokens`
  or its bytes, a frame that does not open) or whose receipt does not match what was
  relayed earns nothing for the job, the consumer pays nothing, and it is untrusted.
- A receipt that never came is a verdict only when the provider ended the job itself and
  stayed connected; after a cancel (the consumer left, the coordinator timed out) or a lost
  connection it is not, and what was delivered is paid.
- A consumer hanging up, stalling or reading slowly is never a verdict about the provider.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from moonflower.generation import Usage


class Ending(enum.Enum):
    """How a job ended, and so who ended it."""

    COMPLETED = "completed"
    """The provider finished (stop, length, tool calls)."""
    PROVIDER_FAILED = "provider_failed"
    """The provider reported a failure, or stopped without being asked."""
    PROVIDER_GONE = "provider_gone"
    """The provider's connection closed or fell silent; the coordinator saw it go."""
    TIMED_OUT = "timed_out"
    """The provider fell silent mid-job past the idle time-out; the coordinator cancelled it."""
    DEADLINE = "deadline"
    """The job reached its maximum duration (wall clock, whether or not the consumer read);
    the coordinator cancelled it."""
    CONSUMER_LEFT = "consumer_left"
    """The consumer hung up; the coordinator cancelled the job."""
    VIOLATION = "violation"
    """The provider broke the wire protocol; it was cut off."""
    REFUSED = "refused"
    """The provider refused the request itself before any output (too long, invalid)."""


class ReceiptCheck(enum.Enum):
    """What the provider's receipt proved."""

    VALID = "valid"
    """Signed by the attested key over this request and exactly the output relayed, with
    counts equal to the coordinator's tally."""
    INVALID = "invalid"
    """Arrived and did not verify, or its counts differ from the tally."""
    MISSING = "missing"
    """Did not arrive in time while the provider stayed connected."""
    GONE = "gone"
    """Could not arrive: the connection closed first."""
    NOT_EXPECTED = "not_expected"
    """The provider has no attested key to sign one with (trust level `none`)."""


class Verdict(enum.Enum):
    """What the job says about its provider."""

    NONE = "none"
    """Nothing: the job ended for a reason that is not the provider's doing."""
    SERVED = "served"
    """It served the job well (routing counts a success)."""
    UNRELIABLE = "unreliable"
    """It failed or went away (routing counts a failure; trust is unchanged)."""
    UNTRUSTED = "untrusted"
    """It lied or broke the protocol: its identity is untrusted."""


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the decision may look at, all of it checked by the coordinator."""

    ending: Ending
    receipt: ReceiptCheck
    prompt_tokens: int
    """The prompt as billed: the coordinator's count, or the bounded claim."""
    delivered_tokens: int
    """Completion tokens of the output that reached the consumer, bounded per delta."""
    max_tokens: int


@dataclass(frozen=True, slots=True)
class Decision:
    billed: Usage | None
    """What the consumer pays for and the provider earns its share of; None: nothing."""
    verdict: Verdict
    reason: str
    """Why, in words for logs and the operator (never content)."""


def decide(facts: Facts) -> Decision:
    """The consumer's charge, the provider's earnings and the trust verdict of one job."""
    if facts.ending is Ending.VIOLATION:
        return Decision(None, Verdict.UNTRUSTED, "the provider broke the protocol")
    if facts.receipt is ReceiptCheck.INVALID:
        return Decision(
            None, Verdict.UNTRUSTED, "receipt rejected: it does not match what was relayed"
        )
    ended_by_provider = facts.ending in (Ending.COMPLETED, Ending.PROVIDER_FAILED)
    if facts.receipt is ReceiptCheck.MISSING and ended_by_provider:
        return Decision(
            None, Verdict.UNTRUSTED, "receipt rejected: none came for a job the provider ended"
        )
    billed = _billed(facts)
    if facts.ending is Ending.COMPLETED:
        return Decision(billed, Verdict.SERVED, "completed")
    if facts.ending in (Ending.PROVIDER_FAILED, Ending.PROVIDER_GONE):
        return Decision(billed, Verdict.UNRELIABLE, f"{facts.ending.value}: delivered is paid")
    if facts.ending is Ending.TIMED_OUT:
        return Decision(billed, Verdict.UNRELIABLE, "the provider fell silent: delivered is paid")
    if facts.ending is Ending.REFUSED:
        return Decision(None, Verdict.NONE, "the request was refused: nothing is owed")
    if facts.ending is Ending.DEADLINE:
        return Decision(billed, Verdict.NONE, "the job reached its deadline: delivered is paid")
    return Decision(billed, Verdict.NONE, "the consumer left: delivered is paid")


def _billed(facts: Facts) -> Usage | None:
    completion = min(max(facts.delivered_tokens, 0), max(facts.max_tokens, 0))
    if completion == 0:
        return None  # nothing reached the consumer: not even the prompt is charged
    return Usage(max(facts.prompt_tokens, 0), completion)
