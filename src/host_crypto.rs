//! Envoy's `verify_signature` foreign function: the protobuf encoding of its arguments and result.
//!
//! `VerifySignatureArguments { 1: hash_function, 2: public_key (DER SPKI), 3: signature, 4: text }`
//! and `VerifySignatureResult { 1: bool result, 2: string error }`. An invalid signature comes
//! back as a result of `false`, not as an error status.

/// Envoy's foreign function, behind a trait so the verification path is tested natively.
pub trait HostCrypto {
    /// `Some(valid)` when the host answered, `None` when the call itself failed.
    fn verify_signature(&self, arguments: &[u8]) -> Option<bool>;
}

/// Name of the foreign function in Envoy.
pub const FUNCTION: &str = "verify_signature";

/// A known-answer test run once at start: the host must accept this RS256 signature and refuse
/// it for other text. Only then is it trusted; otherwise every verification stays in wasm.
/// (A public key, DER SPKI, and a signature made for this purpose; the private key was not
/// kept. Binary files rather than base64 text: the wasm build is size-bound.)
const SELF_TEST_KEY: &[u8] = include_bytes!("host_crypto/self_test_key.der");
const SELF_TEST_SIGNATURE: &[u8] = include_bytes!("host_crypto/self_test_signature.bin");
const SELF_TEST_TEXT: &[u8] = b"jwtguard host crypto self-test";

/// Whether `host` verifies RS256 correctly: a good signature passes and a bad one fails.
pub fn self_test(host: &dyn HostCrypto) -> bool {
    let key = encode_key(SELF_TEST_KEY);
    let good = encode_arguments(&key, "sha256", SELF_TEST_SIGNATURE, SELF_TEST_TEXT);
    let bad = encode_arguments(&key, "sha256", SELF_TEST_SIGNATURE, b"something else");
    host.verify_signature(&good) == Some(true) && host.verify_signature(&bad) == Some(false)
}

fn push_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn push_bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(field << 3 | 2);
    push_varint(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// The `public_key` field, encoded once per key and reused as the prefix of every call.
pub fn encode_key(spki: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spki.len() + 4);
    push_bytes_field(&mut out, 2, spki);
    out
}

/// Complete arguments: the prepared key field, then hash, signature and signed text.
pub fn encode_arguments(key_field: &[u8], hash: &str, signature: &[u8], text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key_field.len() + hash.len() + signature.len() + text.len() + 16);
    out.extend_from_slice(key_field);
    push_bytes_field(&mut out, 1, hash.as_bytes());
    push_bytes_field(&mut out, 3, signature);
    push_bytes_field(&mut out, 4, text);
    out
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// `VerifySignatureArguments` decoded, borrowing from the encoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arguments<'a> {
    pub hash: &'a [u8],
    pub public_key: &'a [u8],
    pub signature: &'a [u8],
    pub text: &'a [u8],
}

/// Decodes `VerifySignatureArguments`, for a native stand-in for Envoy's function. Strict: a
/// known field that repeats or is not length-delimited, a group, field number 0, or a length past
/// the end gives `None`; unknown fields are skipped and an absent field is empty (proto3).
pub fn decode_arguments(bytes: &[u8]) -> Option<Arguments<'_>> {
    let mut fields: [Option<&[u8]>; 4] = [None; 4];
    let mut pos = 0;
    while pos < bytes.len() {
        let tag = read_varint(bytes, &mut pos)?;
        let (field, wire_type) = (tag >> 3, tag & 7);
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return None;
        }
        let known = (1..=4).contains(&field);
        match wire_type {
            2 => {
                let len = usize::try_from(read_varint(bytes, &mut pos)?).ok()?;
                let value = bytes.get(pos..pos.checked_add(len)?)?;
                pos += len;
                if known && fields[field as usize - 1].replace(value).is_some() {
                    return None;
                }
            }
            _ if known => return None,
            0 => {
                read_varint(bytes, &mut pos)?;
            }
            1 | 5 => {
                let width = if wire_type == 1 { 8 } else { 4 };
                pos = pos.checked_add(width).filter(|end| *end <= bytes.len())?;
            }
            _ => return None,
        }
    }
    let [hash, public_key, signature, text] = fields.map(Option::unwrap_or_default);
    Some(Arguments { hash, public_key, signature, text })
}

