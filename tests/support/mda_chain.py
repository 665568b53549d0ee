"""Builds synthetic Apple Managed Device Attestation chains for tests — never real attestations.

Shaped like Apple's: a P-384 root ("Test Enterprise Attestation Root CA"), a P-384 sub CA that
may issue only end-entity certificates, and a leaf signed with ECDSA-SHA384 whose
1.2.840.113635.100.8.* extensions carry bare values exactly as Apple writes them (UTF-8 text,
the raw freshness digest, DER INTEGERs for SIP and kexts). Tests get the raw extension values
as a dict so they can drop or re-encode one and exercise the verifier's real parsing path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from moonflower.crypto import apple_mda

ROOT_NAME = "Test Enterprise Attestation Root CA"
SUB_CA_NAME = "Test Enterprise Attestation Sub CA 1"
LEAF_LIFETIME = timedelta(days=90)  # Apple's leaves live about three months

SERIAL = "C02TESTSERIAL"
UDID = "00008112-000A68263C06201E"
OS_VERSION = "15.3.1"
SEPOS_VERSION = "24.3.62.0.0"
LLB_VERSION = "11881.81.4"


def der_integer(value: int) -> bytes:
    """DER INTEGER for 0..127, the form Apple uses for SIP and kext status."""
    assert 0 <= value < 0x80
    return bytes([0x02, 0x01, value])


def der_wrap(tag: int, body: bytes) -> bytes:
    """One DER TLV (short-form length) — for tests of tolerated wrapped encodings."""
    assert len(body) < 0x80
    return bytes([tag, len(body)]) + body


def apple_values(
    *,
    freshness: bytes,
    serial: str = SERIAL,
    udid: str = UDID,
    os_version: str = OS_VERSION,
    sepos_version: str = SEPOS_VERSION,
    llb_version: str = LLB_VERSION,
    sip_status: int = 0,
    secure_boot: str = "Full Security",
    kexts_allowed: int = 0,
) -> dict[str, bytes]:
    """Leaf extension values keyed by dotted OID, encoded the way Apple encodes them."""
    return {
        apple_mda.OID_SERIAL.dotted_string: serial.encode(),
        apple_mda.OID_UDID.dotted_string: udid.encode(),
        apple_mda.OID_OS_VERSION.dotted_string: os_version.encode(),
        apple_mda.OID_SEPOS_VERSION.dotted_string: sepos_version.encode(),
        apple_mda.OID_LLB_VERSION.dotted_string: llb_version.encode(),
        apple_mda.OID_FRESHNESS.dotted_string: freshness,
        apple_mda.OID_SIP_STATUS.dotted_string: der_integer(sip_status),
        apple_mda.OID_SECURE_BOOT.dotted_string: secure_boot.encode(),
        apple_mda.OID_KEXTS_ALLOWED.dotted_string: der_integer(kexts_allowed),
    }


def name(common_name: str, unit: str | None = None) -> x509.Name:
    """A distinguished name in the shape Apple uses (CN, optional OU, O)."""
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if unit is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Moonflower Test"))
    return x509.Name(attributes)


def ca_certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    not_before: datetime,
    not_after: datetime,
    constraints: x509.BasicConstraints,
    may_sign_certificates: bool = True,
) -> x509.Certificate:
    """A CA certificate (ECDSA-SHA384) with the given basicConstraints."""
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=may_sign_certificates,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(constraints, critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA384())
    )


@dataclass(frozen=True)
class SyntheticPki:
    """A synthetic attestation PKI: root and sub CA certificates with their private keys."""

    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    sub_ca: x509.Certificate
    sub_ca_key: ec.EllipticCurvePrivateKey

    def issue_leaf(
        self,
        public_key: ec.EllipticCurvePublicKey,
        values: Mapping[str, bytes],
        *,
        not_before: datetime,
        not_after: datetime | None = None,
        is_ca: bool = False,
        extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
        signature_hash: hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | None = None,
    ) -> x509.Certificate:
        """A leaf for `public_key` with the given raw Apple extension values."""
        point = public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=True,
            key_encipherment=True,
            data_encipherment=True,
            key_agreement=False,
            key_cert_sign=is_ca,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(hashlib.sha256(point).hexdigest(), "AAA Certification"))
            .issuer_name(self.sub_ca.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after or not_before + LEAF_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=False)
            .add_extension(usage, critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([x509.ObjectIdentifier("1.2.840.113635.100.4.24")]),
                critical=False,
            )
        )
        for oid, value in values.items():
            extension = x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)
            builder = builder.add_extension(extension, critical=False)
        for extension_type, critical in extra:
            builder = builder.add_extension(extension_type, critical=critical)
        return builder.sign(self.sub_ca_key, signature_hash or hashes.SHA384())

    def chain(self, leaf: x509.Certificate) -> list[bytes]:
        """What a device returns: leaf DER first, then the sub CA (never the root)."""
        return [leaf.public_bytes(Encoding.DER), self.sub_ca.public_bytes(Encoding.DER)]


def make_pki(
    now: datetime,
    *,
    root_name: str = ROOT_NAME,
    sub_ca_constraints: x509.BasicConstraints | None = None,
    sub_ca_not_after: datetime | None = None,
    sub_ca_may_sign_certificates: bool = True,
) -> SyntheticPki:
    """A fresh root (valid ±years around `now`) and sub CA limited to issuing leaves."""
    root_key = ec.generate_private_key(ec.SECP384R1())
    sub_ca_key = ec.generate_private_key(ec.SECP384R1())
    root_subject = name(root_name)
    root = ca_certificate(
        root_subject,
        root_key,
        root_subject,
        root_key,
        not_before=now - timedelta(days=365),
        not_after=now + timedelta(days=20 * 365),
        constraints=x509.BasicConstraints(ca=True, path_length=None),
    )
    sub_ca = ca_certificate(
        name(SUB_CA_NAME),
        sub_ca_key,
        root_subject,
        root_key,
        not_before=now - timedelta(days=365),
        not_after=sub_ca_not_after or now + timedelta(days=5 * 365),
        constraints=sub_ca_constraints or x509.BasicConstraints(ca=True, path_length=0),
        may_sign_certificates=sub_ca_may_sign_certificates,
    )
    return SyntheticPki(root=root, root_key=root_key, sub_ca=sub_ca, sub_ca_key=sub_ca_key)


def p256_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The 65-byte uncompressed public point of a private key."""
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def flip_last_byte(der: bytes) -> bytes:
    """Corrupt the end of the signature value while keeping the DER well-formed."""
    return der[:-1] + bytes([der[-1] ^ 0x01])
