//! Signature verification: one entry point, two backends. RS* and ES256/384 go to Envoy's native
//! crypto when the host offers it; everything else, and any host without it, uses RustCrypto
//! through `jsonwebtoken`. Both give the same verdict (tested end to end).

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
pub struct Verdict {
    pub valid: bool,
    /// `None` when no key fitted, so nothing was verified.
    pub backend: Option<Backend>,
}

/// Chooses the keys that may verify `jws` and tries them. A token without `kid` is accepted
/// only when exactly one key fits, so an attacker cannot make us try every key.
pub fn verify(keys: &[Key], jws: &Jws, host: Option<&dyn HostCrypto>) -> Verdict {
    let mut verdict = Verdict { valid: false, backend: None };
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
        verdict = Verdict { valid, backend: Some(backend) };
        if valid {
            break;
        }
    }
    verdict
}

/// Verifies with one key; returns the verdict and the backend that gave it.
pub fn verify_with(key: &Key, alg: Algorithm, jws: &Jws, host: Option<&dyn HostCrypto>) -> (bool, Backend) {
    if let (Some(host), Some(host_key)) = (host, key.host_key.as_deref()) {
        if let Some(verdict) = verify_on_host(host, host_key, key, alg, jws) {
            return (verdict, Backend::Host);
        }
    }
    (verify_in_wasm(key, alg, jws), Backend::Wasm)
}

fn verify_on_host(host: &dyn HostCrypto, host_key: &[u8], key: &Key, alg: Algorithm, jws: &Jws) -> Option<bool> {
    let (hash, ecdsa) = match alg {
        Algorithm::RS256 => ("sha256", false),
        Algorithm::RS384 => ("sha384", false),
        Algorithm::RS512 => ("sha512", false),
        Algorithm::ES256 => ("sha256", true),
        Algorithm::ES384 => ("sha384", true),
        _ => return None, // PSS padding and EdDSA cannot be asked of the host
    };
    let args = if ecdsa {
        let Some(signature) = key.curve.and_then(|c| der::ecdsa_signature(c, &jws.signature)) else {
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
