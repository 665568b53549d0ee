"""The headers naming a job's provider carry provider-chosen strings; whatever those are, the
headers are printable ASCII that any HTTP server sends, and building them never raises."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from starlette.responses import Response

from moonflower.coordinator.provider_headers import (
    MAX_HEADER_VALUE_CHARS,
    header_value,
    job_headers,
)
from moonflower.coordinator.trust import TrustLevel


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("Apple M4 Pro", "Apple M4 Pro"),
        ("Apple M4 Pró", "Apple M4 Pro"),
        ("Ｆｕｌｌｗｉｄｔｈ", "Fullwidth"),
        ("chip ☃ 日本", "chip ? ??"),
        ("M4\r\nx-injected: yes", "M4  x-injected: yes"),
        ("  padded\t", "padded"),
        ("\x00\x01", ""),
        ("☃☃☃", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_values_become_printable_ascii(raw: str | None, safe: str) -> None:
    assert header_value(raw) == safe


def test_long_values_are_cut() -> None:
    assert header_value("x" * 10_000) == "x" * MAX_HEADER_VALUE_CHARS


def provider_job(chip: str | None, *, serial: str | None = None, attested: bool) -> Any:
    hardware = SimpleNamespace(chip=chip, serial=serial)
    statement = SimpleNamespace(hardware=hardware) if attested else None
    trust = SimpleNamespace(statement=statement, level=TrustLevel.SELF_SIGNED)
    registration = SimpleNamespace(hardware=hardware)
    provider = SimpleNamespace(id="prov_1", trust=trust, registration=registration)
    return SimpleNamespace(id="job1", provider=provider)


@pytest.mark.parametrize("attested", [True, False])
def test_hostile_provider_strings_give_headers_a_response_can_carry(attested: bool) -> None:
    job = provider_job("Chip ☃\u202e\n", serial="SER\u0130AL\r\n", attested=attested)
    headers = job_headers(job)
    assert headers["x-provider-chip"] == "Chip ?"
    if attested:
        assert headers["x-provider-serial"] == "SERIAL"
    for value in headers.values():
        assert value.isascii() and value.isprintable()
    Response(b"{}", headers=headers)  # raises on a header value Latin-1 cannot carry


def test_an_unprintable_chip_name_is_left_out() -> None:
    headers = job_headers(provider_job("\x1b\x07", attested=False))
    assert "x-provider-chip" not in headers
    assert headers["x-provider-id"] == "prov_1"
    assert headers["x-provider-attested"] == "false"
