//! The little DER that Envoy's `verify_signature` needs: public keys as SubjectPublicKeyInfo and
//! ECDSA signatures as `SEQUENCE { INTEGER r, INTEGER s }` (JWS carries them as raw r‖s).

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;

/// rsaEncryption (1.2.840.113549.1.1.1) with its NULL parameters.
const RSA_ALGORITHM: &[u8] =
    &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
/// id-ecPublicKey (1.2.840.10045.2.1) with prime256v1 (1.2.840.10045.3.1.7).
const P256_ALGORITHM: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03,
    0x01, 0x07,
];
/// id-ecPublicKey with secp384r1 (1.3.132.0.34).
const P384_ALGORITHM: &[u8] =
    &[0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// Ed25519 (1.3.101.112) as it appears inside a SubjectPublicKeyInfo.
const ED25519_ALGORITHM: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    /// Length in bytes of one coordinate, and of r or s in a JWS signature.
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    push_len(out, content.len());
    out.extend_from_slice(content);
}

/// A non-negative INTEGER from big-endian bytes: minimal, with a 0x00 when the high bit is set.
fn push_unsigned_integer(out: &mut Vec<u8>, be: &[u8]) {
    let skip = be.iter().take_while(|b| **b == 0).count();
    let digits = &be[skip..];
    let mut content = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(digits);
    push_tlv(out, INTEGER, &content);
}

fn spki(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(key.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(key);
    let mut body = algorithm.to_vec();
    push_tlv(&mut body, BIT_STRING, &bits);
    let mut out = Vec::with_capacity(body.len() + 4);
    push_tlv(&mut out, SEQUENCE, &body);
    out
}

/// PKCS#1 `RSAPublicKey` from the JWK's big-endian modulus and exponent.
pub fn rsa_pkcs1(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(n.len() + e.len() + 8);
    push_unsigned_integer(&mut body, n);
    push_unsigned_integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 4);
    push_tlv(&mut out, SEQUENCE, &body);
    out
}

/// SubjectPublicKeyInfo wrapping a PKCS#1 RSA public key.
pub fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    spki(RSA_ALGORITHM, pkcs1)
}

/// SubjectPublicKeyInfo for an uncompressed SEC1 point (`04 ‖ x ‖ y`).
pub fn ec_spki(curve: Curve, point: &[u8]) -> Vec<u8> {
    let algorithm = match curve {
        Curve::P256 => P256_ALGORITHM,
        Curve::P384 => P384_ALGORITHM,
    };
    spki(algorithm, point)
}

/// DER `ECDSA-Sig-Value` from a JWS raw `r ‖ s`; `None` unless the signature has exactly the
/// curve's length and neither half is zero (CVE-2022-21449: r = s = 0 verifies everything on a
/// broken verifier; we never ask).
pub fn ecdsa_signature(curve: Curve, raw: &[u8]) -> Option<Vec<u8>> {
    let n = curve.field_len();
    if raw.len() != 2 * n {
        return None;
    }
    let (r, s) = raw.split_at(n);
    if r.iter().all(|b| *b == 0) || s.iter().all(|b| *b == 0) {
        return None;
    }
    let mut body = Vec::with_capacity(2 * n + 6);
    push_unsigned_integer(&mut body, r);
    push_unsigned_integer(&mut body, s);
    let mut out = Vec::with_capacity(body.len() + 3);
    push_tlv(&mut out, SEQUENCE, &body);
    Some(out)
}

