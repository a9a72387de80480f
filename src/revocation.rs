//! Revocation in the filter, without host calls: which token identity to ask about, the shared
//! cache's entries and their freshness, the callout's path and answer, and the failure policy.
//!
//! The cache lives in Envoy's shared data (one per Envoy, all workers). It is direct-mapped:
//! an identity hashes to one of `cache_max_entries` slots and the entry records the identity it
//! belongs to, so the cache is bounded without any eviction pass and a different token never hits.
//! "Active" answers are trusted for `cache_ttl_ms` (the propagation bound); "revoked" answers
//! until the token's `exp`. Nothing is used past the token's `exp`.

use crate::reason::Reason;
use serde_json::{Map, Value};
use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Denylist,
    Allowlist,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Unknown status → 503 with Retry-After (the default: the token is not known to be bad).
    Closed,
    /// Unknown status → allow, count, and mark the request upstream.
    Open,
    /// Unknown status → the last answer if younger than `stale_ms`, else closed.
    Stale,
}

/// What a token is known to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Active,
    /// Revoked by `jti` or a subject cutoff: final, so cached until the token's `exp`.
    Revoked,
    /// Allowlist mode, no live session: may change (a login registers one), so cached like
    /// an active answer.
    NoSession,
}

/// Longest `jti` and `sub` the service stores, in characters (identifiers are short in practice).
pub const MAX_ID_CHARS: usize = 256;
/// Longest `iss` the service stores (a URL).
pub const MAX_ISS_CHARS: usize = 512;

/// Why `value` cannot identify a token to the service (a `jti`, `sub` or `iss` of at most `max`
/// characters, without control characters), or `None` when it can. One rule for the filter and
/// the service: a token the filter lets through can always be revoked.
pub fn id_problem(field: &str, value: &str, max: usize) -> Option<String> {
    if value.is_empty() || value.chars().count() > max {
        return Some(format!("{field} must be 1 to {max} characters"));
    }
    value.chars().any(char::is_control).then(|| format!("{field} must not contain control characters"))
}

/// The claims a revocation answer depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub jti: Option<String>,
    pub sub: Option<String>,
    pub iss: Option<String>,
    pub iat: Option<u64>,
    pub exp: Option<u64>,
    /// The identity provider's session (OpenID `sid`), which a back-channel logout revokes.
    pub sid: Option<String>,
    /// All of the above in one string: the cache's and the single-flight map's key.
    pub key: String,
}

impl Identity {
    pub fn from_claims(claims: &Map<String, Value>) -> Identity {
        let text = |n: &str| claims.get(n).and_then(Value::as_str).map(String::from);
        // A malformed date never gets here from the filter (it refuses the token first).
        let number = |n: &str| crate::claims::numeric_date(claims, n).ok().flatten();
        let (jti, sub, iss, sid) = (text("jti"), text("sub"), text("iss"), text("sid"));
        let (iat, exp) = (number("iat"), number("exp"));
        // Length-prefixed parts, `-` for an absent one: any claim text (even one holding the
        // separator) gives a distinct key, so two identities never share a cached answer.
        let mut key = String::with_capacity(64);
        let iat_text = iat.map(|i| i.to_string());
        for part in [jti.as_deref(), sub.as_deref(), iss.as_deref(), iat_text.as_deref(), sid.as_deref()] {
            let _ = match part {
                Some(p) => write!(key, "{}:{p};", p.len()),
                None => key.write_str("-;"),
            };
        }
        Identity { jti, sub, iss, iat, exp, sid, key }
    }

    /// The key of this token's session in the revocation set: its issuer and `sid`.
    pub fn session_key(&self) -> Option<String> {
        Some(session_key(self.iss.as_deref()?, self.sid.as_deref()?))
    }

    /// Whether the service can store this token's identity; one it cannot could never be
    /// revoked, so where revocation applies the filter refuses it.
    pub fn revocable(&self) -> bool {
        let fits = |v: &Option<String>, field, max| v.as_deref().is_none_or(|v| id_problem(field, v, max).is_none());
        fits(&self.jti, "jti", MAX_ID_CHARS)
            && fits(&self.sub, "sub", MAX_ID_CHARS)
            && fits(&self.iss, "iss", MAX_ISS_CHARS)
            && fits(&self.sid, "sid", MAX_ID_CHARS)
    }

