//! Verification keys from configuration: JWKS, PEM public keys and HMAC secrets, each bound to
//! the algorithms it may verify (RFC 8725 §3.1) and prepared once for both crypto paths.

use crate::canonical::Shape;
use crate::der::{self, Curve, PublicKey};
use crate::host_crypto;
use crate::jws;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

/// RFC 7518 §3.3: RSA keys below 2048 bits must not be used.
const MIN_RSA_BITS: usize = 2048;

#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// The algorithms this key may verify, already intersected with the provider's allowlist.
    pub algorithms: Vec<Algorithm>,
    pub decoding: DecodingKey,
    /// The key as Envoy's `verify_signature` takes it, encoded once; RSA and EC keys only.
    pub host_key: Option<Vec<u8>>,
    /// What the signature range checks (`canonical`) need: modulus, curve or kind.
    pub shape: Shape,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("algorithms", &self.algorithms).finish()
    }
}

impl Key {
    /// An HMAC secret, as opposed to a public key.
    pub fn is_secret(&self) -> bool {
        self.shape == Shape::Hmac
    }

    /// Whether this key may verify a token with header `alg` and `kid`. A key without a `kid`
    /// fits any `kid`, as PEM keys and secrets usually have none.
    pub fn fits(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.algorithms.contains(&alg)
            && match (&self.kid, kid) {
                (Some(mine), Some(theirs)) => mine == theirs,
                _ => true,
            }
    }
}

/// The rules a provider's whole key set obeys, wherever its keys came from (configuration or a
/// fetch): secrets and public keys never mix (HS/RS confusion, RFC 8725 §2.1), and a `kid`
/// names one key.
pub fn check_set<'a>(keys: impl IntoIterator<Item = &'a Key> + Clone) -> Result<(), String> {
    let secrets = keys.clone().into_iter().filter(|k| k.is_secret()).count();
    if secrets > 0 && keys.clone().into_iter().any(|k| !k.is_secret()) {
        return Err("a provider cannot mix HMAC secrets (oct keys) with public keys".into());
    }
    let mut seen = crate::fast_hash::FastSet::default();
    for kid in keys.into_iter().filter_map(|k| k.kid.as_deref()) {
        if !seen.insert(kid) {
            return Err(format!("duplicate kid {kid:?}"));
        }
    }
    Ok(())
}

/// One JWK as published; unknown members (x5c, x5t, …) are ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    k: Option<String>,
    d: Option<String>,
}

/// Parses a JWKS document into one result per key, so the caller decides whether a bad key
/// fails the whole set (local configuration) or is skipped with a log line (remote sets).
pub fn parse_jwks(doc: &str, allowed: &[Algorithm]) -> Result<Vec<Result<Key, String>>, String> {
    let set = crate::strict_json::parse_object(doc.as_bytes())?;
    let Some(Value::Array(keys)) = set.get("keys") else {
        return Err("JWKS has no \"keys\" array".into());
    };
    Ok(keys.iter().map(|k| parse_jwk(k, allowed)).collect())
}

