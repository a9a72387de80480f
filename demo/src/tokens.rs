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

/// Group orders for the out-of-range signatures below (SEC 2; RFC 8032 for Ed25519's L).
const P256_ORDER: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
const P384_ORDER: &str =
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973";
const ED25519_ORDER_LE: &str = "edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// `a + b` for big-endian unsigned integers, as long as the longer one plus a carry octet.
fn add_be(a: &[u8], b: &[u8]) -> Vec<u8> {
    let len = a.len().max(b.len()) + 1;
    let digit = |v: &[u8], i: usize| if i < v.len() { u16::from(v[v.len() - 1 - i]) } else { 0 };
    let mut out = vec![0u8; len];
    let mut carry = 0u16;
    for i in 0..len {
        let sum = digit(a, i) + digit(b, i) + carry;
        out[len - 1 - i] = sum as u8;
        carry = sum >> 8;
    }
    out
}

/// `v` as exactly `len` big-endian octets, if it fits.
fn fit(v: &[u8], len: usize) -> Option<Vec<u8>> {
    let skip = v.len().saturating_sub(len);
    v[..skip].iter().all(|b| *b == 0).then(|| {
        let mut out = vec![0u8; len - (v.len() - skip)];
        out.extend_from_slice(&v[skip..]);
        out
    })
}

/// Tokens whose signature is the valid one of `token` (signed with `alg`; `jwk` is the public
/// key, read for the RSA modulus, or null) moved out of range or out of its one encoding: each
/// must be refused by every verifier, host or wasm. The names say what was done; some variants
/// exist only when the arithmetic leaves the value's length.
pub fn noncanonical_signatures(alg: Algorithm, jwk: &Value, token: &str) -> Vec<(String, String)> {
    let (input, sig) = token.rsplit_once('.').expect("compact token");
    let sig = decode(sig);
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            let n = decode(jwk["n"].as_str().expect("n"));
            let k = n.len();
            let plus_n = add_be(&sig, &n);
            out.push(("s + n".into(), fit(&plus_n, k).unwrap_or_else(|| plus_n[plus_n.len() - k - 1..].to_vec())));
            out.push(("s = n".into(), n.clone()));
            out.push(("s with a leading zero octet".into(), [&[0u8][..], &sig].concat()));
            out.push(("s one octet short".into(), sig[1..].to_vec()));
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            let order = hex(if alg == Algorithm::ES256 { P256_ORDER } else { P384_ORDER });
            let len = order.len();
            let (r, s) = sig.split_at(len);
            for (name, value) in [("r + n", add_be(r, &order)), ("r = n", order.clone())] {
                if let Some(r2) = fit(&value, len) {
                    out.push((name.into(), [&r2[..], s].concat()));
                }
            }
            for (name, value) in [("s + n", add_be(s, &order)), ("s = n", order.clone())] {
                if let Some(s2) = fit(&value, len) {
                    out.push((name.into(), [r, &s2[..]].concat()));
                }
            }
            out.push(("r = 0".into(), [&vec![0u8; len][..], s].concat()));
            out.push(("s = 0".into(), [r, &vec![0u8; len][..]].concat()));
            out.push(("r and s with leading zero octets".into(), [&[0u8][..], r, &[0u8][..], s].concat()));
        }
        Algorithm::EdDSA => {
            let (r, s) = sig.split_at(32);
            let le_to_be = |v: &[u8]| v.iter().rev().copied().collect::<Vec<u8>>();
            let plus_l = add_be(&le_to_be(s), &le_to_be(&hex(ED25519_ORDER_LE)));
            let plus_l = le_to_be(&fit(&plus_l, 32).expect("S + L fits 32 octets"));
            out.push(("S + L".into(), [r, &plus_l[..]].concat()));
            out.push(("S = L".into(), [r, &hex(ED25519_ORDER_LE)[..]].concat()));
        }
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            out.push(("MAC truncated".into(), sig[..sig.len() / 2].to_vec()));
            out.push(("MAC with an extra octet".into(), [&sig[..], &[0u8][..]].concat()));
        }
        other => panic!("no variants for {other:?}"),
    }
    out.into_iter().map(|(name, s)| (format!("{alg:?} {name}"), format!("{input}.{}", encode(&s)))).collect()
}
