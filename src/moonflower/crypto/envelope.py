"""Sealed envelopes: NaCl box (X25519 + XSalsa20-Poly1305) between two key pairs.

Owns encryption key pairs, sealing and opening, and the wire form every sealed value takes:
standard padded base64 of `nonce (24 random bytes) ‖ box (16-byte Poly1305 tag ‖
ciphertext)` — the same bytes Go's `nacl/box`, Rust's `crypto_box`, tweetnacl and the
reference produce. It must not know what is sealed (requests, events, HTTP bodies) and never
logs plaintext or private keys.

A box is not anonymous: the recipient must know the sender's public key, which travels
beside the sealed value. For a job, the coordinator makes a fresh key pair and seals the
request from it to the provider's process key; the provider seals every event back from its
process key to the job's public key. Both directions share one X25519 secret, so the box
alone does not say which way a value went or in what order: the sealed plaintext must say
what it is (and, for event frames, carry a sequence number) when that matters.
"""

from __future__ import annotations

from typing import Literal

import nacl.exceptions
import nacl.public
import nacl.utils

from moonflower.crypto.canonical import sha256_hex
from moonflower.crypto.signing import b64d, b64e
from moonflower.errors import SealError

KEY_BYTES = 32
NONCE_BYTES = nacl.public.Box.NONCE_SIZE
TAG_BYTES = 16

SealErrorReason = Literal["malformed", "bad_key", "open_failed"]


class EncryptionKeyPair:
    """An X25519 key pair; the private half never leaves this object."""

    __slots__ = ("_private",)

    def __init__(self, private: nacl.public.PrivateKey) -> None:
        self._private = private

    @classmethod
    def generate(cls) -> EncryptionKeyPair:
        """A fresh random key pair (one per provider process; one per job)."""
        return cls(nacl.public.PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, private: bytes) -> EncryptionKeyPair:
        """A key pair from a fixed 32-byte private key (derived keys, tests)."""
        if not isinstance(private, bytes) or len(private) != KEY_BYTES:
            raise ValueError("an X25519 private key is 32 bytes")
        return cls(nacl.public.PrivateKey(private))

    @property
    def public_key(self) -> bytes:
        """The 32-byte X25519 public key."""
        return bytes(self._private.public_key)

    def box_with(self, peer_public: bytes) -> nacl.public.Box:
        """The box between this pair and `peer_public` (computes the shared secret once)."""
        if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
            raise SealError("bad_key", "an X25519 public key is 32 bytes")
        try:
            return nacl.public.Box(self._private, nacl.public.PublicKey(peer_public))
        except (nacl.exceptions.CryptoError, ValueError) as exc:
            # libsodium refuses low-order points, whose shared secret is all zeros.
            raise SealError("bad_key", "the public key gives no usable shared secret") from exc

    def __repr__(self) -> str:
        return f"EncryptionKeyPair(public={sha256_hex(self.public_key)[:16]}…)"


def validate_public_key(public_key: bytes) -> bytes:
    """`public_key` if a box can be sealed to it, else `SealError("bad_key")`.

    A usable X25519 public key is 32 bytes and not a point of small order: with one of those
    (the all-zero key, and the handful of others of order 1, 2, 4 or 8, in any encoding) every
    shared secret is all zeros, so anything sealed to it is readable by anyone. Rather than
    keep that list, this does one Diffie-Hellman with a fresh key: libsodium refuses exactly
    the results that are all zeros. Check keys where they arrive, not where they are used.
    """
    EncryptionKeyPair.generate().box_with(public_key)
    return public_key


def seal(plaintext: bytes, recipient_public: bytes, sender: EncryptionKeyPair) -> str:
    """Seal `plaintext` from `sender` to `recipient_public`: base64(nonce ‖ box)."""
    return _seal_with(sender.box_with(recipient_public), plaintext)


def open_sealed(sealed: str, sender_public: bytes, recipient: EncryptionKeyPair) -> bytes:
    """Open a value sealed by `sender_public` to `recipient`; raises `SealError`."""
    return _open_with(recipient.box_with(sender_public), sealed)


class SealedChannel:
    """Both directions between one local key pair and one peer key, shared secret cached.

    Coordinator, per job: `SealedChannel(EncryptionKeyPair.generate(), provider_key)`, send
    `channel.local_public_key` with the sealed request. Provider, per job:
    `SealedChannel(process_keys, job_public_key)`.
    """

    __slots__ = ("_box", "local_public_key", "peer_public_key")

    def __init__(self, local: EncryptionKeyPair, peer_public: bytes) -> None:
        self._box = local.box_with(peer_public)
        self.local_public_key = local.public_key
        self.peer_public_key = peer_public

    def seal(self, plaintext: bytes) -> str:
        return _seal_with(self._box, plaintext)

    def open(self, sealed: str) -> bytes:
        """Open a value the peer sealed to us; raises `SealError`."""
        return _open_with(self._box, sealed)

    def __repr__(self) -> str:
        return f"SealedChannel(peer={sha256_hex(self.peer_public_key)[:16]}…)"


def _seal_with(box: nacl.public.Box, plaintext: bytes) -> str:
    nonce = nacl.utils.random(NONCE_BYTES)
    return b64e(bytes(box.encrypt(plaintext, nonce)))


def _open_with(box: nacl.public.Box, sealed: str) -> bytes:
    try:
        raw = b64d(sealed)
    except ValueError as exc:
        raise SealError("malformed", "the sealed value is not canonical base64") from exc
    if len(raw) < NONCE_BYTES + TAG_BYTES:
        raise SealError(
            "malformed", f"the sealed value has {len(raw)} bytes; a nonce and a tag need 40"
        )
    try:
        return box.decrypt(raw)
    except nacl.exceptions.CryptoError as exc:
        raise SealError(
            "open_failed", "the sealed value does not open: wrong key, or it was changed"
        ) from exc
