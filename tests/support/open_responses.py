"""Validate Responses objects and stream events against the Open Responses specification.

Owns loading the Open Responses OpenAPI 3.1 document shipped in the installed
``openresponses-py`` package (``openresponses/openapi/<date>.json``) and validating an
instance against one of its ``#/components/schemas/<name>`` schemas (JSON Schema 2020-12,
``$ref``s resolved through a ``referencing`` registry holding the whole document), the way
``tests/support/openapi.py`` does for OpenAI's and Anthropic's documents, whose error
reporting it reuses. It must not fetch anything over the network nor edit the document on
disk; the document is read once per process. Unlike those documents it is pure 2020-12
(no OpenAPI 3.0 ``nullable``), so it is checked exactly as published.

Schema names worth knowing: ``ResponseResource`` (the response object, whole and inside
``response.*`` events; every one of its fields is required, nullable ones included),
``ItemField`` (an output item), ``Usage``, ``Error``; stream events
``Response<Kind>StreamingEvent`` (``Created``, ``InProgress``, ``Completed``,
``Incomplete``, ``Failed``, ``OutputItemAdded``/``Done``, ``ContentPartAdded``/``Done``,
``OutputTextDelta``/``Done``, ``FunctionCallArgumentsDelta``/``Done``,
``ReasoningDelta``/``Done`` (named ``response.reasoning.*``, where OpenAI says
``response.reasoning_text.*``)) and ``ErrorStreamingEvent`` (``{"type": "error",
"error": ErrorPayload}``).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from tests.support.openapi import assert_valid_with, component_validator

VERSION = "2026-04-24"
_URI = "urn:moonflower-tests:open-responses"


def assert_valid_open_responses(schema_name: str, instance: object) -> None:
    """Fail unless ``instance`` is valid against Open Responses'
    ``components/schemas/<name>``."""
    assert_valid_with(_validator(schema_name), f"Open Responses {schema_name}", instance)


def open_responses_schema_names() -> list[str]:
    return sorted(_schemas())


def required_fields(schema_name: str) -> list[str]:
    """The ``required`` list of a schema, e.g. every field a ``ResponseResource`` must have."""
    required: list[str] = _schemas()[schema_name]["required"]
    return required


@functools.cache
def _validator(schema_name: str) -> Draft202012Validator:
    schemas = _schemas()
    if schema_name not in schemas:
        raise AssertionError(f"Open Responses has no schema {schema_name!r}")
    return _components()(schema_name)


@functools.cache
def _components() -> Callable[[str], Draft202012Validator]:
    return component_validator(_document(), _URI)


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = _document()["components"]["schemas"]
    return schemas


@functools.cache
def _document() -> dict[str, Any]:
    source = importlib.resources.files("openresponses").joinpath(f"openapi/{VERSION}.json")
    document: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    return document
