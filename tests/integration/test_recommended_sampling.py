"""The bundled model's recommended sampling, through real processes and the real model: a
request that sets no sampling knob runs with what SmolLM2's authors recommend (temperature
0.2, top_p 0.9) and so answers briefly and ends by itself; a knob the request sets is used
exactly; and the Responses object reports the values used."""

from __future__ import annotations

import openai
import pytest

from moonflower.settings import DEFAULT_MAX_TOKENS
from tests.support.network import LocalNetwork

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
HELLO = [{"role": "user", "content": "Say hello."}]
REQUESTS = 20
# At temperature 1, SmolLM2 answered "Say hello." with up to 760 tokens; at its recommended
# settings a greeting is a sentence or two.
BRIEF_TOKENS = 100


@pytest.fixture(scope="module")
def client(network: LocalNetwork, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=api_key, max_retries=0)


def test_say_hello_without_sampling_knobs_ends_by_itself_every_time(
    client: openai.OpenAI,
) -> None:
    assert BRIEF_TOKENS * 10 < DEFAULT_MAX_TOKENS
    endings = []
    for _ in range(REQUESTS):
        answer = client.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
        assert answer.usage is not None
        endings.append((answer.choices[0].finish_reason, answer.usage.completion_tokens))
    assert all(reason == "stop" for reason, _ in endings), endings
    assert all(0 < tokens < BRIEF_TOKENS for _, tokens in endings), endings


def test_a_response_reports_the_recommended_sampling_it_ran_with(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=16)
    assert (response.temperature, response.top_p) == (0.2, 0.9)


def test_a_temperature_the_request_sets_is_the_one_used(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Say hello.", max_output_tokens=16, temperature=0.7
    )
    assert (response.temperature, response.top_p) == (0.7, 0.9)
    response = client.responses.create(
        model=MODEL, input="Say hello.", max_output_tokens=16, temperature=1.0, top_p=1.0
    )
    assert (response.temperature, response.top_p) == (1.0, 1.0)
