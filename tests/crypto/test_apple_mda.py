"""Apple Managed Device Attestation chain verification, on synthetic chains built like Apple's."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from moonflower.crypto import apple_mda
from moonflower.crypto.apple_mda import (
    DeviceAttestation,
    MdaError,
    freshness_code,
    verify_mda_chain,
)
from moonflower.crypto.apple_roots import (
    APPLE_ENTERPRISE_ATTESTATION_ROOT_CA_SHA256,
    apple_enterprise_attestation_root,
)
from tests.support import mda_chain
from tests.support.mda_chain import SyntheticPki, apple_values, make_pki, p256_point

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NONCE = bytes(range(32))
SERIAL_OID = apple_mda.OID_SERIAL.dotted_string
FRESHNESS_OID = apple_mda.OID_FRESHNESS.dotted_string


@pytest.fixture(scope="module")
def pki() -> SyntheticPki:
    return make_pki(NOW)


@pytest.fixture(scope="module")
def provider_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def issue(
    pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> Callable[..., list[bytes]]:
    """Issue a leaf for the provider's key (defaults: fresh, Apple values, this nonce)."""

    def _issue(values: dict[str, bytes] | None = None, **leaf_options: object) -> list[bytes]:
        leaf_options.setdefault("not_before", NOW - timedelta(hours=1))
        if values is None:
            values = apple_values(freshness=hashlib.sha256(NONCE).digest())
        leaf = pki.issue_leaf(provider_key.public_key(), values, **leaf_options)  # type: ignore[arg-type]
        return pki.chain(leaf)

    return _issue


def verify(
    chain: list[bytes], pki: SyntheticPki, key: ec.EllipticCurvePrivateKey, **options: object
) -> DeviceAttestation:
    kwargs: dict[str, object] = {"nonce": NONCE, "now": NOW, "roots": [pki.root]}
    kwargs.update(options)
    return verify_mda_chain(chain, expected_public_key=p256_point(key), **kwargs)  # type: ignore[arg-type]


def rejection(
    chain: list[bytes], pki: SyntheticPki, key: ec.EllipticCurvePrivateKey, **options: object
) -> str:
    with pytest.raises(MdaError) as caught:
        verify(chain, pki, key, **options)
    return caught.value.reason


