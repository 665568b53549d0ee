"""Provider identity keys: the `Signer` interface, the software P-256 signer, verification.

Owns the signing-key file (its creation, permissions and loading), ECDSA P-256/SHA-256
signatures in DER, public-key encoding and fingerprints, and the strict base64 helpers every
signed or sealed format uses. It must not know what is signed (statements, statuses and
receipts own that) and never logs or returns private key material.

Public keys travel as the 65-byte uncompressed X9.62 point (`0x04 ‖ X ‖ Y`); a fingerprint
is the lowercase hex SHA-256 of those 65 bytes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Literal, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from moonflower.crypto.canonical import sha256_hex
from moonflower.errors import KeyFileError

KeyStorage = Literal["software", "secure_enclave"]
PUBLIC_KEY_BYTES = 65
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


class Signer(Protocol):
    """Something that holds a P-256 private key and signs with it.

    Implementations: `SoftwareSigner` (a key file; any machine). A Secure Enclave signer on
    macOS would implement the same three members; see `load_signer`.
    """

    @property
    def key_storage(self) -> KeyStorage:
        """Where the private key lives; stated in the attestation statement."""
        ...

    def public_key(self) -> bytes:
        """The 65-byte uncompressed X9.62 public point."""
        ...

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256 over SHA-256(`data`), DER-encoded."""
        ...


class SoftwareSigner:
    """A P-256 key held in this process, persisted as a 0600 PKCS#8 PEM file."""

    __slots__ = ("_private_key",)

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError(f"signing keys are P-256, not {private_key.curve.name}")
        self._private_key = private_key

    @classmethod
    def generate(cls) -> SoftwareSigner:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_private_value(cls, value: int) -> SoftwareSigner:
        """A signer for a fixed private scalar (tests and golden examples)."""
        return cls(ec.derive_private_key(value, ec.SECP256R1()))

    @classmethod
    def load_or_create(cls, path: Path) -> SoftwareSigner:
        """Load the key at `path`, creating it first if it does not exist.

        A new key is written to a private temporary file (mode 0600 from the moment it
        exists) and linked into place, so the file is never readable by others, never seen
        half-written, and two processes racing to create it end up with the same key. A
        missing parent directory is created with mode 0700. Raises `KeyFileError` when an
        existing file is readable or writable by group or others, or is not a P-256 key.
        """
        with contextlib.suppress(FileNotFoundError):
            return cls._load(path)
        _make_private_dir(path.parent)
        signer = cls.generate()
        pem = signer._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(pem)
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                # Another process created the key first: use theirs, so there is one identity.
                return cls._load(path)
        finally:
            temporary.unlink(missing_ok=True)
        return signer

    @classmethod
    def _load(cls, path: Path) -> SoftwareSigner:
        # Permissions are checked on the open descriptor, so they are those of the file
        # actually read (no check-then-open race); O_NONBLOCK keeps a FIFO from hanging us.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise KeyFileError(f"The signing key path {path} is not a regular file.")
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                raise KeyFileError(
                    f"The signing key file {path} has mode {mode:04o}, so other users can "
                    f"read or change it; refusing to use it. If no one else has had access, "
                    f"run `chmod 600 {path}`; otherwise delete it to create a new identity."
                )
            pem = _read_all(fd)
        finally:
            os.close(fd)
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(
                f"The signing key file {path} is not an unencrypted PEM private key."
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise KeyFileError(f"The signing key file {path} does not hold a P-256 key.")
        return cls(key)

    @property
    def key_storage(self) -> KeyStorage:
        return "software"

    def public_key(self) -> bytes:
        return self._private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data, _ECDSA_SHA256)

    def __repr__(self) -> str:
        return f"SoftwareSigner(fingerprint={key_fingerprint(self.public_key())[:16]}…)"


def signing_key_path(data_dir: Path) -> Path:
    """Where a provider's software signing key lives inside its data directory."""
    return data_dir / "identity" / "signing-key.pem"


def load_signer(data_dir: Path) -> Signer:
    """The provider's signer: today always the software key under `data_dir/identity/`.

    Seam for the Secure Enclave: on macOS with an enclave, this is where a signer whose
    private key never leaves the enclave (CryptoKit `SecureEnclave.P256.Signing`, its opaque
    key handle persisted under `data_dir/identity/`) would be chosen, with `key_storage ==
    "secure_enclave"`, falling back to the software key when the enclave is unavailable. It
    is deliberately not written here: it cannot be built or tested on Linux, and the
    statement's `key_storage` claim only carries weight once a hardware chain vouches for
    the key anyway.
    """
    return SoftwareSigner.load_or_create(signing_key_path(data_dir))


def is_valid_public_key(public_key: bytes) -> bool:
    """True when `public_key` is a 65-byte uncompressed point on P-256."""
    return _load_public_key(public_key) is not None


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether `signature` (DER ECDSA P-256/SHA-256) signs `data` under `public_key`.

    Never raises on bad input: a malformed key or signature is simply not valid.
    """
    key = _load_public_key(public_key)
    if key is None or not isinstance(signature, bytes) or not isinstance(data, bytes):
        return False
    try:
        key.verify(signature, data, _ECDSA_SHA256)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def verify_digest_signature(public_key: bytes, signature: bytes, digest: bytes) -> bool:
    """Like `verify_signature`, given only SHA-256(data): the same signature verifies both.

    Lets a holder of just a document's hash (e.g. the `x-response-hash` header) check the
    signature without the document.
    """
    key = _load_public_key(public_key)
    if key is None or not isinstance(signature, bytes) or not isinstance(digest, bytes):
        return False
    if len(digest) != 32:
        return False
    try:
        key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def key_fingerprint(public_key: bytes) -> str:
    """Lowercase hex SHA-256 of the 65-byte uncompressed public point.

    Raises `ValueError` for anything else, so one key never has two fingerprints.
    """
    if not is_valid_public_key(public_key):
        raise ValueError("a fingerprint is taken over a 65-byte uncompressed P-256 point")
    return sha256_hex(public_key)


def b64e(data: bytes) -> str:
    """Standard base64 (RFC 4648 §4 alphabet) with padding."""
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    """Decode standard padded base64, strictly: only the canonical encoding is accepted.

    Raises `ValueError` for characters outside the alphabet, whitespace, missing or extra
    padding, and non-zero unused bits (so each byte string has exactly one text form).
    """
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("base64 text must be an ASCII string")
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid base64: {exc}") from exc
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError("base64 is not in canonical padded form")
    return data


def _load_public_key(public_key: bytes) -> ec.EllipticCurvePublicKey | None:
    if (
        not isinstance(public_key, bytes)
        or len(public_key) != PUBLIC_KEY_BYTES
        or public_key[0] != 0x04
    ):
        return None
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
    except ValueError:
        return None


def _make_private_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)
