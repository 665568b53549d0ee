"""Sealed envelopes: round trips, the wire form, and every way a sealed value is refused."""

from __future__ import annotations

import pytest

from moonflower.crypto.envelope import (
    NONCE_BYTES,
    EncryptionKeyPair,
    SealedChannel,
    SealError,
    open_sealed,
    seal,
)
from moonflower.crypto.signing import b64d, b64e

# RFC 7748 §6.1: Alice's and Bob's X25519 key pairs.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")

# Sealed once from Alice to Bob with nonce 00 01 … 17; any NaCl box implementation opens it.
GOLDEN_SEALED = (
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXJE5k0mMpVGivDxCj"
    "lvFrgn5sO8x1EndHYvP9BteolPyVp6GUV92OxR+/S1VnCJM="
)
GOLDEN_PLAINTEXT = b'{"kind":"text","text":"Hello!"}'


def _flip(sealed: str, index: int) -> str:
    raw = bytearray(b64d(sealed))
    raw[index] ^= 0x01
    return b64e(bytes(raw))


def test_fixed_private_keys_give_the_rfc7748_public_keys() -> None:
    assert EncryptionKeyPair.from_private_bytes(ALICE_PRIVATE).public_key == ALICE_PUBLIC
    assert EncryptionKeyPair.from_private_bytes(BOB_PRIVATE).public_key == BOB_PUBLIC


def test_golden_sealed_value_opens_and_has_the_reference_layout() -> None:
    bob = EncryptionKeyPair.from_private_bytes(BOB_PRIVATE)
    assert open_sealed(GOLDEN_SEALED, ALICE_PUBLIC, bob) == GOLDEN_PLAINTEXT
    raw = b64d(GOLDEN_SEALED)
    assert raw[:NONCE_BYTES] == bytes(range(24))
    assert len(raw) == NONCE_BYTES + 16 + len(GOLDEN_PLAINTEXT)


def test_round_trip_both_ways_between_a_job_key_and_a_provider_key() -> None:
    provider = EncryptionKeyPair.generate()
    job = EncryptionKeyPair.generate()
    request = seal(b"request", provider.public_key, job)
    assert open_sealed(request, job.public_key, provider) == b"request"
    event = seal(b"event", job.public_key, provider)
    assert open_sealed(event, provider.public_key, job) == b"event"
    assert open_sealed(seal(b"", provider.public_key, job), job.public_key, provider) == b""


def test_fresh_keys_and_nonces_every_time() -> None:
    first, second = EncryptionKeyPair.generate(), EncryptionKeyPair.generate()
    assert len(first.public_key) == 32
    assert first.public_key != second.public_key
    one = seal(b"same", second.public_key, first)
    two = seal(b"same", second.public_key, first)
    assert one != two
    assert b64d(one)[:NONCE_BYTES] != b64d(two)[:NONCE_BYTES]


def test_sealed_channel_matches_the_functions() -> None:
    provider = EncryptionKeyPair.generate()
    job = EncryptionKeyPair.generate()
    coordinator_side = SealedChannel(job, provider.public_key)
    provider_side = SealedChannel(provider, coordinator_side.local_public_key)
    assert provider_side.open(coordinator_side.seal(b"request")) == b"request"
    assert coordinator_side.open(provider_side.seal(b"event")) == b"event"
    assert open_sealed(provider_side.seal(b"x"), provider.public_key, job) == b"x"
    assert coordinator_side.open(seal(b"y", job.public_key, provider)) == b"y"


def _expect(reason: str, sealed: str, sender_public: bytes, recipient: EncryptionKeyPair) -> None:
    with pytest.raises(SealError) as caught:
        open_sealed(sealed, sender_public, recipient)
    assert caught.value.reason == reason


def test_tampered_values_do_not_open() -> None:
    provider, job = EncryptionKeyPair.generate(), EncryptionKeyPair.generate()
    sealed = seal(b"the event", job.public_key, provider)
    for index in (0, NONCE_BYTES - 1, NONCE_BYTES, NONCE_BYTES + 16, -1):
        _expect("open_failed", _flip(sealed, index), provider.public_key, job)


def test_truncated_values_do_not_open() -> None:
    provider, job = EncryptionKeyPair.generate(), EncryptionKeyPair.generate()
    raw = b64d(seal(b"the event", job.public_key, provider))
    _expect("open_failed", b64e(raw[:-1]), provider.public_key, job)
    _expect("open_failed", b64e(raw[: NONCE_BYTES + 16]), provider.public_key, job)
    _expect("malformed", b64e(raw[: NONCE_BYTES + 15]), provider.public_key, job)
    _expect("malformed", "", provider.public_key, job)


def test_values_sealed_by_any_other_key_do_not_open() -> None:
    provider, job, intruder = (EncryptionKeyPair.generate() for _ in range(3))
    # Re-keyed: the intruder seals a frame claiming to be the provider.
    forged = seal(b"forged event", job.public_key, intruder)
    _expect("open_failed", forged, provider.public_key, job)
    # Sealed to someone else.
    misdirected = seal(b"event", intruder.public_key, provider)
    _expect("open_failed", misdirected, provider.public_key, job)


def test_malformed_text_is_refused() -> None:
    provider, job = EncryptionKeyPair.generate(), EncryptionKeyPair.generate()
    sealed = seal(b"event!", job.public_key, provider)  # 46 bytes: base64 ends in "=="
    assert sealed.endswith("==")
    for text in ("not base64!", sealed + "\n", sealed.rstrip("="), sealed.replace("+", "-")):
        if text != sealed:
            _expect("malformed", text, provider.public_key, job)


def test_bad_public_keys_are_refused() -> None:
    pair = EncryptionKeyPair.generate()
    for key in (b"", bytes(31), bytes(33)):
        with pytest.raises(SealError) as caught:
            seal(b"x", key, pair)
        assert caught.value.reason == "bad_key"
    with pytest.raises(SealError) as caught:
        seal(b"x", bytes(32), pair)  # a low-order point: the shared secret would be zero
    assert caught.value.reason == "bad_key"
    with pytest.raises(SealError):
        SealedChannel(pair, bytes(32))


def test_private_key_stays_inside() -> None:
    pair = EncryptionKeyPair.from_private_bytes(ALICE_PRIVATE)
    assert ALICE_PRIVATE.hex() not in repr(pair)
    assert b64e(ALICE_PRIVATE) not in repr(pair)
    assert not any(
        isinstance(getattr(pair, name), bytes) and getattr(pair, name) == ALICE_PRIVATE
        for name in dir(pair)
        if not name.startswith("_")
    )
    with pytest.raises(ValueError, match="32 bytes"):
        EncryptionKeyPair.from_private_bytes(ALICE_PRIVATE[:31])
