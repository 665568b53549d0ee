"""`moonflower verify`: check a saved answer against its provider's receipt and statement.

Reads a whole body or a recorded stream, finds the receipt (in the stream, or by job id from
the coordinator's `GET /v1/receipts/{job_id}`), fetches the provider's signed statement from
the public `GET /v1/providers/attestation` feed (or reads a saved one), runs
`moonflower.client.verify`, and prints one line per check and a verdict. Exit status: 0 when
every check passed, 1 when one failed, 2 when verification could not run at all. It never
prints the answer's text.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from moonflower.client import verify as checks
from moonflower.client.recorded import (
    CarriedReceipt,
    Dialect,
    Recorded,
    carried_receipt,
    detect_body_dialect,
    from_body,
)
from moonflower.client.recorded_stream import from_stream
from moonflower.crypto.signing import b64d, key_fingerprint
from moonflower.errors import UnreadableResponse

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class DialectName(StrEnum):
    openai_chat = "openai-chat"
    openai_completions = "openai-completions"
    openai_responses = "openai-responses"
    anthropic = "anthropic"


class CannotVerify(Exception):
    """Verification could not run (says why); not a failed check."""


def verify(
    response_file: Annotated[
        Path,
        typer.Argument(
            help="The saved answer: a whole JSON body, or the raw bytes of its stream.",
            exists=True,
            dir_okay=False,
        ),
    ],
    dialect: Annotated[
        DialectName | None, typer.Option(help="The answer's API (default: detected).")
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(help="The coordinator (default $OPENAI_BASE_URL or local); /v1 optional."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="API key, to fetch a receipt by job id (default $OPENAI_API_KEY)."),
    ] = None,
    job_id: Annotated[
        str | None, typer.Option(help="The job (default: x-moonflower-job-id, or the stream's).")
    ] = None,
    headers: Annotated[
        Path | None,
        typer.Option(help="The answer's response headers, one `name: value` per line."),
    ] = None,
    statement: Annotated[
        Path | None,
        typer.Option(help="A saved statement ({json, signature}) instead of fetching it."),
    ] = None,
) -> None:
    """Check that a saved answer is what the attested provider signed for."""
    url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    url = url.removesuffix("/v1")
    key = api_key or os.environ.get("MOONFLOWER_API_KEY") or os.environ.get("OPENAI_API_KEY")
    try:
        recorded = read_answer(response_file.read_bytes(), dialect)
        header_map = read_headers(headers) if headers is not None else {}
        with httpx.Client(base_url=url, timeout=30) as client:
            verdict = run(client, recorded, header_map, job_id, key, statement)
    except (CannotVerify, UnreadableResponse, OSError) as exc:
        typer.echo(f"cannot verify: {exc}", err=True)
        raise typer.Exit(2) from None
    except httpx.HTTPError as exc:
        typer.echo(f"cannot verify: cannot talk to {url}: {exc}", err=True)
        raise typer.Exit(2) from None
    for line in verdict.lines():
        typer.echo(line)
    if not verdict.ok:
        raise typer.Exit(1)


def run(
    client: httpx.Client,
    recorded: Recorded,
    headers: dict[str, str],
    job_id: str | None,
    api_key: str | None,
    statement_file: Path | None,
) -> checks.Verdict:
    carried = recorded.receipt
    job = job_id or headers.get("x-moonflower-job-id") or (carried.job_id if carried else None)
    if carried is None:
        if job is None:
            raise CannotVerify(
                "the answer carries no receipt: pass --job-id or --headers with "
                "x-moonflower-job-id to fetch it"
            )
        carried = fetch_receipt(client, job, api_key)
    provider_id = headers.get("x-provider-id") or carried.provider_id
    if statement_file is not None:
        statement_json, statement_signature = saved_statement(statement_file)
    else:
        statement_json, statement_signature = fetch_statement(client, provider_id, carried)
    return checks.verify(
        received=recorded.received,
        receipt_json=carried.receipt,
        signature=headers.get("x-se-signature") or carried.signature,
        statement_json=statement_json,
        statement_signature=statement_signature,
        response_hash=headers.get("x-response-hash")
        or (recorded.receipt.response_hash if recorded.receipt else None),
        job_id=job,
    )


def read_answer(data: bytes, dialect: DialectName | None) -> Recorded:
    """A whole JSON body or a recorded stream, told apart by their first character."""
    chosen: Dialect | None = dialect.value if dialect is not None else None
    if data.lstrip().startswith(b"{"):
        try:
            body = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UnreadableResponse(f"the body is not JSON: {exc}") from None
        return Recorded(from_body(body, chosen or detect_body_dialect(body)))
    return from_stream(data, chosen)


def read_headers(path: Path) -> dict[str, str]:
    """`name: value` lines (as `curl -D` or a browser saves them); others are skipped."""
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip() and " " not in name.strip():
            found[name.strip().lower()] = value.strip()
    return found


def fetch_receipt(client: httpx.Client, job_id: str, api_key: str | None) -> CarriedReceipt:
    if not api_key:
        raise CannotVerify("fetching a receipt needs the API key that asked: pass --api-key")
    response = client.get(f"/v1/receipts/{job_id}", headers={"Authorization": f"Bearer {api_key}"})
    if response.status_code != 200:
        raise CannotVerify(f"no receipt for job {job_id}: HTTP {response.status_code}")
    return carried_receipt(response.json())


def fetch_statement(
    client: httpx.Client, provider_id: str, carried: CarriedReceipt
) -> tuple[str, str]:
    """The provider's statement from the public feed: the entry with its id and the key the
    receipt names; else another entry with that key (the provider reconnected); else the
    entry with its id (whose key the checks will then find is not the receipt's)."""
    response = client.get("/v1/providers/attestation")
    if response.status_code != 200:
        raise CannotVerify(f"the attestation feed answered HTTP {response.status_code}")
    entries = [e for e in response.json().get("data", []) if isinstance(e, dict)]
    signed = [e for e in entries if isinstance(e.get("statement"), dict)]
    named = [e for e in signed if e.get("provider_id") == provider_id]
    wanted = _named_fingerprint(carried.receipt)
    same_key = [e for e in signed if _statement_fingerprint(e["statement"]) == wanted]
    found = [e for e in named if e in same_key] or same_key or named
    if not found:
        raise CannotVerify(
            f"provider {provider_id} has no statement in the attestation feed (is it still "
            "connected?); pass a saved one with --statement"
        )
    return _statement_pair(found[0]["statement"])


def saved_statement(path: Path) -> tuple[str, str]:
    """A saved statement: `{json, signature}`, or a whole attestation-feed entry."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CannotVerify(f"{path} is not JSON: {exc}") from None
    if isinstance(value, dict) and isinstance(value.get("statement"), dict):
        value = value["statement"]
    return _statement_pair(value)


def _statement_pair(value: Any) -> tuple[str, str]:
    if not (
        isinstance(value, dict)
        and isinstance(value.get("json"), str)
        and isinstance(value.get("signature"), str)
    ):
        raise CannotVerify("a statement must be an object with text `json` and `signature`")
    return value["json"], value["signature"]


def _named_fingerprint(receipt_json: str) -> str | None:
    try:
        fields = json.loads(receipt_json)
    except json.JSONDecodeError:
        return None
    found = fields.get("provider_key_fingerprint") if isinstance(fields, dict) else None
    return found if isinstance(found, str) else None


def _statement_fingerprint(statement: dict[str, Any]) -> str | None:
    try:
        fields = json.loads(statement.get("json") or "")
        return key_fingerprint(b64d(fields["signing_public_key"]))
    except (json.JSONDecodeError, ValueError, TypeError, KeyError):
        return None
