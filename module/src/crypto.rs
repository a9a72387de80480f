//! RS256/384/512 and ES256/384 verified natively. The core hands these to a `HostCrypto`, as
//! Envoy's `verify_signature` arguments; the dynamic module runs inside Envoy's process and has
//! no such function to call, so it verifies them itself with aws-lc (Cargo.toml says why)
//! rather than leave them to RustCrypto, ~9× slower for RS256: RSA in `rsa.rs`, ECDSA through
//! aws-lc-rs.

use crate::rsa::{self, Hash};
use aws_lc_rs::signature::{ParsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1};
use jwtguard::der::{self, Curve, PublicKey};
use jwtguard::host_crypto::{self, HostCrypto};
use std::cell::RefCell;

/// Keys parsed on this thread, by SubjectPublicKeyInfo: parsing an RSA key (its Montgomery
/// constants) costs a good part of a verification, and a provider has few keys. Bounded, for
/// all of the thread's configurations together: when full, the oldest goes.
const PARSED_KEYS: usize = 64;

/// A key ready to verify with; `Refused` for an RSA key of a size that verifies nothing.
enum Parsed {
    Rsa(rsa::PublicKey),
    Ecdsa(Curve, ParsedPublicKey),
    Refused,
}

thread_local! {
    static PARSED: RefCell<Vec<(Vec<u8>, Parsed)>> = const { RefCell::new(Vec::new()) };
}

/// `verify_signature`, in process.
pub struct NativeCrypto;

impl HostCrypto for NativeCrypto {
    /// `Some(false)` for arguments the core never sends: undecodable, a key that is not RSA,
    /// P-256 or P-384, a hash the key's algorithm does not use. `None` for a key aws-lc refuses
    /// to parse, so that RustCrypto decides as it would without this module; the core loads no
    /// such key today (it refuses even RSA moduli and exponents, and points off the curve, as
    /// aws-lc does). RSA keys outside 2048–8192 bits verify as false; the core loads 2048–4096.
    fn verify_signature(&self, arguments: &[u8]) -> Option<bool> {
        let Some(args) = host_crypto::decode_arguments(arguments) else {
            return Some(false);
        };
        PARSED.with(|parsed| {
            let mut parsed = parsed.borrow_mut();
            let at = match parsed.iter().position(|(spki, _)| spki == args.public_key) {
                Some(at) => at,
                None => {
                    let key = match der::parse_spki(args.public_key) {
                        Some(key) => parse(key)?,
                        None => return Some(false),
                    };
                    if parsed.len() == PARSED_KEYS {
                        parsed.remove(0);
                    }
                    parsed.push((args.public_key.to_vec(), key));
                    parsed.len() - 1
                }
            };
            let (_, key) = parsed.get(at)?;
            Some(match (key, args.hash) {
                (Parsed::Rsa(key), b"sha256") => return key.verify(Hash::Sha256, args.text, args.signature),
                (Parsed::Rsa(key), b"sha384") => return key.verify(Hash::Sha384, args.text, args.signature),
                (Parsed::Rsa(key), b"sha512") => return key.verify(Hash::Sha512, args.text, args.signature),
                (Parsed::Ecdsa(Curve::P256, key), b"sha256") | (Parsed::Ecdsa(Curve::P384, key), b"sha384") => {
                    key.verify_sig(args.text, args.signature).is_ok()
                }
                _ => false,
            })
        })
    }
}

