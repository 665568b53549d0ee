"""The provider's identity: its signing key, and the signed things it says about itself —
the attestation statement sent at registration and the status that answers each challenge.

Both are built fresh each time (timestamp, posture, code and model hashes), off the event
loop because probing the OS and hashing code can take a moment. It never signs anything a
caller hands it; only what this module builds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from moonflower import wire
from moonflower.crypto.envelope import EncryptionKeyPair
from moonflower.crypto.signing import Signer
from moonflower.crypto.statement import AttestedHardware, build_statement, sign_statement
from moonflower.crypto.status import Challenge, answer_challenge
from moonflower.posture import Posture
from moonflower.provider.code_identity import code_hash, runtime_hash
from moonflower.provider.hardware import machine_model, os_version, serial_number
from moonflower.provider.posture import read_posture


class ProviderIdentity:
    def __init__(
        self,
        signer: Signer,
        encryption: EncryptionKeyPair,
        models: Sequence[wire.ModelCard],
        hardware: wire.Hardware,
    ) -> None:
        self.signer = signer
        self.encryption = encryption
        self.model_hashes = {card.id: card.sha256 for card in models}
        self.hardware = hardware

    async def statement(self) -> wire.SignedBlob:
        posture, code, runtime = await asyncio.to_thread(_current_facts)
        attested = await asyncio.to_thread(self._attested_hardware)
        statement = build_statement(
            self.signer,
            self.encryption.public_key,
            hardware=attested,
            os_version=os_version(),
            posture=posture,
            code_hash=code,
            runtime_hash=runtime,
            model_hashes=self.model_hashes,
            protocol_version=wire.PROTOCOL_VERSION,
            now=time.time(),
        )
        signed = sign_statement(statement, self.signer)
        return wire.SignedBlob(json_text=signed.statement_json, signature=signed.signature)

    async def answer(self, challenge: wire.Challenge) -> wire.ChallengeAnswer:
        posture, code, runtime = await asyncio.to_thread(_current_facts)
        status = answer_challenge(
            Challenge(nonce=challenge.nonce, timestamp=challenge.timestamp),
            self.signer,
            now=time.time(),
            posture=posture,
            code_hash=code,
            runtime_hash=runtime,
            model_hashes=self.model_hashes,
        )
        signed = wire.SignedBlob(json_text=status.status_json, signature=status.signature)
        return wire.ChallengeAnswer(nonce=challenge.nonce, status=signed)

    def _attested_hardware(self) -> AttestedHardware:
        return AttestedHardware(
            chip=self.hardware.chip,
            machine_model=machine_model(),
            serial=serial_number(),
            memory_bytes=self.hardware.memory_bytes,
            gpu=self.hardware.gpu,
            cpu=self.hardware.cpu,
        )


def _current_facts() -> tuple[Posture, str, str]:
    return read_posture(), code_hash(), runtime_hash()
