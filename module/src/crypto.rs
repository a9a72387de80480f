//! RS256/384/512 and ES256/384 verified natively. The core hands these to a `HostCrypto`, as
//! Envoy's `verify_signature` arguments; the dynamic module runs inside Envoy's process and has
//! no such function to call, so it verifies them itself with aws-lc-rs (Cargo.toml says why)
//! rather than leave them to RustCrypto, ~9× slower for RS256.

use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};
use jwtguard::der::{self, Curve, PublicKey};
use jwtguard::host_crypto::{self, Arguments, HostCrypto};
use std::cell::RefCell;

/// Keys parsed on this thread, by SubjectPublicKeyInfo and algorithm: parsing an RSA key (its
/// Montgomery constants) costs a good part of a verification, and a provider has few keys.
/// Bounded: emptied when full, as after rotations.
const PARSED_KEYS: usize = 32;

type Parsed = (Vec<u8>, &'static dyn VerificationAlgorithm, ParsedPublicKey);

thread_local! {
    static PARSED: RefCell<Vec<Parsed>> = const { RefCell::new(Vec::new()) };
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
        let Some((algorithm, key)) = algorithm(&args) else {
            return Some(false);
        };
        PARSED.with(|parsed| {
            let mut parsed = parsed.borrow_mut();
            let same = |(spki, alg, _): &Parsed| spki == args.public_key && std::ptr::addr_eq(*alg, algorithm);
            let at = match parsed.iter().position(same) {
                Some(at) => at,
                None => {
                    let key = ParsedPublicKey::new(algorithm, key).ok()?;
                    if parsed.len() == PARSED_KEYS {
                        parsed.clear();
                    }
                    parsed.push((args.public_key.to_vec(), algorithm, key));
                    parsed.len() - 1
                }
            };
            parsed.get(at).map(|(_, _, key)| key.verify_sig(args.text, args.signature).is_ok())
        })
    }
}

/// The algorithm that fits both the key's type and the hash asked for, and the key as aws-lc
/// takes it: PKCS#1 `RSAPublicKey` or an uncompressed point.
fn algorithm<'a>(args: &Arguments<'a>) -> Option<(&'static dyn VerificationAlgorithm, &'a [u8])> {
    use signature::*;
    match (der::parse_spki(args.public_key)?, args.hash) {
        (PublicKey::Rsa(pkcs1), b"sha256") => Some((&RSA_PKCS1_2048_8192_SHA256, pkcs1)),
        (PublicKey::Rsa(pkcs1), b"sha384") => Some((&RSA_PKCS1_2048_8192_SHA384, pkcs1)),
        (PublicKey::Rsa(pkcs1), b"sha512") => Some((&RSA_PKCS1_2048_8192_SHA512, pkcs1)),
        (PublicKey::Ec(Curve::P256, point), b"sha256") => Some((&ECDSA_P256_SHA256_ASN1, point)),
        (PublicKey::Ec(Curve::P384, point), b"sha384") => Some((&ECDSA_P384_SHA384_ASN1, point)),
        _ => None,
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
