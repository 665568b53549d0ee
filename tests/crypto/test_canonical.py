"""Canonical JSON: the encoding rules, refusals, and the strict parse back."""

from __future__ import annotations

import math

import pytest

from moonflower.crypto.canonical import (
    NotCanonicalError,
    canonical_json,
    check_canonical,
    document_bytes,
    parse_json_object,
    sha256_hex,
)


def test_escapes_only_what_the_rules_say_and_writes_the_rest_as_utf8() -> None:
    value = {"s": '"\\\b\f\n\r\t\x00\x1f\x7f/<>&\u2028é😀'}
    assert canonical_json(value) == (
        b'{"s":"\\"\\\\\\b\\f\\n\\r\\t\\u0000\\u001f\x7f/<>&\xe2\x80\xa8\xc3\xa9\xf0\x9f\x98\x80"}'
    )


def test_numbers_and_literals() -> None:
    value = [1, -2, 0, 123456789012345678901234567890, True, False, None]
    assert canonical_json(value) == b"[1,-2,0,123456789012345678901234567890,true,false,null]"
    floats = [0.5, 2.0, 0.0001, 1e-05, 1e15, 1e16, -0.0, 1.5e300]
    assert canonical_json(floats) == (
        b"[0.5,2.0,0.0001,1e-05,1000000000000000.0,1e+16,-0.0,1.5e+300]"
    )


def test_keys_sort_by_code_point_not_utf16_and_nest() -> None:
    # U+FFFF sorts before U+1F600 by code point, after it in UTF-16 code units.
    value = {"b": {"z": 1, "a": 2}, "a": (), "\uffff": 0, "😀": 0, "Z": 0, "é": 0}
    assert canonical_json(value) == (
        '{"Z":0,"a":[],"b":{"a":2,"z":1},"é":0,"\uffff":0,"😀":0}'.encode()
    )


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_refuses_non_finite_floats(number: float) -> None:
    with pytest.raises(ValueError, match="no JSON form"):
        canonical_json({"x": [number]})


@pytest.mark.parametrize("value", [{1: "a"}, {None: 1}, {"a": {1.5: 1}}, {b"k": 1}])
def test_refuses_non_string_keys(value: object) -> None:
    with pytest.raises(TypeError, match="keys must be strings"):
        canonical_json(value)


@pytest.mark.parametrize("value", [b"bytes", {1, 2}, object(), {"a": [b"x"]}])
def test_refuses_values_json_cannot_hold(value: object) -> None:
    with pytest.raises(TypeError, match="no canonical JSON form"):
        canonical_json(value)


def test_refuses_lone_surrogates() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        canonical_json({"a": "\ud800"})


def test_sha256_hex_matches_the_standard_vector() -> None:
    assert sha256_hex(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_parse_reads_an_object_back() -> None:
    data = canonical_json({"a": [1, "é"], "b": None})
    assert parse_json_object(data) == {"a": [1, "é"], "b": None}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a":1,"a":2}', "duplicate key"),
        (b'{"a":{"b":1,"b":1}}', "duplicate key"),
        (b'{"a":NaN}', "NaN is not JSON"),
        (b'{"a":-Infinity}', "Infinity is not JSON"),
        (b'{"a":1e400}', "out of range"),
        (b"[1,2]", "not an object"),
        (b'"text"', "not an object"),
        (b"\xef\xbb\xbf{}", "not valid JSON"),
        (b'{"a":"\xff"}', "not valid UTF-8"),
        (b'{"a":', "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
def test_parse_refuses_ambiguous_or_invalid_json(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_json_object(data)


def test_check_canonical_accepts_exactly_the_canonical_bytes() -> None:
    data = b'{"a":1,"b":"\xc3\xa9"}'
    check_canonical(data, parse_json_object(data))


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1,"b":"x"}',  # whitespace
        b'{"b":"x","a":1}',  # key order
        b'{"a":1,"b":"\\u0078"}',  # an escape where the character itself is required
        b'{"a":1,"b":"\\/"}',  # Swift-style escaped slash
        b'{"a":1,"b":"x"}\n',  # trailing newline
        b'{"a":1.0e0,"b":"x"}',  # another spelling of a float
        b'{"a":-0,"b":"x"}',  # another spelling of zero
    ],
)
def test_check_canonical_rejects_other_spellings(data: bytes) -> None:
    with pytest.raises(NotCanonicalError):
        check_canonical(data, parse_json_object(data))


def test_check_canonical_rejects_a_lone_surrogate_escape() -> None:
    data = b'{"a":"\\ud800"}'
    with pytest.raises(NotCanonicalError, match="no canonical encoding"):
        check_canonical(data, parse_json_object(data))


def test_document_bytes_limits_size_and_type() -> None:
    assert document_bytes("é", max_bytes=2) == b"\xc3\xa9"
    with pytest.raises(ValueError, match="exceeds 1 bytes"):
        document_bytes("é", max_bytes=1)
    with pytest.raises(ValueError, match="must be text"):
        document_bytes(b"{}", max_bytes=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no UTF-8 form"):
        document_bytes("\udc80", max_bytes=10)
