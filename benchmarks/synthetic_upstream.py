"""A synthetic OpenAI-compatible upstream: a benchmark instrument, never used outside
benchmarks/.

`POST /v1/chat/completions` answers any request with the same fixed text, `--tokens`
tokens long, one token every `--interval-ms` milliseconds (the wait comes before each
token, so the first arrives one interval after the request, as from a model that
starts generating at once). Streaming (`"stream": true`) sends an assistant-role chunk,
one chunk per token, a final chunk with `finish_reason` and `data: [DONE]`; otherwise
one `chat.completion` body after the whole generation time. `max_tokens`, when smaller,
cuts the text short. It does no inference and checks nothing but the JSON shape, so the
gateways in front of it are the only thing a benchmark measures. Usage:

    .venv/bin/python -m benchmarks.synthetic_upstream [--port 8900] [--tokens 64]
        [--interval-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def synthetic_tokens(count: int) -> tuple[str, ...]:
    """The fixed text every synthetic generator emits: `count` short word tokens."""
    return tuple(f" w{i}" for i in range(count))


@dataclass(frozen=True)
class SyntheticGeneration:
    tokens: tuple[str, ...]
    interval_s: float

    def limited(self, max_tokens: int | None) -> tuple[str, ...]:
        return self.tokens if max_tokens is None else self.tokens[: max(0, max_tokens)]


def _chunk(completion_id: str, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _stream(
    generation: SyntheticGeneration, tokens: tuple[str, ...], model: str
) -> AsyncIterator[bytes]:
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    yield _chunk(completion_id, model, {"role": "assistant", "content": ""}, None)
    for token in tokens:
        await asyncio.sleep(generation.interval_s)
        yield _chunk(completion_id, model, {"content": token}, None)
    finish = "stop" if len(tokens) == len(generation.tokens) else "length"
    yield _chunk(completion_id, model, {}, finish)
    yield b"data: [DONE]\n\n"


def create_app(generation: SyntheticGeneration) -> Starlette:
    async def chat_completions(request: Request) -> Response:
        try:
            payload = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return JSONResponse({"error": {"message": "body is not JSON"}}, status_code=400)
        if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
            return JSONResponse({"error": {"message": "messages required"}}, status_code=400)
        model = str(payload.get("model", "synthetic"))
        max_tokens = payload.get("max_tokens")
        tokens = generation.limited(max_tokens if isinstance(max_tokens, int) else None)
        if payload.get("stream"):
            return StreamingResponse(
                _stream(generation, tokens, model), media_type="text/event-stream"
            )
        await asyncio.sleep(generation.interval_s * len(tokens))
        finish = "stop" if len(tokens) == len(generation.tokens) else "length"
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(tokens)},
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": 1,
                    "completion_tokens": len(tokens),
                    "total_tokens": 1 + len(tokens),
                },
            }
        )

    async def models(_request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "synthetic", "object": "model"}]})

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models),
            Route("/health", health),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    args = parser.parse_args()
    generation = SyntheticGeneration(synthetic_tokens(args.tokens), args.interval_ms / 1000)
    uvicorn.run(create_app(generation), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
