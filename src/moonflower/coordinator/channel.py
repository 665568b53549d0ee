"""One job's sealed channel to its provider: the ephemeral key the job was sealed with, the
queue its opened events land in, the coordinator's tally of them, and the receipt that
follows its terminal event.

Owns sealing the request, opening the provider's event frames, counting them as they
arrive (`tally.JobTally`, the job's one accumulator of what was relayed) and splitting their
reasoning (`reasoning.EventSplitter`), each once per event and whether or not anybody reads
the queue yet: the queue holds each event with the pieces the consumer is shown and the
relayed count through it, and the receipt's output (`receipts.ReceiptOutput`) is gathered
from those very pieces, so the receipt is checked against exactly what was relayed to the
consumer. A frame that does not open — plaintext, another key, tampered, a code only the
coordinator may use — or that breaks a counting rule never reaches the queue: the channel
records the violation, ends the queue with a failure and raises `ProtocolError`, so the
connection cuts the provider off. The queue therefore never holds more than the
flow-control window. It knows nothing of HTTP or storage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from moonflower import errors, wire
from moonflower.coordinator.tally import JobTally
from moonflower.crypto.envelope import EncryptionKeyPair, SealedChannel
from moonflower.crypto.signing import b64e
from moonflower.errors import SealError
from moonflower.generation import Failed, GeneratedEvent, GenerationEvent, GenerationRequest
from moonflower.reasoning import EventSplitter
from moonflower.receipts import ReceiptOutput

log = logging.getLogger(__name__)

BROKE_PROTOCOL = Failed(code="engine_error", message="The provider broke the protocol.")
GONE = Failed(code="provider_gone", message="The provider disconnected mid-job.")


@dataclass(slots=True)
class Arrival:
    """One event from the provider, as the channel took it in. Never changed once made (not
    declared frozen only because a frozen dataclass is twice as slow to make, once per
    event)."""

    event: GenerationEvent
    shown: Sequence[GeneratedEvent]
    """What the consumer is shown of it (`EventSplitter.split`), split once."""
    relayed_tokens: int
    """The tally's billable completion tokens through this event."""


BROKE_ARRIVAL = Arrival(BROKE_PROTOCOL, (), 0)
_GONE = Arrival(GONE, (), 0)


class JobChannel:
    def __init__(
        self, job_id: str, provider_public_key: bytes, *, max_tokens: int, context_length: int
    ) -> None:
        self.job_id = job_id
        self.events: asyncio.Queue[Arrival] = asyncio.Queue()
        self.receipt: asyncio.Future[wire.SignedBlob | None] = (
            asyncio.get_running_loop().create_future()
        )
        """The provider's receipt; None when the connection closed before one came."""
        self.tally = JobTally(max_tokens=max_tokens, context_length=context_length)
        self.output = ReceiptOutput()
        """What was relayed, in the form the receipt hashes."""
        self.last: Arrival | None = None
        """The last event taken in."""
        self.violation: str | None = None
        self.is_gone = False
        self._sealed = SealedChannel(EncryptionKeyPair.generate(), provider_public_key)
        self._split = EventSplitter()

    def request_frame(self, request: GenerationRequest) -> str:
        """The `job_request` frame: the request serialised (`wire.request_bytes`) and sealed,
        once per job."""
        frame = wire.encode(
            wire.JobRequest(
                job_id=self.job_id,
                ephemeral_public_key=b64e(self._sealed.local_public_key),
                sealed_request=self._sealed.seal(wire.request_bytes(request)),
            )
        )
        if len(frame) > wire.MAX_FRAME_BYTES:
            raise errors.BodyTooLarge("The request is too large to send to a provider.")
        return frame

    @property
    def is_ended(self) -> bool:
        """No more events will come: terminal event, violation or lost connection."""
        return self.tally.terminal is not None or self.violation is not None or self.is_gone

    def accept(self, sealed_event: str) -> None:
        """Open, check and count one event frame, then queue it; raises `ProtocolError` (and
        ends the job) when the frame breaks the protocol."""
        try:
            event = wire.event_from_provider_bytes(self._sealed.open(sealed_event))
        except (SealError, errors.ProtocolError):
            self.break_off("a job frame failed to open or is not allowed")
        tally = self.tally
        problem = tally.add(event)
        if problem is not None:
            self.break_off(problem)
        shown = self._split.split(event)
        self.output.add(shown)
        if tally.terminal is not None:
            self.output.end(tally.terminal)
        self.last = arrival = Arrival(event, shown, tally.relayed_tokens)
        self.events.put_nowait(arrival)

    def unreleased(self) -> Sequence[GeneratedEvent]:
        """The text held back so far (it could still become a tag), split as the end of the
        stream would release it; the channel's split is left as it is."""
        return self._split.unreleased()

    def break_off(self, reason: str) -> None:
        """End the job for a protocol violation and raise it."""
        if self.violation is None:
            log.warning("job %s: the provider broke the protocol (%s)", self.job_id, reason)
            self.violation = reason
            self.events.put_nowait(BROKE_ARRIVAL)
            self.no_receipt()
        raise errors.ProtocolError(f"job {self.job_id}: {reason}")

    def connection_lost(self) -> None:
        """The provider's connection closed: nothing more can come."""
        if self.is_ended:
            self.no_receipt()
            return
        self.is_gone = True
        self.events.put_nowait(_GONE)
        self.no_receipt()

    def take_receipt(self, receipt: wire.SignedBlob) -> None:
        if not self.receipt.done():
            self.receipt.set_result(receipt)

    def no_receipt(self) -> None:
        if not self.receipt.done():
            self.receipt.set_result(None)
