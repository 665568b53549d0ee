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

Conversion is bounded in time: the converter is pure Python and some schemas within the
coordinator's size bounds take it minutes (its work grows with the cube of an object's
optional properties), so it runs against a deadline (`COMPILE_DEADLINE_S`) and a schema
that misses it is refused like any other (`invalid_request`, which no other provider is
asked to retry). `CompiledGrammars` keeps each schema's outcome, grammar or refusal, in a
bounded LRU so a schema is converted once. Must not import llama_cpp at module import time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from moonflower.errors import InvalidRequest
from moonflower.generation import GenerationRequest, Tool
from moonflower.provider.engines.numeric_ranges import (
    NoValueInRange,
    bounded_numeric_rule,
    has_numeric_bounds,
)

log = logging.getLogger(__name__)

JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}
MAX_REPEAT = 1000
"""Repetition bounds (lengths, item counts, pattern quantifiers) a grammar spells out."""
MAX_NESTING = 1200
"""Deeper grammars crash llama.cpp's recursive grammar parser (measured: 20000 does)."""
MAX_GRAMMAR_CHARS = 1 << 20
COMPILE_DEADLINE_S = 2.0
"""The longest a schema may take to become a grammar. Ordinary schemas take milliseconds
(measured on 2 cores: 400 optional properties 0.15 s, 1,000 required ones 0.02 s); an
object with 800 optional properties takes 1.3 s, and the time grows with their cube."""
_LOWER_BOUNDS = frozenset({"minLength", "minItems"})
_UPPER_BOUNDS = frozenset({"maxLength", "maxItems"})
_VALUE_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
_TOO_LARGE = f"it asks for more than {MAX_REPEAT} repetitions or nests too deeply"
_UNPARSED = "llama.cpp could not parse its grammar"
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


def to_gbnf(constraint: OutputConstraint, *, deadline_s: float = COMPILE_DEADLINE_S) -> str:
    """The constraint as a GBNF grammar (root rule `root`), or `InvalidRequest` (also when
    the conversion would take more than `deadline_s`)."""
    outcome = _convert(constraint.schema, deadline_s)
    if isinstance(outcome, _Refused):
        raise schema_refused(constraint, outcome.reason)
    return outcome


@dataclass(frozen=True, slots=True)
class _Refused:
    reason: str
    """Why the schema cannot be enforced, in words that quote nothing from it."""


def _convert(schema: dict[str, Any], deadline_s: float) -> str | _Refused:
    """`schema` as a GBNF grammar, or why it cannot be one."""
    try:
        ranges = _NumericRanges(json.dumps(schema))
        text = json.dumps(_bounded(schema, ranges))
        converted = _run_converter(text, time.monotonic() + deadline_s)
        grammar = _json_strings(ranges.spliced(converted))
    except _TooLarge:
        return _Refused(_TOO_LARGE)
    except _TooSlow:
        return _Refused(f"it takes more than {deadline_s:g} s to turn into a grammar")
    except NoValueInRange:
        return _Refused(_NO_VALUE)
    except (ValueError, TypeError, KeyError, AssertionError, RecursionError) as exc:
        return _Refused(_reason(exc))
    if len(grammar) > MAX_GRAMMAR_CHARS or nesting_depth(grammar) > MAX_NESTING:
        return _Refused(_TOO_LARGE)
    return grammar


def _run_converter(schema_text: str, deadline: float) -> str:
    """llama-cpp-python's `json_schema_to_gbnf`, with the clock checked each time the
    converter visits a node or adds a rule (its costly loops do one or the other at every
    step), raising `_TooSlow` once `deadline` (a `time.monotonic()` value) has passed."""
    from llama_cpp import llama_grammar

    converter_class: Any = llama_grammar.SchemaConverter
    converter = converter_class(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    visit, add_rule = converter.visit, converter._add_rule

    def checked_visit(schema: Any, name: str) -> Any:
        if time.monotonic() > deadline:
            raise _TooSlow
        return visit(schema, name)

    def checked_add_rule(name: str, rule: str) -> Any:
        if time.monotonic() > deadline:
            raise _TooSlow
        return add_rule(name, rule)

    converter.visit = checked_visit
    converter._add_rule = checked_add_rule
    schema = converter.resolve_refs(json.loads(schema_text), "stdin")
    converter.visit(schema, "")
    return str(converter.format_grammar())


Compiled = TypeVar("Compiled")


class CompiledGrammars(Generic[Compiled]):
    """Each schema's outcome — its grammar made ready by `ready`, or why it was refused —
    for the `max_entries` schemas used last, and at most `max_chars` of grammar text in all.

    Keyed by a hash of the schema's JSON (property order counts: it orders the output), so
    the same schema sent again costs a lookup, refusals included: an expensive schema is
    converted once, not once per request. `ready` turns GBNF text into what the engine
    needs, or None when the engine cannot take it. Safe to call from several threads; two
    threads asking for the same new schema at once may both convert it.
    """

    def __init__(
        self,
        ready: Callable[[str], Compiled | None],
        *,
        max_entries: int = 64,
        max_chars: int = 16 * MAX_GRAMMAR_CHARS,
        deadline_s: float = COMPILE_DEADLINE_S,
    ) -> None:
        self._ready = ready
        self._max_entries = max_entries
        self._max_chars = max_chars
        self._deadline_s = deadline_s
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[Compiled | _Refused, int]] = OrderedDict()
        self._chars = 0
        self.conversions = 0
        """How many schemas were converted (not found here): what tests count."""

    def grammar(self, constraint: OutputConstraint) -> Compiled:
        """The ready grammar for `constraint`, or the `InvalidRequest` refusing it."""
        key = hashlib.sha256(json.dumps(constraint.schema).encode()).digest()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is None:
            entry = self._compiled(constraint.schema)
            self._remember(key, entry)
        outcome = entry[0]
        if isinstance(outcome, _Refused):
            raise schema_refused(constraint, outcome.reason)
        return outcome

    def _compiled(self, schema: dict[str, Any]) -> tuple[Compiled | _Refused, int]:
        with self._lock:
            self.conversions += 1
        log.info("converting an output schema to a grammar (%d so far)", self.conversions)
        gbnf = _convert(schema, self._deadline_s)
        if isinstance(gbnf, _Refused):
            return gbnf, 0
        ready = self._ready(gbnf)
        return (_Refused(_UNPARSED), 0) if ready is None else (ready, len(gbnf))

    def _remember(self, key: bytes, entry: tuple[Compiled | _Refused, int]) -> None:
        size = entry[1]
        if size > self._max_chars:
            return
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._chars -= previous[1]
            self._entries[key] = entry
            self._chars += size
            while len(self._entries) > self._max_entries or self._chars > self._max_chars:
                _key, (_outcome, evicted) = self._entries.popitem(last=False)
                self._chars -= evicted


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


class _TooSlow(Exception):
    """Converting a schema went past its deadline."""


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
        if not self._rules:
            return grammar
        names = {line.partition(" ::= ")[0] for line in grammar.splitlines()}
        prefix = "range"
        while any(f"{prefix}{index}" in names for index in self._rules.values()):
            prefix += "-"
        used: set[int] = set()

        def rule_name(match: re.Match[str]) -> str:
            used.add(int(match.group(1)))
            return f"{prefix}{match.group(1)}"

        # How the converter writes each placeholder const: one pass over the grammar.
        literal = re.compile('"\\\\"' + re.escape(self._base) + '([0-9]+)\\\\""')
        lines = [literal.sub(rule_name, grammar)]
        for rule, index in self._rules.items():
            if index in used:
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
