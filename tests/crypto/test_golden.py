"""Golden bytes: fixed keys and inputs give exactly these canonical bytes and digests.

Another implementation matches Moonflower when it reproduces every literal here (they are
repeated in docs/trust.md). ECDSA signatures are randomized, so what is pinned is the bytes
signed; the literal signatures below were generated once and must keep verifying.
"""

from __future__ import annotations

from moonflower.crypto.canonical import canonical_json, sha256_hex
from moonflower.crypto.envelope import EncryptionKeyPair
from moonflower.crypto.receipt import (
    Receipt,
    output_digest,
    receipt_hash,
    request_digest,
    verify_receipt,
    verify_receipt_hash,
)
from moonflower.crypto.signing import SoftwareSigner, b64d, b64e, key_fingerprint, verify_signature
from moonflower.crypto.statement import AttestedHardware, build_statement, verify_statement
from moonflower.crypto.status import Challenge, ChallengeStatus, verify_status
from moonflower.generation import GenerationRequest, Message, SamplingParams, ToolCall

# RFC 6979 A.2.5: the P-256 test key, its public point, and its SHA-256 signature of "sample".
SIGNING_PRIVATE = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
SIGNING_PUBLIC = bytes.fromhex(
    "04"
    "60fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6"
    "7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299"
)
SIGNING_PUBLIC_B64 = (
    "BGD+1LolWp0xyWHrdMY1bWjASbiSO2H6bOZpYi5g8p+2eQP+EAi4vJmkGunpVii8ZPLxsgwtfp9Rd6PClNRGIpk="
)
FINGERPRINT = "b18b86ce1389e46de87aa4a5131ce83c1160fa33c087ab15b863574d31d8ff3c"
RFC6979_SAMPLE_SIGNATURE = bytes.fromhex(
    "3046"
    "022100efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716"
    "022100f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8"
)
# RFC 7748 §6.1 Alice: the provider's X25519 key in these examples.
ENCRYPTION_PRIVATE = bytes.fromhex(
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
)

CODE_HASH = "3f19e2536c4c5183a0472d1702a96b0b0cad1f537b9a0ed7b7cbbb4c6c0b884f"
RUNTIME_HASH = "87ecc1df5fa02e9f793ba823c8e2d2a84ec7c583f9e946cbdf0db872327bf535"
MODEL_HASH = "a2d42c4aa884e21216cbb8da4c7ba2fcf9b6033b2331666e666145c24caf7a38"
MODEL_ID = "smollm2-135m-instruct"
POSTURE = {"secure_boot": True, "kernel_lockdown": None}
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z

STATEMENT_JSON = (
    '{"code_hash":"3f19e2536c4c5183a0472d1702a96b0b0cad1f537b9a0ed7b7cbbb4c6c0b884f",'
    '"encryption_public_key":"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=",'
    '"hardware":{"chip":null,"cpu":"13th Gen Intel® Core™ i7-1365U","gpu":null,'
    '"machine_model":"ThinkPad X1 Carbon Gen 11","memory_bytes":34359738368,'
    '"serial":"PF4ABCDE"},"key_storage":"software",'
    '"model_hashes":{"smollm2-135m-instruct":'
    '"a2d42c4aa884e21216cbb8da4c7ba2fcf9b6033b2331666e666145c24caf7a38"},'
    '"os_version":"Linux 6.8.0-49-generic",'
    '"posture":{"kernel_lockdown":null,"secure_boot":true},"protocol_version":1,'
    '"runtime_hash":"87ecc1df5fa02e9f793ba823c8e2d2a84ec7c583f9e946cbdf0db872327bf535",'
    '"signing_public_key":'
    '"BGD+1LolWp0xyWHrdMY1bWjASbiSO2H6bOZpYi5g8p+2eQP+EAi4vJmkGunpVii8ZPLxsgwtfp9Rd6PClNRGIpk=",'
    '"timestamp":1767225600,"v":1}'
)
STATEMENT_SHA256 = "1118143e16db5194fe82fdaf418fc3ae176f6cefd227fe975f94b39e2f1423af"
STATEMENT_SIGNATURE = (
    "MEYCIQDo/c2lcInITb2hxMGeCMTDiASobwi1wfy1pvCXgDF+"
    "JAIhAKiaKB85rUK4FCejE+56LUBYTg0t35ktp3WVUF2QpA5E"
)

