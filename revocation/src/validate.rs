//! Input limits for everything a client sends, checked before anything reaches Redis. Lengths
//! count characters, as the API document's `maxLength` does.

pub use jwtguard::revocation::{MAX_ID_CHARS, MAX_ISS_CHARS};
/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// A `jti`, `sub` or `iss`: the filter's rule (`jwtguard::revocation::id_problem`), so whatever
/// the filter lets through can be revoked. Keys encode identifiers (see `keys`), so no
/// character can break a key.
pub fn name<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, String> {
    match jwtguard::revocation::id_problem(field, value, max) {
        Some(problem) => Err(problem),
        None => Ok(value),
    }
}

pub fn jti(value: &str) -> Result<&str, String> {
    name("jti", value, MAX_ID_CHARS)
}

pub fn sub(value: &str) -> Result<&str, String> {
    name("sub", value, MAX_ID_CHARS)
}

pub fn iss(value: &str) -> Result<&str, String> {
    name("iss", value, MAX_ISS_CHARS)
}

pub fn sid(value: &str) -> Result<&str, String> {
    name("sid", value, MAX_ID_CHARS)
}

/// When a revocation may end: the token's `exp` plus the skew the filters allow, never later than
/// `now + max_lifetime` (a token claiming a far `exp` cannot make an entry live forever).
/// `None` when the token is already past it: nothing to store.
pub fn revocation_expiry(exp: u64, now: u64, skew: u64, max_lifetime: u64) -> Option<u64> {
    let until = exp.saturating_add(skew).min(now.saturating_add(max_lifetime).saturating_add(skew));
    (until > now).then_some(until)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for good in ["a-b_c.1:2", "a b", "é", "}:{", &"é".repeat(256)] {
            assert!(jti(good).is_ok(), "{good:?}");
        }
        for bad in ["", "a\nb", "\u{7f}", "\u{85}", &"x".repeat(257)] {
            assert!(jti(bad).is_err(), "{bad:?}");
        }
        assert!(sub("Zoë Müller").is_ok());
        assert!(sub("a\u{0}").is_err());
        assert!(iss(&"h".repeat(512)).is_ok());
        assert!(iss(&"h".repeat(513)).is_err());
    }

    #[test]
    fn expiry_follows_exp_and_is_clamped() {
        assert_eq!(revocation_expiry(1_000, 900, 60, 86_400), Some(1_060));
        assert_eq!(revocation_expiry(800, 900, 60, 86_400), None, "expired long ago: no-op");
        assert_eq!(revocation_expiry(850, 900, 60, 86_400), Some(910), "still within the skew");
        assert_eq!(revocation_expiry(u64::MAX, 900, 60, 3_600), Some(4_560), "clamped to the maximum lifetime");
    }
}