/// The key as aws-lc takes it; `None` for one it refuses (see `verify_signature`).
fn parse(key: PublicKey<'_>) -> Option<Parsed> {
    match key {
        PublicKey::Rsa(pkcs1) => Some(rsa::PublicKey::parse(pkcs1)?.map_or(Parsed::Refused, Parsed::Rsa)),
        PublicKey::Ec(curve, point) => {
            let algorithm = match curve {
                Curve::P256 => &ECDSA_P256_SHA256_ASN1,
                Curve::P384 => &ECDSA_P384_SHA384_ASN1,
            };
            Some(Parsed::Ecdsa(curve, ParsedPublicKey::new(algorithm, point).ok()?))
        }
        PublicKey::Ed25519(_) => Some(Parsed::Refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;
    use jwtguard::keys::{self, Key};
    use jwtguard::signature::{verify_with, Backend};
    use jwtguard::{config, jws};
    use jwtguard_demo::tokens::{decode, encode, KeyPair};
    use serde_json::{json, Value};

    fn load(jwk: &Value) -> Vec<Key> {
        let jwks = json!({ "keys": [jwk] }).to_string();
        keys::parse_jwks(&jwks, config::ALL_ALGORITHMS).expect("jwks").into_iter().map(|k| k.expect("key")).collect()
    }

    /// The verdict with this module's crypto, which must be the one that gave it, and whether
    /// RustCrypto agrees.
    fn native_and_agreed(key: &Key, alg: Algorithm, token: &str) -> (bool, bool) {
        let parsed = jws::parse(token).expect("token");
        let (native, backend) = verify_with(key, alg, &parsed, Some(&NativeCrypto));
        assert_eq!(backend, Backend::Host, "{alg:?}: NativeCrypto did not answer");
        let (rust, backend) = verify_with(key, alg, &parsed, None);
        assert_eq!(backend, Backend::Wasm);
        (native, native == rust)
    }

    #[test]
    fn passes_the_self_test() {
        assert!(host_crypto::self_test(&NativeCrypto));
    }

    #[test]
    fn agrees_with_rustcrypto_on_real_tokens() {
        let dir = jwtguard_demo::scratch_dir("native", "module-crypto");
        let claims = json!({"sub": "alice", "exp": 4_000_000_000u64});
        let other = encode(json!({"sub": "mallory", "exp": 4_000_000_000u64}).to_string().as_bytes());
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::ES256, Algorithm::ES384] {
            let pair = KeyPair::generate(&dir, alg, &format!("{alg:?}"));
            let key = &load(&pair.jwk())[0];
            let token = pair.sign(&claims);
            let (input, signature) = token.rsplit_once('.').expect("token");
            let header = input.split_once('.').expect("token").0;
            let mut changed = decode(signature);
            *changed.last_mut().expect("signature") ^= 1; // still in range, so it reaches the verifier
            let cases = [
                ("valid", token.clone(), true),
                ("other payload", format!("{header}.{other}.{signature}"), false),
                ("changed signature", format!("{input}.{}", encode(&changed)), false),
            ];
            for (name, token, expected) in cases {
                assert_eq!(native_and_agreed(key, alg, &token), (expected, true), "{alg:?}, {name}");
            }
        }
    }

    /// Arguments as the core builds them for `token`, signed by `pair`, asking for `hash`.
    fn arguments(pair: &KeyPair, token: &str, hash: &str) -> Vec<u8> {
        let key = &load(&pair.jwk())[0];
        let (input, signature) = token.rsplit_once('.').expect("token");
        let raw = decode(signature);
        let signature = match key.shape {
            jwtguard::canonical::Shape::Ec(curve) => der::ecdsa_signature(curve, &raw).expect("ecdsa"),
            _ => raw,
        };
        host_crypto::encode_arguments(key.host_key.as_deref().expect("host key"), hash, &signature, input.as_bytes())
    }

    #[test]
    fn the_hash_must_be_the_one_the_key_type_uses() {
        let dir = jwtguard_demo::scratch_dir("native", "module-crypto-hash");
        let claims = json!({"sub": "alice"});
        for (alg, right) in [(Algorithm::ES256, "sha256"), (Algorithm::ES384, "sha384"), (Algorithm::RS256, "sha256")] {
            let pair = KeyPair::generate(&dir, alg, &format!("{alg:?}"));
            let token = pair.sign(&claims);
            assert_eq!(NativeCrypto.verify_signature(&arguments(&pair, &token, right)), Some(true), "{alg:?}");
            for hash in ["sha256", "sha384", "sha512", "SHA256", "sha1", ""].into_iter().filter(|h| *h != right) {
                let args = arguments(&pair, &token, hash);
                assert_eq!(NativeCrypto.verify_signature(&args), Some(false), "{alg:?} with {hash:?}");
            }
        }
    }

    #[test]
    fn a_key_aws_lc_refuses_is_left_to_rustcrypto() {
        // Even exponents and moduli: the core loads no such key (the rsa crate refuses them too).
        for (n, e) in [([0xc3; 256], &[2][..]), ([0xc3; 256], &[1, 0, 0]), ([0xc2; 256], &[1, 0, 1])] {
            let spki = der::rsa_spki(&der::rsa_pkcs1(&n, e));
            let args = host_crypto::encode_arguments(&host_crypto::encode_key(&spki), "sha256", &[1; 256], b"t");
            assert_eq!(NativeCrypto.verify_signature(&args), None, "e = {e:?}, n ends in {:#x}", n[255]);
        }
    }

    #[test]
    fn rsa_keys_outside_what_the_core_loads_are_refused() {
        // The core loads 2048 to 4096 bits, inside aws-lc's 2048 to 8192.
        for (octets, loads) in [(255, false), (256, true), (512, true), (513, false)] {
            let n = [&[0xc3][..], &vec![0x35; octets - 1]].concat();
            let jwks = json!({"keys": [{"kty": "RSA", "n": encode(&n), "e": "AQAB"}]}).to_string();
            let loaded = keys::parse_jwks(&jwks, config::ALL_ALGORITHMS).expect("jwks").remove(0);
            assert_eq!(loaded.is_ok(), loads, "{} bits", octets * 8);
        }
        let small = der::rsa_spki(&der::rsa_pkcs1(&[0xc3; 128], &[1, 0, 1]));
        let args = host_crypto::encode_arguments(&host_crypto::encode_key(&small), "sha256", &[1; 128], b"t");
        assert_eq!(NativeCrypto.verify_signature(&args), Some(false), "1024 bits");
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        for args in [&[][..], &[0xff; 12], &[0x12, 0x05, 1], b"not protobuf at all"] {
            assert_eq!(NativeCrypto.verify_signature(args), Some(false), "{args:?}");
        }
        // Every octet of valid arguments changed in four ways: never valid, never a panic.
        let dir = jwtguard_demo::scratch_dir("native", "module-crypto-garbage");
        for alg in [Algorithm::RS256, Algorithm::ES256] {
            let pair = KeyPair::generate(&dir, alg, &format!("{alg:?}"));
            let good = arguments(&pair, &pair.sign(&json!({"sub": "alice"})), "sha256");
            assert_eq!(NativeCrypto.verify_signature(&good), Some(true));
            for i in 0..good.len() {
                for change in [|b: u8| b ^ 1, |b: u8| b ^ 0x80, |_| 0, |_| 0xff] {
                    let mut bytes = good.clone();
                    bytes[i] = change(bytes[i]);
                    if bytes != good {
                        assert_ne!(NativeCrypto.verify_signature(&bytes), Some(true), "{alg:?}, octet {i}");
                    }
                }
            }
        }
    }

    /// RSA signatures of encoded messages that differ from RFC 8017's in one way each (made with
    /// the private key and no padding): only the exact encoding verifies, natively and in
    /// RustCrypto. These are the forgeries lax PKCS#1 v1.5 parsers have let through.
    #[test]
    fn rsa_accepts_only_the_exact_encoded_message() {
        let dir = jwtguard_demo::scratch_dir("native", "module-crypto-padding");
        let pair = KeyPair::generate(&dir, Algorithm::RS256, "rs");
        let key = &load(&pair.jwk())[0];
        let input = format!("{}.{}", encode(br#"{"alg":"RS256"}"#), encode(br#"{"sub":"alice"}"#));
        let hash = {
            let out = std::process::Command::new("openssl")
                .args(["dgst", "-sha256", "-binary"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write;
                    child.stdin.take().expect("stdin").write_all(input.as_bytes())?;
                    child.wait_with_output()
                })
                .expect("openssl dgst");
            out.stdout
        };
        let sha256 =
            [0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00];
        let info = |prefix: &[u8], hash: &[u8]| [prefix, &[0x04, hash.len() as u8], hash].concat();
        // 0x00 0x01 ff…ff 0x00 T, 256 octets, with `block`, `fill` and `t` as given.
        let em = |block: u8, fill: u8, t: &[u8]| {
            let mut em = vec![0, block];
            em.resize(256 - t.len() - 1, fill);
            em.push(0);
            em.extend_from_slice(t);
            em
        };
        let right = info(&sha256, &hash);
        let no_null = [&[0x30, 0x2f, 0x30, 0x0b][..], &sha256[4..15], &[0x04, 0x20], &hash].concat();
        let long_length = [&[0x30, 0x81, 0x31][..], &sha256[2..], &[0x04, 0x20], &hash].concat();
        let sha384_oid = [&sha256[..14], &[0x02], &sha256[15..]].concat();
        let mut one_fe = em(1, 0xff, &right);
        one_fe[100] = 0xfe;
        let cases = [
            ("the RFC's encoding", em(1, 0xff, &right), true),
            ("block type 2", em(2, 0xff, &right), false),
            ("a 0xfe in the padding", one_fe, false),
            ("DigestInfo without the NULL parameters", em(1, 0xff, &no_null), false),
            ("DigestInfo's length in long form", em(1, 0xff, &long_length), false),
            ("the hash as an OCTET STRING, no DigestInfo", em(1, 0xff, &[&[0x04, 0x20][..], &hash].concat()), false),
            ("the hash alone", em(1, 0xff, &hash), false),
            ("SHA-384's identifier", em(1, 0xff, &info(&sha384_oid, &hash)), false),
            ("octets after the hash", em(1, 0xff, &[right.as_slice(), &[0; 8]].concat()), false),
            ("another hash", em(1, 0xff, &info(&sha256, &[0x5a; 32])), false),
        ];
        let mut good = Vec::new();
        for (name, em, expected) in cases {
            assert_eq!(em.len(), 256, "{name}");
            let raw = dir.join("em.bin");
            std::fs::write(&raw, &em).expect("write");
            let key_file = dir.join("rs.pem");
            let out = std::process::Command::new("openssl")
                .args(["rsautl", "-sign", "-raw", "-inkey"]) // OpenSSL 3.0's pkeyutl takes only a hash's length
                .arg(&key_file)
                .arg("-in")
                .arg(&raw)
                .output()
                .expect("openssl rsautl");
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
            let token = format!("{input}.{}", encode(&out.stdout));
            let parsed = jws::parse(&token).expect("token");
            let (native, backend) = verify_with(key, Algorithm::RS256, &parsed, Some(&NativeCrypto));
            assert_eq!((native, backend), (expected, Backend::Host), "{name}");
            assert_eq!(verify_with(key, Algorithm::RS256, &parsed, None).0, expected, "{name}, RustCrypto");
            if expected {
                good = out.stdout;
            }
        }
        // Straight to this module's crypto, past the core's range check (`canonical`): the same
        // number in another length, and numbers not below the modulus.
        let n = decode(pair.jwk()["n"].as_str().expect("n"));
        let mut n_plus_one = n.clone();
        for octet in n_plus_one.iter_mut().rev() {
            let (sum, carry) = octet.overflowing_add(1);
            *octet = sum;
            if !carry {
                break;
            }
        }
        let host_key = key.host_key.as_deref().expect("host key");
        let native = |input: &str, signature: &[u8]| {
            NativeCrypto.verify_signature(&host_crypto::encode_arguments(
                host_key,
                "sha256",
                signature,
                input.as_bytes(),
            ))
        };
        assert_eq!(native(&input, &good), Some(true));
        for (name, signature) in [
            ("a leading zero octet more", [&[0][..], &good].concat()),
            ("s = n", n),
            ("s = n + 1", n_plus_one),
            ("all ones", vec![0xff; 256]),
        ] {
            assert_eq!(native(&input, &signature), Some(false), "{name}");
        }
        // A valid signature whose first octet is zero (one in 256): without it, the same number
        // in one octet less.
        let (input, zero_first) = (0..5000)
            .find_map(|i| {
                let token = pair.sign(&json!({ "sub": "alice", "i": i }));
                let (input, signature) = token.rsplit_once('.').expect("token");
                let signature = decode(signature);
                (signature[0] == 0).then(|| (input.to_string(), signature))
            })
            .expect("a signature that starts with 0");
        assert_eq!(native(&input, &zero_first), Some(true));
        assert_eq!(native(&input, &zero_first[1..]), Some(false), "the first octet less");
    }

    /// Wycheproof's RS* and ES* JWS vectors (tests/wycheproof.rs checks RustCrypto's verdicts
    /// against theirs): this module's crypto must give RustCrypto's verdict on each.
    #[test]
    fn agrees_with_rustcrypto_on_wycheproof() {
        let path = jwtguard_demo::repo_root().join("tests/vectors/wycheproof/json_web_signature_test.json");
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json");
        let (mut native, mut valid) = (0, 0);
        for group in doc["testGroups"].as_array().expect("groups") {
            let Some(public) = group.get("public").filter(|k| k["kty"] == "RSA" || k["kty"] == "EC") else {
                continue;
            };
            let jwks = json!({ "keys": [public] }).to_string();
            let keys: Vec<Key> = keys::parse_jwks(&jwks, config::ALL_ALGORITHMS)
                .expect("jwks")
                .into_iter()
                .filter_map(Result::ok)
                .collect();
            for test in group["tests"].as_array().expect("tests") {
                let Ok(parsed) = jws::parse(test["jws"].as_str().unwrap_or("")) else {
                    continue;
                };
                let Ok(alg) = parsed.alg.parse::<Algorithm>() else {
                    continue;
                };
                for key in keys.iter().filter(|k| k.fits(alg, parsed.kid.as_deref())) {
                    let with = verify_with(key, alg, &parsed, Some(&NativeCrypto));
                    let without = verify_with(key, alg, &parsed, None);
                    assert_eq!(with.0, without.0, "tcId {}", test["tcId"]);
                    native += usize::from(with.1 == Backend::Host);
                    valid += usize::from(with.1 == Backend::Host && with.0);
                }
            }
        }
        assert_eq!((native, valid), (261, 18), "verified natively, and of those valid");
    }
}