NONCE = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # bytes 00 01 … 1f
STATUS_JSON = (
    '{"challenge_timestamp":1767225600,'
    '"code_hash":"3f19e2536c4c5183a0472d1702a96b0b0cad1f537b9a0ed7b7cbbb4c6c0b884f",'
    '"model_hashes":{"smollm2-135m-instruct":'
    '"a2d42c4aa884e21216cbb8da4c7ba2fcf9b6033b2331666e666145c24caf7a38"},'
    '"nonce":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",'
    '"posture":{"kernel_lockdown":null,"secure_boot":true},"response_timestamp":1767225603,'
    '"runtime_hash":"87ecc1df5fa02e9f793ba823c8e2d2a84ec7c583f9e946cbdf0db872327bf535",'
    '"signing_key_fingerprint":"b18b86ce1389e46de87aa4a5131ce83c1160fa33c087ab15b863574d31d8ff3c",'
    '"v":1}'
)
STATUS_SHA256 = "2460e9cef7ef29a74a9852763d9900b78a46650a67d11469df74b6254fdf329b"
STATUS_SIGNATURE = (
    "MEQCIGVX8HmXoPJrai5D9e/njN+bBmqkilB0/TQRMb1VpUQb"
    "AiBemGXwNCSICIJOuW65KpvsIf3VSaudy5nizhqX4Wolpg=="
)

REQUEST = GenerationRequest(
    model=MODEL_ID,
    max_tokens=16,
    messages=(Message("system", "Be brief."), Message("user", "Say hello.")),
    sampling=SamplingParams(temperature=0.7, seed=42),
)
REQUEST_JSON = (
    '{"logprobs":null,"max_tokens":16,"messages":['
    '{"content":"Be brief.","name":null,"role":"system","tool_call_id":null,"tool_calls":[]},'
    '{"content":"Say hello.","name":null,"role":"user","tool_call_id":null,"tool_calls":[]}],'
    '"model":"smollm2-135m-instruct","prompt":null,"response_format":null,'
    '"sampling":{"frequency_penalty":null,"presence_penalty":null,"seed":42,'
    '"temperature":0.7,"top_k":null,"top_p":null},"stop":[],'
    '"tool_choice":{"mode":"auto","name":null},"tools":[]}'
)
REQUEST_SHA256 = "c80f94204bcf46862be8222a55277959d6e13a1ddca57f9c8e2fdec43d9fb844"
OUTPUT_JSON = (
    '{"finish_reason":"stop","reasoning":"The user wants a greeting.","text":"Hello!",'
    '"tool_calls":[]}'
)
OUTPUT_SHA256 = "664b8c3de1a3cf1bcce67d2c7b0e9c79a0ba70158d679e342637f5292a331e7c"
TOOL_OUTPUT_JSON = (
    '{"finish_reason":"tool_calls","reasoning":"","text":"",'
    '"tool_calls":[{"arguments":"{\\"city\\": \\"Paris\\"}","name":"get_weather"}]}'
)
TOOL_OUTPUT_SHA256 = "1d1f29a7dbf2a8d983ff28b2dab5d0bc3f0e5b3164715a28e45bb5a473fcb354"
RECEIPT_JSON = (
    '{"completion_tokens":3,"finish_reason":"stop","job_id":"job_0123456789abcdef",'
    '"model_id":"smollm2-135m-instruct",'
    '"model_sha256":"a2d42c4aa884e21216cbb8da4c7ba2fcf9b6033b2331666e666145c24caf7a38",'
    '"output_sha256":"664b8c3de1a3cf1bcce67d2c7b0e9c79a0ba70158d679e342637f5292a331e7c",'
    '"prompt_tokens":12,'
    '"provider_key_fingerprint":'
    '"b18b86ce1389e46de87aa4a5131ce83c1160fa33c087ab15b863574d31d8ff3c",'
    '"request_sha256":"c80f94204bcf46862be8222a55277959d6e13a1ddca57f9c8e2fdec43d9fb844",'
    '"timestamp":1767225605,"v":1}'
)
RECEIPT_SHA256 = "664a79c6cbbf242fa18ae4a9cc23df3a27275aa25ff551091d48c7cc4e8a855c"
RECEIPT_SIGNATURE = (
    "MEQCIBirlt85WbroxkWowD6iLY9osVg/LEBG5RBqjIzVVhc6"
    "AiB6mfMkaVPp1uM2ZZz5PJOayj0w3qeenfvOs6UOZ+EG3Q=="
)


def _signer() -> SoftwareSigner:
    return SoftwareSigner.from_private_value(SIGNING_PRIVATE)


