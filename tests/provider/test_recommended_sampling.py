"""A model's recommended sampling: read from the weight file or known for the bundled models,
carried on its card, and applied by the engine to the knobs a request leaves unset only."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from moonflower.generation import (
    GenerationRequest,
    Message,
    SamplingParams,
    TextDelta,
)
from moonflower.model_files import resolve_model
from moonflower.provider.engines.llama_cpp import LlamaCppEngine
from moonflower.provider.engines.sampling import recommended_sampling
from moonflower.wire import ModelCard, SamplingDefaults

KNOWN = SamplingDefaults(temperature=0.2, top_p=0.9)


def test_the_weight_files_own_values_win_knob_by_knob() -> None:
    metadata = {
        "general.sampling.temp": "0.6",
        "general.sampling.top_k": "20",
        "general.sampling.penalty_repeat": "1.05",
    }
    assert recommended_sampling(metadata, KNOWN) == SamplingDefaults(
        temperature=0.6, top_p=0.9, top_k=20, repeat_penalty=1.05
    )


def test_without_metadata_the_known_values_stand() -> None:
    assert recommended_sampling({}, KNOWN) == KNOWN
    assert recommended_sampling({}, SamplingDefaults()) == SamplingDefaults()


@pytest.mark.parametrize(
    "metadata",
    [
        {"general.sampling.temp": "nan"},
        {"general.sampling.temp": "inf"},
        {"general.sampling.temp": "hot"},
        {"general.sampling.top_k": "-1"},  # llama.cpp's "off"
        {"general.sampling.top_k": "2.5"},
    ],
)
def test_unreadable_values_in_the_file_are_ignored(metadata: dict[str, str]) -> None:
    assert recommended_sampling(metadata, KNOWN) == KNOWN


def test_values_out_of_range_leave_the_known_ones() -> None:
    assert recommended_sampling({"general.sampling.temp": "9"}, KNOWN) == KNOWN
    assert recommended_sampling({"general.sampling.top_p": "0"}, KNOWN) == KNOWN
    assert recommended_sampling({"general.sampling.penalty_repeat": "-1"}, KNOWN) == KNOWN


def test_a_card_refuses_recommendations_out_of_range() -> None:
    card = {
        "id": "m",
        "sha256": "0" * 64,
        "context_length": 8,
        "engine": "llama_cpp",
        "size_bytes": 1,
    }
    assert ModelCard.model_validate(card).sampling_defaults == SamplingDefaults()
    for wrong in (
        {"temperature": 3},
        {"top_p": 0},
        {"top_k": -1},
        {"temperature": "nan"},
        {"repeat_penalty": 0},
    ):
        with pytest.raises(ValueError, match="sampling_defaults"):
            ModelCard.model_validate({**card, "sampling_defaults": wrong})


def test_only_unset_knobs_take_the_recommendation() -> None:
    recommended = SamplingParams(temperature=0.2, top_p=0.9, top_k=40)
    asked = SamplingParams(temperature=0.7, seed=3)
    assert asked.filled_from(recommended) == SamplingParams(
        temperature=0.7, top_p=0.9, top_k=40, seed=3
    )
    assert SamplingParams(temperature=0.0).filled_from(recommended).temperature == 0.0


def test_the_bundled_models_carry_their_authors_recommendations() -> None:
    assert resolve_model("default").sampling_defaults == SamplingDefaults(
        temperature=0.2, top_p=0.9, repeat_penalty=1.1
    )


# The engine, with the real model


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine.load(resolve_model("default"), context_length=512)
    yield engine
    engine.close()


def story(engine: LlamaCppEngine, sampling: SamplingParams) -> str:
    request = GenerationRequest(
        model=engine.card.id,
        max_tokens=48,
        messages=(Message(role="user", content="Tell me a story about a fox."),),
        sampling=sampling,
    )
    events = engine.generate(request, threading.Event())
    return "".join(e.text for e in events if isinstance(e, TextDelta))


@pytest.mark.slow
def test_the_loaded_card_carries_the_recommendation(smollm2: LlamaCppEngine) -> None:
    assert smollm2.card.sampling_defaults == SamplingDefaults(
        temperature=0.2, top_p=0.9, repeat_penalty=1.1
    )


@pytest.mark.slow
def test_the_engine_samples_unset_knobs_as_recommended(smollm2: LlamaCppEngine) -> None:
    unset = story(smollm2, SamplingParams(seed=11))
    assert unset == story(smollm2, SamplingParams(seed=11, temperature=0.2, top_p=0.9))
    # The same seed at the engine's own defaults samples another story.
    assert unset != story(smollm2, SamplingParams(seed=11, temperature=1.0, top_p=1.0))
