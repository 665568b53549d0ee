"""Test-wide fixtures and plugins; the real PostgreSQL and Redis server fixtures live in
tests/support."""

import logging
import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

# llama.cpp's OpenMP threads spin while they wait. Tests often have two llama instances on
# the machine at once (a provider process and a reference model in the test process); on
# two cores spinning threads starve each other, so waiting threads sleep instead. Set before
# llama_cpp is imported here, and inherited by every process the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = ["tests.support.postgres", "tests.support.redis"]

# Property tests judge what a function returns, never how long one example took: the
# machines that run them are shared, and a per-example deadline is a timing guess.
settings.register_profile("moonflower", deadline=None)
settings.load_profile("moonflower")


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A command run in-process (`CliRunner`) sets up process-wide logging as it would at a
    process edge; put the root logger back so the next test sees no leftover handlers."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in before and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    root.setLevel(level)
