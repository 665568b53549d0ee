// Checks a provider's signed receipt in the browser with WebCrypto: the signature (ECDSA
// P-256, SHA-256, DER-encoded) over exactly the receipt's bytes, under the provider's key,
// and that the receipt names that key's fingerprint (SHA-256 of the 65-byte point, hex).

function fromBase64(text) {
  const bytes = atob(text.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(text.length / 4) * 4, "="));
  return Uint8Array.from(bytes, (c) => c.charCodeAt(0));
}

function hex(buffer) {
  return [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// DER SEQUENCE { INTEGER r, INTEGER s } -> r || s, 32 bytes each.
function derToRaw(der) {
  let offset = 2;
  if (der[1] & 0x80) offset += der[1] & 0x7f;
  const out = new Uint8Array(64);
  for (const half of [0, 1]) {
    if (der[offset] !== 0x02) throw new Error("not a DER signature");
    const length = der[offset + 1];
    let value = der.slice(offset + 2, offset + 2 + length);
    while (value.length > 32 && value[0] === 0) value = value.slice(1);
    out.set(value, half * 32 + (32 - value.length));
    offset += 2 + length;
  }
  return out;
}

export async function verifyReceipt({ receipt, signature, signing_public_key }) {
  const point = fromBase64(signing_public_key);
  const key = await crypto.subtle.importKey(
    "raw", point, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
  const data = new TextEncoder().encode(receipt);
  const isSigned = await crypto.subtle.verify(
    { name: "ECDSA", hash: "SHA-256" }, key, derToRaw(fromBase64(signature)), data);
  const fingerprint = hex(await crypto.subtle.digest("SHA-256", point));
  const parsed = JSON.parse(receipt);
  return { isSigned, namesKey: parsed.provider_key_fingerprint === fingerprint, parsed, fingerprint };
}
