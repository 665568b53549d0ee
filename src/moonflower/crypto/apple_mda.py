"""Verification of Apple Managed Device Attestation (MDA) certificate chains.

Owns turning the chain a Mac got from Apple's attestation servers (leaf, then "Apple Enterprise
Attestation Sub CA 1") into a checked `DeviceAttestation`, or an `MdaError` whose `reason` names
what failed: path to a trusted root (default: Apple's embedded root), ECDSA signatures, CA flags
and path lengths, validity at `now`, the leaf's age, the binding to the provider's signing key
(see `freshness_code` for the two binding modes), the freshness code, and the device OIDs.
It must not talk to MDM or the network, decide trust levels, compare the attested serial with
the provider's statement (the coordinator's trust code does), or echo device identifiers.

Apple puts the bare value in each 1.2.840.113635.100.8.* extnValue, not a DER wrapper: UTF-8
text for serial (.9.1), UDID (.9.2), OS (.10.1), sepOS (.10.2), LLB (.10.3) and secure boot
(.13.2); the raw digest for the freshness code (.11.1); a DER INTEGER for SIP (.13.1, 0 =
enabled) and third-party kexts (.13.3, 0 = not allowed). One DER string/OCTET STRING wrapper is
tolerated. A blank value means Apple could not verify the property and reads as None.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtensionOID

from moonflower.crypto.apple_roots import apple_enterprise_attestation_root
from moonflower.errors import MdaError

MdaReason = Literal[
    "malformed",  # not a parseable chain, or a certificate or OID value breaks the format
    "untrusted_root",  # the chain does not end at a trusted root (a missing intermediate too)
    "broken_chain",  # a certificate's issuer is not the next certificate's subject
    "bad_signature",  # a signature inside the presented chain does not verify
    "not_ca",  # an issuing certificate may not issue certificates (or path length exceeded)
    "expired",
    "not_yet_valid",
    "stale_attestation",  # the leaf was issued longer ago than max_age
    "key_mismatch",  # the attestation does not certify the expected signing key
    "stale_nonce",  # the freshness code is not the one this challenge asks for
    "missing_field",  # the freshness code is absent
]
KeyBinding = Literal["leaf_key", "freshness"]

APPLE_OID_ARC: Final = "1.2.840.113635.100.8."
OID_SERIAL: Final = x509.ObjectIdentifier("1.2.840.113635.100.8.9.1")
OID_UDID: Final = x509.ObjectIdentifier("1.2.840.113635.100.8.9.2")
OID_OS_VERSION: Final = x509.ObjectIdentifier("1.2.840.113635.100.8.10.1")
OID_SEPOS_VERSION: Final = x509.ObjectIdentifier("1.2.840.113635.100.8.10.2")
OID_LLB_VERSION: Final = x509.ObjectIdentifier("1.2.840.113635.100.8.10.3")
OID_FRESHNESS: Final = x509.ObjectIdentifier("1.2.840.113635.100.8.11.1")
OID_SIP_STATUS: Final = x509.ObjectIdentifier("1.2.840.113635.100.8.13.1")
OID_SECURE_BOOT: Final = x509.ObjectIdentifier("1.2.840.113635.100.8.13.2")
OID_KEXTS_ALLOWED: Final = x509.ObjectIdentifier("1.2.840.113635.100.8.13.3")

_MAX_CERTS: Final = 4
_MAX_INPUT_BYTES: Final = 64 * 1024
_MAX_TEXT_BYTES: Final = 256
_MIN_NONCE_BYTES: Final = 16
_BINDING_DOMAIN: Final = b"moonflower/apple-mda/key-binding/v1\x00"
_STRING_TAGS: Final = frozenset({0x04, 0x0C, 0x13, 0x16, 0x1A})  # OCTET/UTF8/Printable/IA5/Visible
_INTEGER_TAG: Final = 0x02
_HANDLED_CRITICAL: Final = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    }
)


@dataclass(frozen=True)
class DeviceAttestation:
    """What Apple vouched for, read from a verified leaf. None: Apple omitted or blanked it."""

    serial: str | None
    udid: str | None
    os_version: str | None
    sepos_version: str | None
    freshness: bytes
    leaf_public_key: bytes  # uncompressed SEC1 point; 65 bytes (P-256) under `leaf_key` binding
    llb_version: str | None
    sip_enabled: bool | None
    secure_boot: str | None  # "Full Security", "Reduced Security", "Permissive Security"
    third_party_kexts_allowed: bool | None
    issued_at: datetime
    expires_at: datetime


def freshness_code(nonce: bytes, *, bound_key: bytes | None = None) -> bytes:
    """The 32 bytes the leaf's freshness OID must hold for this challenge.

    Without `bound_key` (binding `leaf_key`: the leaf certifies the provider's key itself):
    SHA-256(nonce), what an ACME device-attest-01 device computes from the token. With it
    (binding `freshness`: the leaf certifies Apple's own P-384 attestation key, as MDM
    `DeviceInformation` returns): a domain-separated digest of nonce and P-256 key, which the
    coordinator sends as `DeviceAttestationNonce` and Apple echoes verbatim, naming the key.
    """
    if len(nonce) < _MIN_NONCE_BYTES:
        raise ValueError(f"nonce must be at least {_MIN_NONCE_BYTES} bytes")
    if bound_key is None:
        return hashlib.sha256(nonce).digest()
    point = uncompressed_p256(bound_key)
    if point is None:
        raise ValueError("bound_key is not a P-256 public key")
    return hashlib.sha256(_BINDING_DOMAIN + nonce + point).digest()


def uncompressed_p256(public_key: bytes) -> bytes | None:
    """The 65-byte 0x04‖X‖Y form of a P-256 key given as 64 or 65 bytes; None if it is not one."""
    point = b"\x04" + public_key if len(public_key) == 64 else bytes(public_key)
    if len(point) != 65 or point[0] != 0x04:
        return None
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        return None
    return point


def verify_mda_chain(
    chain_pem_or_der: Sequence[bytes],
    *,
    expected_public_key: bytes,
    nonce: bytes,
    now: datetime,
    roots: Sequence[x509.Certificate] | None = None,
    max_age: timedelta = timedelta(days=7),
    key_binding: KeyBinding = "leaf_key",
) -> DeviceAttestation:
    """Verify an MDA chain (leaf first; PEM or DER per element) and return what it attests.

    Raises `MdaError` for anything wrong with the chain, and `ValueError` for a caller mistake
    (naive `now`, a nonce shorter than 16 bytes, an unknown `key_binding`).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if key_binding not in ("leaf_key", "freshness"):
        raise ValueError(f"unknown key_binding {key_binding!r}")
    expected_key = uncompressed_p256(expected_public_key)
    if expected_key is None:
        raise MdaError("key_mismatch", "the expected signing key is not a P-256 public key")
    binds_leaf = key_binding == "leaf_key"
    expected_freshness = freshness_code(nonce, bound_key=None if binds_leaf else expected_key)
    anchors = list(roots) if roots is not None else [apple_enterprise_attestation_root()]
    certs = _without_trailing_anchors(_load_chain(chain_pem_or_der), anchors)
    anchor = _verify_path(certs, anchors)
    _check_validity([*certs, anchor], now)
    leaf = certs[0]
    if now - leaf.not_valid_before_utc > max_age:
        raise MdaError("stale_attestation", f"the leaf was issued more than {max_age} ago")
    leaf_key = _leaf_point(leaf)
    if binds_leaf and not hmac.compare_digest(leaf_key, expected_key):
        raise MdaError("key_mismatch", "the leaf certifies a different key")
    freshness = _matching_freshness(leaf, expected_freshness)
    return _attested(leaf, leaf_key, freshness)


def _load_chain(chain: Sequence[bytes]) -> list[x509.Certificate]:
    items: Sequence[object] = [chain] if isinstance(chain, bytes | bytearray) else chain
    certs: list[x509.Certificate] = []
    for item in items:
        if not isinstance(item, bytes | bytearray) or len(item) > _MAX_INPUT_BYTES:
            raise MdaError("malformed", "each chain element must be PEM or DER bytes of sane size")
        data = bytes(item)
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                certs.extend(x509.load_pem_x509_certificates(data))
            else:
                certs.append(x509.load_der_x509_certificate(data))
        except ValueError as exc:
            raise MdaError("malformed", f"a chain element is not a certificate ({exc})") from None
    if not certs or len(certs) > _MAX_CERTS:
        raise MdaError("malformed", f"expected 1 to {_MAX_CERTS} certificates, got {len(certs)}")
    for position, cert in enumerate(certs):
        try:
            _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc)
            _check_critical(cert, position)
        except (ValueError, x509.DuplicateExtension) as exc:
            raise MdaError("malformed", f"certificate {position} is unparseable ({exc})") from None
    return certs


