"""The provider's delta batching keeps every character, in order, and sends the first at once."""

from __future__ import annotations

from moonflower.generation import Finished, GenerationEvent, Started, TextDelta, Usage
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
