"""What a request constrains its output to, and that constraint as a llama.cpp grammar.

Owns the decision (forced tool call, a call to one of several tools, a JSON object, a JSON
schema, or nothing), the JSON Schema of each case (a call to one of several tools is
`{"name": <const>, "arguments": <that tool's schema>}` for each tool, with every tool's
`$ref`s moved so the schemas cannot collide), and the conversion to GBNF with
llama-cpp-python's converter. The decision is engine-neutral; only `to_gbnf` is llama.cpp's.

Schema problems are `InvalidRequest`s naming the field (`tools`, `tool_choice`,
`response_format`); their messages name the tool or field, never quote message text. The
converter enforces structure, types, `enum`/`const`, `required`, `additionalProperties`,
string lengths and patterns, formats and item counts; it ignores `multipleOf`, `not`,
`if`/`then`/`else` and `uniqueItems`, so those are best effort. It ignores numeric bounds
too, so a bounded `integer`/`number` node is handed to it as a placeholder constant whose
literal is then replaced by `numeric_ranges`' rule (exact for integers; see there).
Must not import llama_cpp at module import time.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from moonflower.errors import InvalidRequest
from moonflower.generation import GenerationRequest, Tool
from moonflower.provider.engines.numeric_ranges import (
    NoValueInRange,
    bounded_numeric_rule,
    has_numeric_bounds,
)

JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}
MAX_REPEAT = 1000
"""Repetition bounds (lengths, item counts, pattern quantifiers) a grammar spells out."""
MAX_NESTING = 1200
"""Deeper grammars crash llama.cpp's recursive grammar parser (measured: 20000 does)."""
MAX_GRAMMAR_CHARS = 1 << 20
_LOWER_BOUNDS = frozenset({"minLength", "minItems"})
_UPPER_BOUNDS = frozenset({"maxLength", "maxItems"})
_VALUE_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
_TOO_LARGE = f"it asks for more than {MAX_REPEAT} repetitions or nests too deeply"
_NO_VALUE = "a numeric range admits no value of at most 15 (number) or 16 (integer) digits"
# The converter's rules for a string's character and a pattern's `.`, and what JSON allows.
_STRING_CHARS = (
    (r'char ::= [^"\\]', r'char ::= [^"\\\x00-\x1F]'),
    (r"dot ::= [^\x0A\x0D]", r'dot ::= [^"\\\x00-\x1F]'),
)
# Keywords the converter follows before a node's list of types.
_BEFORE_TYPES = frozenset({"$ref", "anyOf", "oneOf"})
_DEFINITION_KEYS = ("$defs", "definitions")
# What the converter's error messages mean, in words that quote nothing from the schema.
_REASONS = (
    ("Unrecognized schema", "it uses a keyword or type the converter does not support"),
    ("Fetching remote", "it refers to a remote schema"),
    ("resolving ref", "a $ref points nowhere"),
    ("Unsupported ref", "a $ref is not a local reference"),
)


@dataclass(frozen=True, slots=True)
class OutputConstraint:
    """The output must be JSON valid against `schema`.

    `call`: the output is the arguments of a call to `tool` (one forced function);
    `choice`: the output is `{"name": …, "arguments": …}` for one of `tools`;
    `json`: the output is the reply text itself (response_format).
    `param` is the request field to blame if the schema cannot be enforced.
    """

    kind: Literal["call", "choice", "json"]
    schema: dict[str, Any]
    param: str
    tools: tuple[Tool, ...] = ()


def output_constraint(request: GenerationRequest) -> OutputConstraint | None:
    """The constraint `request` asks for, or None for free text. Raises `InvalidRequest`."""
    choice = request.tool_choice
    if choice.mode in ("function", "required"):
        return _forced_call(request)
    format_ = request.response_format
    if format_ is None:
        return None
    if format_.kind == "json_object":
        return OutputConstraint("json", JSON_OBJECT_SCHEMA, "response_format")
    if not isinstance(format_.schema, dict):
        raise InvalidRequest("response_format json_schema needs a schema", param="response_format")
    return OutputConstraint("json", format_.schema, "response_format")


