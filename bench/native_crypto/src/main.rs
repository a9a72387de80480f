//! What one signature verification costs natively (for the dynamic module, issue 13):
//! RustCrypto and the module's `NativeCrypto` (aws-lc-rs) through the core, the rsa crate with
//! the key parsed once, and ring and aws-lc-rs alone given what Envoy's `verify_signature`
//! arguments carry (DER key, DER ECDSA signature), the key parsed on every call as
//! `NativeCrypto` does.
//! Measured here (2 cores, 2026-12-01), opt-level 3: RS256 RustCrypto 124–135 µs, rsa with the
//! key parsed once 127–135 µs, ring 16.3–16.6 µs, aws-lc-rs 13.9–14.2 µs, NativeCrypto through
//! the core 14.4 µs; ES256 RustCrypto 201–219 µs, ring 37–41 µs, aws-lc-rs 35.1–35.6 µs,
//! NativeCrypto 35.6 µs; EdDSA RustCrypto 32–40 µs. At the workspace's opt-level "z", with
//! aws-lc-sys at 3: RS256 ring 18.4–19.0, aws-lc-rs 14.3–14.9, NativeCrypto 14.9; ES256 ring
//! 39.0–39.8, aws-lc-rs 36.3–37.0, NativeCrypto 36.8; RustCrypto RS256 152, ES256 479, EdDSA
//! 2289. All of it at "z": aws-lc-rs ES256 165–198, NativeCrypto ES256 189 (OPENSSL_SMALL).
//! Envoy's jwt_authn costs +19.7 µs of Envoy CPU per fresh RS256 request in total.
//! 2026-12-02, keys parsed once, best of 5 rounds (two runs): aws-lc-rs 13.3–13.5 µs, the
//! module's rsa.rs through `NativeCrypto` 12.6–12.8 µs (medians follow the machine's load).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use jwtguard::der;
use jwtguard::host_crypto::HostCrypto;
use jwtguard_demo::tokens::KeyPair;
use jwtguard_module::crypto::NativeCrypto;
use std::time::Instant;