def _check_critical(cert: x509.Certificate, position: int) -> None:
    for ext in cert.extensions:
        oid = ext.oid.dotted_string
        if ext.critical and ext.oid not in _HANDLED_CRITICAL and not oid.startswith(APPLE_OID_ARC):
            raise MdaError("malformed", f"certificate {position} has unhandled critical {oid}")


def _without_trailing_anchors(
    certs: list[x509.Certificate], anchors: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    """Drop a trusted root the sender appended; it proves nothing and is checked as the anchor."""
    anchor_ders = {anchor.public_bytes(Encoding.DER) for anchor in anchors}
    while len(certs) > 1 and certs[-1].public_bytes(Encoding.DER) in anchor_ders:
        certs = certs[:-1]
    return certs


def _verify_path(
    certs: list[x509.Certificate], anchors: Sequence[x509.Certificate]
) -> x509.Certificate:
    """Check each link leaf → … → last presented cert → trusted root; return that root."""
    leaf_constraints = _basic_constraints(certs[0])
    if leaf_constraints is not None and leaf_constraints.ca:
        raise MdaError("malformed", "the leaf is a CA certificate")
    for below, (child, parent) in enumerate(itertools.pairwise(certs)):
        if child.issuer != parent.subject:
            raise MdaError("broken_chain", f"certificate {below} was not issued by the next one")
        if not _signed_by(child, parent):
            raise MdaError("bad_signature", f"certificate {below}'s signature does not verify")
        _require_issuer(parent, intermediates_below=below, position=below + 1)
    last = certs[-1]
    for anchor in anchors:
        if anchor.subject == last.issuer and _signed_by(last, anchor):
            _require_issuer(anchor, intermediates_below=len(certs) - 1, position=len(certs))
            return anchor
    raise MdaError("untrusted_root", "the chain does not lead to a trusted root")


def _signed_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """ECDSA over SHA-2 by a P-256/P-384 issuer key; anything else does not count."""
    try:
        key = issuer.public_key()
        digest = child.signature_hash_algorithm
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1 | ec.SECP384R1
        ):
            return False
        if not isinstance(digest, hashes.SHA256 | hashes.SHA384 | hashes.SHA512):
            return False
        child.verify_directly_issued_by(issuer)  # also refuses a non-ECDSA signature algorithm
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _require_issuer(cert: x509.Certificate, *, intermediates_below: int, position: int) -> None:
    constraints = _basic_constraints(cert)
    if constraints is None or not constraints.ca:
        raise MdaError("not_ca", f"certificate {position} is not a CA")
    if constraints.path_length is not None and intermediates_below > constraints.path_length:
        raise MdaError("not_ca", f"certificate {position}'s path length is exceeded")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise MdaError("not_ca", f"certificate {position} may not sign certificates")