    /// The shared-data key of this identity's cache slot, in the plugin's `namespace`.
    pub fn slot_key(&self, namespace: &str, max_entries: u32) -> String {
        let hash = crate::fnv::fnv1a(self.key.as_bytes());
        format!("jwtguard.{namespace}.rev.{}", hash % u64::from(max_entries.max(1)))
    }
}

/// An issuer's session in one string (length-prefixed, so no two pairs share it).
pub fn session_key(iss: &str, sid: &str) -> String {
    format!("{}:{iss}{sid}", iss.len())
}

/// One cached answer, as stored in shared data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub known: Known,
    pub fetched_ms: u64,
    /// The token's `exp` (seconds); 0 when the token has none.
    pub exp: u64,
    pub identity: String,
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let state = match self.known {
            Known::Active => 'A',
            Known::Revoked => 'R',
            Known::NoSession => 'N',
        };
        format!("{state}|{}|{}|{}", self.fetched_ms, self.exp, self.identity).into_bytes()
    }

    /// `None` for anything that is not an entry this version wrote.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(4, '|');
        let known = match parts.next()? {
            "A" => Known::Active,
            "R" => Known::Revoked,
            "N" => Known::NoSession,
            _ => return None,
        };
        let fetched_ms = parts.next()?.parse().ok()?;
        let exp = parts.next()?.parse().ok()?;
        let identity = parts.next()?.to_string();
        Some(Entry { known, fetched_ms, exp, identity })
    }
}

/// What the cache says about an identity now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Good enough to decide on without asking.
    Fresh(Known),
    /// Too old to decide on, but usable under `failure_mode: stale`.
    Stale(Known),
    Miss,
}

/// Cache timing, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub ttl_ms: u64,
    pub stale_ms: u64,
}

/// `active_until_exp`: an active answer stays fresh until the token expires (allowlist mode fed
/// by a current feed, which brings every session that ends).
pub fn lookup(entry: Option<&Entry>, identity: &Identity, now_ms: u64, f: Freshness, active_until_exp: bool) -> Lookup {
    let Some(entry) = entry.filter(|e| e.identity == identity.key) else {
        return Lookup::Miss;
    };
    if entry.exp != 0 && now_ms / 1000 >= entry.exp {
        return Lookup::Miss; // the token is over; nothing to say about it
    }
    let age = now_ms.saturating_sub(entry.fetched_ms);
    match entry.known {
        // A revocation never ends before the token does.
        Known::Revoked if entry.exp != 0 || age < f.ttl_ms => Lookup::Fresh(Known::Revoked),
        Known::Active if active_until_exp && entry.exp != 0 => Lookup::Fresh(Known::Active),
        known if age < f.ttl_ms => Lookup::Fresh(known),
        known if age < f.stale_ms => Lookup::Stale(known),
        _ => Lookup::Miss,
    }
}

/// The status callout's `:path`: `path?jti=…&sub=…&iss=…&sid=…&iat=…[&mode=allowlist]`.
pub fn status_path(path: &str, identity: &Identity, mode: Mode) -> String {
    let mut query = Vec::new();
    for (name, value) in [
        ("jti", identity.jti.as_deref()),
        ("sub", identity.sub.as_deref()),
        ("iss", identity.iss.as_deref()),
        ("sid", identity.sid.as_deref()),
    ] {
        if let Some(v) = value {
            query.push(format!("{name}={}", percent_encode(v)));
        }
    }
    if let Some(iat) = identity.iat {
        query.push(format!("iat={iat}"));
    }
    if mode == Mode::Allowlist {
        query.push("mode=allowlist".into());
    }
    format!("{path}?{}", query.join("&"))
}

fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a callout gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Envoy's synthesized 504: the service did not answer within `timeout_ms`.
    Timeout,
    /// No connection, an error status, or a body that is not the service's answer.
    Unavailable,
}

/// Only a 200 whose body parses as the service's answer is an answer: Envoy answers a failed
/// callout itself (503 when the cluster is down, 504 on timeout).
pub fn read_answer(status: Option<u16>, body: Option<&[u8]>) -> Result<Known, Failure> {
    match status {
        Some(200) => {
            // `jwtguard_wire::StatusResponse`, read with the strict reader the filter already
            // has (serde's derive would add to the .wasm).
            let answer = body.and_then(|b| crate::strict_json::parse_object(b).ok()).ok_or(Failure::Unavailable)?;
            match (answer.get("active").and_then(Value::as_bool), answer.get("reason").and_then(Value::as_str)) {
                (Some(true), _) => Ok(Known::Active),
                (Some(false), Some("no_session")) => Ok(Known::NoSession),
                (Some(false), _) => Ok(Known::Revoked),
                (None, _) => Err(Failure::Unavailable),
            }
        }
        Some(504) => Err(Failure::Timeout),
        _ => Err(Failure::Unavailable),
    }
}

