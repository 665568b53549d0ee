"""The receipt's tally of output (`receipts.OutputTally`): what it hashes is the text split
by the one `<think>` rule, whatever chunks the text came in and however much of it took the
fast path past the splitter."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from moonflower.coordinator.tally import text_bytes
from moonflower.crypto.receipt import output_digest
from moonflower.generation import Finished, Started, TextDelta, Usage
from moonflower.reasoning import ThinkSplitter
from moonflower.receipts import OutputTally

PIECES = st.sampled_from(["<think>", "</think>", "<", "<th", " ", "\n", "a", "é", "word ", "🌸"])


def tally_of(chunks: list[str], *, starts_in_reasoning: bool) -> OutputTally:
    tally = OutputTally()
    tally.add(Started(prompt_tokens=1, starts_in_reasoning=starts_in_reasoning))
    for chunk in chunks:
        tally.add(TextDelta(chunk, tokens=1))
    tally.add(Finished("stop", Usage(1, len(chunks))))
    return tally


def split_whole(text: str, *, starts_in_reasoning: bool) -> tuple[str, str]:
    splitter = ThinkSplitter(starts_in_reasoning=starts_in_reasoning)
    pieces = splitter.push(text) + splitter.flush()
    visible = "".join(p.text for p in pieces if isinstance(p, TextDelta))
    reasoning = "".join(p.text for p in pieces if not isinstance(p, TextDelta))
    return visible, reasoning


@given(st.lists(st.lists(PIECES, max_size=6).map("".join), max_size=12), st.booleans())
def test_the_tally_splits_like_the_whole_text_read_at_once(
    chunks: list[str], starts_in_reasoning: bool
) -> None:
    tally = tally_of(chunks, starts_in_reasoning=starts_in_reasoning)
    visible, reasoning = split_whole("".join(chunks), starts_in_reasoning=starts_in_reasoning)
    assert tally.digest() == output_digest(visible, reasoning, [], "stop")
    whole = tally_of(["".join(chunks)], starts_in_reasoning=starts_in_reasoning)
    assert tally.digest() == whole.digest()


@given(st.text())
def test_text_bytes_is_the_utf8_length(text: str) -> None:
    assert text_bytes(text) == len(text.encode())