def test_embedded_root_is_apples_enterprise_attestation_root() -> None:
    root = apple_enterprise_attestation_root()
    assert root.fingerprint(hashes.SHA256()).hex() == APPLE_ENTERPRISE_ATTESTATION_ROOT_CA_SHA256
    common_name = root.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert common_name == "Apple Enterprise Attestation Root CA"
    assert root.subject == root.issuer
    root.verify_directly_issued_by(root)  # self-signature over intact bytes
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP384R1)
    assert root.not_valid_after_utc == datetime(2047, 2, 20, tzinfo=UTC)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_good_chain_verifies_and_reads_every_field(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    result = verify(issue(), pki, provider_key)
    assert result.serial == mda_chain.SERIAL
    assert result.udid == mda_chain.UDID
    assert result.os_version == mda_chain.OS_VERSION
    assert result.sepos_version == mda_chain.SEPOS_VERSION
    assert result.llb_version == mda_chain.LLB_VERSION
    assert result.freshness == hashlib.sha256(NONCE).digest()
    assert result.leaf_public_key == p256_point(provider_key)
    assert len(result.leaf_public_key) == 65
    assert result.sip_enabled is True
    assert result.secure_boot == "Full Security"
    assert result.third_party_kexts_allowed is False
    assert result.issued_at == NOW - timedelta(hours=1)
    assert result.expires_at == result.issued_at + mda_chain.LEAF_LIFETIME


def test_pem_elements_a_single_pem_blob_and_an_appended_root_are_accepted(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    leaf_der, sub_der = issue()
    pems = [
        x509.load_der_x509_certificate(d).public_bytes(Encoding.PEM) for d in (leaf_der, sub_der)
    ]
    root_der = pki.root.public_bytes(Encoding.DER)
    assert verify(pems, pki, provider_key).serial == mda_chain.SERIAL
    assert verify([b"".join(pems)], pki, provider_key).serial == mda_chain.SERIAL
    assert verify([leaf_der, sub_der, root_der], pki, provider_key).serial == mda_chain.SERIAL


def test_apple_root_is_the_default_and_rejects_a_synthetic_chain(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    assert rejection(issue(), pki, provider_key, roots=None) == "untrusted_root"


def test_root_with_the_same_name_but_another_key_is_rejected(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    impostor = make_pki(NOW)
    assert impostor.root.subject == pki.root.subject
    assert rejection(issue(), pki, provider_key, roots=[impostor.root]) == "untrusted_root"
    # The impostor root appended to the chain is not trusted just for being there.
    chain = [*issue(), impostor.root.public_bytes(Encoding.DER)]
    assert rejection(chain, pki, provider_key, roots=[impostor.root]) == "untrusted_root"


def test_tampered_leaf_signature_is_rejected(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    leaf_der, sub_der = issue()
    tampered = [mda_chain.flip_last_byte(leaf_der), sub_der]
    assert rejection(tampered, pki, provider_key) == "bad_signature"


def test_signature_over_a_weak_hash_is_rejected(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    weak = issue(signature_hash=hashes.SHA224())
    assert rejection(weak, pki, provider_key) == "bad_signature"


def test_edited_serial_breaks_the_leaf_signature(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    leaf_der, sub_der = issue()
    original = mda_chain.SERIAL.encode()
    assert leaf_der.count(original) == 1
    edited = leaf_der.replace(original, original[:-1] + b"X")
    assert rejection([edited, sub_der], pki, provider_key) == "bad_signature"


def test_leaf_under_a_foreign_sub_ca_of_the_same_name_is_rejected(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    leaf_der, _ = issue()
    foreign_sub = make_pki(NOW).sub_ca.public_bytes(Encoding.DER)
    assert rejection([leaf_der, foreign_sub], pki, provider_key) == "bad_signature"


def test_missing_intermediate_is_rejected(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    leaf_der, _ = issue()
    assert rejection([leaf_der], pki, provider_key) == "untrusted_root"


def test_unrelated_certificate_in_the_chain_is_rejected(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    leaf_der, sub_der = issue()
    stranger = make_pki(NOW, root_name="Somebody Else").root.public_bytes(Encoding.DER)
    assert rejection([leaf_der, stranger, sub_der], pki, provider_key) == "broken_chain"


def test_intermediate_that_is_not_a_ca_is_rejected(
    provider_key: ec.EllipticCurvePrivateKey,
) -> None:
    pki = make_pki(NOW, sub_ca_constraints=x509.BasicConstraints(ca=False, path_length=None))
    values = apple_values(freshness=hashlib.sha256(NONCE).digest())
    leaf = pki.issue_leaf(provider_key.public_key(), values, not_before=NOW - timedelta(hours=1))
    assert rejection(pki.chain(leaf), pki, provider_key) == "not_ca"


def test_intermediate_without_certificate_signing_usage_is_rejected(
    provider_key: ec.EllipticCurvePrivateKey,
) -> None:
    pki = make_pki(NOW, sub_ca_may_sign_certificates=False)
    values = apple_values(freshness=hashlib.sha256(NONCE).digest())
    leaf = pki.issue_leaf(provider_key.public_key(), values, not_before=NOW - timedelta(hours=1))
    assert rejection(pki.chain(leaf), pki, provider_key) == "not_ca"


def test_intermediate_beyond_the_sub_cas_path_length_is_rejected(
    pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    # The sub CA has pathLen 0: it may issue leaves but not another CA.
    extra_key = ec.generate_private_key(ec.SECP384R1())
    extra_ca = mda_chain.ca_certificate(
        mda_chain.name("Rogue Sub CA"),
        extra_key,
        pki.sub_ca.subject,
        pki.sub_ca_key,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=365),
        constraints=x509.BasicConstraints(ca=True, path_length=None),
    )
    rogue = SyntheticPki(
        root=pki.root, root_key=pki.root_key, sub_ca=extra_ca, sub_ca_key=extra_key
    )
    values = apple_values(freshness=hashlib.sha256(NONCE).digest())
    leaf = rogue.issue_leaf(provider_key.public_key(), values, not_before=NOW - timedelta(hours=1))
    chain = [*rogue.chain(leaf), pki.sub_ca.public_bytes(Encoding.DER)]
    assert rejection(chain, pki, provider_key) == "not_ca"


def test_leaf_that_is_itself_a_ca_is_rejected(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    assert rejection(issue(is_ca=True), pki, provider_key) == "malformed"


def test_expired_leaf_is_rejected(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    chain = issue(not_before=NOW - timedelta(days=3), not_after=NOW - timedelta(seconds=1))
    assert rejection(chain, pki, provider_key) == "expired"


def test_leaf_from_the_future_is_rejected(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    assert (
        rejection(issue(not_before=NOW + timedelta(minutes=5)), pki, provider_key)
        == "not_yet_valid"
    )


def test_expired_intermediate_is_rejected(provider_key: ec.EllipticCurvePrivateKey) -> None:
    pki = make_pki(NOW, sub_ca_not_after=NOW - timedelta(minutes=1))
    values = apple_values(freshness=hashlib.sha256(NONCE).digest())
    leaf = pki.issue_leaf(provider_key.public_key(), values, not_before=NOW - timedelta(hours=2))
    assert rejection(pki.chain(leaf), pki, provider_key) == "expired"


def test_leaf_older_than_max_age_is_rejected(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    chain = issue(not_before=NOW - timedelta(days=8))
    assert rejection(chain, pki, provider_key) == "stale_attestation"
    assert verify(chain, pki, provider_key, max_age=timedelta(days=10)).serial == mda_chain.SERIAL


def test_leaf_for_another_key_is_rejected(
    issue: Callable[..., list[bytes]], pki: SyntheticPki
) -> None:
    someone_else = ec.generate_private_key(ec.SECP256R1())
    assert rejection(issue(), pki, someone_else) == "key_mismatch"


def test_wrong_nonce_is_rejected(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    replayed = issue()  # answered an earlier challenge
    assert rejection(replayed, pki, provider_key, nonce=bytes(32)) == "stale_nonce"
    # The raw nonce in place of its digest is not accepted either.
    raw = issue(apple_values(freshness=NONCE))
    assert rejection(raw, pki, provider_key) == "stale_nonce"


def test_missing_freshness_code_is_rejected(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    values = apple_values(freshness=hashlib.sha256(NONCE).digest())
    del values[FRESHNESS_OID]
    assert rejection(issue(values), pki, provider_key) == "missing_field"


def test_omitted_or_blank_identity_oids_read_as_none(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    # User enrollment omits serial and UDID; Apple blanks what it could not verify.
    values = apple_values(freshness=hashlib.sha256(NONCE).digest())
    for oid in (
        SERIAL_OID,
        apple_mda.OID_UDID.dotted_string,
        apple_mda.OID_SIP_STATUS.dotted_string,
    ):
        del values[oid]
    values[apple_mda.OID_OS_VERSION.dotted_string] = b""
    result = verify(issue(values), pki, provider_key)
    assert (result.serial, result.udid, result.os_version, result.sip_enabled) == (None,) * 4
    assert result.sepos_version == mda_chain.SEPOS_VERSION


def test_values_wrapped_in_der_are_read_the_same(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    digest = hashlib.sha256(NONCE).digest()
    values = apple_values(freshness=mda_chain.der_wrap(0x04, digest))
    values[SERIAL_OID] = mda_chain.der_wrap(0x0C, mda_chain.SERIAL.encode())
    values[apple_mda.OID_UDID.dotted_string] = mda_chain.der_wrap(0x04, mda_chain.UDID.encode())
    result = verify(issue(values), pki, provider_key)
    assert (result.serial, result.udid, result.freshness) == (
        mda_chain.SERIAL,
        mda_chain.UDID,
        digest,
    )


def test_posture_oids_are_decoded_with_apples_meaning(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    values = apple_values(
        freshness=hashlib.sha256(NONCE).digest(),
        sip_status=1,
        kexts_allowed=1,
        secure_boot="Reduced Security",
    )
    weak = verify(issue(values), pki, provider_key)
    assert (weak.sip_enabled, weak.third_party_kexts_allowed) == (False, True)
    assert weak.secure_boot == "Reduced Security"
    values[apple_mda.OID_SECURE_BOOT.dotted_string] = mda_chain.der_integer(0)
    assert verify(issue(values), pki, provider_key).secure_boot == "Full Security"
    values[apple_mda.OID_SECURE_BOOT.dotted_string] = mda_chain.der_integer(2)
    assert verify(issue(values), pki, provider_key).secure_boot == "level 2"


@pytest.mark.parametrize(
    ("oid", "value"),
    [
        (SERIAL_OID, b"\xff\xfe-not-utf8"),
        (SERIAL_OID, b"C02\x00HIDDEN"),
        (apple_mda.OID_SIP_STATUS.dotted_string, b"enabled"),
    ],
)
def test_undecodable_oid_values_are_malformed(
    issue: Callable[..., list[bytes]],
    pki: SyntheticPki,
    provider_key: ec.EllipticCurvePrivateKey,
    oid: str,
    value: bytes,
) -> None:
    values = apple_values(freshness=hashlib.sha256(NONCE).digest())
    values[oid] = value
    with pytest.raises(MdaError) as caught:
        verify(issue(values), pki, provider_key)
    assert caught.value.reason == "malformed"
    assert "HIDDEN" not in caught.value.message  # values never echo into messages


def test_unknown_critical_extension_is_rejected(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    assert rejection(issue(extra=[(unknown, True)]), pki, provider_key) == "malformed"
    assert verify(issue(extra=[(unknown, False)]), pki, provider_key).serial == mda_chain.SERIAL


@pytest.mark.parametrize(
    "make_chain",
    [
        lambda leaf, sub: [],
        lambda leaf, sub: [b""],
        lambda leaf, sub: [leaf[: len(leaf) // 2], sub],
        lambda leaf, sub: [b"\x30\x03\x02\x01\x01", sub],
        lambda leaf, sub: [b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"],
        lambda leaf, sub: [leaf, sub, sub, sub, sub],
        lambda leaf, sub: ["text, not bytes", sub],
    ],
    ids=["empty", "empty-element", "truncated", "not-a-certificate", "bad-pem", "too-long", "str"],
)
def test_malformed_input_is_rejected(
    issue: Callable[..., list[bytes]],
    pki: SyntheticPki,
    provider_key: ec.EllipticCurvePrivateKey,
    make_chain: Callable[[bytes, bytes], list[bytes]],
) -> None:
    leaf_der, sub_der = issue()
    assert rejection(make_chain(leaf_der, sub_der), pki, provider_key) == "malformed"


def test_freshness_binding_accepts_apples_own_p384_leaf_key(pki: SyntheticPki) -> None:
    # DeviceInformation attestation: the leaf certifies Apple's P-384 attestation key, and the
    # provider's key is bound through the nonce the coordinator sent as DeviceAttestationNonce.
    provider = ec.generate_private_key(ec.SECP256R1())
    apple_key = ec.generate_private_key(ec.SECP384R1())
    bound = freshness_code(NONCE, bound_key=p256_point(provider))
    leaf = pki.issue_leaf(
        apple_key.public_key(), apple_values(freshness=bound), not_before=NOW - timedelta(hours=1)
    )
    chain = pki.chain(leaf)
    result = verify(chain, pki, provider, key_binding="freshness")
    assert result.freshness == bound
    assert len(result.leaf_public_key) == 97  # P-384, not the provider's key
    other = ec.generate_private_key(ec.SECP256R1())
    assert rejection(chain, pki, other, key_binding="freshness") == "stale_nonce"
    assert rejection(chain, pki, provider) == "key_mismatch"  # leaf_key binding refuses it


def test_freshness_code_rules() -> None:
    key = p256_point(ec.generate_private_key(ec.SECP256R1()))
    assert freshness_code(NONCE) == hashlib.sha256(NONCE).digest()
    bound = freshness_code(NONCE, bound_key=key)
    assert bound == freshness_code(NONCE, bound_key=key[1:])  # X‖Y form is the same key
    assert bound not in (freshness_code(NONCE), freshness_code(bytes(32), bound_key=key))
    compressed = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key).public_bytes(
        Encoding.X962, PublicFormat.CompressedPoint
    )
    for not_a_key in (b"\x04" + bytes(64), compressed):
        with pytest.raises(ValueError, match="P-256"):
            freshness_code(NONCE, bound_key=not_a_key)


def test_expected_key_forms(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    chain = issue()
    xy = p256_point(provider_key)[1:]
    result = verify_mda_chain(chain, expected_public_key=xy, nonce=NONCE, now=NOW, roots=[pki.root])
    assert result.leaf_public_key == b"\x04" + xy
    with pytest.raises(MdaError) as caught:
        verify_mda_chain(chain, expected_public_key=b"junk", nonce=NONCE, now=NOW, roots=[pki.root])
    assert caught.value.reason == "key_mismatch"


def test_now_in_another_timezone_is_the_same_instant(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    tokyo = NOW.astimezone(timezone(timedelta(hours=9)))
    assert verify(issue(), pki, provider_key, now=tokyo).serial == mda_chain.SERIAL


def test_caller_mistakes_raise_value_error(
    issue: Callable[..., list[bytes]], pki: SyntheticPki, provider_key: ec.EllipticCurvePrivateKey
) -> None:
    chain = issue()
    with pytest.raises(ValueError, match="timezone"):
        verify(chain, pki, provider_key, now=NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="nonce"):
        verify(chain, pki, provider_key, nonce=b"short")
    with pytest.raises(ValueError, match="key_binding"):
        verify(chain, pki, provider_key, key_binding="serial")


def test_errors_belong_to_the_exception_tree() -> None:
    from moonflower.errors import MoonflowerError

    error = MdaError("stale_nonce", "x")
    assert isinstance(error, MoonflowerError)
    assert error.reason == "stale_nonce"
    assert error.code == "device_attestation_invalid"