fn parse_jwk(value: &Value, allowed: &[Algorithm]) -> Result<Key, String> {
    let jwk = Jwk::deserialize(value).map_err(|e| format!("JWK: {e}"))?;
    let label = jwk.kid.as_deref().unwrap_or("(no kid)").to_string();
    let fail = |msg: &str| format!("JWK {label}: {msg}");
    if jwk.d.is_some() {
        return Err(fail("contains private key material"));
    }
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err(fail("use is not \"sig\""));
    }
    if jwk.key_ops.as_ref().is_some_and(|ops| !ops.iter().any(|o| o == "verify")) {
        return Err(fail("key_ops does not include \"verify\""));
    }
    let field = |v: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
        let s = v.as_deref().ok_or_else(|| fail(&format!("missing {name}")))?;
        jws::decode(s).ok_or_else(|| fail(&format!("{name} is not base64url")))
    };
    let material = match jwk.kty.as_str() {
        "RSA" => rsa_material(&field(&jwk.n, "n")?, &field(&jwk.e, "e")?),
        "EC" => {
            let (x, y) = (field(&jwk.x, "x")?, field(&jwk.y, "y")?);
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            match jwk.crv.as_deref() {
                Some("P-256") => ec_material(Curve::P256, &point),
                Some("P-384") => ec_material(Curve::P384, &point),
                _ => Err("curve is not P-256 or P-384".into()),
            }
        }
        "OKP" => match jwk.crv.as_deref() {
            Some("Ed25519") => ed_material(&field(&jwk.x, "x")?),
            _ => Err("OKP curve is not Ed25519".into()),
        },
        "oct" => hmac_material(&field(&jwk.k, "k")?),
        _ => Err("unsupported kty".into()),
    }
    .map_err(|e| fail(&e))?;
    material.into_key(jwk.kid, jwk.alg.as_deref(), allowed).map_err(|e| fail(&e))
}

/// Parses a PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`); private keys and certificates are
/// refused so a secret never ends up in the proxy's configuration by mistake.
pub fn from_pem(pem: &str, kid: Option<String>, alg: Option<&str>, allowed: &[Algorithm]) -> Result<Key, String> {
    let (label, der) = pem_block(pem)?;
    let material = match label {
        "RSA PUBLIC KEY" => rsa_checked(rsa_public(&der)?, der.clone()),
        "PUBLIC KEY" => match der::parse_spki(&der) {
            Some(PublicKey::Rsa(pkcs1)) => rsa_checked(rsa_public(pkcs1)?, pkcs1.to_vec()),
            Some(PublicKey::Ec(curve, point)) => ec_material(curve, point),
            Some(PublicKey::Ed25519(x)) => ed_material(x),
            None => Err("PEM is not an RSA, P-256, P-384 or Ed25519 public key".into()),
        },
        other => Err(format!("PEM type {other:?} is not a public key")),
    }?;
    material.into_key(kid, alg, allowed)
}

/// The label and decoded body of a single PEM block (RFC 7468).
fn pem_block(pem: &str) -> Result<(&str, Vec<u8>), String> {
    use base64::Engine;
    let pem = pem.trim();
    let label = pem
        .strip_prefix("-----BEGIN ")
        .and_then(|r| r.split_once("-----"))
        .map(|(l, _)| l)
        .ok_or_else(|| "not a PEM block".to_string())?;
    let footer = format!("-----END {label}-----");
    let body = pem.lines().skip(1).take_while(|l| l.trim() != footer).map(str::trim).collect::<String>();
    if !pem.ends_with(&footer) {
        return Err(format!("PEM block {label:?} has no matching END line"));
    }
    let der = base64::engine::general_purpose::STANDARD.decode(body).map_err(|e| format!("PEM body: {e}"))?;
    Ok((label, der))
}

/// An HMAC secret; refused when shorter than the hash of every algorithm it could serve.
pub fn from_secret(
    secret: &[u8],
    kid: Option<String>,
    alg: Option<&str>,
    allowed: &[Algorithm],
) -> Result<Key, String> {
    hmac_material(secret)?.into_key(kid, alg, allowed)
}

struct Material {
    decoding: DecodingKey,
    /// What this kind of key can verify, before `alg` and the allowlist narrow it.
    algorithms: Vec<Algorithm>,
    spki: Option<Vec<u8>>,
    shape: Shape,
}

