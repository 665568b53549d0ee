"""Every inference answer says who served it, on this machine, with real processes and the
real model: the four routes, streaming and whole, called with the official SDKs, carry the job
id, the provider id, its trust level, whether it is attested, its chip and its serial. On a
machine without a hardware serial readable by the provider (Linux without root) the serial is
the provider's stand-in, which stays the same when the provider restarts."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import anthropic
import openai
import pytest

from moonflower.provider import hardware
from tests.support.network import LocalNetwork, wait_until

pytestmark = pytest.mark.slow

Headers = Mapping[str, str]
"""Response headers, as either SDK hands them over (case-insensitive)."""

MODEL = "smollm2-135m-instruct"
QUESTION = "Name one colour."
TRUST_HEADERS = (
    "x-moonflower-job-id",
    "x-provider-id",
    "x-provider-trust-level",
    "x-provider-attested",
    "x-provider-chip",
    "x-provider-serial",
)


def openai_client(network: LocalNetwork, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=key, max_retries=0)


def anthropic_client(network: LocalNetwork, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=network.base_url, api_key=key, max_retries=0)


def streamed(response: Any) -> Headers:
    """The headers of a streamed answer, once it has been read to its end (with content)."""
    headers: Headers = response.headers
    assert list(response.parse())
    return headers


def chat(network: LocalNetwork, key: str, *, is_stream: bool) -> Headers:
    completions = openai_client(network, key).chat.completions
    messages: Any = [{"role": "user", "content": QUESTION}]
    if is_stream:
        with completions.with_streaming_response.create(
            model=MODEL, messages=messages, max_tokens=8, stream=True
        ) as response:
            return streamed(response)
    raw = completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=8)
    assert raw.parse().choices[0].message.content is not None
    return raw.headers


def completions(network: LocalNetwork, key: str, *, is_stream: bool) -> Headers:
    legacy = openai_client(network, key).completions
    if is_stream:
        with legacy.with_streaming_response.create(
            model=MODEL, prompt=QUESTION, max_tokens=8, stream=True
        ) as response:
            return streamed(response)
    raw = legacy.with_raw_response.create(model=MODEL, prompt=QUESTION, max_tokens=8)
    assert raw.parse().choices
    return raw.headers


def responses(network: LocalNetwork, key: str, *, is_stream: bool) -> Headers:
    api = openai_client(network, key).responses
    if is_stream:
        with api.with_streaming_response.create(
            model=MODEL, input=QUESTION, max_output_tokens=16, stream=True
        ) as response:
            return streamed(response)
    raw = api.with_raw_response.create(model=MODEL, input=QUESTION, max_output_tokens=16)
    assert raw.parse().output
    return raw.headers


def messages(network: LocalNetwork, key: str, *, is_stream: bool) -> Headers:
    api = anthropic_client(network, key).messages
    asked: Any = [{"role": "user", "content": QUESTION}]
    if is_stream:
        with api.with_streaming_response.create(
            model=MODEL, messages=asked, max_tokens=8, stream=True
        ) as response:
            return streamed(response)
    raw = api.with_raw_response.create(model=MODEL, messages=asked, max_tokens=8)
    assert raw.parse().content
    return raw.headers


ROUTES: dict[str, Callable[..., Headers]] = {
    "chat": chat,
    "completions": completions,
    "responses": responses,
    "messages": messages,
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalNetwork, str]]:
    network = LocalNetwork(tmp_path_factory.mktemp("headers"))
    try:
        network.start_coordinator()
        key = network.create_key()
        network.start_provider()
        yield network, key
    finally:
        network.stop()


def this_machine() -> tuple[str, str | None]:
    """The chip and serial a provider on this machine names (None: its key names it)."""
    described = hardware.detect_hardware()
    assert described.chip
    return described.chip, described.serial


def served_headers(network: LocalNetwork, key: str) -> Headers:
    """The headers of a whole chat answer, once the provider is routable (after a start it
    must pass its first challenge)."""
    answered: list[Headers] = []

    def answers() -> bool:
        try:
            answered.append(chat(network, key, is_stream=False))
        except openai.APIStatusError:
            return False
        return True

    wait_until(answers, 60, "a provider to answer")
    return answered[-1]


@pytest.mark.parametrize("is_stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("route", list(ROUTES))
def test_every_answer_names_its_provider_and_machine(
    live: tuple[LocalNetwork, str], route: str, is_stream: bool
) -> None:
    network, key = live
    served_headers(network, key)  # routable
    headers = ROUTES[route](network, key, is_stream=is_stream)
    for name in TRUST_HEADERS:
        value = headers.get(name, "")
        assert value.strip(), f"{route} {'stream' if is_stream else 'whole'}: no {name}"
        assert value.isascii() and value.isprintable()
    chip, serial = this_machine()
    assert headers["x-provider-chip"] == chip
    if serial is not None:
        assert headers["x-provider-serial"] == serial
    else:
        assert headers["x-provider-serial"].startswith("key-")
    assert headers["x-provider-trust-level"] == "self_signed"
    assert headers["x-provider-attested"] == "true"


def test_the_serial_survives_provider_restarts(live: tuple[LocalNetwork, str]) -> None:
    network, key = live
    first = served_headers(network, key)
    seen = [(first["x-provider-id"], first["x-provider-serial"])]
    provider = next(p for p in network.processes if p.name == "provider")
    for _restart in range(2):
        provider.stop()
        wait_until(lambda: network.provider_count() == 0, 30, "the provider to leave")
        provider = network.start_provider()  # the same data directory: the same identity key
        headers = served_headers(network, key)
        seen.append((headers["x-provider-id"], headers["x-provider-serial"]))
    assert len({provider_id for provider_id, _ in seen}) == 3  # three connections
    assert len({serial for _, serial in seen}) == 1, seen
    _chip, serial = this_machine()
    if serial is not None and serial.startswith("mid-"):
        # A machine id names the machine, not the key: another provider here has the same.
        provider.stop()
        wait_until(lambda: network.provider_count() == 0, 30, "the provider to leave")
        network.start_provider("another")
        assert served_headers(network, key)["x-provider-serial"] == serial