/// The key inside a SubjectPublicKeyInfo we know how to use.
#[derive(Debug, PartialEq, Eq)]
pub enum PublicKey<'a> {
    /// PKCS#1 `RSAPublicKey`.
    Rsa(&'a [u8]),
    /// Uncompressed SEC1 point.
    Ec(Curve, &'a [u8]),
    /// The 32-byte Ed25519 key.
    Ed25519(&'a [u8]),
}

/// Reads one TLV with `tag` from the front of `input`: (content, rest). Definite lengths only.
fn read_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Parses a DER SubjectPublicKeyInfo (the body of a `PUBLIC KEY` PEM) into a key we support.
pub fn parse_spki(der: &[u8]) -> Option<PublicKey<'_>> {
    let (spki, trailing) = read_tlv(der, SEQUENCE)?;
    let (algorithm, rest) = read_tlv(spki, SEQUENCE)?;
    let algorithm_tlv = &spki[..spki.len() - rest.len()];
    let (bits, after) = read_tlv(rest, BIT_STRING)?;
    if !trailing.is_empty() || !after.is_empty() {
        return None;
    }
    let _ = algorithm;
    let (&unused, key) = bits.split_first()?;
    if unused != 0 {
        return None;
    }
    match algorithm_tlv {
        a if a == RSA_ALGORITHM => Some(PublicKey::Rsa(key)),
        a if a == P256_ALGORITHM => Some(PublicKey::Ec(Curve::P256, key)),
        a if a == P384_ALGORITHM => Some(PublicKey::Ec(Curve::P384, key)),
        a if a == ED25519_ALGORITHM => Some(PublicKey::Ed25519(key)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
    use p256::pkcs8::DecodePublicKey;

    #[test]
    fn integers_are_minimal_and_positive() {
        let mut out = Vec::new();
        push_unsigned_integer(&mut out, &[0, 0, 0x7f]);
        assert_eq!(out, [0x02, 0x01, 0x7f]);
        out.clear();
        push_unsigned_integer(&mut out, &[0x80]);
        assert_eq!(out, [0x02, 0x02, 0x00, 0x80]);
        out.clear();
        push_unsigned_integer(&mut out, &[0, 0]);
        assert_eq!(out, [0x02, 0x01, 0x00]);
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        let mut out = Vec::new();
        push_len(&mut out, 300);
        assert_eq!(out, [0x82, 0x01, 0x2c]);
    }

    #[test]
    fn ec_spki_and_signature_match_rustcrypto() {
        // Signatures whose r or s has the high bit set or leading zero bytes both occur among
        // a few hundred messages; every one must convert to a DER signature RustCrypto accepts.
        let sk = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let point = VerifyingKey::from(&sk).to_encoded_point(false);
        let der_key = ec_spki(Curve::P256, point.as_bytes());
        let vk = VerifyingKey::from_public_key_der(&der_key).unwrap();
        let mut high_bit = 0;
        for i in 0..300u32 {
            let msg = i.to_be_bytes();
            let sig: Signature = p256::ecdsa::signature::Signer::sign(&sk, &msg);
            let raw = sig.to_bytes();
            high_bit += usize::from(raw[0] & 0x80 != 0);
            let der = ecdsa_signature(Curve::P256, &raw).unwrap();
            let parsed = Signature::from_der(&der).unwrap();
            vk.verify(&msg, &parsed).unwrap();
        }
        assert!(high_bit > 0);
    }

    #[test]
    fn zero_or_wrongly_sized_signatures_are_refused() {
        assert!(ecdsa_signature(Curve::P256, &[0u8; 64]).is_none());
        let mut half_zero = [1u8; 64];
        half_zero[32..].fill(0);
        assert!(ecdsa_signature(Curve::P256, &half_zero).is_none());
        assert!(ecdsa_signature(Curve::P256, &[1u8; 63]).is_none());
        assert!(ecdsa_signature(Curve::P384, &[1u8; 64]).is_none());
        assert!(ecdsa_signature(Curve::P384, &[1u8; 96]).is_some());
    }

    #[test]
    fn spki_round_trips_and_refuses_garbage() {
        let point = [4u8; 65];
        assert_eq!(parse_spki(&ec_spki(Curve::P256, &point)), Some(PublicKey::Ec(Curve::P256, &point[..])));
        let pkcs1 = rsa_pkcs1(&[0xc3; 256], &[1, 0, 1]);
        assert_eq!(parse_spki(&rsa_spki(&pkcs1)), Some(PublicKey::Rsa(&pkcs1[..])));
        let ed = spki(ED25519_ALGORITHM, &[9; 32]);
        assert_eq!(parse_spki(&ed), Some(PublicKey::Ed25519(&[9; 32][..])));
        let mut trailing = rsa_spki(&pkcs1);
        trailing.push(0);
        assert_eq!(parse_spki(&trailing), None);
        let truncated = rsa_spki(&pkcs1);
        assert_eq!(parse_spki(&truncated[..truncated.len() - 1]), None);
        assert_eq!(parse_spki(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(parse_spki(&[]), None);
    }

    #[test]
    fn rsa_spki_has_the_expected_shape() {
        let der = rsa_spki(&rsa_pkcs1(&[0xc3; 256], &[1, 0, 1]));
        assert_eq!(&der[..4], &[0x30, 0x82, 0x01, 0x22]); // the familiar 2048-bit prefix
        assert_eq!(der.len(), 294);
    }
}
