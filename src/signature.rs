//! Signature verification: one entry point, two backends. RS* and ES256/384 go to Envoy's native
//! crypto when the host offers it; everything else, and any host without it, uses RustCrypto
//! through `jsonwebtoken`. Both give the same verdict (tested end to end).

use crate::canonical::{self, Shape};
use crate::der;
use crate::host_crypto::{self, HostCrypto};
use crate::jws::Jws;
use crate::keys::Key;
use jsonwebtoken::Algorithm;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Host,
    Wasm,
}

/// What one token's verification came to, and which backend gave the verdict (for stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    pub valid: bool,
    /// `None` when no key fitted, so nothing was verified.
    pub backend: Option<Backend>,
}

/// Chooses the keys that may verify `jws` and tries them. A token without `kid` is accepted
/// only when exactly one key fits, so an attacker cannot make us try every key.
pub fn verify(keys: &[Key], jws: &Jws, host: Option<&dyn HostCrypto>) -> Verification {
    let mut verdict = Verification { valid: false, backend: None };
    let Ok(alg) = jws.alg.parse::<Algorithm>() else {
        return verdict;
    };
    let kid = jws.kid.as_deref();
    let fitting = || keys.iter().filter(|k| k.fits(alg, kid));
    if kid.is_none() && fitting().count() != 1 {
        return verdict;
    }
    for key in fitting() {
        let (valid, backend) = verify_with(key, alg, jws, host);
        verdict = Verification { valid, backend: Some(backend) };
        if valid {
            break;
        }
    }
    verdict
}

/// Verifies with one key; returns the verdict and the backend that gave it. A signature out of
/// range or not in canonical form is refused before either backend sees it (`canonical`).
pub fn verify_with(key: &Key, alg: Algorithm, jws: &Jws, host: Option<&dyn HostCrypto>) -> (bool, Backend) {
    let on_host = host.zip(key.host_key.as_deref()).zip(host_hash(alg));
    let backend = if on_host.is_some() { Backend::Host } else { Backend::Wasm };
    if !canonical::is_canonical(&key.shape, alg, &jws.signature) {
        return (false, backend);
    }
    if let Some(((host, host_key), (hash, ecdsa))) = on_host {
        if let Some(verdict) = verify_on_host(host, host_key, key, hash, ecdsa, jws) {
            return (verdict, Backend::Host);
        }
    }
    (verify_in_wasm(key, alg, jws), Backend::Wasm)
}

/// The hash Envoy's `verify_signature` takes for `alg`, and whether it is ECDSA; `None` for
/// what cannot be asked of the host (PSS padding, EdDSA, HMAC).
fn host_hash(alg: Algorithm) -> Option<(&'static str, bool)> {
    match alg {
        Algorithm::RS256 => Some(("sha256", false)),
        Algorithm::RS384 => Some(("sha384", false)),
        Algorithm::RS512 => Some(("sha512", false)),
        Algorithm::ES256 => Some(("sha256", true)),
        Algorithm::ES384 => Some(("sha384", true)),
        _ => None,
    }
}

fn verify_on_host(
    host: &dyn HostCrypto,
    host_key: &[u8],
    key: &Key,
    hash: &str,
    ecdsa: bool,
    jws: &Jws,
) -> Option<bool> {
    let args = if ecdsa {
        let Shape::Ec(curve) = key.shape else {
            return Some(false);
        };
        let Some(signature) = der::ecdsa_signature(curve, &jws.signature) else {
            return Some(false);
        };
        host_crypto::encode_arguments(host_key, hash, &signature, jws.signing_input.as_bytes())
    } else {
        host_crypto::encode_arguments(host_key, hash, &jws.signature, jws.signing_input.as_bytes())
    };
    host.verify_signature(&args)
}

fn verify_in_wasm(key: &Key, alg: Algorithm, jws: &Jws) -> bool {
    use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
    match (DEFAULT_PROVIDER.verifier_factory)(&alg, &key.decoding) {
        Ok(verifier) => verifier.verify(jws.signing_input.as_bytes(), &jws.signature).is_ok(),
        Err(_) => false,
    }
}
