//! Registered-claim checks (RFC 7519 §4.1): issuer, audience, and the NumericDate claims.

use crate::reason::Reason;
use serde_json::{Map, Value};

/// Largest NumericDate we accept: 2^53, the last integer every JSON parser agrees on.
const MAX_NUMERIC_DATE: f64 = 9_007_199_254_740_992.0;

/// What a provider demands of a token's claims.
#[derive(Debug, Clone, Default)]
pub struct ClaimPolicy {
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub require_expiration: bool,
    pub max_lifetime_seconds: Option<u64>,
    pub clock_skew_seconds: u64,
    /// Expected header `typ` (RFC 8725 §3.11), compared case-insensitively.
    pub typ: Option<String>,
}

/// The time bounds of a verified token, kept so a cached token is re-checked on every hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
}

impl Lifetime {
    /// `now` against `exp` and `nbf`, each widened by the skew.
    pub fn check(&self, now: u64, skew: u64) -> Result<(), Reason> {
        if self.exp.is_some_and(|exp| now >= exp.saturating_add(skew)) {
            return Err(Reason::Expired);
        }
        if self.nbf.is_some_and(|nbf| now.saturating_add(skew) < nbf) {
            return Err(Reason::NotYetValid);
        }
        Ok(())
    }
}

/// Checked before the signature, as `jwt_authn` does: a token from another issuer is not ours
/// to verify, and in `requires_any` it lets each provider decline cheaply.
pub fn check_issuer(claims: &Map<String, Value>, policy: &ClaimPolicy) -> Result<(), Reason> {
    let iss = match claims.get("iss") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(Reason::Malformed),
    };
    match &policy.issuer {
        Some(expected) if iss != Some(expected.as_str()) => Err(Reason::WrongIssuer),
        _ => Ok(()),
    }
}

/// Every other claim check; `now` in seconds since the epoch.
pub fn check(
    claims: &Map<String, Value>,
    header_typ: Option<&str>,
    policy: &ClaimPolicy,
    now: u64,
) -> Result<Lifetime, Reason> {
    for name in ["sub", "jti"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(Reason::Malformed);
        }
    }
    if let Some(expected) = &policy.typ {
        let typ = header_typ.map(|t| t.strip_prefix("application/").unwrap_or(t));
        if !typ.is_some_and(|t| t.eq_ignore_ascii_case(expected)) {
            return Err(Reason::InvalidClaims);
        }
    }
    check_audience(claims.get("aud"), &policy.audiences)?;
    let lifetime = Lifetime {
        exp: numeric_date(claims, "exp")?,
        nbf: numeric_date(claims, "nbf")?,
        iat: numeric_date(claims, "iat")?,
    };
    if policy.require_expiration && lifetime.exp.is_none() {
        return Err(Reason::InvalidClaims);
    }
    if let Some(max) = policy.max_lifetime_seconds {
        match (lifetime.iat, lifetime.exp) {
            (Some(iat), Some(exp)) if exp.saturating_sub(iat) <= max => {}
            _ => return Err(Reason::InvalidClaims),
        }
    }
    lifetime.check(now, policy.clock_skew_seconds)?;
    Ok(lifetime)
}

fn check_audience(aud: Option<&Value>, accepted: &[String]) -> Result<(), Reason> {
    let matches = |s: &str| accepted.iter().any(|a| a == s);
    let found = match aud {
        None => false,
        Some(Value::String(s)) => matches(s),
        Some(Value::Array(items)) => {
            let mut found = false;
            for item in items {
                let Value::String(s) = item else {
                    return Err(Reason::Malformed);
                };
                found |= matches(s);
            }
            found
        }
        Some(_) => return Err(Reason::Malformed),
    };
    if accepted.is_empty() || found {
        Ok(())
    } else {
        Err(Reason::WrongAudience)
    }
}