impl Material {
    fn into_key(self, kid: Option<String>, alg: Option<&str>, allowed: &[Algorithm]) -> Result<Key, String> {
        let mut algorithms = self.algorithms;
        if let Some(alg) = alg {
            let alg: Algorithm = alg.parse().map_err(|_| format!("alg {alg:?} is not a signature algorithm"))?;
            if !algorithms.contains(&alg) {
                return Err(format!("alg {alg:?} does not fit this key"));
            }
            algorithms = vec![alg];
        }
        algorithms.retain(|a| allowed.contains(a));
        if algorithms.is_empty() {
            return Err("none of the provider's algorithms fits this key".into());
        }
        let host_key = self.spki.as_deref().map(host_crypto::encode_key);
        Ok(Key { kid, algorithms, decoding: self.decoding, host_key, shape: self.shape })
    }
}

fn rsa_public(pkcs1: &[u8]) -> Result<rsa::RsaPublicKey, String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    rsa::RsaPublicKey::from_pkcs1_der(pkcs1).map_err(|e| format!("RSA key: {e}"))
}

fn rsa_material(n: &[u8], e: &[u8]) -> Result<Material, String> {
    let parsed = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from_bytes_be(e))
        .map_err(|e| format!("RSA key: {e}"))?;
    rsa_checked(parsed, der::rsa_pkcs1(n, e))
}

fn rsa_checked(parsed: rsa::RsaPublicKey, pkcs1: Vec<u8>) -> Result<Material, String> {
    use rsa::traits::PublicKeyParts;
    if parsed.n().bits() < MIN_RSA_BITS {
        return Err(format!("RSA key has {} bits, fewer than {MIN_RSA_BITS}", parsed.n().bits()));
    }
    if has_roca_fingerprint(parsed.n()) {
        return Err("RSA key was made by a generator with the ROCA flaw (CVE-2017-15361)".into());
    }
    use Algorithm::*;
    Ok(Material {
        spki: Some(der::rsa_spki(&pkcs1)),
        decoding: DecodingKey::from_rsa_der(&pkcs1),
        algorithms: vec![RS256, RS384, RS512, PS256, PS384, PS512],
        shape: Shape::Rsa { modulus: parsed.n().to_bytes_be() },
    })
}

/// ROCA (CVE-2017-15361) keys have moduli whose residue modulo each of these small primes lies
/// in the subgroup generated by 65537; for a random modulus that happens with negligible odds.
fn has_roca_fingerprint(n: &rsa::BigUint) -> bool {
    const PRIMES: [u32; 38] = [
        3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103, 107,
        109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
    ];
    let bytes = n.to_bytes_be();
    PRIMES.iter().all(|&p| {
        let residue = bytes.iter().fold(0, |r, &b| (r * 256 + u32::from(b)) % p);
        let generator = 65537 % p;
        let mut element = 1;
        loop {
            if element == residue {
                return true;
            }
            element = element * generator % p;
            if element == 1 {
                return false;
            }
        }
    })
}

fn ec_material(curve: Curve, point: &[u8]) -> Result<Material, String> {
    // Checking the point is on the curve here means a bad key fails at load, not per request.
    let (valid, alg) = match curve {
        Curve::P256 => (p256::PublicKey::from_sec1_bytes(point).is_ok(), Algorithm::ES256),
        Curve::P384 => (p384::PublicKey::from_sec1_bytes(point).is_ok(), Algorithm::ES384),
    };
    if !valid || point.len() != 1 + 2 * curve.field_len() {
        return Err("EC point is not a valid uncompressed point on its curve".into());
    }
    Ok(Material {
        spki: Some(der::ec_spki(curve, point)),
        decoding: DecodingKey::from_ec_der(point),
        algorithms: vec![alg],
        shape: Shape::Ec(curve),
    })
}

fn ed_material(x: &[u8]) -> Result<Material, String> {
    let bytes: &[u8; 32] = x.try_into().map_err(|_| "Ed25519 key is not 32 bytes".to_string())?;
    ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| "Ed25519 key is not a valid point".to_string())?;
    Ok(Material {
        decoding: DecodingKey::from_ed_der(x),
        algorithms: vec![Algorithm::EdDSA],
        spki: None,
        shape: Shape::Ed25519,
    })
}

