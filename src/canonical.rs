//! Canonical signatures: each algorithm's signature must be in range and in its one encoding
//! before either crypto backend sees it, so a token has exactly one valid signature string
//! (our verified-token cache, replay ids and logs are keyed on the token text) and the host and
//! wasm paths cannot disagree about an out-of-range value.
//!
//! - RSA (RS*, PS*): exactly k octets and `s < n` (RFC 8017 §5.2.2 RSAVP1 step 1, §8.1.2 step 1).
//! - ECDSA (ES*): raw `r ‖ s`, each exactly the curve's length, `0 < r, s < n` (RFC 7518 §3.4,
//!   SEC 1 §4.1.4 step 1).
//! - EdDSA (Ed25519): 64 octets, `S < L` and `R`'s y-coordinate below p, with no "negative zero"
//!   x (RFC 8032 §5.1.7 step 1).
//! - HMAC: exactly the hash's length (RFC 7518 §3.2).
//!
//! ECDSA's (r, n − s) twin stays valid: JWS does not require low-s and issuers produce both.

use crate::der::Curve;
use jsonwebtoken::Algorithm;

/// What the range checks need to know about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// The RSA modulus, big-endian, without leading zero octets.
    Rsa {
        modulus: Vec<u8>,
    },
    Ec(Curve),
    Ed25519,
    Hmac,
}

/// The order n of P-256's base point, big-endian (SEC 2 §2.4.2).
const P256_ORDER: [u8; 32] = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
/// The order n of P-384's base point, big-endian (SEC 2 §2.5.1).
const P384_ORDER: [u8; 48] =
    hex("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973");
/// Ed25519's group order L = 2^252 + 27742317777372353535851937790883648493, big-endian.
const ED25519_ORDER: [u8; 32] = hex("1000000000000000000000000000000014def9dea2f79cd65812631a5cf5d3ed");
/// Ed25519's field prime p = 2^255 − 19, big-endian.
const ED25519_PRIME: [u8; 32] = hex("7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffed");

/// Whether `signature` is in the one canonical form `alg` allows for a key of this shape.
/// An algorithm the shape cannot serve is never canonical.
pub fn is_canonical(shape: &Shape, alg: Algorithm, signature: &[u8]) -> bool {
    use Algorithm::*;
    match (shape, alg) {
        (Shape::Rsa { modulus }, RS256 | RS384 | RS512 | PS256 | PS384 | PS512) => {
            // Equal lengths, so comparing the octet strings compares the integers.
            signature.len() == modulus.len() && signature < modulus.as_slice()
        }
        (Shape::Ec(Curve::P256), ES256) => ecdsa_in_range(signature, &P256_ORDER),
        (Shape::Ec(Curve::P384), ES384) => ecdsa_in_range(signature, &P384_ORDER),
        (Shape::Ed25519, EdDSA) => eddsa_canonical(signature),
        (Shape::Hmac, HS256) => signature.len() == 32,
        (Shape::Hmac, HS384) => signature.len() == 48,
        (Shape::Hmac, HS512) => signature.len() == 64,
        _ => false,
    }
}

fn ecdsa_in_range(signature: &[u8], order: &[u8]) -> bool {
    let n = order.len();
    if signature.len() != 2 * n {
        return false;
    }
    let (r, s) = signature.split_at(n);
    let in_range = |v: &[u8]| v.iter().any(|b| *b != 0) && v < order;
    in_range(r) && in_range(s)
}

