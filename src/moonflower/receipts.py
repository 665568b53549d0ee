"""A job's receipt as both ends compute it: the provider tallies what it generated and signs
a receipt; the coordinator tallies what it relayed and checks the receipt against it.

The output is tallied the way a consumer sees it — `<think>` reasoning split from the
visible text by the same per-event splitter the coordinator uses, tool calls joined — so
the `output_sha256` a consumer recomputes from what it received matches. The coordinator
feeds a `ReceiptOutput` the pieces its channel already split for the consumer; a provider's
`OutputTally` splits each event it sends once. No I/O here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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
    GeneratedEvent,
    GenerationEvent,
    GenerationRequest,
    ReasoningDelta,
    Started,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from moonflower.reasoning import EventSplitter


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ReceiptOutput:
    """The output a receipt hashes, gathered from the pieces a consumer is shown — text and
    reasoning already split (`reasoning.EventSplitter`), tool calls — and how it ended. It
    splits nothing and counts nothing: whoever feeds it split the output once."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, _Call] = {}
        self.finish_reason: ReceiptFinishReason | None = None

    def add(self, pieces: Sequence[GeneratedEvent]) -> None:
        for piece in pieces:
            if isinstance(piece, TextDelta):  # nearly every piece: checked first
                self._text.append(piece.text)
            elif isinstance(piece, ReasoningDelta):
                self._reasoning.append(piece.text)
            elif isinstance(piece, ToolCallDelta):
                call = self._calls.setdefault(piece.index, _Call())
                call.id, call.name = piece.id or call.id, piece.name or call.name
                call.arguments.append(piece.arguments)
            else:
                self.end(piece)

    def end(self, terminal: Finished | Failed) -> None:
        self.finish_reason = terminal.reason if isinstance(terminal, Finished) else "failed"

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


class OutputTally:
    """Everything one job produced, as its provider signs for it: each event split once
    (`reasoning.EventSplitter`) into the receipt's output, and the counts it states."""

    def __init__(self) -> None:
        self._split = EventSplitter()
        self.output = ReceiptOutput()
        self.usage = Usage(0, 0)
        self.delta_tokens = 0
        """The completion tokens the deltas added so far say they carry."""

    @property
    def finish_reason(self) -> ReceiptFinishReason | None:
        return self.output.finish_reason

    def add(self, event: GenerationEvent) -> None:
        self.output.add(self._split.split(event))
        if isinstance(event, TextDelta | ToolCallDelta):
            self.delta_tokens += event.tokens
        elif isinstance(event, Started):
            self.usage = Usage(event.prompt_tokens, 0)
        elif isinstance(event, Finished):
            self.usage = event.usage
            self.output.end(event)
        elif isinstance(event, Failed):
            # A failed job's receipt counts what its deltas carried before the failure.
            self.usage = Usage(self.usage.prompt_tokens, self.delta_tokens)
            self.output.end(event)

    def tool_calls(self) -> list[ToolCall]:
        return self.output.tool_calls()

    def digest(self) -> str:
        return self.output.digest()


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