/// A NumericDate must be a JSON number in [0, 2^53]: a string, boolean, null or absurd value is
/// malformed, never "no limit". Fractions (RFC 7519 allows them) are truncated to whole seconds.
/// The one reader of NumericDates: the revocation identity and the service use it too, so
/// whatever the filter accepts can be revoked.
pub fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, Reason> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) if v <= MAX_NUMERIC_DATE as u64 => Ok(Some(v)),
            (None, Some(f)) if f.is_finite() && (0.0..=MAX_NUMERIC_DATE).contains(&f) => Ok(Some(f as u64)),
            _ => Err(Reason::Malformed),
        },
        Some(_) => Err(Reason::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn policy() -> ClaimPolicy {
        ClaimPolicy {
            issuer: Some("https://issuer".into()),
            audiences: vec!["api".into(), "web".into()],
            require_expiration: true,
            clock_skew_seconds: 60,
            ..Default::default()
        }
    }

    #[test]
    fn issuer_is_byte_exact() {
        let p = policy();
        assert_eq!(check_issuer(&claims(json!({"iss":"https://issuer"})), &p), Ok(()));
        for iss in [json!("https://issuer/"), json!("HTTPS://issuer"), json!(null)] {
            let r = check_issuer(&claims(json!({ "iss": iss })), &p);
            assert!(r.is_err(), "{iss}");
        }
        assert_eq!(check_issuer(&claims(json!({})), &p), Err(Reason::WrongIssuer));
        assert_eq!(check_issuer(&claims(json!({})), &ClaimPolicy::default()), Ok(()));
    }

    #[test]
    fn audience_string_or_array() {
        let p = policy();
        let ok = |aud: Value| check(&claims(json!({"aud": aud, "exp": NOW + 10})), None, &p, NOW);
        assert!(ok(json!("web")).is_ok());
        assert!(ok(json!(["x", "api"])).is_ok());
        assert_eq!(ok(json!("API")), Err(Reason::WrongAudience));
        assert_eq!(ok(json!([])), Err(Reason::WrongAudience));
        assert_eq!(ok(json!([1])), Err(Reason::Malformed));
        assert_eq!(ok(json!({"a":"api"})), Err(Reason::Malformed));
        assert_eq!(check(&claims(json!({"exp": NOW + 10})), None, &p, NOW), Err(Reason::WrongAudience));
    }

    #[test]
    fn expiry_and_not_before_with_skew() {
        let p = ClaimPolicy { require_expiration: true, clock_skew_seconds: 60, ..Default::default() };
        let at = |c: Value, now| check(&claims(c), None, &p, now).map(|_| ());
        assert_eq!(at(json!({"exp": NOW}), NOW + 59), Ok(()));
        assert_eq!(at(json!({"exp": NOW}), NOW + 60), Err(Reason::Expired));
        assert_eq!(at(json!({"exp": NOW, "nbf": NOW - 10}), NOW - 71), Err(Reason::NotYetValid));
        assert_eq!(at(json!({"exp": NOW, "nbf": NOW + 60}), NOW), Ok(()));
        assert_eq!(at(json!({}), NOW), Err(Reason::InvalidClaims));
        let lax = ClaimPolicy::default();
        assert!(check(&claims(json!({})), None, &lax, NOW).is_ok());
    }

    #[test]
    fn numeric_dates_must_be_sane_numbers() {
        let p = ClaimPolicy::default();
        for bad in [
            json!("9999999999"),
            json!(true),
            json!(null),
            json!(-1),
            json!(18446744073709551615u64),
            json!(9_007_199_254_740_993u64), // 2^53 + 1: rounds to 2^53 as a float
            json!(1e300),
            json!([1]),
        ] {
            for name in ["exp", "nbf", "iat"] {
                let c = claims(json!({ name: bad.clone() }));
                assert_eq!(check(&c, None, &p, NOW), Err(Reason::Malformed), "{name}={bad}");
            }
        }
        let edge = check(&claims(json!({"iat": 9_007_199_254_740_992u64})), None, &p, NOW).unwrap();
        assert_eq!(edge.iat, Some(9_007_199_254_740_992), "2^53 itself");
        let float = check(&claims(json!({"exp": (NOW + 5) as f64 + 0.5})), None, &p, NOW).unwrap();
        assert_eq!(float.exp, Some(NOW + 5));
    }

    #[test]
    fn max_lifetime_needs_iat_and_exp() {
        let p = ClaimPolicy { max_lifetime_seconds: Some(3600), ..Default::default() };
        let c = |v: Value| check(&claims(v), None, &p, NOW).map(|_| ());
        assert_eq!(c(json!({"iat": NOW, "exp": NOW + 3600})), Ok(()));
        assert_eq!(c(json!({"iat": NOW, "exp": NOW + 3601})), Err(Reason::InvalidClaims));
        assert_eq!(c(json!({"exp": NOW + 10})), Err(Reason::InvalidClaims));
    }

    #[test]
    fn typ_and_string_claims() {
        let p = ClaimPolicy { typ: Some("at+jwt".into()), ..Default::default() };
        assert!(check(&claims(json!({})), Some("application/AT+JWT"), &p, NOW).is_ok());
        assert_eq!(check(&claims(json!({})), Some("JWT"), &p, NOW), Err(Reason::InvalidClaims));
        assert_eq!(check(&claims(json!({})), None, &p, NOW), Err(Reason::InvalidClaims));
        let any = ClaimPolicy::default();
        assert_eq!(check(&claims(json!({"sub": 5})), None, &any, NOW), Err(Reason::Malformed));
        assert_eq!(check(&claims(json!({"jti": []})), None, &any, NOW), Err(Reason::Malformed));
    }
}
