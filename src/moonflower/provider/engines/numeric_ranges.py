"""Numeric bounds as GBNF: an expression spelling exactly the numbers a range admits.

Owns reading `minimum`, `maximum`, `exclusiveMinimum` and `exclusiveMaximum` (2020-12
numbers, or draft-4 booleans next to `minimum`/`maximum`) from one `integer` or `number`
schema, and writing the GBNF expression (without trailing whitespace) of the JSON numbers in
that range. Must not import llama_cpp, and knows nothing of the schema around the node.

What is exact and what is not:
- `integer`: exactly the integers in range, in JSON syntax (no leading zeros, no `-0`), up to
  16 digits like llama-cpp-python's own integer rule. A range with no such integer raises
  `NoValueInRange`.
- `number` with integer-valued bounds (`0`, `1.0`, `100`...): only values in range, written
  without exponent, with at most 15 integer and 15 fraction digits; every value in range is
  reachable in that form, except that within 1 of an exclusive bound the fraction is kept
  short enough (15 significant digits in all) that parsing to a double cannot round onto
  the bound. `-0` is never written (`0` is).
- `number` with a bound that is not an integer: the bound is rounded inwards to an integer
  (`minimum: 0.5` writes values from 1), so every value written is in range; if that leaves
  nothing, it is rounded outwards instead (`0.2 ≤ x ≤ 0.8` writes 0 to 1), which can write
  values out of range.
- Not enforced here: `multipleOf`, bounds inside an `allOf` of a numeric node, and bounds
  on a node that also has `enum`, `const`, `$ref`, `anyOf` or `oneOf` (the converter
  follows those instead; `enum`/`const` are exact anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

INTEGER_DIGITS = 16
"""llama-cpp-python's integer rule writes at most 16 digits; bounded integers keep to that."""
NUMBER_DIGITS = 15
"""Integer and fraction digits of a bounded number: 15 significant digits survive a double."""
_NUMERIC_TYPES = ("integer", "number")
_BOUND_KEYWORDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
_FOLLOWED_INSTEAD = frozenset({"enum", "const", "$ref", "anyOf", "oneOf"})


class NoValueInRange(ValueError):
    """The bounds admit no value the grammar can write."""


@dataclass(frozen=True, slots=True)
class Bound:
    """One end of a range of integers: `value`, itself included unless `exclusive`."""

    value: int
    exclusive: bool = False


def has_numeric_bounds(schema: dict[str, Any]) -> bool:
    return any(_finite(schema.get(key)) is not None for key in _BOUND_KEYWORDS)


def bounded_numeric_rule(schema: dict[str, Any]) -> str | None:
    """The GBNF expression for a bounded `integer` or `number` schema, or None when `schema`
    is not one (or the converter follows another keyword of it). Raises `NoValueInRange`."""
    kind = schema.get("type")
    if kind not in _NUMERIC_TYPES or _FOLLOWED_INSTEAD & schema.keys():
        return None
    if not has_numeric_bounds(schema):
        return None
    if kind == "integer":
        return integer_rule(*_integer_bounds(schema))
    try:
        return number_rule(*_number_bounds(schema, inwards=True))
    except NoValueInRange:
        return number_rule(*_number_bounds(schema, inwards=False))


def integer_rule(lower: Bound | None, upper: Bound | None) -> str:
    """JSON integers in the range, at most `INTEGER_DIGITS` digits. None: unbounded."""
    widest = 10**INTEGER_DIGITS - 1
    low = -widest if lower is None else lower.value + int(lower.exclusive)
    high = widest if upper is None else upper.value - int(upper.exclusive)
    low, high = max(low, -widest), min(high, widest)
    if low > high:
        raise NoValueInRange
    alternatives = []
    if low < 0:
        alternatives.append(f'"-" {_group(_digits_between(max(-high, 1), -low))}')
    if high >= 0:
        alternatives.append(_group(_digits_between(max(low, 0), high)))
    return _group(alternatives)


def number_rule(lower: Bound | None, upper: Bound | None) -> str:
    """JSON numbers in the range, without exponent. None: unbounded (up to 15 digits)."""
    edge = 10**NUMBER_DIGITS
    low = Bound(-edge, True) if lower is None or lower.value < -edge else lower
    high = Bound(edge, True) if upper is None or upper.value > edge else upper
    alternatives = []
    if low.value < 0:  # negatives: their magnitudes, between the upper and the lower bound
        least = Bound(0, True) if high.value >= 0 else Bound(-high.value, high.exclusive)
        negative = _magnitudes(least, Bound(-low.value, low.exclusive))
        if negative:
            alternatives.append(f'"-" {_group(negative)}')
    if high.value > 0 or (high.value == 0 and not high.exclusive):
        least = Bound(0) if low.value < 0 else low
        alternatives += _magnitudes(least, high)
    if not alternatives:
        raise NoValueInRange
    return _group(alternatives)


def _magnitudes(low: Bound, high: Bound) -> list[str]:
    """Alternatives spelling the non-negative numbers between `low` and `high`."""
    first_whole = low.value + int(low.exclusive)  # the first integer part any fraction may follow
    alternatives = []
    if low.exclusive and low.value < high.value and _room(low.value) > 0:
        alternatives.append(f'"{low.value}" {_nonzero_fraction(_room(low.value))}')
    last_whole = high.value - 1
    if high.exclusive:
        # Just below an exclusive bound a long fraction could round onto it: keep it short.
        if last_whole >= first_whole:
            alternatives.append(f'"{last_whole}" {_fraction(_room(last_whole))}'.rstrip())
        last_whole -= 1
    elif high.value >= first_whole:
        alternatives.append(f'"{high.value}"')
    if first_whole <= last_whole:
        whole = _group(_digits_between(first_whole, last_whole))
        alternatives.append(f"{whole} {_fraction(NUMBER_DIGITS)}")
    return alternatives


