"""`moonflower chat`: talk to any Moonflower (or OpenAI-compatible) endpoint from a terminal.

One-shot with a prompt argument, interactive without one; answers stream as they arrive.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import httpx
import orjson
import typer


def chat(
    prompt: Annotated[str | None, typer.Argument(help="Ask once and exit; omit to chat.")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="API base URL (default $OPENAI_BASE_URL or local).")
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="API key (default $OPENAI_API_KEY).")] = None,
    model: Annotated[str | None, typer.Option(help="Model id (default: the first served).")] = None,
    system: Annotated[str | None, typer.Option(help="A system prompt.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Limit each answer.")] = None,
) -> None:
    """Chat with a model, streaming its answers."""
    url = (base_url or os.environ.get("OPENAI_BASE_URL") or "http://127.0.0.1:8000/v1").rstrip("/")
    key = api_key or os.environ.get("OPENAI_API_KEY") or os.environ.get("MOONFLOWER_API_KEY")
    if not key:
        raise typer.BadParameter("pass --api-key or set OPENAI_API_KEY", param_hint="--api-key")
    try:
        converse(url, key, prompt, model, system, max_tokens)
    except httpx.HTTPError as exc:
        typer.echo(f"cannot talk to {url}: {exc}", err=True)
        raise typer.Exit(1) from None


def converse(
    url: str,
    key: str,
    prompt: str | None,
    model: str | None,
    system: str | None,
    max_tokens: int | None,
) -> None:
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600
    ) as client:
        chosen = model or first_model(client)
        history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        if prompt is not None:
            history.append({"role": "user", "content": prompt})
            ask(client, chosen, history, max_tokens)
            return
        typer.echo(f"chatting with {chosen}; an empty line or Ctrl-D ends", err=True)
        while True:
            try:
                line = input("› ")
            except EOFError:
                break
            if not line.strip():
                break
            history.append({"role": "user", "content": line})
            history.append(
                {"role": "assistant", "content": ask(client, chosen, history, max_tokens)}
            )


def first_model(client: httpx.Client) -> str:
    response = client.get("/models")
    fail_on_error(response)
    models = response.json()["data"]
    if not models:
        typer.echo("no models are being served right now", err=True)
        raise typer.Exit(1)
    return str(models[0]["id"])


def ask(
    client: httpx.Client, model: str, history: list[dict[str, Any]], max_tokens: int | None
) -> str:
    body: dict[str, Any] = {"model": model, "messages": history, "stream": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    parts: list[str] = []
    with client.stream("POST", "/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            fail_on_error(response)
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            if "error" in chunk:
                typer.echo(f"\nerror: {chunk['error'].get('message')}", err=True)
                raise typer.Exit(1)
            for choice in chunk.get("choices", []):
                text = choice.get("delta", {}).get("content") or ""
                parts.append(text)
                sys.stdout.write(text)
                sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(parts)


def fail_on_error(response: httpx.Response) -> None:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        typer.echo(f"error {response.status_code}: {message}", err=True)
        raise typer.Exit(1)