def _check_validity(certs: list[x509.Certificate], now: datetime) -> None:
    for position, cert in enumerate(certs):
        if now < cert.not_valid_before_utc:
            raise MdaError("not_yet_valid", f"certificate {position} is not valid yet")
        if now > cert.not_valid_after_utc:
            raise MdaError("expired", f"certificate {position} has expired")


def _leaf_point(leaf: x509.Certificate) -> bytes:
    try:
        key: object = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise MdaError("key_mismatch", "the leaf does not certify an elliptic-curve key")
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def _apple_value(leaf: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        value = leaf.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    if not isinstance(value, x509.UnrecognizedExtension):
        raise MdaError("malformed", f"OID {oid.dotted_string} has an unexpected form")
    return value.value


def _der_unwrap(data: bytes, tags: frozenset[int]) -> bytes | None:
    """The content of `data` if it is exactly one DER TLV with one of `tags`, else None."""
    if len(data) < 2 or data[0] not in tags:
        return None
    length, offset = data[1], 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 2 or len(data) < 2 + size:
            return None
        length, offset = int.from_bytes(data[2 : 2 + size], "big"), 2 + size
    if offset + length != len(data):
        return None
    return data[offset:]


def _matching_freshness(leaf: x509.Certificate, expected: bytes) -> bytes:
    raw = _apple_value(leaf, OID_FRESHNESS)
    if raw is None:
        raise MdaError("missing_field", "the leaf has no freshness code")
    inner = _der_unwrap(raw, frozenset({0x04}))
    for candidate in (raw, inner):
        if candidate is not None and hmac.compare_digest(candidate, expected):
            return candidate
    raise MdaError("stale_nonce", "the freshness code does not answer this challenge")


def _decode_text(raw: bytes | None, oid: x509.ObjectIdentifier) -> str | None:
    """UTF-8 text, bare (Apple's form) or in one DER string wrapper; None when absent or blank."""
    if raw is None:
        return None
    body = _der_unwrap(raw, _STRING_TAGS)
    body = raw if body is None else body
    if not body:
        return None
    if len(body) > _MAX_TEXT_BYTES:
        raise MdaError("malformed", f"OID {oid.dotted_string} is too long")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MdaError("malformed", f"OID {oid.dotted_string} is not UTF-8 text") from None
    if not text.isprintable():
        raise MdaError("malformed", f"OID {oid.dotted_string} is not printable text")
    return text


def _small_int(raw: bytes | None, oid: x509.ObjectIdentifier) -> int | None:
    """A DER INTEGER (Apple's form) or, leniently, decimal text; None when absent or blank."""
    if raw is None:
        return None
    body = _der_unwrap(raw, frozenset({_INTEGER_TAG}))
    if body is not None:
        if not 1 <= len(body) <= 8:
            raise MdaError("malformed", f"OID {oid.dotted_string} is not a small integer")
        return int.from_bytes(body, "big", signed=True)
    text = _decode_text(raw, oid)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 3):
        raise MdaError("malformed", f"OID {oid.dotted_string} is not an integer")
    return int(text)


