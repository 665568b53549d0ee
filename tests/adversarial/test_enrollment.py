"""Enrollment and lasting reputation, attacked over the real wire protocol against a real
coordinator process and database (docs/trust.md, "Enrollment and reputation").

A stranger without a provider token is refused before its `register` is read and leaves
nothing in the database. A provider whose receipt fails is out of routing as an identity: it
comes back with the same key, with a new key under the same token, with its key under another
account, after the coordinator restarts — refused every time, saying why — until an operator
runs `moonflower providers clear`; an honest provider on another account serves throughout.
With anonymous providers allowed, they share one account and a verdict binds only the key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from moonflower import wire
from moonflower.crypto.signing import SoftwareSigner, key_fingerprint
from moonflower.ledger import providers
from moonflower.ledger.database import Database
from moonflower.ledger.tables import Account, ApiKey, ServedModel
from tests.adversarial.conftest import (
    PRICES,
    Books,
    Consumer,
    EnrolledProvider,
    Liveness,
    RunningCoordinator,
)
from tests.support.scripted_provider import (
    ScriptedProvider,
    honest_register,
    model_card,
    provider_entry,
)

Enroll = Callable[[str], Awaitable[EnrolledProvider]]

SHARED_MODEL = "scripted"
"""Served by the honest provider and the cheat alike."""
CHEAT_MODEL = "cheat-only"
"""Served by the cheat alone: a request for it reaches the cheat or nobody."""
ANONYMOUS_MODEL = "anonymous-model"
WAIT_S = 15.0


@dataclass(frozen=True)
class Footprint:
    """What the database holds that a provider's connection could add."""

    accounts: frozenset[str]
    api_keys: frozenset[str]
    served_models: frozenset[str]
    identities: frozenset[str]
    account_verdicts: int


async def footprint(db: Database) -> Footprint:
    async with db.sessions() as session:
        accounts = frozenset((await session.scalars(select(Account.name))).all())
        api_keys = frozenset((await session.scalars(select(ApiKey.id))).all())
        served = frozenset((await session.scalars(select(ServedModel.model_id))).all())
    identities = frozenset(i.fingerprint for i in await providers.list_identities(db))
    verdicts = await providers.list_account_verdicts(db, include_cleared=True)
    return Footprint(accounts, api_keys, served, identities, len(verdicts))


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {WAIT_S}s waiting for {what}")
        await asyncio.sleep(0.05)


def fingerprint(signer: SoftwareSigner) -> str:
    return key_fingerprint(signer.public_key())


def cheat_register(provider: ScriptedProvider) -> wire.Register:
    cards = (model_card(SHARED_MODEL), model_card(CHEAT_MODEL))
    return honest_register(provider.signer, provider.keys, models=cards)


async def refused(
    running: RunningCoordinator,
    *,
    token: str | None,
    signer: SoftwareSigner | None = None,
    register: Callable[[ScriptedProvider], wire.Register] | None = None,
) -> str:
    """Connect and register; assert the coordinator answers `rejected`, closes with 1008 and
    sends nothing else (no challenge, no job). The reason it gave."""
    async with ScriptedProvider.connect(
        running.base_url,
        token=token,
        signer=signer,
        register=register,
        expect_registered=False,
        heartbeats=False,
    ) as provider:
        reply = await provider.registration_reply()
        assert isinstance(reply, wire.Rejected), reply
        assert await provider.closed() == 1008
        assert provider.received == [reply]
        return reply.reason


async def served_by(consumer: Consumer, provider: ScriptedProvider, model: str) -> None:
    """A request for `model` is answered, in full, by `provider`."""

    async def serve() -> None:
        job = await provider.next_job()
        await job.serve_honestly(["served", " here"])

    response, _ = await asyncio.gather(consumer.chat(model=model), serve())
    assert response.status_code == 200, response.text
    assert response.headers["x-provider-id"] == provider.provider_id
    assert response.json()["choices"][0]["message"]["content"] == "served here"


