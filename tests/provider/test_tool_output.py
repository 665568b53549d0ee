"""Generated text becomes tool calls the same way however it is cut into pieces."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence

from hypothesis import given
from hypothesis import strategies as st

from moonflower.generation import ToolCallDelta
from moonflower.provider.engines.tool_output import (
    ChoiceCallStream,
    ForcedCallStream,
    OutputShaper,
    PlainText,
    Shaped,
    ToolCallScanner,
    new_call_id,
    parse_call,
)

NAMES = ("get_weather", "get_time")
WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}'
TIME = '{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}'


def counter() -> Callable[[], str]:
    numbers = itertools.count()
    return lambda: f"call_{next(numbers)}"


def scanner() -> ToolCallScanner:
    return ToolCallScanner(NAMES, new_id=counter())


def feed(shaper: OutputShaper, pieces: Sequence[str], *, complete: bool = True) -> list[Shaped]:
    out: list[Shaped] = []
    for piece in pieces:
        out += shaper.push(piece)
    out += shaper.flush(complete=complete)
    return out


def summary(out: list[Shaped]) -> tuple[str, list[tuple[str | None, str | None, str]]]:
    """The text, and each call as (id, name, joined arguments)."""
    text = "".join(item for item in out if isinstance(item, str))
    calls: dict[int, list[str | None]] = {}
    for item in out:
        if isinstance(item, ToolCallDelta):
            call = calls.setdefault(item.index, [None, None, ""])
            call[0] = call[0] or item.id
            call[1] = call[1] or item.name
            call[2] = f"{call[2]}{item.arguments}"
    return text, [(c[0], c[1], c[2] or "") for _, c in sorted(calls.items())]


def cuts(text: str, points: list[int]) -> list[str]:
    edges = sorted({0, len(text), *(p % (len(text) + 1) for p in points)})
    return [text[a:b] for a, b in itertools.pairwise(edges)]


# ToolCallScanner (tool_choice auto)


def test_text_without_calls_passes_through_unchanged() -> None:
    text = "Hello <b>world</b> <tool and < tool_call> and trailing space \n"
    assert summary(feed(scanner(), [text])) == (text, [])
    assert scanner().calls == 0


def test_a_block_becomes_a_call_and_the_whitespace_around_it_goes() -> None:
    out = feed(scanner(), [f"Let me check.\n<tool_call>\n{WEATHER}\n</tool_call>\n"])
    assert summary(out) == (
        "Let me check.",
        [("call_0", "get_weather", '{"city": "Paris", "unit": "c"}')],
    )
    assert out[-1] == ToolCallDelta(0, '{"city": "Paris", "unit": "c"}', "call_0", "get_weather")


def test_several_blocks_are_numbered_in_order() -> None:
    shaper = scanner()
    text = f"<tool_call>{WEATHER}</tool_call>\n\n<tool_call>{TIME}</tool_call>"
    _, calls = summary(feed(shaper, [text]))
    assert [(c[0], c[1]) for c in calls] == [("call_0", "get_weather"), ("call_1", "get_time")]
    assert json.loads(calls[1][2]) == {"tz": "Europe/Paris"}
    assert shaper.calls == 2


def test_malformed_blocks_stay_text() -> None:
    for block in [
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "get_time", "arguments": "now"}</tool_call>',
        '<tool_call>["get_time"]</tool_call>',
    ]:
        text = f"Before \n{block} after"
        assert summary(feed(scanner(), [text])) == (text, [])


def test_an_unclosed_block_counts_only_when_its_json_is_whole() -> None:
    assert summary(feed(scanner(), [f"<tool_call>{TIME}\n"]))[1] == [
        ("call_0", "get_time", '{"tz": "Europe/Paris"}')
    ]
    cut = f"<tool_call>{TIME[:20]}"
    assert summary(feed(scanner(), [cut], complete=False)) == (cut, [])


def test_only_a_possible_tag_prefix_and_whitespace_are_held_back() -> None:
    shaper = scanner()
    assert shaper.push("Hi <tool") == ["Hi"]
    assert shaper.held == len(" <tool")
    assert shaper.push("box>") == [" <toolbox>"]
    assert shaper.push("\n\n") == []
    assert shaper.push("x") == ["\n\nx"]
    assert shaper.held == 0


def test_parameters_is_read_as_arguments_and_missing_arguments_are_empty() -> None:
    assert parse_call('{"name": "get_time", "parameters": {"tz": "UTC"}}', NAMES) is not None
    parsed = parse_call('{"name": "get_time"}', NAMES)
    assert parsed is not None
    assert parsed.arguments == "{}"


@given(
    before=st.text(max_size=12),
    between=st.text(alphabet=" \n\tab<>/", max_size=6),
    after=st.text(max_size=12),
    points=st.lists(st.integers(min_value=0), max_size=12),
)
def test_any_chunking_gives_the_same_calls_and_text(
    before: str, between: str, after: str, points: list[int]
) -> None:
    text = f"{before}<tool_call>{WEATHER}</tool_call>{between}<tool_call>{TIME}</tool_call>{after}"
    whole = summary(feed(scanner(), [text]))
    assert summary(feed(scanner(), cuts(text, points))) == whole
    names = [call[1] for call in whole[1]]
    assert names[-2:] == ["get_weather", "get_time"] or "<tool_call>" in before


@given(text=st.text(alphabet='ab <>/_tolc\n{}"', max_size=60), points=st.lists(st.integers(0)))
def test_arbitrary_text_is_chunking_independent_and_loses_nothing_without_calls(
    text: str, points: list[int]
) -> None:
    whole = summary(feed(scanner(), [text]))
    assert summary(feed(scanner(), cuts(text, points))) == whole
    if not whole[1]:
        assert whole[0] == text


# Forced calls


def test_a_forced_call_streams_its_arguments_after_the_id_and_name() -> None:
    shaper = ForcedCallStream("get_weather", new_id=counter())
    assert shaper.push("") == []
    assert shaper.push('{"city"') == [
        ToolCallDelta(0, "", id="call_0", name="get_weather"),
        ToolCallDelta(0, '{"city"'),
    ]
    assert shaper.push(': "Oslo"}') == [ToolCallDelta(0, ': "Oslo"}')]
    assert shaper.flush(complete=True) == []
    assert shaper.calls == 1


@given(points=st.lists(st.integers(min_value=0), max_size=20), space=st.sampled_from(["", " "]))
def test_a_choice_of_calls_streams_the_chosen_arguments_for_any_chunking(
    points: list[int], space: str
) -> None:
    arguments = '{"city": "Paris", "unit": {"deep": [1, 2]}}'
    text = f'{{{space}"name":{space}"get_weather",{space}"arguments":{space}{arguments}{space}}}'
    for pieces in ([text], cuts(text, points)):
        out = feed(ChoiceCallStream(NAMES, new_id=counter()), pieces)
        assert summary(out) == ("", [("call_0", "get_weather", arguments)])
        assert out[0] == ToolCallDelta(0, "", id="call_0", name="get_weather")


def test_a_cut_off_choice_keeps_the_arguments_it_has() -> None:
    shaper = ChoiceCallStream(NAMES, new_id=counter())
    out = feed(shaper, ['{"name": "get_time", "arguments": {"tz": "UTC"}'], complete=False)
    assert summary(out)[1] == [("call_0", "get_time", '{"tz": "UTC"}')]
    nothing = feed(ChoiceCallStream(NAMES), ['{"name": "get_'], complete=False)
    assert nothing == []


def test_plain_text_and_ids() -> None:
    assert feed(PlainText(), ["a", "", "b"]) == ["a", "b"]
    first, second = new_call_id(), new_call_id()
    assert first.startswith("call_")
    assert len(first) == 29
    assert first != second
