//! Remote JWKS, without host calls: the fetch schedule shared by every worker of one Envoy
//! (single-flight, refresh before expiry, backoff after failures, rate-limited refetch on an
//! unknown `kid`), how long old keys may still be served, and what a fetched document must be
//! to replace the good one.

use crate::keys::{self, Key};
use jsonwebtoken::Algorithm;

/// `remote_jwks` of a provider, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    pub cluster: String,
    /// The cluster of a discovered `jwks_uri` (`cluster` unless configured).
    pub jwks_cluster: String,
    pub authority: String,
    /// The JWKS path, or with `oidc_discovery` the discovery document's.
    pub path: String,
    pub oidc_discovery: bool,
    pub timeout_ms: u64,
    pub cache_duration_ms: u64,
    pub failed_refetch_ms: u64,
    /// Longest wait between retries after repeated failures.
    pub max_backoff_ms: u64,
    /// How long after `cache_duration` the last good keys are still served when refreshes fail.
    pub max_stale_ms: u64,
    /// How long a request may wait for keys (first fetch, or a refetch for an unknown `kid`).
    pub wait_ms: u64,
    /// At most one refetch for an unknown `kid` per this interval.
    pub unknown_kid_interval_ms: u64,
    pub max_bytes: usize,
    pub max_keys: usize,
}

/// Splits `http(s)://authority/path` into its authority and path.
pub fn split_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix("https://").or_else(|| uri.strip_prefix("http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (!authority.is_empty()).then(|| (authority.to_string(), path.to_string()))
}

/// A fetched JWKS that may replace the good one: within the size and key-count limits, parsed,
/// with at least one usable key, and together with the provider's `local` keys obeying every
/// rule a configured key set obeys (`keys::check_set`). A fetched document is public by
/// definition, so a secret (`oct`) key in it is never used. Keys not for signatures
/// (`use: enc`), secrets and malformed keys are skipped and reported; a document that fails as a
/// whole changes nothing.
pub fn accept_document(
    body: &[u8],
    allowed: &[Algorithm],
    cfg: &RemoteJwks,
    local: &[Key],
) -> Result<(Vec<Key>, Vec<String>), String> {
    accept_keys(body, allowed, cfg.max_bytes, cfg.max_keys, local)
}

/// `accept_document` with its limits given alone (the revocation service's key sets).
pub fn accept_keys(
    body: &[u8],
    allowed: &[Algorithm],
    max_bytes: usize,
    max_keys: usize,
    local: &[Key],
) -> Result<(Vec<Key>, Vec<String>), String> {
    if body.len() > max_bytes {
        return Err(format!("JWKS is {} bytes, over the {max_bytes} limit", body.len()));
    }
    let text = std::str::from_utf8(body).map_err(|_| "JWKS is not UTF-8".to_string())?;
    let parsed = keys::parse_jwks(text, allowed)?;
    if parsed.len() > max_keys {
        return Err(format!("JWKS has {} keys, over the {max_keys} limit", parsed.len()));
    }
    let (mut good, mut skipped) = (Vec::new(), Vec::new());
    for key in parsed {
        match key {
            Ok(k) if k.is_secret() => skipped.push(format!(
                "JWK {}: a secret (oct) key in a public key set",
                k.kid.as_deref().unwrap_or("(no kid)")
            )),
            Ok(k) => good.push(k),
            Err(e) => skipped.push(e),
        }
    }
    if good.is_empty() {
        return Err(format!("JWKS has no usable key ({})", skipped.join("; ")));
    }
    keys::check_set(local.iter().chain(&good))?;
    Ok((good, skipped))
}

/// The `jwks_uri` of an OpenID Provider configuration document, as (authority, path).
pub fn discovered_jwks_uri(body: &[u8], max_bytes: usize) -> Result<(String, String), String> {
    if body.len() > max_bytes {
        return Err("discovery document too large".into());
    }
    let doc = crate::strict_json::parse_object(body)?;
    let uri = doc.get("jwks_uri").and_then(|v| v.as_str()).ok_or("discovery document has no jwks_uri")?;
    split_uri(uri).ok_or_else(|| format!("jwks_uri {uri:?} is not an http(s) URL"))
}

/// The fetch schedule of one provider, shared by all workers (Envoy shared data, updated with
/// compare-and-swap so only one worker fetches at a time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchState {
    /// When the fetch in flight started; 0 when none is.
    pub in_flight_since_ms: u64,
    pub failures: u32,
    /// No fetch before this time (backoff after failures).
    pub next_attempt_ms: u64,
    /// When a request last asked for a refetch because of an unknown `kid`.
    pub last_kid_refetch_ms: u64,
    pub refetch_requested: bool,
    /// When the last good document was fetched; 0 before the first.
    pub fetched_ms: u64,
    /// When the last fetch ended, well or not: a request waiting for a refetch that ended after
    /// it parked has its answer, whichever worker fetched.
    pub completed_ms: u64,
}