async def test_a_provider_without_a_valid_token_is_refused_and_leaves_no_trace(
    each_coordinator: RunningCoordinator,
    books: Books,
    consumer: Consumer,
    assert_live: Liveness,
) -> None:
    running = each_coordinator
    live_key = fingerprint(assert_live.provider.signer)

    async def live_provider_recorded() -> bool:
        return live_key in (await footprint(books.db)).identities

    await eventually(live_provider_recorded, "the live provider's identity")
    before = await footprint(books.db)

    strangers = [refused(running, token=None) for _ in range(3)]
    bad_tokens = ["mfp-" + "A" * 43, consumer.key, "not a token at all"]
    forged = [refused(running, token=token) for token in bad_tokens]
    reasons = await asyncio.gather(*strangers, *forged)

    for reason in reasons[:3]:
        assert "admits only enrolled providers" in reason
        assert "moonflower accounts create NAME --provider" in reason
    for reason in reasons[3:]:
        assert reason == "unknown or revoked provider token"
    # None of them serves: their model was never seen, so it is unknown, not offline.
    response = await consumer.chat(model=SHARED_MODEL)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "model_not_found"
    assert await footprint(books.db) == before
    await assert_live()
    await books.assert_balanced()


async def test_an_untrusted_provider_stays_out_as_an_identity_until_an_operator_clears_it(
    each_coordinator: RunningCoordinator,
    books: Books,
    provider_token: Enroll,
    consumer: Consumer,
    assert_live: Liveness,
) -> None:
    running = each_coordinator
    base_url = running.base_url
    cheat, honest = await provider_token("cheat"), await provider_token("honest")
    cheat_key, honest_key = SoftwareSigner.generate(), SoftwareSigner.generate()
    cheat_account = (await books.account("cheat")).id
    before = await books.balances()

    # The cheat serves a job and signs a receipt that does not verify.
    async with ScriptedProvider.connect(
        base_url, token=cheat.token, signer=cheat_key, register=cheat_register
    ) as first:
        await first.wait_routable(base_url)

        async def lie() -> None:
            job = await first.next_job()
            await job.started(5)
            await job.text("Hi")
            await job.finish()
            await job.receipt(corrupt=True)

        response, _ = await asyncio.gather(consumer.chat(model=CHEAT_MODEL), lie())
        assert response.status_code == 502, response.text
        entry = await provider_entry(base_url, first.provider_id)
        assert entry is not None and entry["is_untrusted"] is True
        assert "receipt rejected" in entry["untrusted_reason"]

        async def verdict_written() -> bool:
            held = await providers.standing(
                books.db, fingerprint=fingerprint(cheat_key), account_id=cheat_account
            )
            return held is not None

        await eventually(verdict_written, "the cheat's verdict in the database")
    await books.wait_settled()
    after = await books.balances()
    assert after[consumer.name] == before[consumer.name]  # nothing reached it: nothing paid
    assert after["cheat"] == before["cheat"] == 0
    await books.assert_balanced()
    (account_verdict,) = await providers.list_account_verdicts(books.db)
    assert account_verdict.account_name == "cheat"
    assert account_verdict.fingerprint == fingerprint(cheat_key)

    async def keeps_out_the_cheat() -> None:
        same_key = await refused(
            running, token=cheat.token, signer=cheat_key, register=cheat_register
        )
        assert "signing key is untrusted" in same_key
        assert "receipt rejected" in same_key
        assert "moonflower providers clear" in same_key
        new_key = await refused(running, token=cheat.token, register=cheat_register)
        assert "account is untrusted" in new_key
        assert "receipt rejected" in new_key
        nobody = await consumer.chat(model=CHEAT_MODEL)  # known, and nobody may serve it
        assert nobody.status_code == 503, nobody.text
        assert nobody.json()["error"]["code"] == "no_provider_available"

    async with ScriptedProvider.connect(base_url, token=honest.token, signer=honest_key) as good:
        await good.wait_routable(base_url)
        await served_by(consumer, good, SHARED_MODEL)
        await keeps_out_the_cheat()
        elsewhere = await provider_token("cheat-elsewhere")
        other_account = await refused(running, token=elsewhere.token, signer=cheat_key)
        assert "signing key is untrusted" in other_account
        await served_by(consumer, good, SHARED_MODEL)
        await assert_live()

    await asyncio.to_thread(running.restart)

    async with ScriptedProvider.connect(base_url, token=honest.token, signer=honest_key) as good:
        await good.wait_routable(base_url)
        await keeps_out_the_cheat()
        await served_by(consumer, good, SHARED_MODEL)
        # The honest identity's record survived the restart: two jobs, no failure.
        listing = running.cli("providers", "list")
        rows = {line.split()[0]: line for line in listing.splitlines()[1:] if line}
        assert rows[fingerprint(honest_key)].split()[1:4] == ["honest", "2", "0"]
        assert rows[fingerprint(honest_key)].endswith("trusted")
        assert "untrusted: receipt rejected" in rows[fingerprint(cheat_key)]

        cleared = running.cli("providers", "clear", fingerprint(cheat_key)[:16])
        assert f"cleared key {fingerprint(cheat_key)} (account cheat)" in cleared

        async with ScriptedProvider.connect(
            base_url, token=cheat.token, signer=cheat_key, register=cheat_register
        ) as back:
            await back.wait_routable(base_url)
            await served_by(consumer, back, CHEAT_MODEL)
        await served_by(consumer, good, SHARED_MODEL)
    await books.wait_settled()
    await books.assert_balanced()


