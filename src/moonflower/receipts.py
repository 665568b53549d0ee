"""A job's receipt as both ends compute it: the provider tallies what it generated and signs
a receipt; the coordinator tallies what it relayed and checks the receipt against it.

The output is tallied the way a consumer sees it — `<think>` reasoning split from the
visible text by the same splitter the coordinator uses, tool calls joined — so the
`output_sha256` a consumer recomputes from what it received matches. No I/O here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from moonflower.crypto.receipt import (
    Receipt,
    ReceiptFinishReason,
    output_digest,
    request_digest,
    sign_receipt,
)
from moonflower.crypto.signing import Signer, key_fingerprint
from moonflower.generation import (
    Failed,
    Finished,
    GenerationEvent,
    GenerationRequest,
    ReasoningDelta,
    Started,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from moonflower.reasoning import ThinkSplitter


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OutputTally:
    """Everything one job produced, in the form its receipt hashes."""

    def __init__(self) -> None:
        self._splitter = ThinkSplitter()
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, _Call] = {}
        self.usage = Usage(0, 0)
        self.finish_reason: ReceiptFinishReason | None = None
        self.delta_tokens = 0
        """The completion tokens the deltas added so far say they carry."""

    def add(self, event: GenerationEvent) -> None:
        if isinstance(event, TextDelta):  # nearly every event: checked first
            self.delta_tokens += event.tokens
            if self._splitter.passes_through(event.text):
                self._text.append(event.text)
            else:
                self._keep(self._splitter.push(event.text))
        elif isinstance(event, Started):
            self._splitter = ThinkSplitter(starts_in_reasoning=event.starts_in_reasoning)
            self.usage = Usage(event.prompt_tokens, 0)
        elif isinstance(event, ReasoningDelta):
            self._reasoning.append(event.text)
        elif isinstance(event, ToolCallDelta):
            self.delta_tokens += event.tokens
            call = self._calls.setdefault(event.index, _Call())
            call.id, call.name = event.id or call.id, event.name or call.name
            call.arguments.append(event.arguments)
        elif isinstance(event, Finished):
            self._keep(self._splitter.flush())
            self.usage, self.finish_reason = event.usage, event.reason
        elif isinstance(event, Failed):
            self._keep(self._splitter.flush())
            # A failed job's receipt counts what its deltas carried before the failure.
            self.usage = Usage(self.usage.prompt_tokens, self.delta_tokens)
            self.finish_reason = "failed"

    def _keep(self, pieces: list[TextDelta | ReasoningDelta]) -> None:
        for piece in pieces:
            (self._text if isinstance(piece, TextDelta) else self._reasoning).append(piece.text)

    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=c.id, name=c.name, arguments="".join(c.arguments))
            for _index, c in sorted(self._calls.items())
        ]

    def digest(self) -> str:
        return output_digest(
            "".join(self._text),
            "".join(self._reasoning),
            self.tool_calls(),
            self.finish_reason or "failed",
        )


def build_receipt(
    *,
    signer: Signer,
    job_id: str,
    model_id: str,
    model_sha256: str,
    request: GenerationRequest,
    tally: OutputTally,
) -> tuple[str, str]:
    """The signed receipt of a finished job: (canonical receipt JSON, base64 signature)."""
    receipt = Receipt(
        job_id=job_id,
        model_id=model_id,
        model_sha256=model_sha256,
        request_sha256=request_digest(request),
        output_sha256=tally.digest(),
        prompt_tokens=tally.usage.prompt_tokens,
        completion_tokens=tally.usage.completion_tokens,
        finish_reason=tally.finish_reason or "failed",
        provider_key_fingerprint=key_fingerprint(signer.public_key()),
        timestamp=int(time.time()),
    )
    signed = sign_receipt(receipt, signer)
    return signed.receipt_json, signed.signature
