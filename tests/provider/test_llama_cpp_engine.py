"""The llama.cpp engine against the real models: SmolLM2 (its own ChatML template) and Gemma 3
270M (Gemma turns), checked against llama-cpp-python used directly. Tools, structured output
and logprobs are in test_llama_cpp_outputs.py."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from moonflower.generation import (
    Failed,
    Finished,
    GenerationEvent,
    GenerationRequest,
    Message,
    SamplingParams,
    Started,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)
from moonflower.model_files import resolve_model
from moonflower.provider.engines import EngineUnavailable, load_engine
from moonflower.provider.engines.llama_cpp import LlamaCppEngine
from moonflower.provider.engines.sampling import sampler_settings

GREEDY = SamplingParams(temperature=0.0)
STORY = (Message("user", "Write a short story about a lighthouse keeper and a whale."),)
SAY_HI = (Message("user", "Say hi."),)


def chat(
    messages: tuple[Message, ...],
    max_tokens: int = 48,
    sampling: SamplingParams = GREEDY,
    stop: tuple[str, ...] = (),
) -> GenerationRequest:
    return GenerationRequest(
        model="m", max_tokens=max_tokens, messages=messages, sampling=sampling, stop=stop
    )


def run(engine: LlamaCppEngine, request: GenerationRequest) -> list[GenerationEvent]:
    return list(engine.generate(request, threading.Event()))


def text_of(events: list[GenerationEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def ending(events: list[GenerationEvent]) -> Finished:
    assert isinstance(events[-1], Finished)
    assert sum(isinstance(e, Finished | Failed) for e in events) == 1
    return events[-1]


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine.load(resolve_model("default"))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def small_context() -> Iterator[LlamaCppEngine]:
    """SmolLM2 with a 64-token window, to reach the context limit cheaply."""
    engine = LlamaCppEngine.load(resolve_model("default"), context_length=64)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference() -> Iterator[Any]:
    """SmolLM2 loaded directly, as any llama-cpp-python user would, with the same settings."""
    from llama_cpp import Llama

    llama = Llama(
        str(resolve_model("default").path), n_ctx=8192, n_threads=os.cpu_count(), verbose=False
    )
    yield llama
    llama.close()


@pytest.fixture(scope="module")
def gemma() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine.load(resolve_model("gemma3-270m"))
    yield engine
    engine.close()


# Loading and choosing engines


def test_unknown_engine_names_are_refused() -> None:
    with pytest.raises(EngineUnavailable, match="unknown engine 'vllm'"):
        load_engine("vllm", resolve_model("default"))


@pytest.mark.skipif(importlib.util.find_spec("mlx_lm") is not None, reason="mlx-lm installed")
def test_mlx_without_mlx_lm_is_refused_clearly() -> None:
    with pytest.raises(EngineUnavailable, match="mlx-lm"):
        load_engine("mlx", resolve_model("default"))


def test_importing_the_engines_does_not_load_llama_cpp() -> None:
    code = (
        "import sys, moonflower.provider.engines, moonflower.provider.engines.llama_cpp; "
        "assert 'llama_cpp' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sampling_defaults() -> None:
    settings = sampler_settings(SamplingParams(), repeat_penalty=None)
    assert (settings.temperature, settings.top_p, settings.top_k) == (1.0, 1.0, 0)
    assert (settings.presence_penalty, settings.frequency_penalty) == (0.0, 0.0)
    assert settings.repeat_penalty == 1.0
    assert sampler_settings(SamplingParams(), repeat_penalty=1.1).repeat_penalty == 1.1
    greedy = SamplingParams(temperature=0.0)
    assert sampler_settings(greedy, repeat_penalty=1.1).repeat_penalty == 1.0
    assert sampler_settings(SamplingParams(seed=7), repeat_penalty=None).seed == 7
    assert sampler_settings(SamplingParams(seed=-1), repeat_penalty=None).seed != 0xFFFFFFFF


@pytest.mark.slow
def test_card_describes_the_loaded_weights(smollm2: LlamaCppEngine) -> None:
    source = resolve_model("default")
    card = smollm2.card
    assert card.id == "smollm2-135m-instruct"
    assert card.sha256 == hashlib.sha256(source.path.read_bytes()).hexdigest()
    assert card.context_length == 8192  # SmolLM2 is trained on 8192: min(8192, 8192)
    assert (card.quantization, card.engine) == ("Q4_1", "llama_cpp")
    assert card.size_bytes == source.path.stat().st_size
    assert smollm2.max_concurrent_jobs == 1


@pytest.mark.slow
def test_load_engine_builds_llama_cpp_and_reports_progress() -> None:
    messages: list[str] = []
    engine = load_engine(
        "llama_cpp", resolve_model("default"), context_length=128, progress=messages.append
    )
    try:
        assert engine.card.context_length == 128
        assert any("hashing weights" in m for m in messages)
        assert any("loading model" in m for m in messages)
    finally:
        engine.close()


# Prompts


@pytest.mark.slow
@pytest.mark.parametrize(
    "messages",
    [
        SAY_HI,
        (Message("system", "You are terse."), Message("user", "Hi")),
        (Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "Bye 👋")),
    ],
)
def test_chat_prompt_is_the_models_own_template_and_tokenizer(
    smollm2: LlamaCppEngine, reference: Any, messages: tuple[Message, ...]
) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(
        template=reference.metadata["tokenizer.chat_template"],
        bos_token=reference._model.token_get_text(reference.token_bos()),
        eos_token=reference._model.token_get_text(reference.token_eos()),
    )
    expected = formatter(messages=[{"role": m.role, "content": m.content} for m in messages])
    request = chat(messages, max_tokens=1)
    assert smollm2.render_prompt(request) == expected.prompt
    started = run(smollm2, request)[0]
    assert isinstance(started, Started)
    tokens = reference.tokenize(expected.prompt.encode(), add_bos=False, special=True)
    assert started.prompt_tokens == len(tokens)
    assert smollm2.prompt_tokens(request) == tokens


@pytest.mark.slow
def test_raw_prompt_is_tokenized_as_is(smollm2: LlamaCppEngine, reference: Any) -> None:
    prompt = "The three primary colours are"
    request = GenerationRequest(model="m", max_tokens=4, prompt=prompt, sampling=GREEDY)
    events = run(smollm2, request)
    assert events[0] == Started(prompt_tokens=len(reference.tokenize(prompt.encode())))
    assert ending(events).usage.completion_tokens == 4


# Generation


@pytest.mark.slow
def test_greedy_is_deterministic(smollm2: LlamaCppEngine) -> None:
    first, second = run(smollm2, chat(STORY)), run(smollm2, chat(STORY))
    assert text_of(first) == text_of(second) != ""
    assert ending(first) == ending(second)


@pytest.mark.slow
def test_a_seed_makes_sampling_repeatable(smollm2: LlamaCppEngine) -> None:
    def sample(seed: int) -> str:
        params = SamplingParams(temperature=1.0, seed=seed)
        return text_of(run(smollm2, chat(STORY, max_tokens=32, sampling=params)))

    assert sample(1234) == sample(1234)
    assert len({sample(1234), sample(1), sample(2), sample(3)}) > 1


@pytest.mark.slow
def test_max_tokens_ends_with_length(smollm2: LlamaCppEngine) -> None:
    end = ending(run(smollm2, chat(STORY, max_tokens=7)))
    assert end.reason == "length"
    assert end.usage.completion_tokens == 7


@pytest.mark.slow
def test_max_tokens_zero_counts_the_prompt_without_evaluating_it(
    smollm2: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_evaluation(*args: object, **kwargs: object) -> None:
        raise AssertionError("the prompt was evaluated")

    monkeypatch.setattr(smollm2._llama, "eval", no_evaluation)
    request = chat(STORY, max_tokens=0)
    prompt = len(smollm2.prompt_tokens(request))
    assert run(smollm2, request) == [
        Started(prompt_tokens=prompt),
        Finished(reason="length", usage=Usage(prompt, 0)),
    ]


@pytest.mark.slow
def test_eos_ends_with_stop_and_never_shows(smollm2: LlamaCppEngine) -> None:
    events = run(smollm2, chat(SAY_HI, max_tokens=200))
    end = ending(events)
    assert end.reason == "stop"
    assert end.stop_sequence is None
    assert end.usage.completion_tokens < 200
    assert "<|im_end|>" not in text_of(events)


@pytest.mark.slow
def test_a_stop_sequence_cuts_the_text_before_it(smollm2: LlamaCppEngine) -> None:
    full = text_of(run(smollm2, chat(STORY)))
    stop = full[20:27]  # likely spans a token boundary: exercises the holdback
    assert len(stop.strip()) > 2
    events = run(smollm2, chat(STORY, stop=("never appears", stop)))
    end = ending(events)
    assert (end.reason, end.stop_sequence) == ("stop", stop)
    assert text_of(events) == full[: full.index(stop)]


@pytest.mark.slow
def test_cancel_stops_within_one_token(smollm2: LlamaCppEngine) -> None:
    cancel = threading.Event()
    deltas_after_cancel = 0
    events: list[GenerationEvent] = []
    for event in smollm2.generate(chat(STORY, max_tokens=200), cancel):
        events.append(event)
        if isinstance(event, TextDelta):
            if cancel.is_set():
                deltas_after_cancel += 1
            elif sum(isinstance(e, TextDelta) for e in events) == 3:
                cancel.set()
    end = ending(events)
    assert end.reason == "cancelled"
    assert end.usage.completion_tokens <= 4
    assert deltas_after_cancel == 0


@pytest.mark.slow
def test_a_busy_engine_still_honours_cancel(smollm2: LlamaCppEngine) -> None:
    running = smollm2.generate(chat(STORY), threading.Event())
    assert isinstance(next(running), Started)  # holds the engine
    cancelled = threading.Event()
    cancelled.set()
    waiting = list(smollm2.generate(chat(SAY_HI), cancelled))
    assert [type(e) for e in waiting] == [Finished]
    assert ending(waiting).reason == "cancelled"
    running.close()
    assert ending(run(smollm2, chat(SAY_HI, max_tokens=2))).usage.completion_tokens == 2


@pytest.mark.slow
def test_a_prompt_that_does_not_fit_fails_before_generating(
    small_context: LlamaCppEngine,
) -> None:
    words = " ".join(["word"] * 100)
    for request, param in [
        (chat((Message("user", words),)), "messages"),
        (GenerationRequest(model="m", max_tokens=8, prompt=words), "prompt"),
    ]:
        tokens = len(small_context.prompt_tokens(request))
        assert run(small_context, request) == [
            Failed(
                code="context_length_exceeded",
                message=f"This model's maximum context length is 64 tokens, "
                f"but the prompt has {tokens} tokens.",
                param=param,
            )
        ]


@pytest.mark.slow
def test_generation_stops_when_the_context_is_full(small_context: LlamaCppEngine) -> None:
    events = run(small_context, chat(STORY, max_tokens=1000))
    end = ending(events)
    assert end.reason == "length"
    assert end.usage.total_tokens == 64


@pytest.mark.slow
def test_empty_messages_are_an_invalid_request(smollm2: LlamaCppEngine) -> None:
    events = run(smollm2, GenerationRequest(model="m", max_tokens=4))
    assert len(events) == 1
    assert isinstance(events[0], Failed)
    assert (events[0].code, events[0].param) == ("invalid_request", "messages")


@pytest.mark.slow
def test_engine_errors_name_the_type_only(
    smollm2: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> Iterator[int]:
        raise RuntimeError("llama_decode failed on 'my secret prompt'")
        yield 0

    monkeypatch.setattr(smollm2._llama, "generate", broken)
    events = run(smollm2, chat(SAY_HI))
    assert isinstance(events[0], Started)
    assert events[1:] == [Failed(code="engine_error", message="RuntimeError")]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("messages", "max_tokens"),
    [(SAY_HI, 100), (STORY, 40), ((Message("user", "Translate to Chinese: good morning"),), 30)],
)
def test_usage_and_text_match_llama_cpp_python(
    smollm2: LlamaCppEngine, reference: Any, messages: tuple[Message, ...], max_tokens: int
) -> None:
    request = chat(messages, max_tokens=max_tokens)
    events = run(smollm2, request)
    expected = reference.create_completion(
        prompt=smollm2.prompt_tokens(request),
        max_tokens=max_tokens,
        temperature=0.0,
        repeat_penalty=1.0,
    )
    end = ending(events)
    assert end.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert end.reason == expected["choices"][0]["finish_reason"]
    if expected["usage"]["completion_tokens"] > max_tokens:
        # llama-cpp-python reads past max_tokens to complete a character split across
        # tokens; the engine stops at max_tokens and drops the unfinished character.
        assert end.usage.completion_tokens == max_tokens
        assert expected["choices"][0]["text"].startswith(text_of(events))
    else:
        assert end.usage.completion_tokens == expected["usage"]["completion_tokens"]
        assert text_of(events) == expected["choices"][0]["text"]
    assert "\ufffd" not in text_of(events)


# Gemma: no template in its metadata, so Gemma's own turn format


@pytest.mark.slow
def test_gemma_card_and_turn_format(gemma: LlamaCppEngine) -> None:
    assert gemma.card.id == "gemma-3-270m"
    assert gemma.card.quantization == "Q4_K_M"
    assert gemma.card.context_length == 8192  # trained on 32768, capped at 8192
    request = chat((Message("system", "Be brief."), Message("user", "Name a fruit.")))
    assert gemma.render_prompt(request) == (
        "<start_of_turn>user\nBe brief.\n\nName a fruit.<end_of_turn>\n<start_of_turn>model\n"
    )
    tokens = gemma.prompt_tokens(request)
    assert tokens[:2] == [2, 105]  # <bos>, then <start_of_turn> as one special token
    assert tokens.count(105) == 2
    assert tokens.count(106) == 1  # <end_of_turn>
    started = run(gemma, chat(request.messages, max_tokens=1))[0]
    assert started == Started(prompt_tokens=len(tokens))


@pytest.mark.slow
def test_gemma_generates(gemma: LlamaCppEngine) -> None:
    events = run(gemma, chat((Message("user", "What is the capital of France?"),), 24))
    end = ending(events)
    assert end.usage.completion_tokens > 0
    text = text_of(events)
    assert text.strip()
    assert "<end_of_turn>" not in text
    assert "<start_of_turn>" not in text
    again = run(gemma, chat((Message("user", "What is the capital of France?"),), 24))
    assert text_of(again) == text


@pytest.mark.slow
def test_gemma_raw_completion(gemma: LlamaCppEngine) -> None:
    request = GenerationRequest(
        model="m", max_tokens=12, prompt="The capital of France is", sampling=GREEDY
    )
    events = run(gemma, request)
    assert events[0] == Started(prompt_tokens=6)  # <bos> + 5 words
    assert ending(events).usage.completion_tokens == 12
    assert "France" in text_of(events)


@pytest.mark.slow
def test_gemma_forced_call_validates_and_tool_turns_render(gemma: LlamaCppEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    }
    weather = Tool("get_weather", "Weather in a city", schema)
    call = ToolCall("call_1", "get_weather", '{"city": "Oslo", "unit": "c"}')
    messages = (
        Message("user", "Weather in Oslo?"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "-3 and snowing", tool_call_id="call_1", name="get_weather"),
        Message("user", "And in Paris?"),
    )
    request = GenerationRequest(
        model="m",
        max_tokens=48,
        messages=messages,
        sampling=GREEDY,
        tools=(weather,),
        tool_choice=ToolChoice("function", "get_weather"),
    )
    prompt = gemma.render_prompt(request)
    assert prompt.startswith("<start_of_turn>user\n# Tools\n")
    assert "-3 and snowing" in prompt
    events = run(gemma, request)
    assert ending(events).reason == "tool_calls"
    arguments = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
    jsonschema.validate(json.loads(arguments), schema)