/// What the filter does with a request once the revocation question is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// `failure_mode: open` let it through without an answer: count and mark it.
    AllowUnchecked,
    /// The stale answer was used (`failure_mode: stale`).
    AllowStale,
    Deny(Reason),
    /// A report-only route would refuse it: count, mark, let through.
    WouldDeny(Reason),
}

/// How a route acts on the revocation question: its failure mode, and whether it only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enforcement {
    pub failure_mode: FailureMode,
    pub report_only: bool,
}

impl Enforcement {
    /// A refusal for `reason`: enforced, or on a report-only route only reported.
    pub fn refusal(self, reason: Reason) -> Verdict {
        if self.report_only {
            Verdict::WouldDeny(reason)
        } else {
            Verdict::Deny(reason)
        }
    }
}

/// The verdict for an answer, or for a failure under the failure mode (with the stale entry, if
/// any); on a report-only route a refusal is only reported.
pub fn verdict(answer: Result<Known, Failure>, e: Enforcement, stale: Option<Known>) -> Verdict {
    let verdict = match (answer, e.failure_mode, stale) {
        (Ok(Known::Active), _, _) => Verdict::Allow,
        (Ok(Known::Revoked | Known::NoSession), _, _) => Verdict::Deny(Reason::Revoked),
        (Err(_), FailureMode::Open, _) => Verdict::AllowUnchecked,
        (Err(_), FailureMode::Stale, Some(Known::Active)) => Verdict::AllowStale,
        (Err(_), FailureMode::Stale, Some(Known::Revoked | Known::NoSession)) => Verdict::Deny(Reason::Revoked),
        (Err(_), _, _) => Verdict::Deny(Reason::RevocationUnavailable),
    };
    match verdict {
        Verdict::Deny(reason) => e.refusal(reason),
        verdict => verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity() -> Identity {
        Identity::from_claims(
            json!({"jti": "j 1", "sub": "alice", "iss": "https://i", "iat": 100, "exp": 2_000}).as_object().unwrap(),
        )
    }

    const F: Freshness = Freshness { ttl_ms: 1_000, stale_ms: 60_000 };

    #[test]
    fn identity_keys_and_slots() {
        let id = identity();
        assert_eq!(id.key, "3:j 1;5:alice;9:https://i;3:100;-;");
        let other = Identity::from_claims(
            json!({"jti": "j 1", "sub": "alice", "iss": "https://i", "iat": 101}).as_object().unwrap(),
        );
        assert_ne!(id.key, other.key);
        assert!(id.slot_key("ns", 10).starts_with("jwtguard.ns.rev."));
        assert_eq!(id.slot_key("ns", 1), "jwtguard.ns.rev.0");
        assert_eq!(id.slot_key("ns", 0), "jwtguard.ns.rev.0", "zero entries cannot divide by zero");
    }

    /// Every combination of adversarial claim values (separators, the old `\u{1f}`, lengths
    /// and prefixes that could run together, absent vs empty) gives a distinct key.
    #[test]
    fn identity_keys_are_injective() {
        let parts = [
            None,
            Some(""),
            Some("a"),
            Some("a;"),
            Some("1:a"),
            Some(";1:a;"),
            Some("-;"),
            Some("a\u{1f}b"),
            Some("}:"),
        ];
        let iats = [None, Some(json!(0)), Some(json!(1)), Some(json!(11))];
        let mut seen = std::collections::HashMap::new();
        let mut sessions = std::collections::HashMap::new();
        for jti in parts {
            for sub in parts {
                for iss in parts {
                    for sid in parts {
                        for iat in &iats {
                            let mut claims = Map::new();
                            for (name, v) in [("jti", jti), ("sub", sub), ("iss", iss), ("sid", sid)] {
                                if let Some(v) = v {
                                    claims.insert(name.into(), json!(v));
                                }
                            }
                            if let Some(iat) = iat {
                                claims.insert("iat".into(), iat.clone());
                            }
                            let id = Identity::from_claims(&claims);
                            let tuple = (jti, sub, iss, sid, iat.clone());
                            if let Some(previous) = seen.insert(id.key.clone(), tuple.clone()) {
                                panic!("{previous:?} and {tuple:?} share the key {:?}", id.key);
                            }
                            if let Some(key) = id.session_key() {
                                if let Some(previous) = sessions.insert(key.clone(), (iss, sid)) {
                                    assert_eq!(previous, (iss, sid), "two sessions share {key:?}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The identity reads NumericDates exactly as the claim checks do: a fractional `exp` or
    /// `iat` the filter accepts is kept, so revocation and cutoffs apply to it.
    #[test]
    fn identity_reads_dates_like_the_claim_checks() {
        for (value, expected) in [
            (json!(1_700_000_095), Some(1_700_000_095)),
            (json!(1_700_000_095.5), Some(1_700_000_095)),
            (json!(0), Some(0)),
            (json!(-1), None),
            (json!("1"), None),
            (json!(1e300), None),
        ] {
            let claims = json!({"exp": value, "iat": value});
            let claims = claims.as_object().unwrap();
            let accepted = crate::claims::numeric_date(claims, "exp");
            let id = Identity::from_claims(claims);
            assert_eq!((id.exp, id.iat), (expected, expected), "{value}");
            assert_eq!(accepted.ok().flatten(), expected, "{value}");
        }
    }

    #[test]
    fn only_identities_the_service_can_store_are_revocable() {
        let id = |c: serde_json::Value| Identity::from_claims(c.as_object().unwrap());
        assert!(id(json!({"jti": "é".repeat(256), "sub": "a b", "iss": "h".repeat(512)})).revocable());
        assert!(id(json!({})).revocable(), "absent claims are not refused here");
        for bad in [
            json!({"jti": "x".repeat(257)}),
            json!({"jti": ""}),
            json!({"sub": "a\u{7f}b"}),
            json!({"sub": "a\nb"}),
            json!({"iss": "h".repeat(513)}),
            json!({"sid": ""}),
            json!({"sid": "s\u{0}"}),
        ] {
            assert!(!id(bad.clone()).revocable(), "{bad}");
        }
    }

    #[test]
    fn entries_round_trip_and_garbage_is_ignored() {
        for known in [Known::Active, Known::Revoked, Known::NoSession] {
            let e = Entry { known, fetched_ms: 5, exp: 9, identity: "a|b".into() };
            assert_eq!(Entry::decode(&e.encode()), Some(e));
        }
        for bad in [&b""[..], b"X|1|2|id", b"A|x|2|id", b"A|1|2", b"\xff"] {
            assert_eq!(Entry::decode(bad), None);
        }
    }

    #[test]
    fn freshness() {
        let id = identity();
        let entry = |known, fetched_ms| Entry { known, fetched_ms, exp: 2_000, identity: id.key.clone() };
        let now = 1_000_000;
        assert_eq!(lookup(Some(&entry(Known::Active, now - 999)), &id, now, F, false), Lookup::Fresh(Known::Active));
        assert_eq!(lookup(Some(&entry(Known::Active, now - 1_000)), &id, now, F, false), Lookup::Stale(Known::Active));
        assert_eq!(lookup(Some(&entry(Known::Active, now - 60_000)), &id, now, F, false), Lookup::Miss);
        assert_eq!(
            lookup(Some(&entry(Known::Revoked, 0)), &id, now, F, false),
            Lookup::Fresh(Known::Revoked),
            "until exp"
        );
        assert_eq!(lookup(Some(&entry(Known::Revoked, 0)), &id, 2_000_000, F, false), Lookup::Miss, "never past exp");
        assert_eq!(
            lookup(Some(&entry(Known::NoSession, now - 1_500)), &id, now, F, false),
            Lookup::Stale(Known::NoSession),
            "a login may come"
        );
        let mut other = entry(Known::Revoked, now);
        other.identity = "someone else".into();
        assert_eq!(lookup(Some(&other), &id, now, F, false), Lookup::Miss, "another token in the same slot");
        assert_eq!(lookup(None, &id, now, F, false), Lookup::Miss);
        let old_active = entry(Known::Active, now - 59_000);
        assert_eq!(lookup(Some(&old_active), &id, now, F, true), Lookup::Fresh(Known::Active), "until exp with a feed");
        assert_eq!(
            lookup(Some(&entry(Known::NoSession, now - 1_500)), &id, now, F, true),
            Lookup::Stale(Known::NoSession),
            "a login may come"
        );
    }

    #[test]
    fn status_paths_are_encoded() {
        assert_eq!(
            status_path("/v1/status", &identity(), Mode::Denylist),
            "/v1/status?jti=j%201&sub=alice&iss=https%3A%2F%2Fi&iat=100"
        );
        let bare = Identity::from_claims(json!({"sub": "bob", "sid": "s/1"}).as_object().unwrap());
        assert_eq!(status_path("/s", &bare, Mode::Allowlist), "/s?sub=bob&sid=s%2F1&mode=allowlist");
    }

    /// The reader agrees with the wire type the service writes.
    #[test]
    fn reads_every_status_the_service_writes() {
        use jwtguard_wire::{InactiveReason, StatusResponse};
        for (answer, known) in [
            (StatusResponse { active: true, reason: None }, Known::Active),
            (StatusResponse { active: false, reason: Some(InactiveReason::Revoked) }, Known::Revoked),
            (StatusResponse { active: false, reason: Some(InactiveReason::SubjectRevoked) }, Known::Revoked),
            (StatusResponse { active: false, reason: Some(InactiveReason::NoSession) }, Known::NoSession),
            (StatusResponse { active: false, reason: Some(InactiveReason::SessionRevoked) }, Known::Revoked),
        ] {
            let body = serde_json::to_vec(&answer).unwrap();
            assert_eq!(read_answer(Some(200), Some(&body)), Ok(known), "{answer:?}");
        }
    }

    #[test]
    fn only_a_parsed_200_is_an_answer() {
        assert_eq!(read_answer(Some(200), Some(br#"{"active":true}"#)), Ok(Known::Active));
        assert_eq!(read_answer(Some(200), Some(br#"{"active":false,"reason":"revoked"}"#)), Ok(Known::Revoked));
        assert_eq!(read_answer(Some(200), Some(br#"{"active":false,"reason":"no_session"}"#)), Ok(Known::NoSession));
        assert_eq!(read_answer(Some(200), Some(b"upstream connect error")), Err(Failure::Unavailable));
        assert_eq!(read_answer(Some(200), None), Err(Failure::Unavailable));
        assert_eq!(read_answer(Some(503), Some(br#"{"active":true}"#)), Err(Failure::Unavailable));
        assert_eq!(read_answer(Some(500), Some(b"oops")), Err(Failure::Unavailable));
        assert_eq!(read_answer(Some(504), None), Err(Failure::Timeout));
        assert_eq!(read_answer(None, None), Err(Failure::Unavailable));
    }

    #[test]
    fn failure_policy() {
        use FailureMode::*;
        let e = |failure_mode| Enforcement { failure_mode, report_only: false };
        let down = Err(Failure::Unavailable);
        assert_eq!(verdict(Ok(Known::Active), e(Closed), None), Verdict::Allow);
        assert_eq!(verdict(Ok(Known::Revoked), e(Open), None), Verdict::Deny(Reason::Revoked));
        assert_eq!(verdict(down, e(Closed), Some(Known::Active)), Verdict::Deny(Reason::RevocationUnavailable));
        assert_eq!(verdict(down, e(Open), None), Verdict::AllowUnchecked);
        assert_eq!(verdict(down, e(Stale), Some(Known::Active)), Verdict::AllowStale);
        assert_eq!(verdict(down, e(Stale), Some(Known::Revoked)), Verdict::Deny(Reason::Revoked));
        assert_eq!(verdict(down, e(Stale), None), Verdict::Deny(Reason::RevocationUnavailable));
        // Report-only: the same decisions, refusals reported instead of enforced.
        let report = |failure_mode| Enforcement { failure_mode, report_only: true };
        assert_eq!(verdict(Ok(Known::Revoked), report(Open), None), Verdict::WouldDeny(Reason::Revoked));
        assert_eq!(verdict(down, report(Closed), None), Verdict::WouldDeny(Reason::RevocationUnavailable));
        assert_eq!(verdict(down, report(Open), None), Verdict::AllowUnchecked);
        assert_eq!(verdict(Ok(Known::Active), report(Closed), None), Verdict::Allow);
    }
}
