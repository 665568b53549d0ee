"""Numeric bounds as GBNF: integer rules accept exactly the integers in range; number rules
only values in range (and, with integral bounds, every short value in range). Checked with
jsonschema as the oracle, through a regex translation of the GBNF, and parsed by llama.cpp."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moonflower.provider.engines.numeric_ranges import (
    INTEGER_DIGITS,
    Bound,
    NoValueInRange,
    bounded_numeric_rule,
    integer_rule,
    number_rule,
)

WIDEST = 10**INTEGER_DIGITS - 1
_TOKEN = re.compile(r'\s+|"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[()|?*+]|[a-zA-Z0-9-]+')
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def gbnf_regex(grammar: str, root: str = "root") -> re.Pattern[str]:
    """A regex for a non-recursive GBNF grammar (literals, classes, groups, rule names,
    `| ? * +`), with every rule inlined: an independent reading of what it accepts."""
    rules = {}
    for line in grammar.strip().splitlines():
        name, _, body = line.partition("::=")
        rules[name.strip()] = body

    def translate(name: str, seen: tuple[str, ...]) -> str:
        assert name not in seen, f"recursive rule {name}"
        parts = []
        tokens = _TOKEN.findall(rules[name])
        assert "".join(tokens) == rules[name], f"cannot read rule {name}"
        for token in tokens:
            if token.isspace():
                continue
            if token.startswith('"'):
                text = re.sub(r"\\(.)", lambda m: _ESCAPES[m.group(1)], token[1:-1])
                parts.append(re.escape(text))
            elif token.startswith("["):
                parts.append(token)
            elif token == "(":
                parts.append("(?:")
            elif token in ")|?*+":
                parts.append(token)
            else:
                parts.append(f"(?:{translate(token, (*seen, name))})")
        return "".join(parts)

    return re.compile(translate(root, ()))


def rule_regex(rule: str) -> re.Pattern[str]:
    return gbnf_regex(f"root ::= {rule}")


def llama_cpp_parses(grammar: str) -> bool:
    """Whether llama.cpp's own grammar parser accepts `grammar` (no vocabulary needed)."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


def accepts(pattern: re.Pattern[str], text: str) -> bool:
    return pattern.fullmatch(text) is not None


def test_the_regex_reading_of_gbnf_is_faithful() -> None:
    pattern = gbnf_regex('root ::= "\\"a" b? [0-2]+\nb ::= ("x" | "y") space\nspace ::= " "?')
    assert accepts(pattern, '"ax 12')
    assert accepts(pattern, '"a0')
    assert not accepts(pattern, '"axy1')
    assert not accepts(pattern, "a1")


# Integers: exactly the integers in range


BOUNDS = st.one_of(
    st.none(),
    st.integers(-300, 300),
    st.integers(-(10**18), 10**18),
    st.floats(-1000, 1000, allow_nan=False),
)


def integer_schema(**bounds: Any) -> dict[str, Any]:
    return {"type": "integer", **{key: v for key, v in bounds.items() if v is not None}}


def nearby_integers(schema: dict[str, Any]) -> set[int]:
    """Integers around every bound, around zero and digit counts, and at the digit limit."""
    around = {0, 9, 10, 99, 100, 999, 1000, WIDEST, WIDEST + 1}
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema:
            value = schema[key]
            around.update(range(math.floor(value) - 25, math.ceil(value) + 26))
    return around | {-x for x in around}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BOUNDS, BOUNDS, BOUNDS, BOUNDS)