def _forced_call(request: GenerationRequest) -> OutputConstraint:
    choice = request.tool_choice
    if not request.tools:
        raise InvalidRequest(
            f"tool_choice {choice.mode!r} needs at least one tool in tools", param="tool_choice"
        )
    if choice.mode == "function":
        chosen = [t for t in request.tools if t.name == choice.name]
        if not chosen:
            raise InvalidRequest(
                f"tool_choice names {choice.name!r}, which is not one of the tools",
                param="tool_choice",
            )
        tools: tuple[Tool, ...] = (chosen[0],)
    else:
        tools = request.tools
    for tool in tools:
        _require_object_schema(tool)
    if len(tools) == 1:
        return OutputConstraint("call", tools[0].parameters, "tools", tools)
    return OutputConstraint("choice", choice_schema(tools), "tools", tools)


def _require_object_schema(tool: Tool) -> None:
    kind = tool.parameters.get("type", "object")
    if kind != "object":
        raise InvalidRequest(
            f"the parameters of tool {tool.name!r} must be an object schema, not {kind!r}",
            param="tools",
        )


def choice_schema(tools: tuple[Tool, ...]) -> dict[str, Any]:
    """`{"name": <tool>, "arguments": <its parameters>}` for any one of `tools`."""
    definitions: dict[str, Any] = {}
    alternatives: list[dict[str, Any]] = []
    for index, tool in enumerate(tools):
        prefix = f"tool{index}"
        parameters, hoisted = _hoisted(tool.parameters, prefix)
        definitions[prefix] = parameters
        definitions.update(hoisted)
        alternatives.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": tool.name},
                    "arguments": {"$ref": f"#/$defs/{prefix}"},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    return {"$defs": definitions, "anyOf": alternatives}