def _room(whole: int) -> int:
    """Fraction digits after `whole` that keep the number to 15 significant digits."""
    return NUMBER_DIGITS - len(str(whole)) if whole else NUMBER_DIGITS


def _fraction(digits: int) -> str:
    """An optional fraction of 1 to `digits` digits."""
    return f'("." [0-9]{_up_to("[0-9]", digits - 1)})?' if digits > 0 else ""


def _nonzero_fraction(digits: int) -> str:
    """A fraction of 1 to `digits` digits that ends in a non-zero digit."""
    return f'"."{_up_to("[0-9]", digits - 1)} [1-9]'


def _up_to(item: str, count: int) -> str:
    """` item` repeated 0 to `count` times, as nested optionals (empty when `count` is 0)."""
    nested = ""
    for _ in range(count):
        nested = f"({item} {nested})?" if nested else f"({item})?"
    return f" {nested}" if nested else ""


def _digits_between(low: int, high: int) -> list[str]:
    """Alternatives spelling the integers from `low` to `high` (0 ≤ low ≤ high) without
    leading zeros: one per digit count, the counts wholly inside the range merged in one."""
    alternatives = []
    full_counts: list[int] = []
    for count in range(len(str(low)), len(str(high)) + 1):
        smallest = 10 ** (count - 1) if count > 1 else 0
        first, last = max(low, smallest), min(high, 10**count - 1)
        if count > 1 and (first, last) == (smallest, 10**count - 1):
            full_counts.append(count)
        else:
            alternatives.append(_same_length(str(first), str(last)))
    if full_counts:
        shortest, longest = full_counts[0], full_counts[-1]
        spelled = "[1-9]" + " [0-9]" * (shortest - 1) + _up_to("[0-9]", longest - shortest)
        alternatives.append(spelled)
    return alternatives


def _same_length(low: str, high: str) -> str:
    """The digit strings from `low` to `high`, both of the same length."""
    if low == high:
        return f'"{low}"'
    split = next(i for i, (a, b) in enumerate(zip(low, high, strict=True)) if a != b)
    prefix = f'"{low[:split]}" ' if split else ""
    rest = len(low) - split - 1
    low_digit, low_rest = int(low[split]), low[split + 1 :]
    high_digit, high_rest = int(high[split]), high[split + 1 :]
    alternatives = []
    start = low_digit if low_rest == "0" * rest else low_digit + 1
    end = high_digit if high_rest == "9" * rest else high_digit - 1
    if start > low_digit:
        alternatives.append(f'"{low_digit}" {_same_length(low_rest, "9" * rest)}')
    if start <= end:
        alternatives.append(_digit_class(start, end) + " [0-9]" * rest)
    if end < high_digit:
        alternatives.append(f'"{high_digit}" {_same_length("0" * rest, high_rest)}')
    return prefix + _group(alternatives)


def _digit_class(start: int, end: int) -> str:
    return f'"{start}"' if start == end else f"[{start}-{end}]"


def _group(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else "(" + " | ".join(alternatives) + ")"


def _finite(value: Any) -> int | float | None:
    """`value` if it is a finite JSON number (not a boolean), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _bound_values(
    schema: dict[str, Any],
) -> tuple[list[tuple[float, bool]], list[tuple[float, bool]]]:
    """(lower, upper) bounds as (value, exclusive), draft-4 boolean exclusives applied."""
    lower: list[tuple[float, bool]] = []
    upper: list[tuple[float, bool]] = []
    for key, ends, flag in (
        ("minimum", lower, "exclusiveMinimum"),
        ("maximum", upper, "exclusiveMaximum"),
    ):
        value, exclusive = _finite(schema.get(key)), _finite(schema.get(flag))
        if value is not None:
            ends.append((value, schema.get(flag) is True))
        if exclusive is not None:
            ends.append((exclusive, True))
    return lower, upper


def _integer_bounds(schema: dict[str, Any]) -> tuple[Bound | None, Bound | None]:
    lower, upper = _bound_values(schema)
    lows = [math.floor(v) + 1 if ex else math.ceil(v) for v, ex in lower]
    highs = [math.ceil(v) - 1 if ex else math.floor(v) for v, ex in upper]
    return (Bound(max(lows)) if lows else None), (Bound(min(highs)) if highs else None)


def _number_bounds(schema: dict[str, Any], *, inwards: bool) -> tuple[Bound | None, Bound | None]:
    """Bounds with integer values: integral ones as they are, others rounded (inclusive)."""
    lower, upper = _bound_values(schema)
    lows = [_rounded(v, ex, up=inwards) for v, ex in lower]
    highs = [_rounded(v, ex, up=not inwards) for v, ex in upper]
    low = max(lows, key=lambda b: (b.value, b.exclusive), default=None)
    high = min(highs, key=lambda b: (b.value, not b.exclusive), default=None)
    return low, high


def _rounded(value: float, exclusive: bool, *, up: bool) -> Bound:
    if float(value).is_integer():
        return Bound(int(value), exclusive)
    return Bound(math.ceil(value) if up else math.floor(value))
