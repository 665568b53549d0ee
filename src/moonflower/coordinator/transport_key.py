"""The coordinator's sealed-transport key file: the X25519 key consumers seal requests to.

Replicas behind one load balancer must publish one key, so a request sealed against the key
fetched from one of them opens at any other, and a restart must keep it. The key therefore
lives in a file (`MOONFLOWER_TRANSPORT_KEY_FILE`, by default `<data_dir>/transport-key` for
`moonflower coordinator serve` and `moonflower up`): standard padded base64 of the raw
32-byte private key on one line, nothing else. Replicas on one machine that share a data
directory share it with no configuration; replicas on several machines must each be given
the same file (a secret mount, mode 0600 or 0400). The `kid` is derived from the public key,
so one file means one kid everywhere.

Owns reading, creating and checking that file. A missing file is created with a fresh key,
atomically: written to a private temporary file (mode 0600 from the moment it exists) in
the same directory and linked into place, so nobody reads it half-written and replicas
starting at once all end up using the one key that won. A file that group or others may
read or change, that is not a regular file, or that does not hold exactly one key is
refused with `TransportKeyError`. It never logs or echoes the private key, nor a line of
the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path

import nacl.utils

from moonflower import errors
from moonflower.client.sealed import key_id
from moonflower.crypto.envelope import KEY_BYTES, EncryptionKeyPair
from moonflower.crypto.signing import b64d, b64e

log = logging.getLogger(__name__)

KEY_FILE_NAME = "transport-key"
MAX_KEY_FILE_BYTES = 1024
"""Far more than one line of base64 of 32 bytes; anything longer is not a key file."""


class TransportKeyError(errors.MoonflowerError):
    """The transport key file cannot be used: unsafe permissions, not a file, not a key."""

    code = "transport_key_unusable"


def default_key_file(data_dir: Path) -> Path:
    """Where the transport key lives inside a coordinator's data directory."""
    return data_dir.expanduser() / KEY_FILE_NAME


def transport_keys(path: Path | None) -> EncryptionKeyPair:
    """The key pair in the file at `path` (created when missing), or, with no file, a fresh
    pair that lives as long as this process."""
    if path is None:
        return EncryptionKeyPair.generate()
    return load_or_create(path)


def load_or_create(path: Path) -> EncryptionKeyPair:
    """Load the key at `path`, creating it first if it does not exist; a missing parent
    directory is created with mode 0700. Raises `TransportKeyError`."""
    path = path.expanduser()
    with contextlib.suppress(FileNotFoundError):
        return _load(path)
    private = _fresh_private_key()
    try:
        is_ours = _link_new_file(path, private)
    except OSError as exc:
        raise TransportKeyError(
            f"Cannot create the transport key file {path}: {exc.strerror}."
        ) from None
    if not is_ours:
        return _load(path)  # another replica created it first: use theirs, so there is one
    keys = EncryptionKeyPair.from_private_bytes(private)
    log.info("created the transport key file %s (kid %s)", path, key_id(keys.public_key))
    return keys


def _link_new_file(path: Path, private: bytes) -> bool:
    """Write a key file holding `private` at `path` unless one appeared meanwhile; whether
    this one is now in place."""
    _make_private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(b64e(private).encode("ascii") + b"\n")
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)
    return True


def _fresh_private_key() -> bytes:
    return nacl.utils.random(KEY_BYTES)


def _load(path: Path) -> EncryptionKeyPair:
    # Permissions are checked on the open descriptor, so they are those of the file actually
    # read (no check-then-open race); O_NONBLOCK keeps a FIFO from hanging the start-up.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TransportKeyError(
            f"Cannot read the transport key file {path}: {exc.strerror}."
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TransportKeyError(f"The transport key path {path} is not a regular file.")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise TransportKeyError(
                f"The transport key file {path} has mode {mode:04o}, so other users can read "
                f"or change it; refusing to use it. If no one else has had access, run "
                f"`chmod 600 {path}`; otherwise delete it on every replica to make a new key."
            )
        raw = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    return EncryptionKeyPair.from_private_bytes(_parse(raw, path))


def _parse(raw: bytes, path: Path) -> bytes:
    """The 32 private-key bytes in a key file's content; the content is never quoted."""
    try:
        private = b64d(raw.removesuffix(b"\n").decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        private = b""
    if len(raw) > MAX_KEY_FILE_BYTES or len(private) != KEY_BYTES:
        raise TransportKeyError(
            f"The transport key file {path} must hold one line: the standard base64 of a "
            f"{KEY_BYTES}-byte X25519 private key, and nothing else."
        )
    return private


def _make_private_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
