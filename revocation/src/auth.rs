//! Bearer credentials for the API: writes need one from the write set, the status endpoint one
//! from the status set (when configured). Compared as SHA-256 digests in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Clone, Default)]
pub struct Credentials {
    digests: Vec<[u8; 32]>,
}

impl Credentials {
    /// Credentials from comma- or newline-separated text; blanks are ignored.
    pub fn parse(text: &str) -> Credentials {
        let digests = text.split([',', '\n']).map(str::trim).filter(|c| !c.is_empty()).map(digest).collect();
        Credentials { digests }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether an `Authorization` header value carries one of the credentials.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        let Some(presented) = authorization.and_then(bearer) else {
            return false;
        };
        let presented = digest(presented);
        // Every credential is compared, so timing says nothing about which one matched.
        self.digests.iter().fold(subtle::Choice::from(0), |found, d| found | d.ct_eq(&presented)).into()
    }
}

fn digest(credential: &str) -> [u8; 32] {
    Sha256::digest(credential.as_bytes()).into()
}

fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim()).filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_bearer_credentials_pass() {
        let c = Credentials::parse("alpha, beta\n\ngamma\n");
        assert_eq!(c.len(), 3);
        assert!(c.allows(Some("Bearer beta")));
        assert!(c.allows(Some("bearer gamma")));
        assert!(!c.allows(Some("Bearer delta")));
        assert!(!c.allows(Some("Basic beta")));
        assert!(!c.allows(Some("Bearer ")));
        assert!(!c.allows(Some("beta")));
        assert!(!c.allows(None));
        assert!(!Credentials::parse(" , ").allows(Some("Bearer ")));
    }
}
