"""Test-wide fixtures and plugins; the real PostgreSQL and Redis server fixtures live in
tests/support."""

import os

# llama.cpp's OpenMP threads spin while they wait. Tests often have two llama instances on
# the machine at once (a provider process and a reference model in the test process); on
# two cores spinning threads starve each other, so waiting threads sleep instead. Set before
# llama_cpp is imported here, and inherited by every process the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = ["tests.support.postgres", "tests.support.redis"]
