"""Reputation in the coordinator process, against a real SQLite store: whose verdict lasts
(a proven key, the account; never an unproven key), live connections of the same account
leave routing at once, and a verdict the store refuses is held in memory, retried, logged,
and lands once the store is back."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from moonflower import errors, wire
from moonflower.coordinator.registry import Registry
from moonflower.coordinator.reputation import Enrollment, Reputation
from moonflower.coordinator.session import ProviderSession
from moonflower.coordinator.trust import ProviderTrust, TrustLevel
from moonflower.crypto.envelope import EncryptionKeyPair
from moonflower.crypto.signing import SoftwareSigner, b64e, key_fingerprint
from moonflower.crypto.statement import AttestedHardware, Statement, build_statement
from moonflower.ledger import keys, providers
from moonflower.ledger.database import Database, default_database_url

MODEL = "m"
HARDWARE = wire.Hardware(cpu="test", cpu_cores=1, memory_bytes=1 << 30, os="test")


@dataclass
class Store:
    db: Database
    path: Path
    registry: Registry
    reputation: Reputation


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    # Short waits on the store, and retries a few milliseconds apart, so a locked store
    # shows within a test's patience.
    db = await Database.open(default_database_url(tmp_path), timeout_s=0.2)
    registry = Registry(default_floor=TrustLevel.NONE, freshness_s=60.0)
    reputation = Reputation(
        db, registry, allow_anonymous=False, write_attempts=4, first_retry_s=0.05
    )
    try:
        yield Store(db, tmp_path / "moonflower.db", registry, reputation)
    finally:
        await reputation.drain(5.0)
        await db.close()


def statement_of(signer: SoftwareSigner) -> Statement:
    return build_statement(
        signer,
        EncryptionKeyPair.generate().public_key,
        hardware=AttestedHardware(
            chip=None, machine_model=None, serial=None, memory_bytes=0, gpu=None, cpu="test"
        ),
        os_version="test",
        posture={},
        code_hash="c" * 64,
        runtime_hash="d" * 64,
        model_hashes={MODEL: "a" * 64},
        protocol_version=wire.PROTOCOL_VERSION,
        now=time.time(),
    )


async def no_frames(frame: str) -> None:
    return None


async def connect(
    store: Store, token: str, signer: SoftwareSigner | None = None, *, is_proven: bool = False
) -> tuple[ProviderSession, Enrollment]:
    """Admit and register a provider the way the provider socket does."""
    statement = None if signer is None else statement_of(signer)
    trust = ProviderTrust(statement=statement, signed_statement=None, has_proven_key=is_proven)
    enrollment = await store.reputation.admit(token, trust, (MODEL,))
    keys_ = EncryptionKeyPair.generate()
    registration = wire.Register(
        protocol_version=wire.PROTOCOL_VERSION,
        agent_version="0",
        hardware=HARDWARE,
        models=(
            wire.ModelCard(id=MODEL, sha256="a" * 64, context_length=512, engine="t", size_bytes=0),
        ),
        max_concurrent_jobs=1,
        encryption_public_key=b64e(keys_.public_key),
        statement=None,
    )
    session = ProviderSession(
        id=f"prov_{len(store.registry)}",
        registration=registration,
        send_frame=no_frames,
        encryption_public_key=keys_.public_key,
        trust=trust,
        account_id=enrollment.account_id,
    )
    store.reputation.connected(session, enrollment)
    store.registry.add(session)
    return session, enrollment


async def token_of(store: Store, account: str) -> str:
    return (await keys.create_key(store.db, account_name=account, purpose="provider")).key


async def eventually_true(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0
) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_a_proven_keys_verdict_holds_the_key_and_its_account(store: Store) -> None:
    token = await token_of(store, "acme")
    signer = SoftwareSigner.generate()
    session, enrollment = await connect(store, token, signer, is_proven=True)
    sibling, _ = await connect(store, token, SoftwareSigner.generate(), is_proven=True)
    elsewhere, _ = await connect(store, await token_of(store, "other"))

    session.mark_untrusted("receipt rejected: bad_signature")

    # At once, before any write: the same account's other machine is out, another's is not.
    assert (
        sibling.trust.untrusted_reason
        == "its account is untrusted: receipt rejected: bad_signature"
    )
    assert elsewhere.trust.untrusted_reason is None
    fingerprint = key_fingerprint(signer.public_key())

    async def written() -> bool:
        return bool(await providers.list_account_verdicts(store.db))

    await eventually_true(written, "the verdict")
    (identity,) = [
        i for i in await providers.list_identities(store.db) if i.fingerprint == fingerprint
    ]
    assert identity.untrusted_reason == "receipt rejected: bad_signature"
    (held,) = await providers.list_account_verdicts(store.db)
    assert (held.account_id, held.fingerprint) == (enrollment.account_id, fingerprint)
    # Only the connection that failed reported a verdict: its sibling's was not recorded.
    assert len([i for i in await providers.list_identities(store.db) if i.untrusted_reason]) == 1
    with pytest.raises(errors.PermissionDenied, match="account is untrusted"):
        await connect(store, token, SoftwareSigner.generate())


async def test_an_unproven_key_is_never_blamed(store: Store) -> None:
    """Anyone may replay another's public statement; until a challenge proves the key, a
    failure is held against the account alone."""
    victim = SoftwareSigner.generate()
    session, enrollment = await connect(store, await token_of(store, "replayer"), victim)

    session.mark_untrusted("3 challenges failed in a row")

    async def written() -> bool:
        return bool(await providers.list_account_verdicts(store.db))

    await eventually_true(written, "the verdict")
    (held,) = await providers.list_account_verdicts(store.db)
    assert (held.account_id, held.fingerprint) == (enrollment.account_id, None)
    assert await providers.list_identities(store.db) == []
    # The key's owner, on its own account, is admitted.
    await connect(store, await token_of(store, "owner"), victim)


async def test_a_verdict_the_store_refuses_is_held_retried_and_lands(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    token = await token_of(store, "acme")
    session, enrollment = await connect(store, token)
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with caplog.at_level(logging.WARNING, logger="moonflower.coordinator.reputation"):
            session.mark_untrusted("a job frame failed to open")

            async def retried() -> bool:
                return "could not record the verdict (attempt 1)" in caplog.text

            await eventually_true(retried, "a failed attempt")
            # Not written yet, but this coordinator already refuses the account.
            with pytest.raises(errors.PermissionDenied, match="a job frame failed to open"):
                await connect(store, token)
    finally:
        blocker.rollback()
        blocker.close()

    async def landed() -> bool:
        verdict = await providers.standing(
            store.db, fingerprint=None, account_id=enrollment.account_id
        )
        return verdict is not None

    await eventually_true(landed, "the verdict to land")
    assert "giving up" not in caplog.text


async def test_a_verdict_that_never_lands_is_logged_and_still_refused_here(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    token = await token_of(store, "acme")
    session, _ = await connect(store, token)
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with caplog.at_level(logging.WARNING, logger="moonflower.coordinator.reputation"):
            session.mark_untrusted("a job frame failed to open")

            async def given_up() -> bool:
                return "could not record the verdict, giving up" in caplog.text

            await eventually_true(given_up, "the writes to be given up")
    finally:
        blocker.rollback()
        blocker.close()
    with pytest.raises(errors.PermissionDenied):
        await connect(store, token)


async def test_admission_needs_a_valid_token_unless_anonymous_is_allowed(store: Store) -> None:
    trust = ProviderTrust(statement=None, signed_statement=None)
    with pytest.raises(errors.AuthenticationFailed, match="admits only enrolled providers"):
        await store.reputation.admit(None, trust, (MODEL,))
    with pytest.raises(errors.AuthenticationFailed, match="unknown or revoked"):
        await store.reputation.admit("mfp-" + "B" * 43, trust, (MODEL,))
    open_door = Reputation(store.db, store.registry, allow_anonymous=True)
    first = await open_door.admit(None, trust, (MODEL,))
    second = await open_door.admit(None, trust, (MODEL,))
    assert first.is_anonymous and first.account_id == second.account_id
