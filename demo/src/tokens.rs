//! Keys (made fresh with `openssl`; nothing private is committed), JWKS and tokens for the demo
//! and the tests. Panics on failure: these are development tools, never part of the filter.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

pub struct KeyPair {
    pub alg: Algorithm,
    pub kid: String,
    pub private_pem: String,
    pub public_pem: String,
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

impl KeyPair {
    /// RSA-2048, P-256 or Ed25519, written under `dir` and read back as PEM.
    pub fn generate(dir: &Path, alg: Algorithm, kid: &str) -> KeyPair {
        let private = dir.join(format!("{kid}.pem"));
        let p = private.to_str().expect("path");
        match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
                openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", p])
            }
            Algorithm::ES256 => {
                openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p])
            }
            Algorithm::ES384 => {
                openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", p])
            }
            Algorithm::EdDSA => openssl(&["genpkey", "-algorithm", "ED25519", "-out", p]),
            other => panic!("no key pair for {other:?}"),
        };
        let public_pem = openssl(&["pkey", "-in", p, "-pubout"]);
        let private_pem = std::fs::read_to_string(&private).expect("read key");
        KeyPair { alg, kid: kid.to_string(), private_pem, public_pem }
    }

    /// The key `kid` in `dir`, generated on first use.
    pub fn load_or_generate(dir: &Path, alg: Algorithm, kid: &str) -> KeyPair {
        let private = dir.join(format!("{kid}.pem"));
        if !private.exists() {
            std::fs::create_dir_all(dir).expect("create key dir");
            return KeyPair::generate(dir, alg, kid);
        }
        let p = private.to_str().expect("path");
        let public_pem = openssl(&["pkey", "-in", p, "-pubout"]);
        let private_pem = std::fs::read_to_string(&private).expect("read key");
        KeyPair { alg, kid: kid.to_string(), private_pem, public_pem }
    }

    pub fn encoding_key(&self) -> EncodingKey {
        let pem = self.private_pem.as_bytes();
        match self.alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            _ => EncodingKey::from_rsa_pem(pem),
        }
        .expect("encoding key")
    }

    /// The public key as a JWK with `kid` and `alg`.
    pub fn jwk(&self) -> Value {
        let mut jwk = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&self.encoding_key(), self.alg).expect("jwk"),
        )
        .expect("json");
        jwk["kid"] = json!(self.kid);
        jwk
    }

    /// A token with `claims`, signed by this key, with `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_kid(claims, &self.kid)
    }

    /// A token signed by this key but naming another `kid`.
    pub fn sign_with_kid(&self, claims: &Value, kid: &str) -> String {
        let header = json!({"alg": alg_name(self.alg), "typ": "JWT", "kid": kid});
        sign_raw(&header.to_string(), &claims.to_string(), &self.encoding_key(), self.alg)
    }
}

pub fn alg_name(alg: Algorithm) -> String {
    serde_json::to_value(alg).expect("alg").as_str().expect("str").to_string()
}

/// Signs exactly the given header and payload text, for tokens no library would produce.
pub fn sign_raw(header: &str, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("sign");
    format!("{input}.{signature}")
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn decode(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).expect("base64url")
}
