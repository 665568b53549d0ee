"""Provider identities and verdicts: a verdict against a key or an account lasts until an
operator clears it, is kept once, and clearing lifts exactly what it names; on SQLite and
PostgreSQL."""

from __future__ import annotations

import hashlib

import pytest

from moonflower.ledger import providers
from moonflower.ledger.accounts import AccountInfo, create_account
from moonflower.ledger.database import Database


def fp(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


async def provider_account(db: Database, name: str) -> AccountInfo:
    return await create_account(db, name, "provider")


async def test_a_new_identity_is_in_good_standing_and_listed(ledger_db: Database) -> None:
    acme = await provider_account(ledger_db, "acme")
    await providers.note_seen(ledger_db, fp("a"), acme.id)

    assert await providers.standing(ledger_db, fingerprint=fp("a"), account_id=acme.id) is None
    (identity,) = await providers.list_identities(ledger_db)
    assert (identity.fingerprint, identity.account_name) == (fp("a"), "acme")
    assert (identity.jobs, identity.failures, identity.untrusted_reason) == (0, 0, None)
    assert identity.first_seen_at == identity.last_seen_at


async def test_seeing_again_moves_last_seen_and_the_answering_account(ledger_db: Database) -> None:
    acme = await provider_account(ledger_db, "acme")
    other = await provider_account(ledger_db, "other")
    await providers.note_seen(ledger_db, fp("a"), acme.id)
    await providers.note_seen(ledger_db, fp("a"), other.id)

    (identity,) = await providers.list_identities(ledger_db)
    assert identity.account_id == other.id
    assert identity.last_seen_at > identity.first_seen_at


async def test_service_counts_add_up_and_reject_nonsense(ledger_db: Database) -> None:
    acme = await provider_account(ledger_db, "acme")
    await providers.note_seen(ledger_db, fp("a"), acme.id)
    await providers.add_service(ledger_db, fp("a"), acme.id, jobs=5, failures=1)
    await providers.add_service(ledger_db, fp("a"), acme.id, jobs=2, failures=0)
    # Counts that land before the sighting create the identity; the sighting then keeps them.
    await providers.add_service(ledger_db, fp("b"), acme.id, jobs=3, failures=3)
    await providers.note_seen(ledger_db, fp("b"), acme.id)

    counts = {
        i.fingerprint: (i.jobs, i.failures) for i in await providers.list_identities(ledger_db)
    }
    assert counts == {fp("a"): (7, 1), fp("b"): (3, 3)}
    for jobs, failures in ((-1, 0), (1, 2), (0, -1)):
        with pytest.raises(ValueError, match="cannot add"):
            await providers.add_service(ledger_db, fp("a"), acme.id, jobs=jobs, failures=failures)


async def test_a_key_verdict_lasts_keeps_its_first_reason_and_ignores_sightings(
    ledger_db: Database,
) -> None:
    acme = await provider_account(ledger_db, "acme")
    await providers.note_seen(ledger_db, fp("a"), acme.id)
    await providers.untrust(
        ledger_db,
        "receipt rejected",
        account_id=acme.id,
        fingerprint=fp("a"),
        is_account_answerable=False,
    )
    await providers.untrust(
        ledger_db, "later", account_id=acme.id, fingerprint=fp("a"), is_account_answerable=False
    )
    await providers.note_seen(ledger_db, fp("a"), acme.id)

    verdict = await providers.standing(ledger_db, fingerprint=fp("a"), account_id=None)
    assert verdict is not None
    assert (verdict.subject, verdict.reason) == ("key", "receipt rejected")
    # Without an account verdict, another key of the same account is fine.
    assert await providers.standing(ledger_db, fingerprint=fp("b"), account_id=acme.id) is None
    (identity,) = await providers.list_identities(ledger_db)
    assert identity.untrusted_reason == "receipt rejected"
    assert identity.untrusted_at == verdict.untrusted_at


async def test_an_account_verdict_holds_every_key_of_the_account(ledger_db: Database) -> None:
    acme = await provider_account(ledger_db, "acme")
    honest = await provider_account(ledger_db, "honest")
    await providers.untrust(
        ledger_db,
        "3 challenges failed in a row",
        account_id=acme.id,
        fingerprint=fp("a"),
        is_account_answerable=True,
    )

    for key in (fp("a"), fp("brand new"), None):
        verdict = await providers.standing(ledger_db, fingerprint=key, account_id=acme.id)
        assert verdict is not None
        assert verdict.reason == "3 challenges failed in a row"
    assert await providers.standing(ledger_db, fingerprint=fp("c"), account_id=honest.id) is None
    (held,) = await providers.list_account_verdicts(ledger_db)
    assert (held.account_name, held.fingerprint, held.cleared_at) == ("acme", fp("a"), None)


async def test_a_keyless_verdict_is_held_against_the_account_only(ledger_db: Database) -> None:
    acme = await provider_account(ledger_db, "acme")
    await providers.untrust(
        ledger_db,
        "a job frame failed to open",
        account_id=acme.id,
        fingerprint=None,
        is_account_answerable=True,
    )

    assert await providers.list_identities(ledger_db) == []
    verdict = await providers.standing(ledger_db, fingerprint=None, account_id=acme.id)
    assert verdict is not None and verdict.subject == "account"


async def test_a_long_reason_is_shortened_to_fit(ledger_db: Database) -> None:
    acme = await provider_account(ledger_db, "acme")
    await providers.untrust(
        ledger_db, "x" * 500, account_id=acme.id, fingerprint=fp("a"), is_account_answerable=True
    )
    verdict = await providers.standing(ledger_db, fingerprint=fp("a"), account_id=None)
    assert verdict is not None
    assert len(verdict.reason) == providers.MAX_REASON_LENGTH


async def test_clearing_a_key_lifts_its_verdict_and_the_account_verdicts_it_caused(
    ledger_db: Database,
) -> None:
    acme = await provider_account(ledger_db, "acme")
    for key in ("a", "b"):
        await providers.untrust(
            ledger_db,
            f"failed {key}",
            account_id=acme.id,
            fingerprint=fp(key),
            is_account_answerable=True,
        )

    cleared = await providers.clear_key(ledger_db, fp("a"))
    assert cleared == providers.Cleared(keys=(fp("a"),), account_verdicts=1)
    assert await providers.standing(ledger_db, fingerprint=fp("a"), account_id=None) is None
    # b's failure still holds the account.
    verdict = await providers.standing(ledger_db, fingerprint=fp("a"), account_id=acme.id)
    assert verdict is not None and verdict.reason == "failed b"
    assert (await providers.clear_key(ledger_db, fp("a"))).is_empty  # nothing left to lift
    history = await providers.list_account_verdicts(ledger_db, include_cleared=True)
    assert [(v.fingerprint, v.cleared_at is None) for v in history] == [
        (fp("a"), False),
        (fp("b"), True),
    ]


async def test_clearing_an_account_lifts_all_its_verdicts_and_nobody_elses(
    ledger_db: Database,
) -> None:
    acme = await provider_account(ledger_db, "acme")
    other = await provider_account(ledger_db, "other")
    await providers.untrust(
        ledger_db, "one", account_id=acme.id, fingerprint=fp("a"), is_account_answerable=True
    )
    await providers.untrust(
        ledger_db, "two", account_id=acme.id, fingerprint=None, is_account_answerable=True
    )
    await providers.untrust(
        ledger_db, "three", account_id=other.id, fingerprint=fp("o"), is_account_answerable=True
    )

    cleared = await providers.clear_account(ledger_db, acme.id)
    assert cleared == providers.Cleared(keys=(fp("a"),), account_verdicts=2)
    assert await providers.standing(ledger_db, fingerprint=fp("a"), account_id=acme.id) is None
    assert await providers.standing(ledger_db, fingerprint=fp("o"), account_id=other.id)
    assert [v.account_name for v in await providers.list_account_verdicts(ledger_db)] == ["other"]


async def test_an_identity_is_found_by_a_unique_prefix_only(ledger_db: Database) -> None:
    acme = await provider_account(ledger_db, "acme")
    first, second = "ab" + "0" * 62, "ab" + "1" * 62
    for key in (first, second):
        await providers.note_seen(ledger_db, key, acme.id)

    found = await providers.find_identity(ledger_db, first[:3].upper())
    assert found is not None and found.fingerprint == first
    assert await providers.find_identity(ledger_db, "ab") is None  # two match
    assert await providers.find_identity(ledger_db, "ff") is None
    assert await providers.find_identity(ledger_db, "%") is None
    assert await providers.find_identity(ledger_db, " ") is None
