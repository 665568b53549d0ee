"""The bounds billing relies on before a job runs: the prompt can be no longer than
`prompt_token_bound` says (checked against the real SmolLM2 tokenizer and chat template),
and a reservation from it covers the worst case.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from moonflower import wire
from moonflower.coordinator.billing import prompt_token_bound, reservation
from moonflower.generation import GenerationRequest, Message, Tool, ToolCall, ToolChoice
from moonflower.ledger.pricing import Price, PriceList

CountTokens = Callable[[GenerationRequest], int]
UNBOUNDED = 1 << 24
"""A context length no test prompt reaches: the bound is then the byte length alone."""


def chat(*contents: str, **fields: Any) -> GenerationRequest:
    messages = tuple(
        Message("user" if i % 2 == 0 else "assistant", text) for i, text in enumerate(contents)
    )
    return GenerationRequest(model="m", messages=messages, **fields)


def with_call(arguments: str) -> GenerationRequest:
    """A conversation in which the assistant called a tool with `arguments`."""
    call = ToolCall(id="call_1", name="lookup", arguments=arguments)
    return GenerationRequest(
        model="m",
        messages=(
            Message("user", "Look it up."),
            Message("assistant", "", tool_calls=(call,)),
            Message("tool", "done", tool_call_id="call_1"),
        ),
        tools=(Tool("lookup", parameters={"type": "object"}),),
    )


PROMPTS: dict[str, GenerationRequest] = {
    "short": chat("hi"),
    "empty": chat(""),
    "ascii": chat("The quick brown fox jumps over the lazy dog. " * 40),
    "emoji": chat("😀🎉🌸🧑‍🚀👩🏽‍💻" * 60),
    "cjk": chat("月が綺麗ですね。我们一起去看花。" * 40),
    "mixed": chat("naïve café – Ωμέγα – Привет – مرحبا – שלום – 🌕 " * 30),
    "many short messages": chat(*(["a", "b"] * 150)),
    "many empty messages": chat(*([""] * 300)),
    "control tokens as text": chat("<|im_start|><|im_end|>" * 60),
    "system prompt": GenerationRequest(
        model="m", messages=(Message("system", "Be brief."), Message("user", "hi"))
    ),
    "tools offered": chat("hi", tools=tuple(Tool(f"t{i}") for i in range(20))),
    "tool forced": chat(
        "hi", tools=(Tool("f"),), tool_choice=ToolChoice(mode="function", name="f")
    ),
    "tool call in history": with_call('{"city": "Paris", "days": [1, 2, 3]}'),
    "raw prompt": GenerationRequest(model="m", prompt="Once upon a time, 🌙 "),
    "empty raw prompt": GenerationRequest(model="m", prompt=""),
}


@pytest.fixture(scope="module")
def count_prompt_tokens() -> Iterator[CountTokens]:
    """How many tokens the llama.cpp engine feeds SmolLM2 for a request: its own chat
    template and tokenizer, loaded vocabulary-only (no weights, well under a second)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from moonflower.model_files import resolve_model
    from moonflower.provider.engines.llama_cpp import LlamaCppEngine, _Vocabulary

    llama = llama_cpp.Llama(str(resolve_model("default").path), vocab_only=True, verbose=False)
    card = wire.ModelCard(
        id="m", sha256="0" * 64, context_length=8192, engine="llama_cpp", size_bytes=0
    )
    engine = LlamaCppEngine([llama], card, _Vocabulary(llama))

    def count(request: GenerationRequest) -> int:
        return len(engine.prompt_tokens(request))

    try:
        yield count
    finally:
        llama.close()


# --- prompt_token_bound ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(PROMPTS))
def test_the_bound_is_never_below_the_real_prompt_length(
    name: str, count_prompt_tokens: CountTokens
) -> None:
    request = PROMPTS[name]
    assert prompt_token_bound(request, UNBOUNDED) >= count_prompt_tokens(request) > 0


def test_the_prompts_checked_are_long_enough_to_matter(count_prompt_tokens: CountTokens) -> None:
    # The bound must hold with room to spare for long prompts too, not only tiny ones.
    assert count_prompt_tokens(PROMPTS["emoji"]) > 400
    assert count_prompt_tokens(PROMPTS["cjk"]) > 400
    assert count_prompt_tokens(PROMPTS["many short messages"]) > 1000