def test_integer_rules_accept_exactly_the_integers_in_range(
    minimum: Any, maximum: Any, exclusive_minimum: Any, exclusive_maximum: Any
) -> None:
    schema = integer_schema(
        minimum=minimum,
        maximum=maximum,
        exclusiveMinimum=exclusive_minimum,
        exclusiveMaximum=exclusive_maximum,
    )
    valid = jsonschema.Draft202012Validator(schema).is_valid
    nearby = nearby_integers(schema)
    try:
        rule = bounded_numeric_rule(schema)
    except NoValueInRange:
        assert not any(valid(x) for x in nearby if abs(x) <= WIDEST)
        return
    if len(schema) == 1:
        assert rule is None
        return
    assert rule is not None
    pattern = rule_regex(rule)
    for x in nearby:
        assert accepts(pattern, str(x)) == (valid(x) and abs(x) <= WIDEST), x


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        (Bound(0), Bound(150)),
        (Bound(0), None),
        (Bound(7), None),
        (None, Bound(-3)),
        (None, Bound(0, exclusive=True)),
        (Bound(-10), Bound(10)),
        (Bound(-1000, exclusive=True), Bound(-99)),
        (Bound(99), Bound(101)),
        (Bound(123), Bound(98765)),
        (Bound(5), Bound(5)),
        (Bound(-(10**20)), Bound(10**20)),
    ],
)
def test_integer_rules_in_json_syntax(lower: Bound | None, upper: Bound | None) -> None:
    rule = integer_rule(lower, upper)
    assert llama_cpp_parses(f"root ::= {rule}")
    pattern = rule_regex(rule)
    low = -WIDEST if lower is None else lower.value + lower.exclusive
    high = WIDEST if upper is None else upper.value - upper.exclusive
    low, high = max(low, -WIDEST), min(high, WIDEST)
    for x in {low, high, (low + high) // 2}:
        assert accepts(pattern, str(x))
    for text in ("-0", "00", "+1", "1.0", "1e2", " 1", "", "-", "--1"):
        assert not accepts(pattern, text), text
    for x in range(max(low, -50), min(high, 50) + 1):
        assert not accepts(pattern, f"0{x}")
    assert len(rule) < 3_000


def test_integer_ranges_without_values_are_refused() -> None:
    for lower, upper in [
        (Bound(5), Bound(4)),
        (Bound(4, exclusive=True), Bound(5, exclusive=True)),
        (Bound(10**16), None),
        (None, Bound(-(10**16))),
    ]:
        with pytest.raises(NoValueInRange):
            integer_rule(lower, upper)
    with pytest.raises(NoValueInRange):
        bounded_numeric_rule({"type": "integer", "minimum": 0.2, "maximum": 0.8})


# Numbers


INTEGRAL_BOUNDS = st.one_of(
    st.none(),
    st.integers(-300, 300),
    st.integers(-(10**7), 10**7),
    st.integers(-300, 300).map(float),
)


def number_schema(**bounds: Any) -> dict[str, Any]:
    return {"type": "number", **{key: v for key, v in bounds.items() if v is not None}}


def short_decimals(schema: dict[str, Any]) -> set[str]:
    """Decimals with up to 3 fraction digits around every bound and around zero."""
    wholes = {0, 1, 9, 10, 99, 100}
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema:
            wholes.update(range(math.floor(abs(schema[key])) - 3, math.ceil(abs(schema[key])) + 4))
    texts = set()
    for whole in (w for w in wholes if w >= 0):
        for fraction in ("", ".5", ".001", ".25", ".999", ".1"):
            texts.update({f"{whole}{fraction}", f"-{whole}{fraction}"})
    return texts - {"-0"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(INTEGRAL_BOUNDS, INTEGRAL_BOUNDS, INTEGRAL_BOUNDS, INTEGRAL_BOUNDS, st.data())
def test_number_rules_with_integral_bounds_are_exact(
    minimum: Any, maximum: Any, exclusive_minimum: Any, exclusive_maximum: Any, data: Any
) -> None:
    schema = number_schema(
        minimum=minimum,
        maximum=maximum,
        exclusiveMinimum=exclusive_minimum,
        exclusiveMaximum=exclusive_maximum,
    )
    valid = jsonschema.Draft202012Validator(schema).is_valid
    candidates = short_decimals(schema)
    try:
        rule = bounded_numeric_rule(schema)
    except NoValueInRange:
        assert not any(valid(json.loads(text)) for text in candidates)
        return
    if rule is None:
        assert len(schema) == 1
        return
    pattern = rule_regex(rule)
    for text in candidates:
        assert accepts(pattern, text) == valid(json.loads(text)), text
    # Whatever the grammar can write, however long, is in range once parsed to a double.
    for _ in range(5):
        written = data.draw(st.from_regex(pattern, fullmatch=True))
        assert valid(json.loads(written)), written


@pytest.mark.parametrize(
    ("schema", "written", "refused"),
    [
        ({"minimum": 0}, ["0", "0.5", "12", "123456789012345.5"], ["-1", "-0.5", "1e3", "01"]),
        ({"maximum": 0}, ["0", "-0.5", "-12"], ["0.5", "1", "-0"]),
        ({"exclusiveMaximum": 0}, ["-0.001", "-3"], ["0", "0.0", "-0", "-0.0"]),
        ({"exclusiveMinimum": 0, "maximum": 1}, ["0.1", "1", "0.000000000000001"], ["0", "1.5"]),
        (
            {"exclusiveMaximum": 100},
            ["99.99999999999", "99.9999999999999", "-5"],
            ["100", "100.0", "99.999999999999999", "99.9999999999999999"],
        ),
        ({"exclusiveMinimum": 10}, ["10.0000000000001"], ["10", "10.00000000000000001"]),
        ({"minimum": -2.0, "maximum": 2.0}, ["-2", "2", "1.5"], ["-2.5", "2.1"]),
        # Not an integer: rounded inwards (0.7 is lost, never an out-of-range value)...
        ({"minimum": 0.5, "maximum": 5}, ["1", "4.5", "5"], ["0.7", "0.2", "5.5"]),
        # ...unless that leaves nothing: then outwards (0.1 is written though out of range).
        ({"minimum": 0.2, "maximum": 0.8}, ["0.5", "0.1"], ["1.5", "-0.5"]),
    ],
)
def test_number_rules(schema: dict[str, Any], written: list[str], refused: list[str]) -> None:
    rule = bounded_numeric_rule({"type": "number", **schema})
    assert rule is not None
    assert llama_cpp_parses(f"root ::= {rule}")
    pattern = rule_regex(rule)
    assert [text for text in written if not accepts(pattern, text)] == []
    assert [text for text in refused if accepts(pattern, text)] == []


def test_draft4_boolean_exclusive_bounds() -> None:
    rule = bounded_numeric_rule(
        {"type": "integer", "minimum": 0, "exclusiveMinimum": True, "maximum": 3}
    )
    assert rule is not None
    pattern = rule_regex(rule)
    assert [x for x in range(-2, 6) if accepts(pattern, str(x))] == [1, 2, 3]


def test_nodes_without_bounds_or_that_the_converter_reads_otherwise_are_left_alone() -> None:
    for schema in (
        {"type": "integer"},
        {"type": "string", "minimum": 3},
        {"type": "integer", "minimum": 0, "enum": [-1, 2]},
        {"type": "number", "minimum": 0, "anyOf": [{"type": "number"}]},
        {"type": "integer", "minimum": True},
        {"type": "number", "maximum": math.inf},
    ):
        assert bounded_numeric_rule(schema) is None, schema


def test_number_rule_directly() -> None:
    rule = number_rule(Bound(-1, exclusive=True), Bound(1, exclusive=True))
    pattern = rule_regex(rule)
    assert accepts(pattern, "0")
    assert accepts(pattern, "-0.5")
    assert not accepts(pattern, "-1")
    assert not accepts(pattern, "1")
    with pytest.raises(NoValueInRange):
        number_rule(Bound(1, exclusive=True), Bound(1))
