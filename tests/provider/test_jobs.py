"""The provider's delta batching keeps every character, in order, and sends the first at once."""

from __future__ import annotations

from moonflower.generation import (
    Finished,
    GenerationEvent,
    Started,
    TextDelta,
    TokenLogprob,
    Usage,
)
from moonflower.provider.jobs import DeltaBatcher


def run(events: list[GenerationEvent], interval_s: float) -> list[GenerationEvent]:
    sent: list[GenerationEvent] = []
    batch = DeltaBatcher(interval_s, sent.append)
    for event in events:
        batch.add(event)
    batch.flush()
    return sent


def test_deltas_inside_the_interval_are_joined_after_the_first() -> None:
    finished = Finished(reason="stop", usage=Usage(3, 4))
    events: list[GenerationEvent] = [
        Started(prompt_tokens=3),
        TextDelta("Hel"),
        TextDelta("lo"),
        TextDelta(", "),
        TextDelta("world"),
        finished,
    ]
    sent = run(events, interval_s=60.0)
    assert sent == [Started(prompt_tokens=3), TextDelta("Hel"), TextDelta("lo, world"), finished]


def test_zero_interval_sends_every_delta_alone() -> None:
    events: list[GenerationEvent] = [TextDelta("a"), TextDelta("b"), TextDelta("c")]
    assert run(events, interval_s=0.0) == events


def test_pending_text_is_flushed_before_any_other_event() -> None:
    finished = Finished(reason="length", usage=Usage(1, 2))
    sent = run([TextDelta("x"), TextDelta("y"), finished], interval_s=60.0)
    assert sent == [TextDelta("x"), TextDelta("y"), finished]


def test_joined_deltas_keep_their_logprobs_in_order() -> None:
    a, b, c = TokenLogprob("a", -0.1), TokenLogprob("b", -0.2), TokenLogprob("c", -0.3)
    events: list[GenerationEvent] = [
        TextDelta("a", logprobs=(a,)),
        TextDelta("b", logprobs=(b,)),
        TextDelta("c", logprobs=(c,)),
    ]
    assert run(events, interval_s=60.0) == [
        TextDelta("a", logprobs=(a,)),
        TextDelta("bc", logprobs=(b, c)),
    ]