fn hmac_material(secret: &[u8]) -> Result<Material, String> {
    // RFC 7518 §3.2: the key must be at least as long as the hash output.
    let algorithms: Vec<_> = [(Algorithm::HS256, 32), (Algorithm::HS384, 48), (Algorithm::HS512, 64)]
        .into_iter()
        .filter(|(_, min)| secret.len() >= *min)
        .map(|(a, _)| a)
        .collect();
    if algorithms.is_empty() {
        return Err(format!("HMAC secret has {} bytes, fewer than the 32 HS256 needs", secret.len()));
    }
    Ok(Material { decoding: DecodingKey::from_secret(secret), algorithms, spki: None, shape: Shape::Hmac })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use Algorithm::*;

    pub const ALL: &[Algorithm] = &[HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA];

    pub const EC_JWK: &str = r#"{"kty":"EC","crv":"P-256","kid":"ec1","x":"04N0xi21hshyvBp7I167sbE_bXqyqkAPfefdklMO7wY","y":"UI8exy-C06a7DUnjIdENkxeFtHM4-l_41LqEw9nVgmw"}"#;

    #[test]
    fn ec_jwk_binds_es256_only() {
        let keys = parse_jwks(&format!(r#"{{"keys":[{EC_JWK}]}}"#), ALL).unwrap();
        let key = keys[0].as_ref().unwrap();
        assert_eq!(key.algorithms, vec![ES256]);
        assert!(key.fits(ES256, Some("ec1")));
        assert!(key.fits(ES256, None));
        assert!(!key.fits(ES256, Some("other")));
        assert!(!key.fits(HS256, Some("ec1")), "no HS/ES confusion");
        assert_eq!(key.host_key.as_ref().unwrap().len(), 93);
    }

    #[test]
    fn keys_not_for_signatures_are_refused() {
        for extra in
            [r#","use":"enc""#, r#","key_ops":["encrypt"]"#, r#","d":"AAAA""#, r#","alg":"HS256""#, r#","alg":"ES384""#]
        {
            let jwk = EC_JWK.replace(r#""kid":"ec1""#, &format!(r#""kid":"ec1"{extra}"#));
            let keys = parse_jwks(&format!(r#"{{"keys":[{jwk}]}}"#), ALL).unwrap();
            assert!(keys[0].is_err(), "{extra}");
        }
    }

    #[test]
    fn invalid_points_and_unknown_curves_are_refused() {
        let off_curve = EC_JWK.replace("UI8exy", "UI8exz");
        let p521 = EC_JWK.replace("P-256", "P-521");
        for jwk in [off_curve, p521] {
            assert!(parse_jwks(&format!(r#"{{"keys":[{jwk}]}}"#), ALL).unwrap()[0].is_err());
        }
        assert!(parse_jwks(r#"{"keys":[{"kty":"XYZ"}]}"#, ALL).unwrap()[0].is_err());
        assert!(parse_jwks(r#"{"nokeys":[]}"#, ALL).is_err());
    }

    #[test]
    fn allowlist_narrows_and_can_empty_a_key() {
        let keys = parse_jwks(&format!(r#"{{"keys":[{EC_JWK}]}}"#), &[RS256]).unwrap();
        assert!(keys[0].is_err());
    }

    #[test]
    fn short_hmac_secrets_are_refused_at_load() {
        assert!(from_secret(&[1; 31], None, None, ALL).is_err());
        assert_eq!(from_secret(&[1; 32], None, None, ALL).unwrap().algorithms, vec![HS256]);
        assert_eq!(from_secret(&[1; 64], None, None, ALL).unwrap().algorithms, vec![HS256, HS384, HS512]);
        assert!(from_secret(&[1; 32], None, Some("HS512"), ALL).is_err());
        assert!(from_secret(&[1; 32], None, Some("RS256"), ALL).is_err());
    }

    const P384_PEM: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEWacOK1ih9cioHM25BQfRJgnfRuEIgzFH
VnHuUkbBZ5otB5hvm1ggNM362IEjncPtXAStPTRDJcWjxVCGcy2FGItQwXDcoyLc
tVCGzqT1KY/OEe5ie5Na4v+YvH5OX/wQ
-----END PUBLIC KEY-----";
    const ED25519_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAatPF2QRluMl/Q7Zm3xBzkgjamhrah3FOpsS3IOL8YdM=
-----END PUBLIC KEY-----";
    /// The host self-test key, as openssl writes it in both RSA forms.
    const RSA_PKCS1_PEM: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAx0LzBoDGG1oTxOQswPLjVLCYYe7MQm5rDtVGXERctkHZbL8JI/jS
/CtaT0jw/WUCZd6ly0Z83JI20SOoJsvkarkGrac92Z7CQrG92VTnF28sSh70764g
IFsKgB45H/CPmRTEgY9e8z85TlCpLVp4VuvqU9BhmMk2uKEPhfG3TX3u/lWPzczW
5OA2sLmjftYog0WMuRP9WpqiZIUw0MCA1UpwiuADiCl1CIpj9010NHSmlYQE094w
K9AFwweqVI8k/YJUEsd86oatXTYIZ/EeRe74mTMH/vNMufv2zph2LDYgd5wNfwYb
E/T6v8Ls3CuR7ZCaqzbm0YoxZPQMxvqgrwIDAQAB
-----END RSA PUBLIC KEY-----";
    const RSA_SPKI_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAx0LzBoDGG1oTxOQswPLj
VLCYYe7MQm5rDtVGXERctkHZbL8JI/jS/CtaT0jw/WUCZd6ly0Z83JI20SOoJsvk
arkGrac92Z7CQrG92VTnF28sSh70764gIFsKgB45H/CPmRTEgY9e8z85TlCpLVp4
VuvqU9BhmMk2uKEPhfG3TX3u/lWPzczW5OA2sLmjftYog0WMuRP9WpqiZIUw0MCA
1UpwiuADiCl1CIpj9010NHSmlYQE094wK9AFwweqVI8k/YJUEsd86oatXTYIZ/Ee
Re74mTMH/vNMufv2zph2LDYgd5wNfwYbE/T6v8Ls3CuR7ZCaqzbm0YoxZPQMxvqg
rwIDAQAB
-----END PUBLIC KEY-----";

    #[test]
    fn pem_public_keys_of_every_kind() {
        let p384 = from_pem(P384_PEM, None, None, ALL).unwrap();
        assert_eq!((p384.algorithms.clone(), &p384.shape), (vec![ES384], &Shape::Ec(Curve::P384)));
        assert_eq!(from_pem(ED25519_PEM, Some("k".into()), None, ALL).unwrap().algorithms, vec![EdDSA]);
        let pkcs1 = from_pem(RSA_PKCS1_PEM, None, Some("RS256"), ALL).unwrap();
        let spki = from_pem(RSA_SPKI_PEM, None, None, ALL).unwrap();
        assert_eq!(pkcs1.algorithms, vec![RS256]);
        assert_eq!(spki.algorithms.len(), 6);
        assert_eq!(pkcs1.host_key, spki.host_key, "both forms give Envoy the same SPKI");
        assert!(from_pem(&RSA_SPKI_PEM.replace("END PUBLIC", "END PRIVATE"), None, None, ALL).is_err());
    }

    #[test]
    fn pem_private_keys_and_garbage_are_refused() {
        assert!(from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", None, None, ALL).is_err());
        assert!(from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", None, None, ALL).is_err());
        assert!(from_pem("hello", None, None, ALL).is_err());
    }

    #[test]
    fn small_rsa_keys_are_refused() {
        let err = rsa_material(&[0xc5; 128], &[1, 0, 1]).err().unwrap();
        assert!(err.contains("1024 bits"), "{err}");
    }
}
