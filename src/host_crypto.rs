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
/// (A public key and a signature made for this purpose; the private key was not kept.)
const SELF_TEST_KEY: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAx0LzBoDGG1oTxOQswPLjVLCYYe7MQm5rDtVGXERctkHZbL8JI/jS/CtaT0jw/WUCZd6ly0Z83JI20SOoJsvkarkGrac92Z7CQrG92VTnF28sSh70764gIFsKgB45H/CPmRTEgY9e8z85TlCpLVp4VuvqU9BhmMk2uKEPhfG3TX3u/lWPzczW5OA2sLmjftYog0WMuRP9WpqiZIUw0MCA1UpwiuADiCl1CIpj9010NHSmlYQE094wK9AFwweqVI8k/YJUEsd86oatXTYIZ/EeRe74mTMH/vNMufv2zph2LDYgd5wNfwYbE/T6v8Ls3CuR7ZCaqzbm0YoxZPQMxvqgrwIDAQAB";
const SELF_TEST_SIGNATURE: &str = "Aj9V5DhDGQF9NKfBOGfDql5d84FduXsz8EBR7HEO+3UyxVkOjxLDR6J6ASfSAvbUoBUWoMQ5UXh95vEmf5TIAPkoQsJiI3KuAYMDhuBF62Bi/6t3c/qcsSUJmKlZ/hZ5mgEnMpYLzJPUNVa/Kk49gG6+uxuKL8ERdmgf2VYwe6CP4rXfnSGMVLqXZdxoTMXNMXRpSf3qSauWYn9tUHALAOPV/lelXGZqKyxPCWCGfuQSXWVZ34HkRms0/s4I6JaAulBa1SryIFBnyrCakQt1bSkYMX+jy1/K4OSAomjVygZPrL96gDo0lAkjeu6dleGD5PhUYVmsVtg4IJLcF4Q88A==";
const SELF_TEST_TEXT: &[u8] = b"jwtguard host crypto self-test";

/// Whether `host` verifies RS256 correctly: a good signature passes and a bad one fails.
pub fn self_test(host: &dyn HostCrypto) -> bool {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let (Ok(key), Ok(signature)) = (STANDARD.decode(SELF_TEST_KEY), STANDARD.decode(SELF_TEST_SIGNATURE)) else {
        return false;
    };
    let key = encode_key(&key);
    let good = encode_arguments(&key, "sha256", &signature, SELF_TEST_TEXT);
    let bad = encode_arguments(&key, "sha256", &signature, b"something else");
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
            let mut fields = std::collections::HashMap::new();
            let mut pos = 0;
            while pos < args.len() {
                let tag = read_varint(args, &mut pos)?;
                let len = read_varint(args, &mut pos)? as usize;
                fields.insert(tag >> 3, args.get(pos..pos + len)?.to_vec());
                pos += len;
            }
            let key = rsa::RsaPublicKey::from_public_key_der(&fields[&2]).ok()?;
            assert_eq!(fields[&1], b"sha256");
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&fields[&4]);
            Some(key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, &fields[&3]).is_ok())
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
}
