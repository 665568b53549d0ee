"""The response headers that say who served a job and what it had proven.

Some of their values come from the provider (its chip name, its serial number), and a header
value must be Latin-1 without line breaks or the server refuses the whole response — after
the consumer has been charged. So every value here is made printable ASCII (accents and
compatibility forms folded, breaks and odd spaces made spaces, invisible characters dropped,
anything else replaced by "?") and cut to a bounded length; a value that is left empty is
dropped. Building headers never raises. Knows nothing of dialects or of how the job ran.

The chip and serial come from the provider's verified statement when it names them, else from
what the provider registered (every provider names a chip, and a serial: its hardware serial
or a `mid-`/`key-` stand-in). Either way they are the provider's own words: only the
`x-provider-trust-level` `hardware` means a device attestation matched the statement's serial,
and `x-provider-attested` says only whether a statement was verified.
"""

from __future__ import annotations

import unicodedata

from moonflower.coordinator.job import Job

MAX_HEADER_VALUE_CHARS = 128
"""Longer provider strings are cut: a header is a label, not a document."""
_REPLACEMENT = "?"


def job_headers(job: Job) -> dict[str, str]:
    """Who served the job and what it had proven, for every inference response."""
    provider = job.provider
    trust = provider.trust
    statement = trust.statement
    values: dict[str, str | None] = {
        "x-moonflower-job-id": job.id,
        "x-provider-id": provider.id,
        "x-provider-trust-level": trust.level.label,
        "x-provider-attested": "true" if statement is not None else "false",
    }
    attested = statement.hardware if statement is not None else None
    registered = provider.registration.hardware
    values["x-provider-chip"] = (attested.chip if attested else None) or registered.chip
    values["x-provider-serial"] = (attested.serial if attested else None) or registered.serial
    headers = {}
    for name, value in values.items():
        safe = header_value(value)
        if safe:
            headers[name] = safe
    return headers


def header_value(value: str | None) -> str:
    """`value` as printable ASCII of at most `MAX_HEADER_VALUE_CHARS` characters, trimmed;
    "" for None or when nothing printable is left."""
    if not value:
        return ""
    if not (value.isascii() and value.isprintable()):
        value = "".join(_ascii(char) for char in unicodedata.normalize("NFKD", value))
    value = value[:MAX_HEADER_VALUE_CHARS].strip()
    return "" if value.strip(_REPLACEMENT + " ") == "" else value


def _ascii(char: str) -> str:
    if " " <= char <= "~":
        return char
    category = unicodedata.category(char)
    if category == "Cc" or category.startswith("Z"):  # line breaks, tabs, odd spaces
        return " "
    if category in ("Cf", "Mn", "Me"):  # invisible: format characters, combining marks
        return ""
    return _REPLACEMENT
