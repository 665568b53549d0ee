"""The settlement decision, over every ending at every moment: what the consumer pays and
the provider earns never exceeds what reached the consumer, and only lies and protocol
breaches untrust a provider."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from moonflower.coordinator.settlement import (
    Decision,
    Ending,
    Facts,
    ReceiptCheck,
    Verdict,
    decide,
)
from moonflower.coordinator.tally import (
    TOOL_CALL_SCAFFOLD_TOKENS,
    JobTally,
    billable_tokens,
)
from moonflower.generation import Failed, Finished, Started, TextDelta, ToolCallDelta, Usage

facts = st.builds(
    Facts,
    ending=st.sampled_from(list(Ending)),
    receipt=st.sampled_from(list(ReceiptCheck)),
    prompt_tokens=st.integers(0, 1 << 24),
    delivered_tokens=st.integers(0, 1 << 24),
    max_tokens=st.integers(0, 1 << 16),
)

PROVIDER_ENDED = (Ending.COMPLETED, Ending.PROVIDER_FAILED)
NOT_THE_PROVIDERS_DOING = (Ending.CONSUMER_LEFT, Ending.DEADLINE, Ending.REFUSED)


@given(facts)
def test_nobody_pays_for_more_than_reached_the_consumer(f: Facts) -> None:
    billed = decide(f).billed
    if billed is None:
        return
    assert 0 < billed.completion_tokens <= min(f.delivered_tokens, f.max_tokens)
    assert billed.prompt_tokens == f.prompt_tokens


@given(facts)
def test_nothing_delivered_is_nothing_owed_not_even_the_prompt(f: Facts) -> None:
    if f.delivered_tokens == 0 or f.max_tokens == 0:
        assert decide(f).billed is None


@given(facts)
def test_breaking_the_protocol_or_lying_in_a_receipt_earns_nothing_and_untrusts(
    f: Facts,
) -> None:
    decision = decide(f)
    lied = f.ending is Ending.VIOLATION or f.receipt is ReceiptCheck.INVALID
    silent = f.receipt is ReceiptCheck.MISSING and f.ending in PROVIDER_ENDED
    if lied or silent:
        assert decision == Decision(None, Verdict.UNTRUSTED, decision.reason)
    else:
        assert decision.verdict is not Verdict.UNTRUSTED


@given(facts)
def test_a_consumer_or_a_deadline_is_never_a_verdict_about_the_provider(f: Facts) -> None:
    if f.ending in NOT_THE_PROVIDERS_DOING and f.receipt is not ReceiptCheck.INVALID:
        assert decide(f).verdict is Verdict.NONE


@given(facts)
def test_an_honest_provider_is_paid_for_what_it_delivered(f: Facts) -> None:
    honest = f.receipt in (ReceiptCheck.VALID, ReceiptCheck.NOT_EXPECTED, ReceiptCheck.GONE)
    if honest and f.ending not in (Ending.VIOLATION, Ending.REFUSED):
        delivered = min(f.delivered_tokens, f.max_tokens)
        expected = Usage(f.prompt_tokens, delivered) if delivered else None
        assert decide(f).billed == expected


def test_a_missing_receipt_after_a_cancel_still_pays_what_was_delivered() -> None:
    for ending in (Ending.CONSUMER_LEFT, Ending.TIMED_OUT, Ending.DEADLINE):
        decision = decide(Facts(ending, ReceiptCheck.MISSING, 10, 3, 100))
        assert decision.billed == Usage(10, 3)
        assert decision.verdict is not Verdict.UNTRUSTED


# The tally: counts a provider cannot inflate past what its bytes hold.


@given(st.text(max_size=50), st.integers(0, 1 << 24))
def test_a_delta_is_billed_for_no_more_tokens_than_its_bytes(text: str, tokens: int) -> None:
    assert billable_tokens(TextDelta(text, tokens=tokens)) == min(tokens, len(text.encode()))


def test_a_tool_call_may_spend_tokens_on_its_scaffolding_once() -> None:
    first = ToolCallDelta(0, "", id="c", name="f", tokens=1000)
    assert billable_tokens(first) == TOOL_CALL_SCAFFOLD_TOKENS + 2
    assert billable_tokens(ToolCallDelta(0, "{}", tokens=1000)) == 2


def tally(max_tokens: int = 10) -> JobTally:
    t = JobTally(max_tokens=max_tokens, context_length=100)
    assert t.add(Started(prompt_tokens=5)) is None
    return t


def test_claims_beyond_max_tokens_break_the_protocol() -> None:
    t = tally(max_tokens=3)
    assert t.add(TextDelta("abc", tokens=3)) is None
    assert t.add(TextDelta("d", tokens=1)) == "more completion tokens than max_tokens"


def test_events_beyond_the_window_break_the_protocol() -> None:
    t = tally(max_tokens=10_000)
    t.granted_events = 3
    assert t.add(TextDelta("a", tokens=1)) is None
    assert t.add(TextDelta("b", tokens=1)) is None
    assert t.add(TextDelta("c", tokens=1)) == "more events than the flow-control window allows"


def test_bytes_beyond_what_the_tokens_carry_break_the_protocol() -> None:
    assert tally().add(TextDelta("x" * 20_000, tokens=1)) is not None


def test_output_before_started_or_after_the_end_breaks_the_protocol() -> None:
    t = JobTally(max_tokens=10, context_length=100)
    assert t.add(TextDelta("a", tokens=1)) == "text before started"
    t = tally()
    assert t.add(Failed(code="engine_error", message="x")) is None
    assert t.add(TextDelta("a", tokens=1)) == "an event after the job's terminal event"


def test_a_finish_must_state_the_counts_the_stream_claimed() -> None:
    t = tally()
    assert t.add(TextDelta("ab", tokens=2)) is None
    assert t.add(Finished("stop", Usage(5, 9))) is not None
    t = tally()
    assert t.add(TextDelta("ab", tokens=2)) is None
    assert t.add(Finished("stop", Usage(5, 2))) is None


def test_a_prompt_longer_than_the_context_breaks_the_protocol() -> None:
    t = JobTally(max_tokens=10, context_length=100)
    assert t.add(Started(prompt_tokens=101)) == "a prompt longer than the model's context"
