"""Three coordinator replicas on one PostgreSQL and one Redis, as real processes, with the
real model's provider connected to the middle one only: consumers calling the other two,
through the official SDKs, get every dialect, streamed and whole, sealed too, answered by
that provider and charged once.

A replica without a free slot hands the request to one that has (`forwarding`); without
that, replicas 0 and 2 would answer that no provider serves the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from moonflower.client.sealed import SealingTransport
from tests.support.cluster import Cluster
from tests.support.network import LocalNetwork, wait_until
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

MODEL = "smollm2-135m-instruct"
PROMPT = "Say hello."
CONSUMER_REPLICAS = [0, 2]
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
) -> Iterator[Cluster]:
    cluster = Cluster.on(
        tmp_path_factory.mktemp("replicas"),
        postgres_server.create_database(),
        redis_server,
        CORS_ALLOWED_ORIGINS=ORIGIN,
    )
    try:
        cluster.create_key("warm-up")  # migrates the ledger before any replica starts
        cluster.start_replicas(3)
        cluster.replica(1).start_provider("provider-b")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def api_key(cluster: Cluster) -> str:
    key = cluster.create_key("consumer")
    for index in CONSUMER_REPLICAS:  # until each replica sees the provider's free slots
        wait_until(
            lambda index=index: count_tokens(cluster.replica(index), key).status_code == 200,
            30,
            f"replica {index} to find the provider on replica 1",
        )
    return key


def count_tokens(replica: LocalNetwork, key: str) -> httpx.Response:
    return httpx.post(
        f"{replica.base_url}/v1/messages/count_tokens",
        json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]},
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        timeout=60,
    )


def openai_client(replica: LocalNetwork, key: str, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{replica.base_url}/v1",
        api_key=key,
        max_retries=0,
        timeout=120,
        **kwargs,  # type: ignore[arg-type]
    )


def balance(replica: LocalNetwork, key: str) -> Decimal:
    response = httpx.get(
        f"{replica.base_url}/v1/payments/balance",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return Decimal(response.json()["balance_usd"])


@pytest.mark.parametrize("replica", CONSUMER_REPLICAS)
@pytest.mark.parametrize("stream", [False, True])
def test_chat_completions_across_replicas(
    cluster: Cluster, api_key: str, replica: int, stream: bool
) -> None:
    client = openai_client(cluster.replica(replica), api_key)
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": PROMPT}
    ]
    if stream:
        chunks = client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces = list(chunks)
        text = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
        usage = pieces[-1].usage
    else:
        completion = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=8, temperature=0
        )
        text = completion.choices[0].message.content or ""
        usage = completion.usage
    assert text
    assert usage is not None and 0 < usage.completion_tokens <= 8


@pytest.mark.parametrize("replica", CONSUMER_REPLICAS)
@pytest.mark.parametrize("stream", [False, True])
def test_legacy_completions_across_replicas(
    cluster: Cluster, api_key: str, replica: int, stream: bool
) -> None:
    client = openai_client(cluster.replica(replica), api_key)
    if stream:
        text = "".join(
            chunk.choices[0].text
            for chunk in client.completions.create(
                model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True
            )
            if chunk.choices
        )
    else:
        text = (
            client.completions.create(
                model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0
            )
            .choices[0]
            .text
        )
    assert text


@pytest.mark.parametrize("replica", CONSUMER_REPLICAS)
@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_messages_across_replicas(
    cluster: Cluster, api_key: str, replica: int, stream: bool
) -> None:
    client = anthropic.Anthropic(
        base_url=cluster.replica(replica).base_url, api_key=api_key, max_retries=0, timeout=120
    )
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": PROMPT}]
    if stream:
        with client.messages.stream(model=MODEL, max_tokens=8, messages=messages) as events:
            text = "".join(events.text_stream)
            message = events.get_final_message()
    else:
        message = client.messages.create(model=MODEL, max_tokens=8, messages=messages)
        text = "".join(block.text for block in message.content if block.type == "text")
    assert text
    assert 0 < message.usage.output_tokens <= 8


@pytest.mark.parametrize("replica", CONSUMER_REPLICAS)
@pytest.mark.parametrize("stream", [False, True])
def test_responses_across_replicas(
    cluster: Cluster, api_key: str, replica: int, stream: bool
) -> None:
    client = openai_client(cluster.replica(replica), api_key)
    if stream:
        events = list(
            client.responses.create(
                model=MODEL, input=PROMPT, max_output_tokens=16, temperature=0, stream=True
            )
        )
        ended = ("response.completed", "response.incomplete")
        completed = [e for e in events if e.type in ended]
        assert len(completed) == 1
        response = completed[0].response
    else:
        response = client.responses.create(
            model=MODEL, input=PROMPT, max_output_tokens=16, temperature=0
        )
    assert response.status in ("completed", "incomplete")  # at most 16 tokens: either
    assert response.output_text


def test_count_tokens_across_replicas(cluster: Cluster, api_key: str) -> None:
    counts = {count_tokens(cluster.replica(i), api_key).json()["input_tokens"] for i in range(3)}
    assert len(counts) == 1 and counts.pop() > 0


def test_a_sealed_request_is_answered_through_another_replica(
    cluster: Cluster, api_key: str
) -> None:
    with httpx.Client(transport=SealingTransport(), timeout=120) as http:
        client = openai_client(cluster.replica(0), api_key, http_client=http)
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=8,
            temperature=0,
        )
    assert completion.choices[0].message.content


def test_a_forwarded_request_is_charged_once_what_its_answer_says(
    cluster: Cluster, api_key: str
) -> None:
    before = balance(cluster.replica(2), api_key)
    response = httpx.post(
        f"{cluster.replica(0).base_url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 8,
            "temperature": 0,
        },
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-provider-chip"]  # answered by replica 1's provider
    cost = Decimal(response.headers["x-moonflower-cost-usd"])
    assert cost > 0
    assert before - balance(cluster.replica(2), api_key) == cost
    logs = [cluster.replica(i).coordinator.log() for i in range(3)]  # type: ignore[union-attr]
    assert "sent to provider" not in logs[0] + logs[2]


def test_every_replica_lists_the_same_models(cluster: Cluster, api_key: str) -> None:
    listed = [
        [m.id for m in openai_client(cluster.replica(i), api_key).models.list()] for i in range(3)
    ]
    assert listed[0] == listed[1] == listed[2]
    assert MODEL in listed[0]


def test_a_browsers_forwarded_request_gets_one_set_of_cors_headers(
    cluster: Cluster, api_key: str
) -> None:
    response = httpx.post(
        f"{cluster.replica(0).base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {api_key}", "Origin": ORIGIN},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers.get_list("access-control-allow-origin") == [ORIGIN]
    assert response.headers["x-provider-id"]  # answered by replica 1's provider