impl FetchState {
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{}|{}|{}|{}|{}|{}|{}",
            self.in_flight_since_ms,
            self.failures,
            self.next_attempt_ms,
            self.last_kid_refetch_ms,
            u8::from(self.refetch_requested),
            self.fetched_ms,
            self.completed_ms
        )
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<FetchState> {
        let text = std::str::from_utf8(bytes).ok()?;
        let f: Vec<&str> = text.split('|').collect();
        let [a, b, c, d, e, g, h] = f.as_slice() else { return None };
        Some(FetchState {
            in_flight_since_ms: a.parse().ok()?,
            failures: b.parse().ok()?,
            next_attempt_ms: c.parse().ok()?,
            last_kid_refetch_ms: d.parse().ok()?,
            refetch_requested: *e == "1",
            fetched_ms: g.parse().ok()?,
            completed_ms: h.parse().ok()?,
        })
    }

    /// Whether a fetch should start now; if so, the state that claims it.
    pub fn claim(&self, now: u64, cfg: &RemoteJwks) -> Option<FetchState> {
        // A claim outlives its fetch's timeout only briefly: the VM that made it may be gone.
        let in_flight =
            self.in_flight_since_ms != 0 && now < self.in_flight_since_ms.saturating_add(cfg.timeout_ms + 250);
        if in_flight || now < self.next_attempt_ms {
            return None;
        }
        // Refresh a little before expiry, as jwt_authn does, so requests never see expired keys.
        let refresh_at =
            self.fetched_ms.saturating_add(cfg.cache_duration_ms.saturating_sub(cfg.cache_duration_ms.min(5_000) / 2));
        let due = self.fetched_ms == 0 || self.refetch_requested || now >= refresh_at;
        due.then(|| FetchState { in_flight_since_ms: now.max(1), ..self.clone() })
    }

    pub fn succeeded(&self, now: u64) -> FetchState {
        FetchState {
            in_flight_since_ms: 0,
            failures: 0,
            next_attempt_ms: 0,
            refetch_requested: self.asked_during_fetch(),
            fetched_ms: now,
            completed_ms: now,
            ..self.clone()
        }
    }

    /// After a failed fetch: retry after `failed_refetch_ms`, doubling up to `max_backoff_ms`.
    /// A refetch asked for by an unknown kid before the fetch started has had its answer (the
    /// next unknown kid may ask again once the rate limit allows).
    pub fn failed(&self, now: u64, cfg: &RemoteJwks) -> FetchState {
        let failures = self.failures.saturating_add(1);
        let backoff =
            cfg.failed_refetch_ms.saturating_mul(1u64 << failures.saturating_sub(1).min(20)).min(cfg.max_backoff_ms);
        FetchState {
            in_flight_since_ms: 0,
            failures,
            next_attempt_ms: now.saturating_add(backoff),
            refetch_requested: self.asked_during_fetch(),
            completed_ms: now,
            ..self.clone()
        }
    }

    /// Asks for a refetch because a token's `kid` is unknown; `None` if one was asked for too
    /// recently (a stream of random `kid`s must not become a stream of fetches).
    pub fn ask_for_kid(&self, now: u64, cfg: &RemoteJwks) -> Option<FetchState> {
        if self.last_kid_refetch_ms != 0 && now < self.last_kid_refetch_ms.saturating_add(cfg.unknown_kid_interval_ms) {
            return None;
        }
        Some(FetchState {
            last_kid_refetch_ms: now.max(1),
            refetch_requested: true,
            next_attempt_ms: 0,
            ..self.clone()
        })
    }

    /// A refetch asked for or a fetch under way: a request with an unknown `kid` that may not
    /// ask again (rate limit) can still wait for it, as the new key may be in it.
    pub fn fetch_pending(&self) -> bool {
        self.refetch_requested || self.in_flight_since_ms != 0
    }

    /// Whether an unknown `kid` asked for a refetch after the fetch in flight started: that
    /// fetch may predate the new key, so the ask stands for the next one. Otherwise a request
    /// that parked meanwhile would be refused when the older fetch ends.
    fn asked_during_fetch(&self) -> bool {
        self.refetch_requested && self.last_kid_refetch_ms > self.in_flight_since_ms
    }

    /// Whether a fetch ended at or after `since_ms` and none is pending: what a request that
    /// parked at `since_ms` for an unknown `kid` waited for.
    pub fn settled_since(&self, since_ms: u64) -> bool {
        self.completed_ms >= since_ms && !self.fetch_pending()
    }
}