fn eddsa_canonical(signature: &[u8]) -> bool {
    if signature.len() != 64 {
        return false;
    }
    let (r, s) = signature.split_at(32);
    // Both halves are little-endian; reverse to compare as big-endian integers.
    let big_endian = |le: &[u8]| -> [u8; 32] {
        let mut be = [0u8; 32];
        for (dst, src) in be.iter_mut().zip(le.iter().rev()) {
            *dst = *src;
        }
        be
    };
    let s = big_endian(s);
    let mut y = big_endian(r);
    let x_sign = y[0] & 0x80 != 0;
    y[0] &= 0x7f;
    // y = 1 and y = p − 1 are the points with x = 0, which has no negative.
    let mut one = [0u8; 32];
    one[31] = 1;
    let mut minus_one = ED25519_PRIME;
    minus_one[31] -= 1;
    let negative_zero = x_sign && (y == one || y == minus_one);
    s < ED25519_ORDER && y < ED25519_PRIME && !negative_zero
}

const fn hex_digit(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("not a lowercase hex digit"),
    }
}

/// Hex to bytes at compile time (only ever evaluated in the constants above).
const fn hex<const N: usize>(s: &str) -> [u8; N] {
    let b = s.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = hex_digit(b[2 * i]) << 4 | hex_digit(b[2 * i + 1]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constants are the curves' own, as the crates that implement them define them.
    #[test]
    fn orders_match_the_curve_implementations() {
        use p256::elliptic_curve::PrimeField;
        let below = |order: &[u8]| {
            let mut v = order.to_vec();
            v[order.len() - 1] -= 1;
            v
        };
        let p256_scalar =
            |b: &[u8]| bool::from(p256::Scalar::from_repr(<[u8; 32]>::try_from(b).unwrap().into()).is_some());
        assert!(!p256_scalar(&P256_ORDER) && p256_scalar(&below(&P256_ORDER)));
        let p384_scalar =
            |b: &[u8]| bool::from(p384::Scalar::from_repr(<[u8; 48]>::try_from(b).unwrap().into()).is_some());
        assert!(!p384_scalar(&P384_ORDER) && p384_scalar(&below(&P384_ORDER)));
        let one = rsa::BigUint::from(1u32);
        let l = (&one << 252usize) + "27742317777372353535851937790883648493".parse::<rsa::BigUint>().unwrap();
        assert_eq!(l.to_bytes_be(), ED25519_ORDER);
        let p = (&one << 255usize) - rsa::BigUint::from(19u32);
        assert_eq!(p.to_bytes_be(), ED25519_PRIME);
    }

    #[test]
    fn ed25519_r_must_be_canonical() {
        let s_ok = [0u8; 32];
        let sig = |r: [u8; 32]| [&r[..], &s_ok[..]].concat();
        let le = |be: [u8; 32]| {
            let mut v = be;
            v.reverse();
            v
        };
        let mut y_is_p = le(ED25519_PRIME);
        assert!(!is_canonical(&Shape::Ed25519, Algorithm::EdDSA, &sig(y_is_p)), "y = p");
        y_is_p[0] -= 1; // y = p − 1: canonical with a positive x…
        assert!(is_canonical(&Shape::Ed25519, Algorithm::EdDSA, &sig(y_is_p)));
        y_is_p[31] |= 0x80; // …but x = 0 has no negative
        assert!(!is_canonical(&Shape::Ed25519, Algorithm::EdDSA, &sig(y_is_p)), "negative zero");
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(is_canonical(&Shape::Ed25519, Algorithm::EdDSA, &sig(one)));
        one[31] |= 0x80;
        assert!(!is_canonical(&Shape::Ed25519, Algorithm::EdDSA, &sig(one)), "negative zero at y = 1");
    }

    #[test]
    fn a_shape_never_serves_another_family() {
        let rsa = Shape::Rsa { modulus: vec![0xff; 256] };
        assert!(is_canonical(&rsa, Algorithm::PS256, &[0x01; 256]));
        for (shape, alg, len) in [
            (&rsa, Algorithm::ES256, 64),
            (&Shape::Hmac, Algorithm::RS256, 256),
            (&Shape::Ec(Curve::P256), Algorithm::ES384, 96),
            (&Shape::Ed25519, Algorithm::HS512, 64),
        ] {
            assert!(!is_canonical(shape, alg, &vec![1u8; len]), "{shape:?} {alg:?}");
        }
    }
}