@pytest.mark.coordinator_settings(ALLOW_ANONYMOUS_PROVIDERS="true")
async def test_anonymous_providers_share_one_account_and_a_verdict_binds_only_the_key(
    coordinator: RunningCoordinator, books: Books, consumer: Consumer
) -> None:
    base_url = coordinator.base_url
    before = await footprint(books.db)
    balances = await books.balances()

    async with ScriptedProvider.connect(base_url, model=ANONYMOUS_MODEL) as first:
        await first.wait_routable(base_url)
        async with ScriptedProvider.connect(base_url, model=ANONYMOUS_MODEL) as second:
            await second.wait_routable(base_url)
            admitted = await footprint(books.db)
            # Two keys, one shared account; nothing else recorded yet.
            assert admitted.accounts == before.accounts | {"provider:anonymous"}
            assert (admitted.served_models, admitted.identities) == (
                before.served_models,
                before.identities,
            )
        # One of them completes a job: its model is recorded when its connection ends.
        await served_by(consumer, first, ANONYMOUS_MODEL)
        assert ANONYMOUS_MODEL not in (await footprint(books.db)).served_models
    await books.wait_settled()

    async def model_recorded() -> bool:
        return ANONYMOUS_MODEL in (await footprint(books.db)).served_models

    await eventually(model_recorded, "the anonymous provider's model")
    earned = await books.balances()
    cost = balances[consumer.name] - earned[consumer.name]
    assert cost > 0
    assert earned["provider:anonymous"] == cost - PRICES.fee(cost)

    # One anonymous key lies about a receipt: that key is out, the shared account is not.
    liar_key = SoftwareSigner.generate()
    async with ScriptedProvider.connect(base_url, model=ANONYMOUS_MODEL, signer=liar_key) as liar:
        await liar.wait_routable(base_url)

        async def lie() -> None:
            job = await liar.next_job()
            await job.started(3)
            await job.text("no")
            await job.finish()
            await job.receipt(corrupt=True)

        response, _ = await asyncio.gather(consumer.chat(model=ANONYMOUS_MODEL), lie())
        assert response.status_code == 502, response.text

        async def verdict_written() -> bool:
            held = await providers.standing(
                books.db, fingerprint=fingerprint(liar_key), account_id=None
            )
            return held is not None

        await eventually(verdict_written, "the liar's key verdict")
    reason = await refused(coordinator, token=None, signer=liar_key)
    assert "signing key is untrusted" in reason
    async with ScriptedProvider.connect(base_url, model=ANONYMOUS_MODEL) as newcomer:
        await newcomer.wait_routable(base_url)
        await served_by(consumer, newcomer, ANONYMOUS_MODEL)
    final = await footprint(books.db)
    assert final.accounts == before.accounts | {"provider:anonymous"}
    assert final.identities == before.identities | {fingerprint(liar_key)}
    assert final.account_verdicts == 0
    await books.wait_settled()
    await books.assert_balanced()
