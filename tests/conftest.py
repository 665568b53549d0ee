"""Test-wide fixtures and plugins; the real PostgreSQL server fixtures live in tests/support."""

pytest_plugins = ["tests.support.postgres"]
