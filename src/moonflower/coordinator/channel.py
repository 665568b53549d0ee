"""One job's sealed channel to its provider: the ephemeral key the job was sealed with, the
queue its opened events land in, and the receipt that follows its terminal event.

Owns sealing the request and opening the provider's event frames. A frame that does not
open — plaintext, another key, tampered — never reaches the queue: it fails the job with a
`Failed` event and reports the breach, so the session can mark its provider untrusted. It
knows nothing of HTTP or storage.
"""

from __future__ import annotations

import asyncio
import logging

from moonflower import errors, wire
from moonflower.crypto.envelope import EncryptionKeyPair, SealedChannel
from moonflower.crypto.signing import b64e
from moonflower.errors import SealError
from moonflower.generation import Failed, GenerationEvent, GenerationRequest

log = logging.getLogger(__name__)

BAD_SEAL = Failed(code="engine_error", message="The provider sent a frame that failed to open.")


class JobChannel:
    def __init__(self, job_id: str, provider_public_key: bytes) -> None:
        self.job_id = job_id
        self.events: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        self.receipt: asyncio.Future[wire.SignedBlob] = asyncio.get_running_loop().create_future()
        self._sealed = SealedChannel(EncryptionKeyPair.generate(), provider_public_key)

    def request_frame(self, request: GenerationRequest) -> str:
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

    def open_event(self, sealed_event: str) -> GenerationEvent | None:
        """The event inside `sealed_event`, or None (and the job failed) if it does not open."""
        try:
            return wire.event_from_bytes(self._sealed.open(sealed_event))
        except (SealError, errors.ProtocolError):
            log.warning("job %s: a frame from the provider failed to open", self.job_id)
            self.events.put_nowait(BAD_SEAL)
            return None

    def take_receipt(self, receipt: wire.SignedBlob) -> None:
        if not self.receipt.done():
            self.receipt.set_result(receipt)
