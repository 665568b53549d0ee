"""What the real-model conformance tests share: a network whose keys are rate-limited low
enough to reach a 429 cheaply, the keys that make each error status, the official SDK
clients, and making a call fail with a given status.

It starts real processes (`LocalNetwork`) and validates nothing itself: each test module
checks the bodies it gets against the document of its dialect."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.support.network import LocalNetwork

MODEL = "smollm2-135m-instruct"
REQUESTS_PER_MINUTE = 60
"""Per key; the main key of one module makes well under this many requests."""
HUGE = "x" * (9 * 1024 * 1024)
"""Over the coordinator's 8 MiB body limit."""


def rate_limited_network(root: Path) -> Iterator[LocalNetwork]:
    """A coordinator and one provider of the bundled model, stopped when the caller is done."""
    settings = {"RATE_LIMIT_REQUESTS_PER_MINUTE": str(REQUESTS_PER_MINUTE)}
    net = LocalNetwork(root, settings=settings)
    try:
        net.start_coordinator()
        net.start_provider()
        yield net
    finally:
        net.stop()


@dataclass(frozen=True)
class Keys:
    funded: str
    broke: str
    """A key whose account holds nothing: 402."""
    burst: str
    """A key driven into its rate limit: 429."""

    @classmethod
    def create(cls, network: LocalNetwork) -> Keys:
        return cls(
            funded=network.create_key(),
            broke=network.create_key("broke", credit_usd=None),
            burst=network.create_key("burst", credit_usd=None),
        )


@dataclass(frozen=True)
class Failure:
    """One way to make a request fail: which key asks, what the request carries."""

    status: int
    anthropic_status: int | None = None
    """When Anthropic's dialect answers with another status."""
    key: Callable[[Keys], str] = lambda keys: keys.funded
    model: str = MODEL
    content: str = "Say hello."
    extra: dict[str, object] | None = None
    headers: dict[str, str] | None = None


def openai_client(network: LocalNetwork, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=key, max_retries=0)


def anthropic_client(network: LocalNetwork, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=network.base_url, api_key=key, max_retries=0)


def expect_failure(
    status: int, call: Callable[[], object], error: type[Exception]
) -> httpx.Response:
    """Make `call` fail with `status` and return the raw response. For a 429, repeat it
    (each one a cheap 404 that counts against the key) until the key is over its limit."""
    for _attempt in range(2 * REQUESTS_PER_MINUTE if status == 429 else 1):
        with pytest.raises(error) as caught:
            call()
        response: httpx.Response = caught.value.response  # type: ignore[attr-defined]
        if response.status_code == status:
            break
        assert status == 429 and response.status_code == 404, response.text
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response
