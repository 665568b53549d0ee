"""The official Anthropic and OpenAI SDKs list and get models from a real network serving two
real models (SmolLM2 and Gemma 3) and an alias: each SDK sees its own shape, Anthropic's
auto-paging walks every model one page at a time, and an unknown model is each SDK's
`NotFoundError`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.support.network import LocalNetwork, wait_until

pytestmark = pytest.mark.slow

SMOLLM = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
ALIAS = "claude-3-5-haiku-latest"


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(tmp_path_factory.mktemp("models-sdk"))
    network.settings["MODEL_ALIASES"] = json.dumps({ALIAS: SMOLLM})
    try:
        network.start_coordinator()
        network.start_provider("smollm", "default")
        network.start_provider("gemma", "gemma3-270m")
        yield network
    finally:
        network.stop()


@pytest.fixture(scope="module")
def key(two_models: LocalNetwork) -> str:
    key = two_models.create_key()

    def both_listed() -> bool:  # registered, and past their first challenge
        response = httpx.get(
            f"{two_models.base_url}/v1/models",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        return {SMOLLM, GEMMA} <= {m["id"] for m in response.json()["data"]}

    wait_until(both_listed, 60, "both models to be listed")
    return key


@pytest.fixture
def claude(two_models: LocalNetwork, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=two_models.base_url, api_key=key, max_retries=0)


@pytest.fixture
def gpt(two_models: LocalNetwork, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{two_models.base_url}/v1", api_key=key, max_retries=0)


def test_anthropic_sdk_lists_models_as_model_infos(claude: anthropic.Anthropic) -> None:
    page = claude.models.list()
    assert [m.id for m in page.data] == [GEMMA, SMOLLM]
    assert page.has_more is False
    assert (page.first_id, page.last_id) == (GEMMA, SMOLLM)
    for model in page.data:
        assert model.type == "model"
        assert model.display_name == model.id
        assert model.created_at.tzinfo is not None


def test_anthropic_sdk_auto_pages_one_model_at_a_time(claude: anthropic.Anthropic) -> None:
    first = claude.models.list(limit=1)
    assert [m.id for m in first.data] == [GEMMA]
    assert first.has_more is True
    assert first.has_next_page()
    assert [m.id for m in first] == [GEMMA, SMOLLM]  # iterating fetches the pages after it
    last = first.get_next_page()
    assert [m.id for m in last.data] == [SMOLLM]
    assert last.has_more is False
    back = claude.models.list(limit=1, before_id=SMOLLM)
    assert [m.id for m in back.data] == [GEMMA]
    assert back.has_more is False


def test_anthropic_sdk_retrieves_a_model_and_resolves_an_alias(
    claude: anthropic.Anthropic,
) -> None:
    gemma = claude.models.retrieve(GEMMA)
    assert (gemma.id, gemma.type) == (GEMMA, "model")
    assert claude.models.retrieve(ALIAS).id == SMOLLM


def test_anthropic_sdk_raises_not_found_and_bad_request(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.models.retrieve("no-such-model")
    assert missing.value.status_code == 404
    body = missing.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert body["request_id"].startswith("req_")
    with pytest.raises(anthropic.BadRequestError):
        claude.models.list(limit=5000)
    with pytest.raises(anthropic.BadRequestError):
        claude.models.list(after_id="no-such-model")


def test_openai_sdk_lists_and_retrieves_models(gpt: openai.OpenAI) -> None:
    models = gpt.models.list()
    assert [m.id for m in models.data] == [ALIAS, GEMMA, SMOLLM]
    assert {m.owned_by for m in models.data} == {"moonflower"}
    gemma = gpt.models.retrieve(GEMMA)
    assert (gemma.id, gemma.object) == (GEMMA, "model")
    alias = gpt.models.retrieve(ALIAS)
    assert alias.id == ALIAS
    assert alias.model_extra is not None and alias.model_extra["alias_of"] == SMOLLM


def test_openai_sdk_raises_not_found(gpt: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        gpt.models.retrieve("no-such-model")
    assert missing.value.status_code == 404
    assert missing.value.code == "model_not_found"
    assert missing.value.type == "invalid_request_error"