def _secure_boot(raw: bytes | None) -> str | None:
    if raw is None or _der_unwrap(raw, frozenset({_INTEGER_TAG})) is None:
        return _decode_text(raw, OID_SECURE_BOOT)
    # Apple documents text, but an INTEGER has been seen in the field with 0 labelled Full
    # Security; any other number is reported as weaker, never mapped to a guessed name.
    level = _small_int(raw, OID_SECURE_BOOT)
    return "Full Security" if level == 0 else f"level {level}"


def _attested(leaf: x509.Certificate, leaf_key: bytes, freshness: bytes) -> DeviceAttestation:
    def text(oid: x509.ObjectIdentifier) -> str | None:
        return _decode_text(_apple_value(leaf, oid), oid)

    sip_status = _small_int(_apple_value(leaf, OID_SIP_STATUS), OID_SIP_STATUS)
    kexts = _small_int(_apple_value(leaf, OID_KEXTS_ALLOWED), OID_KEXTS_ALLOWED)
    return DeviceAttestation(
        serial=text(OID_SERIAL),
        udid=text(OID_UDID),
        os_version=text(OID_OS_VERSION),
        sepos_version=text(OID_SEPOS_VERSION),
        freshness=freshness,
        leaf_public_key=leaf_key,
        llb_version=text(OID_LLB_VERSION),
        sip_enabled=None if sip_status is None else sip_status == 0,
        secure_boot=_secure_boot(_apple_value(leaf, OID_SECURE_BOOT)),
        third_party_kexts_allowed=None if kexts is None else kexts != 0,
        issued_at=leaf.not_valid_before_utc,
        expires_at=leaf.not_valid_after_utc,
    )