/// How usable the last good keys are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySetAge {
    /// Never fetched.
    None,
    Fresh,
    /// Past `cache_duration` (refreshes failing), still within `max_stale_ms`: served, with a warning.
    Stale,
    /// Past the stale period: no longer served.
    Expired,
}

pub fn key_set_age(fetched_ms: u64, now: u64, cfg: &RemoteJwks) -> KeySetAge {
    if fetched_ms == 0 {
        KeySetAge::None
    } else if now < fetched_ms.saturating_add(cfg.cache_duration_ms) {
        KeySetAge::Fresh
    } else if now < fetched_ms.saturating_add(cfg.cache_duration_ms).saturating_add(cfg.max_stale_ms) {
        KeySetAge::Stale
    } else {
        KeySetAge::Expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::{ALL, EC_JWK};

    fn cfg() -> RemoteJwks {
        RemoteJwks {
            cluster: "idp".into(),
            jwks_cluster: "idp".into(),
            authority: "idp".into(),
            path: "/jwks".into(),
            oidc_discovery: false,
            timeout_ms: 1_000,
            cache_duration_ms: 600_000,
            failed_refetch_ms: 1_000,
            max_backoff_ms: 60_000,
            max_stale_ms: 3_600_000,
            wait_ms: 2_000,
            unknown_kid_interval_ms: 10_000,
            max_bytes: 65_536,
            max_keys: 3,
        }
    }

    #[test]
    fn uris() {
        assert_eq!(
            split_uri("https://idp.example:8443/a/jwks?x=1"),
            Some(("idp.example:8443".into(), "/a/jwks?x=1".into()))
        );
        assert_eq!(split_uri("http://idp"), Some(("idp".into(), "/".into())));
        assert_eq!(split_uri("ftp://idp/x"), None);
        assert_eq!(split_uri("https:///x"), None);
    }

    #[test]
    fn documents_must_be_sane_to_replace_the_good_one() {
        let good =
            format!(r#"{{"keys":[{EC_JWK},{{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}},{{"kty":"XYZ"}}]}}"#);
        let (keys, skipped) = accept_document(good.as_bytes(), ALL, &cfg(), &[]).unwrap();
        assert_eq!((keys.len(), skipped.len()), (1, 2), "enc and malformed keys skipped, reported");
        assert!(accept_document(b"<html>", ALL, &cfg(), &[]).is_err());
        assert!(accept_document(br#"{"keys":[]}"#, ALL, &cfg(), &[]).is_err(), "no usable key");
        assert!(accept_document(br#"{"keys":[{"kty":"XYZ"}]}"#, ALL, &cfg(), &[]).is_err());
        let many = format!(r#"{{"keys":[{EC_JWK},{EC_JWK},{EC_JWK},{EC_JWK}]}}"#);
        assert!(accept_document(many.as_bytes(), ALL, &cfg(), &[]).unwrap_err().contains("limit"));
        let huge = format!(r#"{{"keys":[{EC_JWK}],"pad":"{}"}}"#, "x".repeat(70_000));
        assert!(accept_document(huge.as_bytes(), ALL, &cfg(), &[]).unwrap_err().contains("bytes"));
        assert!(accept_document(&[0xff, 0xfe], ALL, &cfg(), &[]).is_err());
    }

    /// Every rule a configured key set obeys holds for a fetched one: each hostile key, beside
    /// a good one, is refused by the configuration and never used from a fetched document.
    #[test]
    fn fetched_key_sets_obey_every_local_rule() {
        let secret = r#"{"kty":"oct","kid":"s1","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}"#;
        let hostile = [
            ("a secret", secret.to_string()),
            ("private key material", EC_JWK.replace(r#""kid":"ec1""#, r#""kid":"ec2","d":"AAAA""#)),
            ("use enc", EC_JWK.replace(r#""kid":"ec1""#, r#""kid":"ec2","use":"enc""#)),
            ("alg that does not fit", EC_JWK.replace(r#""kid":"ec1""#, r#""kid":"ec2","alg":"HS256""#)),
            ("point off the curve", EC_JWK.replace(r#""kid":"ec1""#, r#""kid":"ec2""#).replace("UI8exy", "UI8exz")),
            ("RSA under 2048 bits", format!(r#"{{"kty":"RSA","kid":"r1","n":"{}","e":"AQAB"}}"#, "_".repeat(171))),
            ("duplicate kid", EC_JWK.to_string()),
        ];
        for (what, bad) in hostile {
            let doc = format!(r#"{{"keys":[{EC_JWK},{bad}]}}"#);
            let local =
                format!(r#"{{"providers":{{"p":{{"local_jwks":{{"inline_string":{}}}}}}}}}"#, serde_json::json!(doc));
            assert!(crate::config::Config::parse(local.as_bytes()).is_err(), "{what}: accepted in configuration");
            // Either refused whole (the good set stays) or the hostile key skipped.
            if let Ok((keys, skipped)) = accept_document(doc.as_bytes(), ALL, &cfg(), &[]) {
                assert_eq!(keys.len(), 1, "{what}: used from a fetched set");
                assert_eq!((keys[0].kid.as_deref(), skipped.len()), (Some("ec1"), 1), "{what}");
            }
            let alone = format!(r#"{{"keys":[{bad}]}}"#);
            if what != "duplicate kid" {
                assert!(accept_document(alone.as_bytes(), ALL, &cfg(), &[]).is_err(), "{what} alone replaced the set");
            }
        }
        // Fetched keys and the provider's configured ones form one set: no kid twice.
        let local = keys::parse_jwks(&format!(r#"{{"keys":[{EC_JWK}]}}"#), ALL).unwrap().remove(0).unwrap();
        let doc = format!(r#"{{"keys":[{}]}}"#, EC_JWK);
        assert!(accept_document(doc.as_bytes(), ALL, &cfg(), &[local]).unwrap_err().contains("duplicate kid"));
    }

    #[test]
    fn discovery() {
        let doc = br#"{"issuer":"https://idp","jwks_uri":"https://idp:8443/certs"}"#;
        assert_eq!(discovered_jwks_uri(doc, 1000), Ok(("idp:8443".into(), "/certs".into())));
        assert!(discovered_jwks_uri(br#"{"issuer":"x"}"#, 1000).is_err());
        assert!(discovered_jwks_uri(br#"{"jwks_uri":"file:///etc/passwd"}"#, 1000).is_err());
    }

    #[test]
    fn schedule() {
        let c = cfg();
        let s = FetchState::default();
        let claimed = s.claim(1_000, &c).expect("first fetch");
        assert!(claimed.claim(1_500, &c).is_none(), "single flight");
        assert!(claimed.claim(1_000 + 1_250, &c).is_some(), "a lost fetch is retried");
        let failed = claimed.failed(2_000, &c);
        assert_eq!(failed.next_attempt_ms, 3_000);
        assert!(failed.claim(2_500, &c).is_none(), "backoff");
        let failed_more = failed.failed(3_000, &c).failed(4_000, &c);
        assert_eq!(failed_more.next_attempt_ms, 4_000 + 4_000, "doubling");
        let mut long = failed_more.clone();
        for _ in 0..30 {
            long = long.failed(10_000, &c);
        }
        assert_eq!(long.next_attempt_ms, 10_000 + 60_000, "capped");
        let ok = claimed.succeeded(5_000);
        assert_eq!((ok.failures, ok.fetched_ms, ok.in_flight_since_ms), (0, 5_000, 0));
        assert!(ok.claim(6_000, &c).is_none(), "fresh");
        assert!(ok.claim(5_000 + 600_000 - 2_500, &c).is_some(), "refreshed shortly before expiry");
        assert_eq!(FetchState::decode(&failed_more.encode()), Some(failed_more));
        assert_eq!(FetchState::decode(b"1|2"), None);
    }

    #[test]
    fn unknown_kid_refetches_are_rate_limited() {
        let c = cfg();
        let ok = FetchState::default().succeeded(1_000);
        let asked = ok.ask_for_kid(2_000, &c).expect("first ask");
        assert!(asked.claim(2_000, &c).is_some());
        assert!(asked.ask_for_kid(5_000, &c).is_none(), "within the interval");
        assert!(asked.ask_for_kid(12_000, &c).is_some());
    }

    #[test]
    fn a_request_parked_for_a_kid_knows_when_its_refetch_ended() {
        let c = cfg();
        let ok = FetchState::default().succeeded(1_000);
        assert!(!ok.fetch_pending() && ok.settled_since(1_000) && !ok.settled_since(1_001));
        let asked = ok.ask_for_kid(2_000, &c).expect("ask");
        assert!(asked.fetch_pending() && !asked.settled_since(2_000), "asked, not fetched yet");
        let claimed = asked.claim(2_010, &c).expect("claim");
        assert!(claimed.fetch_pending() && !claimed.settled_since(2_000), "under way");
        assert!(claimed.succeeded(2_050).settled_since(2_000));
        assert!(claimed.failed(2_050, &c).settled_since(2_000), "a failed refetch is an answer too");
    }

    #[test]
    fn an_ask_during_a_fetch_waits_for_the_next_one() {
        let c = cfg();
        // A refresh under way since 2_000 (before the new key was published); a token with the
        // new kid parks and asks at 2_100.
        let refreshing = FetchState { in_flight_since_ms: 2_000, ..FetchState::default().succeeded(1_000) };
        let asked = refreshing.ask_for_kid(2_100, &c).expect("ask");
        for ended in [asked.succeeded(2_300), asked.failed(2_300, &c)] {
            assert!(ended.fetch_pending() && !ended.settled_since(2_100), "the older fetch is not its answer");
        }
        let next = asked.succeeded(2_300).claim(2_300, &c).expect("the next fetch starts at once");
        assert!(next.succeeded(2_600).settled_since(2_100) && !next.succeeded(2_600).fetch_pending());
    }

    #[test]
    fn stale_period() {
        let c = cfg();
        assert_eq!(key_set_age(0, 5, &c), KeySetAge::None);
        assert_eq!(key_set_age(1_000, 1_000 + 599_999, &c), KeySetAge::Fresh);
        assert_eq!(key_set_age(1_000, 1_000 + 600_000, &c), KeySetAge::Stale);
        assert_eq!(key_set_age(1_000, 1_000 + 600_000 + 3_600_000, &c), KeySetAge::Expired);
    }
}
