"""Provider trust on the coordinator: checking the attestation statement at registration,
the challenge-response loop, and the trust level routing relies on.

Levels: `none` (no or invalid statement), `self_signed` (valid statement, passing
challenges), `hardware` (additionally a hardware vendor's certificate chain binding the
signing key). Untrusted is not a level but a verdict: once given, no heartbeat, later success
or anything else on the connection clears it. Each verdict given after registration is also
handed to the connection's `on_untrusted` callback, which makes it last beyond the connection
(`reputation.py` records it against the provider's proven key and its account). Nothing is
ever restored from what a provider says about itself (a serial number, say).

Owns no storage and no I/O: what a verdict means beyond this connection is the callback's
business.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509

from moonflower import wire
from moonflower.crypto.apple_mda import verify_mda_chain
from moonflower.crypto.signing import b64d
from moonflower.crypto.statement import Statement, verify_statement
from moonflower.crypto.status import Challenge, ChallengeStatus, verify_status
from moonflower.errors import AttestationError, MdaError
from moonflower.posture import is_negative
from moonflower.settings import CoordinatorSettings

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3


class TrustLevel(enum.IntEnum):
    NONE = 0
    SELF_SIGNED = 1
    HARDWARE = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> TrustLevel:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown trust level {text!r}") from None


@dataclass
class ProviderTrust:
    """What one connection has proven so far."""

    statement: Statement | None
    signed_statement: wire.SignedBlob | None
    statement_problem: str | None = None
    is_hardware: bool = False
    untrusted_reason: str | None = None
    last_challenge_passed: float | None = None
    """`time.monotonic()` of the last passed challenge."""
    last_challenge_passed_at: int | None = None
    """Unix time of the same, for the public feed."""
    consecutive_failures: int = 0
    challenges_passed: int = 0
    has_proven_key: bool = False
    """Did this connection prove it holds the statement's signing key, by a status it signed
    for a fresh challenge? Until then the key is only claimed: anyone may replay a public
    statement, so no verdict is held against a key that was not proven."""
    on_untrusted: Callable[[str], None] | None = field(default=None, repr=False)
    """Told the reason of the verdict, once, when this connection becomes untrusted; set
    after registration, so a statement's own negative posture stays this connection's."""
    _pending: Challenge | None = field(default=None, repr=False)

    @property
    def level(self) -> TrustLevel:
        if self.statement is None:
            return TrustLevel.NONE
        return TrustLevel.HARDWARE if self.is_hardware else TrustLevel.SELF_SIGNED

    def is_routable(self, floor: TrustLevel, *, freshness_s: float, now: float) -> bool:
        """May this provider take a job that needs at least `floor`?"""
        if self.untrusted_reason is not None or self.level < floor:
            return False
        if self.statement is None:
            return True  # floor is `none`: nothing to prove, nothing proven
        fresh = self.last_challenge_passed is not None
        return fresh and now - (self.last_challenge_passed or 0.0) <= freshness_s

    def is_attested(self, *, freshness_s: float, now: float) -> bool:
        return self.is_routable(TrustLevel.SELF_SIGNED, freshness_s=freshness_s, now=now)

    def mark_untrusted(self, reason: str, *, is_reported: bool = True) -> None:
        """Untrust this connection for `reason` (the first reason stays) and report the
        verdict to `on_untrusted`, unless it is someone else's already recorded verdict
        (`is_reported=False`: a verdict against the account this connection shares)."""
        if self.untrusted_reason is not None:
            return
        log.warning("provider is untrusted: %s", reason)
        self.untrusted_reason = reason
        if is_reported and self.on_untrusted is not None:
            self.on_untrusted(reason)

    def issue(self, challenge: Challenge) -> None:
        self._pending = challenge

    def settle(self, answer: wire.ChallengeAnswer | None, settings: CoordinatorSettings) -> None:
        """Judge the answer to the pending challenge (`None`: no answer before the deadline)."""
        challenge, self._pending = self._pending, None
        if challenge is None or self.statement is None:
            return
        problem = self._problem(challenge, answer, settings)
        if problem is None:
            self.consecutive_failures = 0
            self.challenges_passed += 1
            self.last_challenge_passed = time.monotonic()
            self.last_challenge_passed_at = int(time.time())
            return
        self.consecutive_failures += 1
        log.info("challenge failed (%s), %d in a row", problem, self.consecutive_failures)
        if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            self.mark_untrusted(f"{MAX_CONSECUTIVE_FAILURES} challenges failed in a row")

    def _problem(
        self,
        challenge: Challenge,
        answer: wire.ChallengeAnswer | None,
        settings: CoordinatorSettings,
    ) -> str | None:
        assert self.statement is not None
        if answer is None:
            return "no answer before the deadline"
        if answer.nonce != challenge.nonce:
            return "answer to another challenge"
        try:
            status = verify_status(
                answer.status.json_text,
                answer.status.signature,
                challenge=challenge,
                public_key=self.statement.signing_key,
                now=time.time(),
                deadline_s=settings.challenge_deadline_s,
            )
        except AttestationError as exc:
            return exc.reason
        self.has_proven_key = True
        self._check_status(status)
        if answer.mda_chain:
            self._check_device(answer.mda_chain, challenge, settings)
        return None

    def _check_device(
        self, chain: tuple[str, ...], challenge: Challenge, settings: CoordinatorSettings
    ) -> None:
        """`hardware` needs an Apple attestation chain that binds the signing key and this
        challenge's nonce, attests the serial the statement names, and a secure boot state.
        A chain that fails grants nothing (and takes nothing away)."""
        assert self.statement is not None
        roots = [x509.load_pem_x509_certificate(p.encode()) for p in settings.mda_root_pems]
        try:
            device = verify_mda_chain(
                [b64d(item) for item in chain],
                expected_public_key=self.statement.signing_key,
                nonce=b64d(challenge.nonce),
                now=datetime.now(UTC),
                roots=roots or None,
                key_binding=settings.mda_key_binding,
            )
        except (MdaError, ValueError) as exc:
            log.info("device attestation refused: %s", exc)
            return
        serial = self.statement.hardware.serial
        self.is_hardware = (
            serial is not None
            and device.serial == serial
            and device.sip_enabled is not False
            and device.secure_boot in (None, "Full Security")
            and device.third_party_kexts_allowed is not True
        )

    def _check_status(self, status: ChallengeStatus) -> None:
        """A negative posture or a changed code or model hash ends trust at once."""
        assert self.statement is not None
        negative = is_negative(status.posture)
        if negative:
            self.mark_untrusted(f"negative security posture: {', '.join(negative)}")
        elif dict(status.posture) != dict(self.statement.posture):
            self.mark_untrusted("security posture changed since the statement")
        elif (status.code_hash, status.runtime_hash) != (
            self.statement.code_hash,
            self.statement.runtime_hash,
        ):
            self.mark_untrusted("running code changed since the statement")
        elif dict(status.model_hashes) != dict(self.statement.model_hashes):
            self.mark_untrusted("model weights changed since the statement")


def judge_registration(
    registration: wire.Register, encryption_key: bytes, settings: CoordinatorSettings
) -> ProviderTrust:
    """The trust a new connection starts with, from its statement (if any)."""
    signed = registration.statement
    if signed is None:
        return ProviderTrust(statement=None, signed_statement=None, statement_problem="none sent")
    try:
        statement = verify_statement(
            signed.json_text,
            signed.signature,
            now=time.time(),
            max_age_s=settings.attestation_max_age_s,
        )
    except AttestationError as exc:
        return ProviderTrust(statement=None, signed_statement=signed, statement_problem=exc.reason)
    problem = _binding_problem(statement, registration, encryption_key, settings)
    if problem is not None:
        return ProviderTrust(statement=None, signed_statement=signed, statement_problem=problem)
    trust = ProviderTrust(statement=statement, signed_statement=signed)
    negative = is_negative(statement.posture)
    if negative:
        trust.mark_untrusted(f"negative security posture: {', '.join(negative)}")
    return trust


def _binding_problem(
    statement: Statement,
    registration: wire.Register,
    encryption_key: bytes,
    settings: CoordinatorSettings,
) -> str | None:
    if statement.encryption_key != encryption_key:
        return "encryption key not bound to the statement"
    if statement.protocol_version != registration.protocol_version:
        return "protocol version differs from the statement"
    if settings.blessed_code_hashes and statement.code_hash not in settings.blessed_code_hashes:
        return "code hash not blessed"
    served = {card.id: card.sha256 for card in registration.models}
    if dict(statement.model_hashes) != served:
        return "model hashes differ from the models registered"
    for model_id, sha256 in served.items():
        expected = settings.model_catalog.get(model_id)
        if expected is not None and expected != sha256:
            return f"weights of {model_id} differ from the catalog"
    return None
