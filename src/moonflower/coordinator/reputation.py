"""Who may serve, and verdicts that outlast a connection.

Owns enrollment at registration: a provider token names the account that answers for the
machine; a provider without one is admitted only when `allow_anonymous_providers` is on, and
then earns for the one shared `provider:anonymous` account. Owns refusing a provider whose key
or account has a verdict, and recording what lasts: a verdict (against the key the connection
proved it holds, and against its account unless that is the shared anonymous one), a proven
key's sightings, and its counted jobs and failures. The rules are docs/trust.md's "Enrollment
and reputation".

Records in the background: the event-loop code that gives a verdict (a receipt check, a
challenge, a frame that does not open) never waits on the database. Each write is retried a
few times, then logged; a verdict not yet written is also held in memory, so this coordinator
refuses the identity meanwhile, and every live connection of the same key or account stops
being routed at once.

Does not judge statements or challenges (`trust.py`) nor speak the wire protocol
(`routes/providers.py`); storage is `ledger.providers`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from moonflower import errors
from moonflower.coordinator.registry import Registry
from moonflower.coordinator.scoring import ProviderStats
from moonflower.coordinator.session import ProviderSession
from moonflower.coordinator.trust import ProviderTrust
from moonflower.crypto.signing import key_fingerprint
from moonflower.ledger import keys
from moonflower.ledger import providers as ledger
from moonflower.ledger.accounts import ensure_account
from moonflower.ledger.database import Database
from moonflower.ledger.jobs import note_models_served

log = logging.getLogger(__name__)

ANONYMOUS_ACCOUNT = "provider:anonymous"
"""The one account every anonymous provider earns for (when they are allowed at all)."""
WRITE_ATTEMPTS = 6
FIRST_RETRY_S = 0.5
"""A write is retried after 0.5, 1, 2, 4 and 8 s before it is given up and logged."""
MAX_PENDING_RECORDS = 1000
"""Sightings and counts waiting to be written beyond this are dropped (logged); verdicts
are always written."""
UNENROLLED = (
    "this coordinator admits only enrolled providers: connect with a provider token (mfp-…, "
    "in MOONFLOWER_PROVIDER_TOKEN); the coordinator's operator makes one with "
    "`moonflower accounts create NAME --provider`"
)


@dataclass(frozen=True, slots=True)
class Enrollment:
    """Who answers for one admitted connection."""

    account_id: str
    fingerprint: str | None
    """Of the signing key the provider's verified statement names; only claimed until the
    connection answers a challenge with it (`ProviderTrust.has_proven_key`)."""
    is_anonymous: bool


class RecordedStats(ProviderStats):
    """A connection's `ProviderStats`, also counting failures for the identity's record."""

    __slots__ = ("jobs_failed",)

    def __init__(self) -> None:
        super().__init__()
        self.jobs_failed = 0

    def job_failed(self) -> None:
        super().job_failed()
        self.jobs_failed += 1


class Reputation:
    """Enrollment checks and lasting verdicts for one coordinator process."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        *,
        allow_anonymous: bool,
        write_attempts: int = WRITE_ATTEMPTS,
        first_retry_s: float = FIRST_RETRY_S,
    ) -> None:
        self._db = db
        self._registry = registry
        self._allow_anonymous = allow_anonymous
        self._write_attempts = write_attempts
        self._first_retry_s = first_retry_s
        self._anonymous_account_id: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_records = 0
        # Verdicts given here whose write has not landed yet: refused meanwhile.
        self._held_keys: dict[str, str] = {}
        self._held_accounts: dict[str, str] = {}

    async def admit(
        self, token: str | None, trust: ProviderTrust, models: tuple[str, ...]
    ) -> Enrollment:
        """The enrollment of a registering provider, or `AuthenticationFailed` (no token where
        one is needed, an unknown or revoked one) or `PermissionDenied` (a verdict against its
        key or account), each saying why. Writes nothing for a provider it refuses; notes an
        enrolled provider's models as served."""
        caller: keys.Caller | None = None
        if token is None:
            if not self._allow_anonymous:
                raise errors.AuthenticationFailed(UNENROLLED)
        else:
            caller = await keys.find_caller(self._db, token, "provider")  # reads only
            if caller is None:
                raise errors.AuthenticationFailed("unknown or revoked provider token")
        statement = trust.statement
        fingerprint = None if statement is None else key_fingerprint(statement.signing_key)
        await self._refuse_if_untrusted(fingerprint, None if caller is None else caller.account_id)
        if caller is None:
            return Enrollment(await self._anonymous_account(), fingerprint, is_anonymous=True)
        await keys.note_use(self._db, caller)
        await note_models_served(self._db, models)
        return Enrollment(caller.account_id, fingerprint, is_anonymous=False)

    async def _anonymous_account(self) -> str:
        if self._anonymous_account_id is None:
            account = await ensure_account(self._db, ANONYMOUS_ACCOUNT, "provider")
            self._anonymous_account_id = account.id
        return self._anonymous_account_id

    async def _refuse_if_untrusted(self, fingerprint: str | None, account_id: str | None) -> None:
        if fingerprint is not None and fingerprint in self._held_keys:
            raise _refusal("signing key", self._held_keys[fingerprint], None)
        if account_id is not None and account_id in self._held_accounts:
            raise _refusal("account", self._held_accounts[account_id], None)
        verdict = await ledger.standing(self._db, fingerprint=fingerprint, account_id=account_id)
        if verdict is not None:
            subject = "signing key" if verdict.subject == "key" else "account"
            raise _refusal(subject, verdict.reason, verdict.untrusted_at)

    def connected(self, session: ProviderSession, enrollment: Enrollment) -> None:
        """An admitted provider is registered: its verdicts are recorded from now on."""
        session.trust.on_untrusted = functools.partial(self._untrusted, session, enrollment)

    def key_proven(self, session: ProviderSession, enrollment: Enrollment) -> None:
        """The connection answered a challenge with its key: an enrolled identity is seen."""
        fingerprint = enrollment.fingerprint
        if enrollment.is_anonymous or fingerprint is None:
            return
        self._record(
            f"sighting of {fingerprint[:16]}",
            lambda: ledger.note_seen(self._db, fingerprint, enrollment.account_id),
        )

    def disconnected(
        self, session: ProviderSession, enrollment: Enrollment, models: tuple[str, ...]
    ) -> None:
        """The connection ended: an enrolled proven key is seen now and its jobs and failures
        join its record; an anonymous provider's models are noted as served only if it
        completed a job."""
        stats = session.stats
        jobs = stats.jobs_ended
        failures = stats.jobs_failed if isinstance(stats, RecordedStats) else 0
        fingerprint = enrollment.fingerprint
        if enrollment.is_anonymous:
            if jobs > failures:
                self._record(
                    f"models of {session.id}", lambda: note_models_served(self._db, models)
                )
            return
        if fingerprint is None or not session.trust.has_proven_key:
            return
        self._record(
            f"service of {fingerprint[:16]}",
            lambda: ledger.add_service(
                self._db, fingerprint, enrollment.account_id, jobs=jobs, failures=failures
            ),
        )

    def _untrusted(self, session: ProviderSession, enrollment: Enrollment, reason: str) -> None:
        """`session` failed a check: hold the verdict against its proven key and its account
        (unless anonymous), take every live connection of either out of routing, and write
        the verdict in the background."""
        fingerprint = enrollment.fingerprint if session.trust.has_proven_key else None
        account_id = None if enrollment.is_anonymous else enrollment.account_id
        if fingerprint is None and account_id is None:
            log.info(
                "provider %s: verdict lasts this connection only (anonymous, no key)", session.id
            )
            return
        if fingerprint is not None:
            self._held_keys.setdefault(fingerprint, reason)
        if account_id is not None:
            self._held_accounts.setdefault(account_id, reason)
        self._share(session, fingerprint, account_id, reason)
        self._spawn(self._write_verdict(enrollment.account_id, fingerprint, account_id, reason))

    def _share(
        self, session: ProviderSession, fingerprint: str | None, account_id: str | None, reason: str
    ) -> None:
        for other in self._registry:
            if other is session or other.trust.untrusted_reason is not None:
                continue
            statement = other.trust.statement
            same_key = (
                fingerprint is not None
                and statement is not None
                and key_fingerprint(statement.signing_key) == fingerprint
            )
            if same_key:
                other.trust.mark_untrusted(f"its key is untrusted: {reason}", is_reported=False)
            elif account_id is not None and other.account_id == account_id:
                other.trust.mark_untrusted(f"its account is untrusted: {reason}", is_reported=False)

    async def _write_verdict(
        self, key_account_id: str, fingerprint: str | None, account_id: str | None, reason: str
    ) -> None:
        is_written = await self._with_retries(
            "verdict",
            lambda: ledger.untrust(
                self._db,
                reason,
                account_id=key_account_id,
                fingerprint=fingerprint,
                is_account_answerable=account_id is not None,
            ),
        )
        if not is_written:
            return  # still held in memory: this coordinator keeps refusing the identity
        if fingerprint is not None:
            self._held_keys.pop(fingerprint, None)
        if account_id is not None:
            self._held_accounts.pop(account_id, None)

    def _record(self, what: str, write: Callable[[], Awaitable[None]]) -> None:
        if self._pending_records >= MAX_PENDING_RECORDS:
            log.warning(
                "dropped the %s: %d records already wait for the store", what, MAX_PENDING_RECORDS
            )
            return
        self._pending_records += 1

        async def run() -> None:
            try:
                await self._with_retries(what, write)
            finally:
                self._pending_records -= 1

        self._spawn(run())

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _with_retries(self, what: str, write: Callable[[], Awaitable[None]]) -> bool:
        delay = self._first_retry_s
        for attempt in range(1, self._write_attempts + 1):
            try:
                await write()
                return True
            except Exception as exc:  # the store's trouble must not end the retries
                if attempt == self._write_attempts:
                    log.error("could not record the %s, giving up: %r", what, exc)
                    return False
                log.warning("could not record the %s (attempt %d): %r", what, attempt, exc)
                await asyncio.sleep(delay)
                delay *= 2
        return False

    async def drain(self, timeout_s: float) -> None:
        """Let the writes in flight land (up to `timeout_s`), then stop the rest."""
        pending = set(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _refusal(subject: str, reason: str, since: datetime | None) -> errors.PermissionDenied:
    when = "" if since is None else f" since {since:%Y-%m-%d %H:%M:%S} UTC"
    return errors.PermissionDenied(
        f"this provider's {subject} is untrusted{when}: {reason}; only the coordinator's "
        "operator can restore it (`moonflower providers clear`)"
    )
