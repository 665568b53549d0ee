"""Apple's Enterprise Attestation Root CA, embedded: the trust anchor of Managed Device Attestation.

Owns the root certificate's bytes, its published fingerprint, and a loader. It must not fetch
anything at run time, cache parsed objects at module level, or hold any other root.

Provenance of the bytes: Apple publishes this root at https://www.apple.com/certificateauthority/private/
(`Apple_Enterprise_Attestation_Root_CA.pem`); the same bytes are embedded by smallstep's step-ca
(its ACME device-attest-01 verifier) and by Darkbloom's coordinator. Checked here: the DER parses,
it is self-signed with a valid ECDSA-SHA384 signature over a P-384 key, serial
42c0c2bb2c727c5c5eabf6f1a66f1fac5d798737, valid 2022-02-16 to 2047-02-20, and its SHA-256
fingerprint equals the independently published ccf59ef8…f05b (tests/crypto/test_apple_mda.py
re-checks all of this).
"""

from __future__ import annotations

from typing import Final

from cryptography import x509

APPLE_ENTERPRISE_ATTESTATION_ROOT_CA_PEM: Final[bytes] = b"""\
-----BEGIN CERTIFICATE-----
MIICJDCCAamgAwIBAgIUQsDCuyxyfFxeq/bxpm8frF15hzcwCgYIKoZIzj0EAwMw
UTEtMCsGA1UEAwwkQXBwbGUgRW50ZXJwcmlzZSBBdHRlc3RhdGlvbiBSb290IENB
MRMwEQYDVQQKDApBcHBsZSBJbmMuMQswCQYDVQQGEwJVUzAeFw0yMjAyMTYxOTAx
MjRaFw00NzAyMjAwMDAwMDBaMFExLTArBgNVBAMMJEFwcGxlIEVudGVycHJpc2Ug
QXR0ZXN0YXRpb24gUm9vdCBDQTETMBEGA1UECgwKQXBwbGUgSW5jLjELMAkGA1UE
BhMCVVMwdjAQBgcqhkjOPQIBBgUrgQQAIgNiAAT6Jigq+Ps9Q4CoT8t8q+UnOe2p
oT9nRaUfGhBTbgvqSGXPjVkbYlIWYO+1zPk2Sz9hQ5ozzmLrPmTBgEWRcHjA2/y7
7GEicps9wn2tj+G89l3INNDKETdxSPPIZpPj8VmjQjBAMA8GA1UdEwEB/wQFMAMB
Af8wHQYDVR0OBBYEFPNqTQGd8muBpV5du+UIbVbi+d66MA4GA1UdDwEB/wQEAwIB
BjAKBggqhkjOPQQDAwNpADBmAjEA1xpWmTLSpr1VH4f8Ypk8f3jMUKYz4QPG8mL5
8m9sX/b2+eXpTv2pH4RZgJjucnbcAjEA4ZSB6S45FlPuS/u4pTnzoz632rA+xW/T
ZwFEh9bhKjJ+5VQ9/Do1os0u3LEkgN/r
-----END CERTIFICATE-----
"""

# SHA-256 over the DER, as published alongside the certificate.
APPLE_ENTERPRISE_ATTESTATION_ROOT_CA_SHA256: Final[str] = (
    "ccf59ef8fcb3017d97f8b5fa6fa90e7a3f9283f76b55ac6cf6eda8b8b949f05b"
)


def apple_enterprise_attestation_root() -> x509.Certificate:
    """Parse the embedded root (a fresh object each call; parsing takes microseconds)."""
    return x509.load_pem_x509_certificate(APPLE_ENTERPRISE_ATTESTATION_ROOT_CA_PEM)