def _hoisted(schema: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`schema` without its definitions, and those definitions renamed `<prefix>-<name>`,
    with every local `$ref` rewritten to point where its target now is."""
    body = copy.deepcopy(schema)
    hoisted: dict[str, Any] = {}
    for key in _DEFINITION_KEYS:
        for name, definition in (body.pop(key, None) or {}).items():
            hoisted[f"{prefix}-{name}"] = _rewrite_refs(definition, prefix)
    return _rewrite_refs(body, prefix), hoisted


def _rewrite_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, list):
        return [_rewrite_refs(item, prefix) for item in node]
    if not isinstance(node, dict):
        return node
    rewritten = {key: _rewrite_refs(value, prefix) for key, value in node.items()}
    ref = rewritten.get("$ref")
    if isinstance(ref, str):
        rewritten["$ref"] = _moved_ref(ref, prefix)
    return rewritten


def _moved_ref(ref: str, prefix: str) -> str:
    if ref == "#":
        return f"#/$defs/{prefix}"
    for key in _DEFINITION_KEYS:
        head = f"#/{key}/"
        if ref.startswith(head):
            return f"#/$defs/{prefix}-{ref[len(head) :]}"
    if ref.startswith("#/"):
        return f"#/$defs/{prefix}/{ref[2:]}"
    return ref  # not local: the converter refuses it


def to_gbnf(constraint: OutputConstraint) -> str:
    """The constraint as a GBNF grammar (root rule `root`), or `InvalidRequest`."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        ranges = _NumericRanges(json.dumps(constraint.schema))
        text = json.dumps(_bounded(constraint.schema, ranges))
        grammar = _json_strings(ranges.spliced(json_schema_to_gbnf(text)))
    except _TooLarge:
        raise schema_refused(constraint, _TOO_LARGE) from None
    except NoValueInRange:
        raise schema_refused(constraint, _NO_VALUE) from None
    except (ValueError, TypeError, KeyError, AssertionError, RecursionError) as exc:
        raise schema_refused(constraint, _reason(exc)) from None
    if len(grammar) > MAX_GRAMMAR_CHARS or nesting_depth(grammar) > MAX_NESTING:
        raise schema_refused(constraint, _TOO_LARGE)
    return grammar


def _json_strings(grammar: str) -> str:
    """`grammar` with its string characters kept to what JSON allows unescaped: the converter
    lets a string (or a pattern's `.`) hold a raw newline or tab, which no JSON parser takes."""
    lines = grammar.split("\n")
    for index, line in enumerate(lines):
        for converters, fixed in _STRING_CHARS:
            if line.startswith(converters):
                lines[index] = fixed + line[len(converters) :]
    return "\n".join(lines)


class _TooLarge(Exception):
    """A schema asks for more repetitions than a grammar can safely spell out."""


class _NumericRanges:
    """Bounded numbers swapped for placeholder constants on the way into the converter, and
    the literals it writes for them swapped for rules of their exact ranges on the way out
    (one rule per distinct range, however many nodes share it)."""

    def __init__(self, schema_text: str) -> None:
        base = "mf-range-"
        while base in schema_text:  # no string of the schema can contain a marker
            base += "x"
        self._base = base
        self._rules: dict[str, int] = {}

    def placeholder(self, rule: str) -> dict[str, Any]:
        index = self._rules.setdefault(rule, len(self._rules))
        return {"const": f"{self._base}{index}"}

    def spliced(self, grammar: str) -> str:
        names = {line.partition(" ::= ")[0] for line in grammar.splitlines()}
        prefix = "range"
        while any(f"{prefix}{index}" in names for index in self._rules.values()):
            prefix += "-"
        lines = [grammar]
        for rule, index in self._rules.items():
            literal = f'"\\"{self._base}{index}\\""'  # how the converter writes the const
            if literal in lines[0]:
                lines[0] = lines[0].replace(literal, f"{prefix}{index}")
                lines.append(f"{prefix}{index} ::= {rule} space")
        return "\n".join(lines)


def _bounded(node: Any, ranges: _NumericRanges) -> Any:
    """`node` with upper length/count bounds above `MAX_REPEAT` dropped (the converter spells
    each repetition out, and llama.cpp's parser overflows its stack on deep nesting); lower
    bounds or pattern quantifiers that large cannot be dropped and raise `_TooLarge`.
    Bounded numbers become placeholders from `ranges`."""
    if isinstance(node, list):
        return [_bounded(item, ranges) for item in node]
    if not isinstance(node, dict):
        return node
    node = _split_by_type(node)
    rule = bounded_numeric_rule(node)
    if rule is not None:
        return ranges.placeholder(rule)
    bounded: dict[str, Any] = {}
    for key, value in node.items():
        large = isinstance(value, int | float) and value > MAX_REPEAT
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            bounded[key] = {name: _bounded(schema, ranges) for name, schema in value.items()}
        elif key in _VALUE_KEYWORDS:
            bounded[key] = value
        elif key in _LOWER_BOUNDS and large:
            raise _TooLarge
        elif key in _UPPER_BOUNDS and large:
            continue
        elif key == "pattern" and isinstance(value, str) and _large_quantifier(value):
            raise _TooLarge
        else:
            bounded[key] = _bounded(value, ranges)
    return bounded


def _split_by_type(node: dict[str, Any]) -> dict[str, Any]:
    """A bounded node with a list of types as an `anyOf` of one node per type: given a list,
    the converter drops every other keyword (so `["integer", "null"]` lost its bounds)."""
    types = node.get("type")
    if not isinstance(types, list) or _BEFORE_TYPES & node.keys():
        return node
    if not has_numeric_bounds(node):
        return node
    split = {key: node[key] for key in _DEFINITION_KEYS if key in node}
    rest = {key: value for key, value in node.items() if key not in split and key != "type"}
    split["anyOf"] = [{**rest, "type": kind} for kind in types]
    return split


def _large_quantifier(pattern: str) -> bool:
    for low, high in _QUANTIFIER.findall(pattern):
        for bound in (low, high):
            if bound and (len(bound) > 6 or int(bound) > MAX_REPEAT):
                return True
    return False


def nesting_depth(grammar: str) -> int:
    """The deepest nesting of parentheses in a GBNF grammar, outside literals and classes."""
    depth = deepest = 0
    closing: str | None = None
    index = 0
    while index < len(grammar):
        char = grammar[index]
        if closing is not None:
            if char == "\\":
                index += 1
            elif char == closing:
                closing = None
        elif char == '"':
            closing = '"'
        elif char == "[":
            closing = "]"
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
        index += 1
    return deepest


def schema_refused(constraint: OutputConstraint, reason: str) -> InvalidRequest:
    if constraint.param == "tools":
        names = ", ".join(repr(t.name) for t in constraint.tools)
        subject = f"the parameters schema of tool {names}"
    else:
        subject = "the response_format JSON schema"
    return InvalidRequest(
        f"{subject} cannot be enforced by constrained generation ({reason})",
        param=constraint.param,
    )


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker, reason in _REASONS:
        if marker in text:
            return reason
    return f"the converter failed with {type(exc).__name__}"
