"""P-256 signing: the key file and its permissions, signatures, fingerprints, base64."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from moonflower.crypto.signing import (
    KeyFileError,
    SoftwareSigner,
    b64d,
    b64e,
    is_valid_public_key,
    key_fingerprint,
    load_signer,
    signing_key_path,
    verify_digest_signature,
    verify_signature,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the key file ---


def test_creates_a_0600_key_in_a_0700_directory_and_loads_it_again(tmp_path: Path) -> None:
    path = tmp_path / "data" / "identity" / "signing-key.pem"
    created = SoftwareSigner.load_or_create(path)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    loaded = SoftwareSigner.load_or_create(path)
    assert loaded.public_key() == created.public_key()
    assert sorted(p.name for p in path.parent.iterdir()) == ["signing-key.pem"]


@pytest.mark.parametrize("umask", [0, 0o022, 0o277])
def test_permissions_do_not_depend_on_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = tmp_path / "identity" / "key.pem"
        SoftwareSigner.load_or_create(path)
    finally:
        os.umask(old)
    assert _mode(path) & 0o077 == 0  # a umask can only take owner bits away
    assert _mode(path.parent) == 0o700


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660])
def test_refuses_a_key_file_others_can_read_or_write(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key.pem"
    SoftwareSigner.load_or_create(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"mode {mode:04o}.*chmod 600"):
        SoftwareSigner.load_or_create(path)


def test_accepts_a_read_only_owner_file(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    created = SoftwareSigner.load_or_create(path)
    path.chmod(0o400)
    assert SoftwareSigner.load_or_create(path).public_key() == created.public_key()


def test_refuses_a_file_that_is_not_a_p256_key(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        SoftwareSigner.load_or_create(path)
    other_curve = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(other_curve)
    with pytest.raises(KeyFileError, match="does not hold a P-256 key"):
        SoftwareSigner.load_or_create(path)


def test_refuses_a_directory_in_place_of_the_key(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        SoftwareSigner.load_or_create(path)


def test_losing_a_creation_race_uses_the_winners_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "key.pem"
    winner = SoftwareSigner.generate()
    real_link = os.link

    def link_after_another_process(source: Path, target: Path) -> None:
        target.write_bytes(
            winner._private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        target.chmod(0o600)
        real_link(source, target)

    monkeypatch.setattr(os, "link", link_after_another_process)
    signer = SoftwareSigner.load_or_create(path)
    assert signer.public_key() == winner.public_key()
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def test_load_signer_uses_the_software_key_in_the_data_directory(tmp_path: Path) -> None:
    signer = load_signer(tmp_path)
    assert signer.key_storage == "software"
    assert signing_key_path(tmp_path) == tmp_path / "identity" / "signing-key.pem"
    assert signing_key_path(tmp_path).exists()
    assert load_signer(tmp_path).public_key() == signer.public_key()


def test_repr_shows_no_private_material() -> None:
    signer = SoftwareSigner.from_private_value(0xC0FFEE)
    assert "c0ffee" not in repr(signer).lower()
    assert repr(signer).startswith("SoftwareSigner(fingerprint=")


# --- signatures ---


def test_sign_and_verify_round_trip() -> None:
    signer = SoftwareSigner.generate()
    public = signer.public_key()
    assert len(public) == 65
    assert public[0] == 0x04
    signature = signer.sign(b"message")
    assert verify_signature(public, signature, b"message")
    assert verify_digest_signature(public, signature, hashlib.sha256(b"message").digest())


def test_rejects_other_data_keys_and_damaged_signatures() -> None:
    signer = SoftwareSigner.generate()
    public = signer.public_key()
    signature = signer.sign(b"message")
    other = SoftwareSigner.generate().public_key()
    flipped = signature[:-1] + bytes([signature[-1] ^ 1])
    assert not verify_signature(public, signature, b"messagE")
    assert not verify_signature(other, signature, b"message")
    assert not verify_signature(public, signature[:-1], b"message")
    assert not verify_signature(public, signature + b"\x00", b"message")
    assert not verify_signature(public, flipped, b"message")
    assert not verify_signature(public, b"", b"message")
    assert not verify_digest_signature(public, signature, hashlib.sha256(b"other").digest())
    assert not verify_digest_signature(public, signature, hashlib.sha256(b"message").digest()[1:])


def test_malformed_keys_and_inputs_are_invalid_never_errors() -> None:
    signer = SoftwareSigner.generate()
    public = signer.public_key()
    signature = signer.sign(b"m")
    off_curve = public[:-1] + bytes([public[-1] ^ 1])
    compressed = (
        SoftwareSigner.generate()
        ._private_key.public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    )
    for key in [public[1:], off_curve, compressed, b"", b"\x04" + bytes(64)]:
        assert not is_valid_public_key(key)
        assert not verify_signature(key, signature, b"m")
    assert not verify_signature(b64e(public), signature, b"m")  # type: ignore[arg-type]
    assert not verify_signature(public, b64e(signature), b"m")  # type: ignore[arg-type]
    assert not verify_signature(public, signature, "m")  # type: ignore[arg-type]
    assert not verify_digest_signature(public[1:], signature, bytes(32))


def test_fingerprint_is_sha256_of_the_uncompressed_point() -> None:
    public = SoftwareSigner.generate().public_key()
    assert key_fingerprint(public) == hashlib.sha256(public).hexdigest()
    with pytest.raises(ValueError, match="65-byte uncompressed"):
        key_fingerprint(public[1:])


def test_only_p256_keys_make_signers() -> None:
    with pytest.raises(ValueError, match="P-256"):
        SoftwareSigner(ec.generate_private_key(ec.SECP384R1()))


# --- base64 ---


def test_b64_round_trip_standard_alphabet_with_padding() -> None:
    assert b64e(b"\xfb\xff") == "+/8="
    assert b64d("+/8=") == b"\xfb\xff"
    assert b64d("") == b""


@pytest.mark.parametrize(
    "text", ["+/8", "-_8=", "+/8=\n", " +/8=", "+/ 8=", "+/8==", "+/9=", "AB==", "é===", "===="]
)
def test_b64d_accepts_only_the_canonical_encoding(text: str) -> None:
    with pytest.raises(ValueError, match="base64"):
        b64d(text)
