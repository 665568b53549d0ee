"""OpenAI legacy completions through real processes and the real model, called with the
official `openai` SDK and with raw HTTP where the exact bytes matter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.support.network import LocalNetwork
from tests.support.openapi import assert_valid_openai

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
PROMPT = "Once upon a time, in a small village by the sea,"


@pytest.fixture(scope="module")
def client(network: LocalNetwork, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=api_key, max_retries=0)


@pytest.fixture(scope="module")
def prompt_token_count(default_model_path: Path) -> int:
    """PROMPT's length in the model's own tokens, tokenized as the engine does: special
    tokens parsed, and llama.cpp adds BOS only if the model's metadata asks for it."""
    from llama_cpp import Llama

    vocabulary = Llama(str(default_model_path), vocab_only=True, verbose=False)
    return len(vocabulary.tokenize(PROMPT.encode(), add_bos=True, special=True))


def test_the_raw_prompt_is_continued_as_llama_cpp_continues_it(
    client: openai.OpenAI, reference_llama: Any, prompt_token_count: int
) -> None:
    completion = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=24)
    reference_llama.reset()  # no cached prefix: the same batches as the provider evaluates
    reference = reference_llama.create_completion(PROMPT, temperature=0, max_tokens=24)
    assert completion.id.startswith("cmpl-")
    assert completion.object == "text_completion"
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.text == reference["choices"][0]["text"]
    assert choice.text.strip(), "the model continued the prompt"
    assert choice.finish_reason == reference["choices"][0]["finish_reason"]
    assert choice.logprobs is None
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == prompt_token_count
    assert completion.usage.prompt_tokens == reference["usage"]["prompt_tokens"]
    assert completion.usage.completion_tokens == reference["usage"]["completion_tokens"]
    assert completion.usage.total_tokens == prompt_token_count + completion.usage.completion_tokens


def test_a_stream_gives_the_same_text_and_usage(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=32)
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=PROMPT,
            temperature=0,
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.id == chunks[0].id and c.object == "text_completion" for c in chunks)
    *texts, usage_chunk = chunks
    assert "".join(c.choices[0].text for c in texts) == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in texts]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])
    assert usage_chunk.choices == []
    assert usage_chunk.usage == whole.usage


def test_max_tokens_ends_with_length(client: openai.OpenAI, prompt_token_count: int) -> None:
    for stream in (False, True):
        if stream:
            chunks = list(
                client.completions.create(
                    model=MODEL,
                    prompt=PROMPT,
                    max_tokens=5,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            finish = chunks[-2].choices[0].finish_reason
            usage = chunks[-1].usage
        else:
            completion = client.completions.create(
                model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0
            )
            finish = completion.choices[0].finish_reason
            usage = completion.usage
        assert finish == "length"
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_token_count, 5)


def test_raw_stream_chunks_follow_the_official_schema(network: LocalNetwork, api_key: str) -> None:
    response = httpx.post(
        f"{network.base_url}/v1/completions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "stream": True},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.content.endswith(b"data: [DONE]\n\n")
    payloads = [
        line[len("data: ") :]
        for line in response.content.decode().split("\n")
        if line.startswith("data: ")
    ]
    assert payloads.count("[DONE]") == 1
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    *texts, last = chunks
    assert all(c["choices"][0]["finish_reason"] is None for c in texts)
    for chunk in texts:
        # The document's schema is the whole body's; a chunk before the last has no
        # finish_reason yet (null, as OpenAI sends it).
        assert_valid_openai(
            "CreateCompletionResponse",
            {**chunk, "choices": [{**chunk["choices"][0], "finish_reason": "stop"}]},
        )
    assert_valid_openai("CreateCompletionResponse", last)
    assert last["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in c for c in chunks)


def test_logprobs_come_in_the_legacy_shape(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL, prompt=PROMPT, temperature=0, max_tokens=6, logprobs=2
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None
    logprobs = choice.logprobs
    lists = [logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, logprobs.text_offset]
    assert all(values is not None for values in lists)
    assert len({len(values or []) for values in lists}) == 1
    if not logprobs.tokens:
        pytest.skip("the llama.cpp engine does not fill TextDelta.logprobs yet")
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset is not None and logprobs.text_offset[0] == len(PROMPT)
    assert all(lp <= 0 for lp in logprobs.token_logprobs or [])
    assert all(1 <= len(top) <= 3 for top in logprobs.top_logprobs or [])


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"best_of": 2}, "best_of"),
        ({"suffix": "The end."}, "suffix"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"logprobs": 9}, "logprobs"),
        ({"temperature": 3}, "temperature"),
    ],
)
def test_bad_input_raises_bad_request_naming_the_field(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    arguments: dict[str, Any] = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, **extra}
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(**arguments)
    assert raised.value.status_code == 400
    assert raised.value.param == param
