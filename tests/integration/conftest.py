"""Fixtures for integration tests: real coordinator and provider processes on loopback with
the real bundled model, and the same model loaded directly through llama-cpp-python as the
reference the network must agree with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.network import LocalNetwork

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = LocalNetwork(tmp_path_factory.mktemp("network"))
    try:
        net.start_coordinator()
        net.start_provider()
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="module")
def api_key(network: LocalNetwork) -> str:
    return network.create_key()


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    from moonflower.model_files import resolve_model

    return resolve_model("default").path


@pytest.fixture(scope="session")
def reference_llama(default_model_path: Path) -> Any:
    """SmolLM2 loaded directly, as a user of llama-cpp-python would, with the same context."""
    from llama_cpp import Llama

    return Llama(str(default_model_path), n_ctx=8192, verbose=False)