def test_the_bound_holds_for_tool_call_arguments_written_in_exponent_notation(
    count_prompt_tokens: CountTokens,
) -> None:
    request = with_call("[" + ",".join(["1e9"] * 300) + "]")
    assert prompt_token_bound(request, UNBOUNDED) >= count_prompt_tokens(request)


def test_arguments_nested_too_deep_to_parse_are_counted_as_sent() -> None:
    arguments = "[" * 100_000 + "]" * 100_000
    request = with_call(arguments)
    assert prompt_token_bound(request, UNBOUNDED) == len(wire.request_bytes(request))


@pytest.mark.parametrize("context_length", [1, 2, 64, 300])
@pytest.mark.parametrize("name", ["short", "emoji", "many short messages"])
def test_the_bound_is_never_above_the_context_length(name: str, context_length: int) -> None:
    request = PROMPTS[name]
    assert len(wire.request_bytes(request)) > 300  # so the context length is what binds
    assert prompt_token_bound(request, context_length) == context_length


def test_below_the_context_length_the_bound_is_the_request_size() -> None:
    request = PROMPTS["cjk"]
    size = len(wire.request_bytes(request))
    assert size > len(request.messages[0].content.encode()) > 1000
    assert prompt_token_bound(request, size) == size
    assert prompt_token_bound(request, size + 1) == size
    assert prompt_token_bound(request, UNBOUNDED) == size


# --- reservation -----------------------------------------------------------------------

PRICES = PriceList(
    default=Price(1_000_000, 3_000_000),
    models={"special": Price(2_000_000, 7_000_000)},
    minimum_charge_micro_usd=50,
    platform_fee_bps=500,
)


def card(context_length: int) -> wire.ModelCard:
    return wire.ModelCard(
        id="m", sha256="0" * 64, context_length=context_length, engine="t", size_bytes=0
    )


def test_a_reservation_is_the_price_of_the_bound_and_the_whole_token_budget() -> None:
    # Context 100 binds the prompt (any request's JSON is longer), so the reservation is
    # 100 prompt tokens and max_tokens completion tokens at the model's price.
    request = chat("hi", max_tokens=40)
    assert reservation(PRICES, request, card(100)) == 100 * 1 + 40 * 3
    special = dataclasses.replace(request, model="special")
    assert reservation(PRICES, special, card(100)) == 100 * 2 + 40 * 7


def test_a_reservation_below_the_minimum_is_the_minimum() -> None:
    request = chat("hi", max_tokens=1)
    assert reservation(PRICES, request, card(10)) == 50  # 10 * 1 + 1 * 3 = 13 < 50


def test_a_reservation_uses_the_request_size_when_the_context_is_larger() -> None:
    request = chat("月" * 300, max_tokens=1000)
    size = len(wire.request_bytes(request))
    assert reservation(PRICES, request, card(UNBOUNDED)) == size + 3000


def test_a_reservation_floors_sub_micro_dollar_amounts_once() -> None:
    prices = PriceList(Price(1, 1), minimum_charge_micro_usd=0)
    request = chat("hi", max_tokens=999_999)
    # 1 + 999_999 tokens at 1 micro-USD per million is exactly 1 micro-USD.
    assert reservation(prices, request, card(1)) == 1
    assert reservation(prices, dataclasses.replace(request, max_tokens=999_998), card(1)) == 0


def test_a_reservation_needs_max_tokens_filled_in() -> None:
    with pytest.raises(AssertionError):
        reservation(PRICES, chat("hi"), card(100))


@pytest.mark.parametrize("name", ["short", "emoji", "cjk", "many short messages", "tools offered"])
def test_a_reservation_covers_the_most_the_real_job_can_cost(
    name: str, count_prompt_tokens: CountTokens
) -> None:
    request = dataclasses.replace(PROMPTS[name], max_tokens=256)
    worst = PRICES.cost("m", count_prompt_tokens(request), 256)
    assert reservation(PRICES, request, card(8192)) >= worst
