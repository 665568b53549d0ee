"""Stop-sequence holdback and UTF-8 reassembly over streamed pieces, without a model."""

from __future__ import annotations

import random

import pytest

from moonflower.provider.engines.stop_text import (
    StopTextScanner,
    TextStream,
    earliest_stop,
    held_back_length,
)


def feed(scanner: StopTextScanner, pieces: list[str]) -> tuple[list[str], str | None]:
    released: list[str] = []
    for piece in pieces:
        result = scanner.push(piece)
        released.append(result.text)
        if result.stop is not None:
            return released, result.stop
    released.append(scanner.flush())
    return released, None


def test_without_stops_everything_is_released_at_once() -> None:
    scanner = StopTextScanner([])
    assert [scanner.push(p).text for p in ["Hel", "lo", " world"]] == ["Hel", "lo", " world"]
    assert scanner.flush() == ""


def test_only_a_possible_stop_prefix_is_held_back() -> None:
    scanner = StopTextScanner(["\n\nUser:"])
    assert scanner.push("Hello\n").text == "Hello"
    assert scanner.push("\nU").text == ""
    result = scanner.push("ser: hi")
    assert (result.text, result.stop) == ("", "\n\nUser:")
    assert scanner.stopped == "\n\nUser:"


def test_a_false_alarm_is_released_as_soon_as_it_cannot_match() -> None:
    scanner = StopTextScanner(["abc"])
    assert scanner.push("xab").text == "x"
    assert scanner.push("x").text == "abx"
    assert scanner.flush() == ""


def test_text_after_the_stop_string_is_dropped() -> None:
    scanner = StopTextScanner(["STOP"])
    result = scanner.push("foo STOP bar")
    assert (result.text, result.stop) == ("foo ", "STOP")
    assert scanner.push("more").text == ""
    assert scanner.flush() == ""


def test_a_stop_string_spanning_many_pieces_is_found() -> None:
    released, stop = feed(StopTextScanner(["<end>"]), ["a<", "e", "n", "d", ">b"])
    assert "".join(released) == "a"
    assert stop == "<end>"


def test_the_earliest_stop_wins_and_the_longest_breaks_a_tie() -> None:
    assert earliest_stop("xx yy", ["yy", "xx"]) == (0, "xx")
    assert earliest_stop("abcd", ["ab", "abc"]) == (0, "abc")
    assert earliest_stop("abcd", ["zz"]) is None


def test_held_back_is_the_longest_suffix_that_starts_a_stop() -> None:
    assert held_back_length("abcab", ["abd"]) == 2
    assert held_back_length("abcab", ["b"]) == 0
    assert held_back_length("xyz", ["zz", "yz!"]) == 2
    assert held_back_length("", ["abc"]) == 0


def test_empty_stop_strings_are_ignored() -> None:
    scanner = StopTextScanner(["", "END"])
    assert scanner.push("text").text == "text"


def test_flush_releases_a_held_tail_when_the_stream_ends() -> None:
    scanner = StopTextScanner(["###"])
    assert scanner.push("done #").text == "done "
    assert scanner.flush() == "#"


@pytest.mark.parametrize("seed", range(25))
def test_any_split_releases_exactly_the_text_before_the_first_stop(seed: int) -> None:
    rng = random.Random(seed)
    stops = ["\nQ:", "END", "aab"]
    text = "".join(rng.choice(["a", "b", "\n", "Q", ":", "E", "N", "D", " "]) for _ in range(60))
    cuts = sorted(rng.sample(range(1, len(text)), 12))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    released, stop = feed(StopTextScanner(stops), pieces)
    first = earliest_stop(text, stops)
    expected = text if first is None else text[: first[0]]
    assert "".join(released) == expected
    assert stop == (None if first is None else first[1])


def test_a_character_split_across_pieces_waits_for_its_last_byte() -> None:
    stream = TextStream([])
    encoded = "é🌍".encode()
    released = [stream.push(encoded[i : i + 1]).text for i in range(len(encoded))]
    assert released == ["", "é", "", "", "", "🌍"]


def test_a_character_cut_off_at_the_end_is_dropped_not_garbled() -> None:
    stream = TextStream([])
    assert stream.push(b"ok" + "🌍".encode()[:2]).text == "ok"
    assert stream.flush() == ""


def test_bytes_that_can_never_be_utf8_become_replacement_characters() -> None:
    assert TextStream([]).push(b"a\xffb").text == "a\ufffdb"


def test_stop_strings_are_matched_on_decoded_text() -> None:
    stream = TextStream(["🌍"])
    encoded = "hi 🌍 there".encode()
    results = [stream.push(encoded[i : i + 2]) for i in range(0, len(encoded), 2)]
    assert "".join(r.text for r in results) == "hi "
    assert stream.stopped == "🌍"
