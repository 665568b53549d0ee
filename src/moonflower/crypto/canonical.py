"""Canonical JSON: the one byte encoding that Moonflower signs and hashes.

Owns the encoding rules, the strict parser that reads signed documents back, and the hex
SHA-256 helper. It must not know what any document means (statements, statuses and receipts
own their own fields) and must not sign or verify anything.

The encoding, exactly (another implementation must produce the same bytes):

1. The value is a JSON value built only from objects with string keys, arrays, strings,
   integers, finite floats, `true`, `false` and `null`. Anything else is refused
   (`TypeError`); NaN and ±infinity are refused (`ValueError`).
2. Object members are sorted by key in ascending Unicode code point order (the same order as
   comparing the keys' UTF-8 bytes; NOT UTF-16 code unit order). Keys are unique.
3. No whitespace anywhere: `,` between items and `:` between key and value, nothing else.
4. Strings are written between `"` with exactly these escapes: `\\"` and `\\\\` for the quote
   and backslash; `\\b \\f \\n \\r \\t` for U+0008, U+000C, U+000A, U+000D, U+0009; every
   other character below U+0020 as `\\u00xx` with lowercase hex. Every other character,
   including `/`, U+007F, `<`, `>`, `&`, U+2028, U+2029 and all non-ASCII text, is written
   as itself (no `\\uXXXX` escapes, no HTML escaping as Go's encoder does by default).
   Strings containing lone surrogates cannot be encoded and are refused (`ValueError`).
5. Integers are written in base 10 with no leading zeros, no `+`, no fraction or exponent
   (`-` for negatives), at any size. `true`/`false`/`null` are written as such.
6. Floats (which only occur inside generation requests, never in statements, statuses or
   receipts) are written as Python's `repr(float)`: the shortest decimal that round-trips,
   in positional notation with at least one digit after the point (`0.5`, `2.0`, `0.0001`)
   when the decimal exponent is from -4 to 15, otherwise in exponent notation with a sign
   and at least two exponent digits (`1e-05`, `1e+16`, `1.5e+300`); `-0.0` keeps its sign.
7. The text is encoded as UTF-8, with no byte order mark and no trailing newline.

This is what `json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False).encode("utf-8")` produces for such values.

Reading a signed document back (`parse_json_object` then `check_canonical`) accepts only
bytes that are exactly the canonical encoding of what they parse to, so two different byte
strings can never carry the same document (no duplicate keys, no extra whitespace, no
alternative escapes).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any

from pydantic import StringConstraints

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A SHA-256 digest written as 64 lowercase hex digits (pydantic-validated where parsed)."""


class NotCanonicalError(ValueError):
    """Well-formed JSON that is not byte-for-byte the canonical encoding of its value."""


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 JSON bytes of `value` (rules in the module docstring).

    Raises `TypeError` for values JSON cannot hold or non-string keys, and `ValueError` for
    NaN/infinity, lone surrogates or nesting too deep to encode.
    """
    try:
        _check_encodable(value)
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except RecursionError as exc:
        raise ValueError("value is nested too deeply to encode") from exc
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("a string contains a lone surrogate; it has no UTF-8 form") from exc


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def parse_json_object(data: bytes) -> dict[str, Any]:
    """Parse UTF-8 JSON bytes that must hold one object; strict, for untrusted input.

    Rejects (`ValueError`) invalid UTF-8 (a byte order mark included), invalid JSON,
    duplicate keys at any depth, `NaN`/`Infinity` and numbers that overflow to infinity, and
    any top-level value other than an object. Does not check canonical form.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("not valid UTF-8") from exc
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at offset {exc.pos})") from exc
    if not isinstance(value, dict):
        raise ValueError("the JSON value is not an object")
    return value


def check_canonical(data: bytes, value: Any) -> None:
    """Raise `NotCanonicalError` unless `data` is exactly `canonical_json(value)`."""
    try:
        expected = canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise NotCanonicalError(f"the value has no canonical encoding: {exc}") from exc
    if expected != data:
        raise NotCanonicalError(
            "the bytes are not the canonical encoding (sorted keys, no whitespace, minimal escapes)"
        )


def document_bytes(text: str, *, max_bytes: int) -> bytes:
    """The UTF-8 bytes of a received document's text, refused (`ValueError`) if not a
    string, not encodable (lone surrogates) or longer than `max_bytes` once encoded."""
    if not isinstance(text, str):
        raise ValueError("the document must be text")
    if len(text) > max_bytes:
        raise ValueError(f"the document exceeds {max_bytes} bytes")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("the text has no UTF-8 form") from exc
    if len(data) > max_bytes:
        raise ValueError(f"the document exceeds {max_bytes} bytes")
    return data


def _check_encodable(value: Any) -> None:
    # json.dumps would silently turn int/float/bool/None keys into strings (sorting them in
    # an order that differs from their string form) and accepts any str/int subclass; the
    # rules above allow neither, so walk the value first.
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no JSON form")
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_encodable(item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"object keys must be strings, not {type(key).__name__}")
            _check_encodable(item)
        return
    raise TypeError(f"{type(value).__name__} has no canonical JSON form")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:64]!r}")
        result[key] = item
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("number out of range")
    return number