/// Reads `VerifySignatureResult.result`; absent means false (proto3 default). `None` if the
/// bytes do not parse, which the caller treats as the host being unusable for this call.
pub fn decode_result(bytes: &[u8]) -> Option<bool> {
    let mut pos = 0;
    let mut result = false;
    while pos < bytes.len() {
        let tag = read_varint(bytes, &mut pos)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => result = read_varint(bytes, &mut pos)? != 0,
            (_, 0) => {
                read_varint(bytes, &mut pos)?;
            }
            (_, 2) => {
                let len = usize::try_from(read_varint(bytes, &mut pos)?).ok()?;
                pos = pos.checked_add(len).filter(|end| *end <= bytes.len())?;
            }
            _ => return None,
        }
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_length_delimited_fields() {
        let key = encode_key(&[0xaa; 200]);
        assert_eq!(&key[..3], &[0x12, 0xc8, 0x01]); // field 2, varint 200
        let args = encode_arguments(&key, "sha256", b"s", b"t");
        assert_eq!(&args[key.len()..], &[0x0a, 6, b's', b'h', b'a', b'2', b'5', b'6', 0x1a, 1, b's', 0x22, 1, b't']);
    }

    /// Stands in for Envoy with RustCrypto, decoding the arguments this module encodes.
    struct SoftHost;
    impl HostCrypto for SoftHost {
        fn verify_signature(&self, args: &[u8]) -> Option<bool> {
            use rsa::pkcs8::DecodePublicKey;
            let args = decode_arguments(args)?;
            let key = rsa::RsaPublicKey::from_public_key_der(args.public_key).ok()?;
            assert_eq!(args.hash, b"sha256");
            let digest = <sha2::Sha256 as sha2::Digest>::digest(args.text);
            Some(key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, args.signature).is_ok())
        }
    }

    struct BrokenHost(Option<bool>);
    impl HostCrypto for BrokenHost {
        fn verify_signature(&self, _: &[u8]) -> Option<bool> {
            self.0
        }
    }

    #[test]
    fn self_test_passes_on_a_correct_host_only() {
        assert!(self_test(&SoftHost));
        assert!(!self_test(&BrokenHost(Some(true))), "a host that accepts everything");
        assert!(!self_test(&BrokenHost(Some(false))));
        assert!(!self_test(&BrokenHost(None)), "a host without the function");
    }

    #[test]
    fn results_decode() {
        assert_eq!(decode_result(&[0x08, 0x01]), Some(true));
        assert_eq!(decode_result(&[0x08, 0x00]), Some(false));
        assert_eq!(decode_result(&[]), Some(false));
        assert_eq!(decode_result(&[0x12, 0x03, b'b', b'a', b'd']), Some(false));
        assert_eq!(decode_result(&[0x12, 0x09, b'x']), None, "length past the end");
        assert_eq!(decode_result(&[0x08]), None, "truncated varint");
        assert_eq!(decode_result(&[0x0d, 0, 0, 0, 0]), None, "fixed32 is not in this message");
        assert_eq!(decode_result(&[0xff; 12]), None);
    }

    fn arguments<'a>(hash: &'a [u8], public_key: &'a [u8], signature: &'a [u8], text: &'a [u8]) -> Arguments<'a> {
        Arguments { hash, public_key, signature, text }
    }

    #[test]
    fn arguments_round_trip() {
        let args = encode_arguments(&encode_key(&[0x30; 300]), "sha384", &[7; 256], b"a.b");
        assert_eq!(decode_arguments(&args), Some(arguments(b"sha384", &[0x30; 300], &[7; 256], b"a.b")));
        let empty = Some(arguments(b"", b"", b"", b""));
        assert_eq!(decode_arguments(&encode_arguments(&encode_key(b""), "", b"", b"")), empty);
        assert_eq!(decode_arguments(&[]), empty, "absent fields are empty (proto3)");
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut args = vec![0x28, 0x96, 0x01]; // field 5, varint 150
        args.extend([0x31, 1, 2, 3, 4, 5, 6, 7, 8]); // field 6, fixed64
        args.extend([0x3d, 1, 2, 3, 4]); // field 7, fixed32
        args.extend([0x42, 2, b'x', b'y']); // field 8, bytes
        args.extend([0xf8, 0xff, 0xff, 0xff, 0x0f, 0]); // field 2^29 - 1 (the largest), varint 0
        args.extend(encode_arguments(&encode_key(b"k"), "sha256", b"s", b"t"));
        assert_eq!(decode_arguments(&args), Some(arguments(b"sha256", b"k", b"s", b"t")));
    }

    #[test]
    fn malformed_arguments_are_refused() {
        let good = encode_arguments(&encode_key(b"k"), "sha256", b"s", b"t");
        let cases: &[(&[u8], &str)] = &[
            (&[0x12, 0x05, b'k'], "length past the end"),
            (&[0x12], "no length"),
            (&[0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], "length 2^64 - 1"),
            (&[0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], "an 11-byte varint"),
            (&[0x08, 0x01], "a known field as a varint"),
            (&[0x0d, 0, 0, 0, 0], "a known field as fixed32"),
            (&[0x2b], "start group"),
            (&[0x2c], "end group"),
            (&[0x2e], "wire type 6"),
            (&[0x02, 0], "field 0"),
            (&[0x80, 0x80, 0x80, 0x80, 0x10, 0], "field 2^29"),
            (&[0x29, 1, 2, 3], "fixed64 past the end"),
            (&[0x2d, 1, 2, 3], "fixed32 past the end"),
        ];
        for (bytes, why) in cases {
            assert_eq!(decode_arguments(bytes), None, "{why}");
        }
        let twice = [&good[..], &encode_key(b"other")].concat();
        assert_eq!(decode_arguments(&twice), None, "public_key twice");
        for cut in 0..good.len() {
            assert_ne!(decode_arguments(&good[..cut]), decode_arguments(&good), "cut at {cut}");
        }
    }

    #[test]
    fn hostile_arguments_never_panic() {
        // Every single-byte change of a valid message, then pseudo-random bytes (xorshift).
        let good = encode_arguments(&encode_key(&[0x30; 130]), "sha256", &[1; 20], b"t");
        for i in 0..good.len() {
            for b in 0..=255 {
                let mut bytes = good.clone();
                bytes[i] = b;
                let _ = decode_arguments(&bytes);
            }
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let bytes: Vec<u8> = (0..state % 48)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = decode_arguments(&bytes);
            state = state.wrapping_add(1);
        }
    }
}
