//! Every algorithm's signature is refused out of range or out of its one encoding (RFC 8017
//! s < n, ECDSA 0 < r, s < n, Ed25519 S < L, exact lengths), on the wasm path and before the
//! host is ever asked. Envoy's own verdicts on the same tokens: filter_e2e's crypto test.

use jsonwebtoken::{Algorithm, EncodingKey};
use jwtguard::host_crypto::HostCrypto;
use jwtguard::{jws, keys, signature};
use jwtguard_demo::tokens::{noncanonical_signatures, sign_raw, KeyPair};
use serde_json::{json, Value};
use std::cell::Cell;

/// A host that says yes to everything and counts what it was asked: a signature refused while
/// this host is in use was refused before the host saw it.
#[derive(Default)]
struct CredulousHost {
    calls: Cell<u32>,
}

impl HostCrypto for CredulousHost {
    fn verify_signature(&self, _arguments: &[u8]) -> Option<bool> {
        self.calls.set(self.calls.get() + 1);
        Some(true)
    }
}

const HS_SECRET: &[u8] = b"a-secret-of-sixty-four-bytes-so-it-can-serve-hs512-as-well-ok!!!";

fn accepted(keys: &[keys::Key], token: &str, host: Option<&dyn HostCrypto>) -> bool {
    jws::parse(token).is_ok_and(|parsed| signature::verify(keys, &parsed, host).valid)
}

#[test]
fn out_of_range_and_noncanonical_signatures_are_refused_on_both_paths() {
    let dir = jwtguard_demo::scratch_dir("native", "canonical");
    let payload = json!({"sub": "alice", "exp": 4_000_000_000u64}).to_string();
    let mut cases: Vec<(Algorithm, Vec<keys::Key>, EncodingKey, Value)> = Vec::new();
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA] {
        let pair = KeyPair::generate(&dir, alg, &format!("{alg:?}"));
        let mut jwk = pair.jwk();
        jwk.as_object_mut().expect("jwk").remove("alg");
        let jwks = json!({ "keys": [jwk] }).to_string();
        let loaded: Vec<keys::Key> = keys::parse_jwks(&jwks, jwtguard::config::ALL_ALGORITHMS)
            .expect("jwks")
            .into_iter()
            .map(|k| k.expect("key"))
            .collect();
        // The RSA key also serves PSS and the longer hashes; each gets its own variants.
        let algs: &[Algorithm] = match alg {
            Algorithm::RS256 => &[Algorithm::RS256, Algorithm::RS512, Algorithm::PS256, Algorithm::PS512],
            _ => std::slice::from_ref(&alg),
        };
        for a in algs {
            cases.push((*a, loaded.clone(), pair.encoding_key(), jwk.clone()));
        }
    }
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let key = keys::from_secret(HS_SECRET, None, None, &[alg]).expect("secret");
        cases.push((alg, vec![key], EncodingKey::from_secret(HS_SECRET), Value::Null));
    }

    let mut checked = 0;
    for (alg, keys, encoding, jwk) in &cases {
        let header = json!({"alg": jwtguard_demo::tokens::alg_name(*alg)}).to_string();
        let token = sign_raw(&header, &payload, encoding, *alg);
        assert!(accepted(keys, &token, None), "{alg:?}: the valid signature");
        let variants = noncanonical_signatures(*alg, jwk, &token);
        assert!(variants.len() >= 2, "{alg:?}: too few variants");
        for (name, bad) in variants {
            assert!(!accepted(keys, &bad, None), "{name}: accepted in wasm");
            let host = CredulousHost::default();
            assert!(!accepted(keys, &bad, Some(&host)), "{name}: accepted with a host");
            assert_eq!(host.calls.get(), 0, "{name}: reached the host");
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} variants");
}

/// ECDSA's (r, n − s) twin is a valid signature of the same text: JWS does not require low-s,
/// and issuers produce both, so it is accepted (docs/security.md says so). Pinned here so a
/// change of mind is deliberate.
#[test]
fn ecdsa_high_s_twin_is_accepted() {
    let dir = jwtguard_demo::scratch_dir("native", "canonical-twin");
    let pair = KeyPair::generate(&dir, Algorithm::ES256, "ec");
    let jwks = json!({ "keys": [pair.jwk()] }).to_string();
    let loaded: Vec<keys::Key> = keys::parse_jwks(&jwks, jwtguard::config::ALL_ALGORITHMS)
        .expect("jwks")
        .into_iter()
        .map(|k| k.expect("key"))
        .collect();
    let token = pair.sign(&json!({"sub": "alice"}));
    let (input, sig) = token.rsplit_once('.').expect("token");
    let sig = jwtguard_demo::tokens::decode(sig);
    let parsed = p256::ecdsa::Signature::from_slice(&sig).expect("signature");
    let (r, s) = parsed.split_scalars();
    let twin = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).expect("twin");
    let twin = format!("{input}.{}", jwtguard_demo::tokens::encode(&twin.to_bytes()));
    assert_ne!(twin, token);
    assert!(accepted(&loaded, &twin, None));
}