/// Times each of `fs` over 5 interleaved rounds of `n` calls (the machine is shared and noisy),
/// adding µs per call to its entry in `rounds`.
fn micros(rounds: &mut [Vec<f64>], n: u32, fs: &[&dyn Fn()]) {
    for _ in 0..5 {
        for (i, f) in fs.iter().enumerate() {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            rounds[i].push(start.elapsed().as_secs_f64() * 1e6 / f64::from(n));
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::temp_dir().join("cryptobench");
    std::fs::create_dir_all(&dir).unwrap();
    let claims = serde_json::json!({"sub": "a", "exp": 9999999999u64});
    for (alg, kid) in [(Algorithm::RS256, "r"), (Algorithm::ES256, "e"), (Algorithm::EdDSA, "d")] {
        let key = KeyPair::load_or_generate(&dir, alg, kid);
        let jwks = serde_json::json!({"keys": [key.jwk()]}).to_string();
        let keys: Vec<_> = jwtguard::keys::parse_jwks(&jwks, jwtguard::config::ALL_ALGORITHMS)
            .unwrap()
            .into_iter()
            .map(|k| k.unwrap())
            .collect();
        let token = key.sign(&claims);
        let jws = jwtguard::jws::parse(&token).unwrap();
        let n = 2000;
        let start = Instant::now();
        for _ in 0..n {
            assert!(jwtguard::signature::verify(&keys, &jws, None).valid);
        }
        let per = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("{alg:?}: {per:.1} µs per verification (RustCrypto through the core)");
        if alg != Algorithm::EdDSA {
            let host = Some(&NativeCrypto as &dyn HostCrypto);
            let start = Instant::now();
            for _ in 0..n {
                assert!(jwtguard::signature::verify(&keys, &jws, host).valid);
            }
            let per = start.elapsed().as_secs_f64() * 1e6 / n as f64;
            println!("{alg:?}: {per:.1} µs per verification (the module's NativeCrypto through the core)");
        }
    }

    // RS256, 2048 bits: the key as Envoy's arguments carry it, a PKCS#1 RSAPublicKey inside the SPKI.
    use rsa::{pkcs1v15::Signature, pkcs1v15::VerifyingKey, signature::Verifier, BigUint, RsaPublicKey};
    let key = KeyPair::load_or_generate(&dir, Algorithm::RS256, "r");
    let jwk = key.jwk();
    let field = |f: &str| URL_SAFE_NO_PAD.decode(jwk[f].as_str().unwrap()).unwrap();
    let token = key.sign(&claims);
    let (input, sig) = token.rsplit_once('.').unwrap();
    let (input, sig) = (input.as_bytes(), URL_SAFE_NO_PAD.decode(sig).unwrap());
    let public = RsaPublicKey::new(BigUint::from_bytes_be(&field("n")), BigUint::from_bytes_be(&field("e"))).unwrap();
    let once = VerifyingKey::<sha2::Sha256>::new(public);
    let once_sig = Signature::try_from(sig.as_slice()).unwrap();
    let pkcs1 = der::rsa_pkcs1(&field("n"), &field("e"));
    let ring_rsa = || {
        let k = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &pkcs1);
        k.verify(input, &sig).unwrap();
    };
    let aws_rsa = || {
        let k = aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, &pkcs1);
        k.verify(input, &sig).unwrap();
    };
    let rsa_once = || once.verify(input, &once_sig).unwrap();
    // Both with the key parsed once: aws-lc-rs's verify, and the module's (module/src/rsa.rs,
    // reached through `NativeCrypto` with Envoy-style arguments, as the core calls it).
    let aws_parsed =
        aws_lc_rs::signature::ParsedPublicKey::new(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, &pkcs1).unwrap();
    let aws_rsa_once = || aws_parsed.verify_sig(input, &sig).unwrap();
    let arguments = jwtguard::host_crypto::encode_arguments(
        &jwtguard::host_crypto::encode_key(&der::rsa_spki(&pkcs1)),
        "sha256",
        &sig,
        input,
    );
    let module_rsa = || assert_eq!(NativeCrypto.verify_signature(&arguments), Some(true));

    // ES256: uncompressed point, DER ECDSA-Sig-Value (what Envoy's arguments carry).
    let ec = KeyPair::load_or_generate(&dir, Algorithm::ES256, "e");
    let ejwk = ec.jwk();
    let efield = |f: &str| URL_SAFE_NO_PAD.decode(ejwk[f].as_str().unwrap()).unwrap();
    let point = [vec![4u8], efield("x"), efield("y")].concat();
    let etoken = ec.sign(&claims);
    let (einput, esig) = etoken.rsplit_once('.').unwrap();
    let einput = einput.as_bytes();
    let esig = der::ecdsa_signature(der::Curve::P256, &URL_SAFE_NO_PAD.decode(esig).unwrap()).unwrap();
    let ring_ec = || {
        let k = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &point);
        k.verify(einput, &esig).unwrap();
    };
    let aws_ec = || {
        let k = aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1, &point);
        k.verify(einput, &esig).unwrap();
    };

    let names = [
        "RS256 rsa crate, key parsed once",
        "RS256 ring",
        "RS256 aws-lc-rs",
        "RS256 aws-lc-rs, key parsed once",
        "RS256 the module's (rsa.rs), key parsed once",
        "ES256 ring",
        "ES256 aws-lc-rs",
    ];
    let mut rounds = vec![Vec::new(); names.len()];
    micros(&mut rounds, 2000, &[&rsa_once, &ring_rsa, &aws_rsa, &aws_rsa_once, &module_rsa, &ring_ec, &aws_ec]);
    for (name, r) in names.iter().zip(rounds) {
        let min = r.iter().copied().fold(f64::INFINITY, f64::min);
        println!("{name}: {:.1} µs median, {min:.1} min (5 interleaved rounds of 2000)", median(r));
    }
}