def test_fixed_key_matches_rfc6979_and_its_published_signature_verifies() -> None:
    public = _signer().public_key()
    assert public == SIGNING_PUBLIC
    assert b64e(public) == SIGNING_PUBLIC_B64
    assert key_fingerprint(public) == FINGERPRINT
    assert verify_signature(public, RFC6979_SAMPLE_SIGNATURE, b"sample")
    assert not verify_signature(public, RFC6979_SAMPLE_SIGNATURE, b"sample!")


def test_statement_canonical_bytes() -> None:
    statement = build_statement(
        _signer(),
        EncryptionKeyPair.from_private_bytes(ENCRYPTION_PRIVATE).public_key,
        hardware=AttestedHardware(
            chip=None,
            machine_model="ThinkPad X1 Carbon Gen 11",
            serial="PF4ABCDE",
            memory_bytes=34_359_738_368,
            gpu=None,
            cpu="13th Gen Intel® Core™ i7-1365U",
        ),
        os_version="Linux 6.8.0-49-generic",
        posture=POSTURE,
        code_hash=CODE_HASH,
        runtime_hash=RUNTIME_HASH,
        model_hashes={MODEL_ID: MODEL_HASH},
        protocol_version=1,
        now=T0 + 0.9,
    )
    data = statement.canonical_bytes()
    assert data == STATEMENT_JSON.encode("utf-8")
    assert "®".encode() in data  # non-ASCII is written as UTF-8, not escaped
    assert sha256_hex(data) == STATEMENT_SHA256
    verified = verify_statement(STATEMENT_JSON, STATEMENT_SIGNATURE, now=T0 + 1)
    assert verified == statement


def test_status_canonical_bytes() -> None:
    status = ChallengeStatus(
        nonce=NONCE,
        challenge_timestamp=T0,
        response_timestamp=T0 + 3,
        posture=POSTURE,
        code_hash=CODE_HASH,
        runtime_hash=RUNTIME_HASH,
        model_hashes={MODEL_ID: MODEL_HASH},
        signing_key_fingerprint=FINGERPRINT,
    )
    assert b64d(NONCE) == bytes(range(32))
    assert status.canonical_bytes() == STATUS_JSON.encode("utf-8")
    assert sha256_hex(status.canonical_bytes()) == STATUS_SHA256
    verified = verify_status(
        STATUS_JSON,
        STATUS_SIGNATURE,
        challenge=Challenge(nonce=NONCE, timestamp=T0),
        public_key=SIGNING_PUBLIC,
        now=T0 + 4,
    )
    assert verified == status


def test_request_and_output_digests() -> None:
    assert sha256_hex(REQUEST_JSON.encode()) == REQUEST_SHA256
    assert request_digest(REQUEST) == REQUEST_SHA256
    assert sha256_hex(OUTPUT_JSON.encode()) == OUTPUT_SHA256
    assert output_digest("Hello!", "The user wants a greeting.", [], "stop") == OUTPUT_SHA256
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    assert sha256_hex(TOOL_OUTPUT_JSON.encode()) == TOOL_OUTPUT_SHA256
    assert output_digest("", "", [call], "tool_calls") == TOOL_OUTPUT_SHA256


def test_receipt_canonical_bytes_and_hash() -> None:
    receipt = Receipt(
        job_id="job_0123456789abcdef",
        model_id=MODEL_ID,
        model_sha256=MODEL_HASH,
        request_sha256=REQUEST_SHA256,
        output_sha256=OUTPUT_SHA256,
        prompt_tokens=12,
        completion_tokens=3,
        finish_reason="stop",
        provider_key_fingerprint=FINGERPRINT,
        timestamp=T0 + 5,
    )
    assert receipt.canonical_bytes() == RECEIPT_JSON.encode("utf-8")
    assert receipt_hash(RECEIPT_JSON) == RECEIPT_SHA256
    assert verify_receipt(RECEIPT_JSON, RECEIPT_SIGNATURE, SIGNING_PUBLIC) == receipt
    assert verify_receipt_hash(RECEIPT_SHA256, RECEIPT_SIGNATURE, SIGNING_PUBLIC)


def test_canonical_rules_example() -> None:
    value = {
        "b": '"\\\b\f\n\r\t\x00\x1f\x7f/<>&\u2028é😀',
        "a": [1, -2, True, False, None, 0.5, 1e-05, 1e16, -0.0],
    }
    assert canonical_json(value) == (
        b'{"a":[1,-2,true,false,null,0.5,1e-05,1e+16,-0.0],'
        b'"b":"\\"\\\\\\b\\f\\n\\r\\t\\u0000\\u001f\x7f/<>&'
        b'\xe2\x80\xa8\xc3\xa9\xf0\x9f\x98\x80"}'
    )
