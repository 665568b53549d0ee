"""Identity, attestation, sealing and receipts: the cryptography every part shares.

    canonical   the canonical JSON bytes that are signed and hashed; strict parsing back
    signing     the P-256 `Signer` interface, the 0600 software key file, verification,
                fingerprints, strict base64
    envelope    NaCl box between X25519 key pairs: base64(nonce ‖ box), reference-compatible
    statement   the attestation statement a provider signs at registration
    status      challenge nonces and the signed status that answers them
    receipt     the signed receipt of a job, with its request and output digests

Pure library code: no I/O beyond the signing-key file, no logging of secrets, prompts or
completions, no trust policy (the coordinator decides what a verified fact means). The
encodings are specified in `docs/trust.md`.
"""
