//! One request's authentication, start to finish, without touching the host: pick the rule,
//! extract and verify each provider's token (through the verified-token cache), evaluate the
//! requirement tree and the claim requirements, and say what the filter must do.

use crate::cache::TokenCache;
use crate::claims::{self, Lifetime};
use crate::config::{Config, Provider, Requirement};
use crate::extract::{self, Found, Location};
use crate::host_crypto::HostCrypto;
use crate::jws;
use crate::keys::Key;
use crate::reason::Reason;
use crate::revocation::{Enforcement, Identity};
use crate::rules;
use crate::signature::{self, Backend};
use crate::strict_json;
use serde_json::{Map, Value};
use std::rc::Rc;

/// A token that passed every check of its provider.
#[derive(Debug)]
pub struct Verified {
    pub claims: Map<String, Value>,
    /// What a revocation check asks about, computed once per token.
    pub identity: Identity,
    pub lifetime: Lifetime,
    /// Claim and payload headers for the upstream, computed once per token.
    pub headers: Vec<(String, String)>,
    /// Which provider verified it (its index in `Config::providers`).
    pub provider: usize,
}

/// The request as the filter sees it.
pub struct Request<'a> {
    pub method: &'a str,
    /// `:path`, query included.
    pub path: &'a str,
    /// (name, value) pairs, names lower-case.
    pub headers: &'a [(String, String)],
}

#[derive(Debug)]
pub enum Decision {
    /// No rule requires a token here.
    Pass,
    Allow {
        /// Headers to set upstream.
        headers: Vec<(String, String)>,
        /// Token headers to remove (providers with `forward: false`).
        strip: Vec<String>,
        /// The verified tokens, for later checks such as revocation.
        tokens: Vec<Rc<Verified>>,
        /// Check the first token's revocation status, enforced (or reported) so; `None`: no check.
        revocation: Option<Enforcement>,
    },
    /// A report-only route would refuse the request for `reason`: count it, mark it upstream,
    /// let it through (without waiting for keys).
    Report { reason: Reason },
    /// A logout route with a verified token: revoke it (or, `everywhere`, its subject) and answer 204.
    Logout { token: Rc<Verified>, everywhere: bool },
    Deny {
        reason: Reason,
        /// The value a failed claim requirement wanted, for the challenge's `scope`.
        scope: Option<String>,
    },
    /// Denied for want of keys (`UnknownKey` or `KeysUnavailable`, the request's reason), which
    /// a remote JWKS may still bring: `providers` are the ones whose keys were missing, each with
    /// its own reason, so the request waits for (and asks refetches of) those providers only.
    AwaitKeys { reason: Reason, providers: Vec<(usize, Reason)> },
}

/// What happened along the way, for the filter's stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub cache_hits: u32,
    pub cache_misses: u32,
    pub host_verifications: u32,
    pub wasm_verifications: u32,
}

enum Outcome {
    Missing,
    Failed(Reason),
    Verified(Rc<Verified>, Location),
}

pub struct Authenticator {
    pub config: Config,
    caches: Vec<TokenCache<Rc<Verified>>>,
    /// Each provider's keys now: local ones, plus the last good remote set.
    keys: Vec<Vec<Key>>,
    /// What a logout route requires where no rule says: a token of any provider.
    any_provider: Rc<Requirement>,
    /// One request's working lists, kept for their room: emptied after each request.
    scratch: Scratch,
}

/// What `decide` works in: each provider's outcome, and the providers whose tokens verified.
#[derive(Default)]
struct Scratch {
    outcomes: Vec<Option<Outcome>>,
    verified: Vec<usize>,
}

impl Authenticator {
    pub fn new(config: Config) -> Self {
        let caches = config.providers.iter().map(|p| TokenCache::new(p.jwt_cache_size)).collect();
        let keys = config.providers.iter().map(|p| p.keys.clone()).collect();
        let any_provider = Rc::new(Requirement::Any((0..config.providers.len()).map(Requirement::Provider).collect()));
        Authenticator { config, caches, keys, any_provider, scratch: Scratch::default() }
    }

    /// Replaces provider `i`'s remote keys (its local ones stay); an empty set means none usable.
    /// Its verified-token cache is emptied: a token is good only while a key we hold vouches for it.
    pub fn set_remote_keys(&mut self, i: usize, remote: Vec<Key>) {
        if let (Some(p), Some(slot), Some(cache)) =
            (self.config.providers.get(i), self.keys.get_mut(i), self.caches.get_mut(i))
        {
            *slot = p.keys.iter().cloned().chain(remote).collect();
            *cache = TokenCache::new(p.jwt_cache_size);
        }
    }

    pub fn authenticate(
        &mut self,
        req: &Request,
        now: u64,
        host: Option<&dyn HostCrypto>,
        tally: &mut Tally,
    ) -> Decision {
        let rule_index = self.config.rules.iter().position(|r| r.matcher.matches(req.method, req.path));
        let logout = self.logout_kind(req);
        let report_only = rule_index.is_some_and(|i| self.config.rules[i].report_only) && logout.is_none();
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.outcomes.resize_with(self.config.providers.len(), || None);
        let decision = self.decide(req, rule_index, logout, now, host, tally, &mut scratch);
        scratch.outcomes.clear();
        scratch.verified.clear();
        self.scratch = scratch;
        match decision {
            Decision::Deny { reason, .. } | Decision::AwaitKeys { reason, .. } if report_only => {
                Decision::Report { reason }
            }
            Decision::Allow { headers, strip, tokens, revocation } => Decision::Allow {
                headers,
                strip,
                tokens,
                revocation: revocation.map(|e| Enforcement { report_only, ..e }),
            },
            decision => decision,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        req: &Request,
        rule_index: Option<usize>,
        logout: Option<bool>,
        now: u64,
        host: Option<&dyn HostCrypto>,
        tally: &mut Tally,
        scratch: &mut Scratch,
    ) -> Decision {
        let rule = rule_index.map(|i| &self.config.rules[i]);
        let requirement = match (rule.and_then(|r| r.requires.clone()), logout) {
            (Some(requirement), _) => requirement,
            // A logout route needs a token even where no rule asks for one: any provider's.
            (None, Some(_)) => self.any_provider.clone(),
            (None, None) => return Decision::Pass,
        };
        let Scratch { outcomes, verified } = scratch;
        let mut run = Run { auth: self, req, now, host, tally, outcomes };
        match run.evaluate(&requirement, verified) {
            Ok(()) => {}
            Err(reason @ (Reason::UnknownKey | Reason::KeysUnavailable)) => {
                let providers = outcomes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, o)| match o {
                        Some(Outcome::Failed(r @ (Reason::UnknownKey | Reason::KeysUnavailable))) => Some((i, *r)),
                        _ => None,
                    })
                    .collect();
                return Decision::AwaitKeys { reason, providers };
            }
            Err(reason) => return Decision::Deny { reason, scope: None },
        };
        let rule = rule_index.map(|i| &self.config.rules[i]);
        let required_claims = rule.map_or(&[][..], |r| &r.required_claims[..]);
        if let Some(failed) = required_claims
            .iter()
            .find(|c| !verified.iter().any(|&i| claims_of(outcomes, i).is_some_and(|m| c.is_met(m))))
        {
            if verified.is_empty() {
                return Decision::Deny { reason: Reason::Missing, scope: None };
            }
            let scope = (failed.claim_path == ["scope"]).then(|| failed.contains.clone());
            return Decision::Deny { reason: Reason::InsufficientScope, scope };
        }
        let mut headers = Vec::new();
        let mut strip = Vec::new();
        let mut tokens = Vec::new();
        for &i in verified.iter() {
            if let Some(Outcome::Verified(v, location)) = &outcomes[i] {
                headers.extend(v.headers.iter().cloned());
                let provider = &self.config.providers[i];
                if let (false, Location::Header(source)) = (provider.forward, location) {
                    if let Some(source) = provider.sources.headers.get(*source) {
                        strip.push(source.name.clone());
                    }
                }
                tokens.push(v.clone());
            }
        }
        if let Some(everywhere) = logout {
            return match tokens.into_iter().next() {
                Some(token) => Decision::Logout { token, everywhere },
                None => Decision::Deny { reason: Reason::Missing, scope: None },
            };
        }
        // Here a rule matched (without one only a logout route gets this far, and it returned).
        let revocation =
            rule.and_then(|r| r.revocation).map(|failure_mode| Enforcement { failure_mode, report_only: false });
        Decision::Allow { headers, strip, tokens, revocation }
    }

    /// `Some(everywhere)` for a `POST` to one of the configured logout routes.
    fn logout_kind(&self, req: &Request) -> Option<bool> {
        let r = self.config.revocation.as_ref()?;
        if req.method != "POST" {
            return None;
        }
        let path = req.path.split(['?', '#']).next().unwrap_or("");
        if r.logout_path.as_deref() == Some(path) {
            Some(false)
        } else if r.logout_all_path.as_deref() == Some(path) {
            Some(true)
        } else {
            None
        }
    }
}

fn claims_of(outcomes: &[Option<Outcome>], i: usize) -> Option<&Map<String, Value>> {
    match outcomes.get(i) {
        Some(Some(Outcome::Verified(v, _))) => Some(&v.claims),
        _ => None,
    }
}

/// The state of one evaluation: each provider's token is checked at most once per request.
struct Run<'a, 'r> {
    auth: &'a mut Authenticator,
    req: &'a Request<'r>,
    now: u64,
    host: Option<&'a dyn HostCrypto>,
    tally: &'a mut Tally,
    outcomes: &'a mut Vec<Option<Outcome>>,
}

impl Run<'_, '_> {
    /// `Ok` with the indexes of the providers whose tokens verified added to `verified`, or
    /// the reason to deny. On `Err` `verified` may hold some of them: an `Any` that goes on to
    /// another alternative takes them out again, and a failed evaluation uses none.
    fn evaluate(&mut self, requirement: &Requirement, verified: &mut Vec<usize>) -> Result<(), Reason> {
        match requirement {
            Requirement::Provider(i) => match self.outcome(*i) {
                Outcome::Verified(..) => {
                    verified.push(*i);
                    Ok(())
                }
                Outcome::Missing => Err(Reason::Missing),
                Outcome::Failed(reason) => Err(*reason),
            },
            // Every requirement is evaluated even after one failed, so a request that lacks keys
            // of several providers waits for (and asks refetches of) all of them at once.
            Requirement::All(list) => {
                let mut worst: Option<Reason> = None;
                for r in list {
                    match self.evaluate(r, verified) {
                        Ok(()) => {}
                        Err(reason) if worst.is_none_or(|w| reason.severity() > w.severity()) => worst = Some(reason),
                        Err(_) => {}
                    }
                }
                worst.map_or(Ok(()), Err)
            }
            Requirement::Any(list) => {
                let mut worst = Reason::Missing;
                let before = verified.len();
                for r in list {
                    match self.evaluate(r, verified) {
                        Ok(()) => return Ok(()),
                        Err(reason) if reason.severity() > worst.severity() => worst = reason,
                        Err(_) => {}
                    }
                    verified.truncate(before);
                }
                Err(worst)
            }
            // Both look at every provider: a present token must still be a good one
            // (allow_missing), or is used only if it verifies (allow_missing_or_failed).
            Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
                for i in 0..self.auth.config.providers.len() {
                    match self.outcome(i) {
                        Outcome::Verified(..) => verified.push(i),
                        Outcome::Missing => {}
                        Outcome::Failed(reason) if *requirement == Requirement::AllowMissing => return Err(*reason),
                        Outcome::Failed(_) => {}
                    }
                }
                Ok(())
            }
        }
    }

    fn outcome(&mut self, i: usize) -> &Outcome {
        if self.outcomes[i].is_none() {
            let outcome = self.check_provider(i);
            self.outcomes[i] = Some(outcome);
        }
        self.outcomes[i].as_ref().unwrap_or(&Outcome::Missing)
    }

    fn check_provider(&mut self, i: usize) -> Outcome {
        let provider = &self.auth.config.providers[i];
        let (token, location) = match extract::extract(&provider.sources, self.req.headers, self.req.path) {
            Found::None => return Outcome::Missing,
            Found::One(token, location) => (token, location),
            Found::Several => return Outcome::Failed(Reason::MultipleTokens),
        };
        if token.len() > self.auth.config.max_token_bytes {
            return Outcome::Failed(Reason::Malformed);
        }
        let cache = &mut self.auth.caches[i];
        if let Some(v) = cache.get(token, self.now) {
            self.tally.cache_hits += 1;
            return match v.lifetime.check(self.now, provider.policy.clock_skew_seconds) {
                Ok(()) => Outcome::Verified(v, location),
                Err(reason) => Outcome::Failed(reason),
            };
        }
        if provider.jwt_cache_size > 0 {
            self.tally.cache_misses += 1;
        }
        match verify_token(provider, i, &self.auth.keys[i], token, self.now, self.host, self.tally) {
            Ok(v) => {
                let v = Rc::new(v);
                if let Some(exp) = v.lifetime.exp {
                    cache.insert(token, v.clone(), exp, self.now);
                }
                Outcome::Verified(v, location)
            }
            Err(reason) => Outcome::Failed(reason),
        }
    }
}

/// Parse, issuer, signature, claims — in that order, as `jwt_authn` does. `keys` are the
/// provider's keys now (its local keys and, with remote JWKS, the last good fetched set).
pub fn verify_token(
    provider: &Provider,
    index: usize,
    keys: &[Key],
    token: &str,
    now: u64,
    host: Option<&dyn HostCrypto>,
    tally: &mut Tally,
) -> Result<Verified, Reason> {
    let jws = jws::parse(token)?;
    let claims = strict_json::parse_object(&jws.payload).map_err(|_| Reason::Malformed)?;
    claims::check_issuer(&claims, &provider.policy)?;
    if keys.is_empty() {
        return Err(Reason::KeysUnavailable); // remote JWKS not fetched yet, or expired
    }
    let verdict = signature::verify(keys, &jws, host);
    match verdict.backend {
        Some(Backend::Host) => tally.host_verifications += 1,
        Some(Backend::Wasm) => tally.wasm_verifications += 1,
        None => {}
    }
    if !verdict.valid {
        // No key fitted: with a remote JWKS the key may be new (rotation), so say so.
        let unknown = verdict.backend.is_none() && provider.remote_jwks.is_some();
        return Err(if unknown { Reason::UnknownKey } else { Reason::BadSignature });
    }
    let lifetime = claims::check(&claims, jws.typ.as_deref(), &provider.policy, now)?;
    let headers = upstream_headers(provider, &claims, jws.payload_b64);
    let identity = Identity::from_claims(&claims);
    Ok(Verified { claims, identity, lifetime, headers, provider: index })
}

fn upstream_headers(provider: &Provider, claims: &Map<String, Value>, payload_b64: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = provider
        .claim_to_headers
        .iter()
        .filter_map(|c| {
            let value = header_value(rules::lookup(claims, &c.claim_path)?)?;
            Some((c.header_name.clone(), value))
        })
        .collect();
    if let Some(name) = &provider.forward_payload_header {
        headers.push((name.clone(), payload_b64.to_string()));
    }
    headers
}

/// A claim as a header value: scalars as text, arrays joined with `,`; objects are not sent.
/// A value with control characters is dropped, so no claim can inject a header (`\r\n`); an
/// empty one too, as Envoy's dynamic-module ABI cannot set an empty value (both builds alike).
fn header_value(value: &Value) -> Option<String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let text = match value {
        Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>()?.join(","),
        other => scalar(other)?,
    };
    let safe = !text.is_empty() && text.len() <= 8192 && !text.chars().any(|c| c.is_control());
    safe.then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::FailureMode;
    use jsonwebtoken::{Algorithm, EncodingKey};
    use jwtguard_demo::tokens::sign_raw;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const A: &str = "secret-of-provider-a-at-least-32-bytes";
    const B: &str = "secret-of-provider-b-at-least-32-bytes";

    fn authenticator() -> Authenticator {
        let config = json!({
            "providers": {
                "a": {"issuer": "ia", "hmac_secrets": [{"secret": A}], "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}]},
                "b": {"issuer": "ib", "hmac_secrets": [{"secret": B}], "from_headers": [{"name": "x-b"}], "forward": true}
            },
            "rules": [
                {"match": {"prefix": "/public"}},
                {"match": {"prefix": "/any"}, "requires": {"requires_any": {"requirements": [{"provider_name": "a"}, {"provider_name": "b"}]}}},
                {"match": {"prefix": "/all"}, "requires": {"requires_all": {"requirements": [{"provider_name": "a"}, {"provider_name": "b"}]}}},
                {"match": {"prefix": "/optional"}, "requires": {"allow_missing": {}}},
                {"match": {"prefix": "/lenient"}, "requires": {"allow_missing_or_failed": {}}},
                {"match": {"prefix": "/nested"}, "requires": {"requires_any": {"requirements": [
                    {"requires_all": {"requirements": [{"provider_name": "a"}, {"provider_name": "b"}]}},
                    {"provider_name": "a"}]}}},
                {"match": {"prefix": "/health"}, "requires": {"provider_name": "a"}, "revocation": {"disabled": true}},
                {"match": {"prefix": "/admin"}, "requires": {"provider_name": "a"}, "revocation": {"failure_mode": "closed"},
                 "required_claims": [{"claim_name": "scope", "contains": "admin"}]},
                {"match": {"prefix": "/trial"}, "requires": {"provider_name": "a"}, "report_only": true,
                 "required_claims": [{"claim_name": "scope", "contains": "admin"}]},

                {"match": {"prefix": "/api"}, "requires": {"provider_name": "a"}}
            ],
            "revocation": {"cluster": "rev", "authority": "rev", "failure_mode": "open", "revoke_credential": "w",
                           "logout_path": "/logout", "logout_all_path": "/logout-all"}
        });
        Authenticator::new(Config::parse(config.to_string().as_bytes()).unwrap())
    }

    fn token(secret: &str, iss: &str, extra: serde_json::Value) -> String {
        let mut claims = json!({"iss": iss, "sub": "alice", "exp": NOW + 60});
        claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        sign_raw(
            r#"{"alg":"HS256"}"#,
            &claims.to_string(),
            &EncodingKey::from_secret(secret.as_bytes()),
            Algorithm::HS256,
        )
    }

    fn run(auth: &mut Authenticator, method: &str, path: &str, headers: &[(&str, &str)]) -> Decision {
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        auth.authenticate(&Request { method, path, headers: &headers }, NOW, None, &mut Tally::default())
    }

    fn denied(d: &Decision) -> Option<Reason> {
        match d {
            Decision::Deny { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// A report-only route refuses nothing: what it would refuse is a `Report` with the reason
    /// enforcement gives, a verified token is allowed and marked so that a revocation is only
    /// reported too; logout routes are never report-only.
    #[test]
    fn report_only_routes_report_what_enforcement_would_refuse() {
        let mut auth = authenticator();
        let admin = format!("Bearer {}", token(A, "ia", json!({"scope": "admin"})));
        let reader = format!("Bearer {}", token(A, "ia", json!({"scope": "read"})));
        let expired = format!("Bearer {}", token(A, "ia", json!({"exp": NOW - 3600})));
        let forged = format!("Bearer {}", token(B, "ia", json!({})));
        for (headers, reason) in [
            (vec![], Reason::Missing),
            (vec![("authorization", reader.as_str())], Reason::InsufficientScope),
            (vec![("authorization", expired.as_str())], Reason::Expired),
            (vec![("authorization", forged.as_str())], Reason::BadSignature),
        ] {
            let enforced = denied(&run(&mut auth, "GET", "/admin", &headers));
            assert_eq!(enforced, Some(reason), "/admin {headers:?}");
            match run(&mut auth, "GET", "/trial", &headers) {
                Decision::Report { reason: reported } => assert_eq!(reported, reason, "{headers:?}"),
                _ => panic!("{headers:?}: not reported"),
            }
        }
        let Decision::Allow { revocation, headers, .. } = run(&mut auth, "GET", "/trial", &[("authorization", &admin)])
        else {
            panic!("allowed")
        };
        assert_eq!(headers, vec![("x-sub".to_string(), "alice".to_string())]);
        assert_eq!(revocation, Some(Enforcement { failure_mode: FailureMode::Open, report_only: true }));
        // A logout route under a report-only rule (here a catch-all one) still needs its token.
        let config = json!({
            "providers": {"a": {"issuer": "ia", "hmac_secrets": [{"secret": A}]}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "a"}, "report_only": true}],
            "revocation": {"cluster": "rev", "authority": "rev", "revoke_credential": "w", "logout_path": "/logout"}
        });
        let mut all_report_only = Authenticator::new(Config::parse(config.to_string().as_bytes()).unwrap());
        assert!(matches!(run(&mut all_report_only, "GET", "/x", &[]), Decision::Report { reason: Reason::Missing }));
        let logout = run(&mut all_report_only, "POST", "/logout", &[]);
        assert!(matches!(logout, Decision::Deny { reason: Reason::Missing, .. }), "a logout is never only reported");
        assert!(auth.config.output_headers.contains(&crate::config::WOULD_DENY_HEADER.to_string()));
    }

    /// A request waits only for the providers whose keys it lacks, each with its own reason.
    #[test]
    fn waiting_for_keys_names_only_the_providers_that_lack_them() {
        let remote = |iss: &str| json!({"issuer": iss, "remote_jwks": {"cluster": "idp", "uri": "https://idp/keys"}});
        let config = json!({
            "providers": {"a": {"issuer": "ia", "hmac_secrets": [{"secret": A}]}, "r1": remote("i1"), "r2": remote("i2"), "r3": {"remote_jwks": {"cluster": "idp", "uri": "https://idp/k3"}}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "a"}, {"provider_name": "r1"}, {"provider_name": "r2"}]}}}]
        });
        let mut auth = Authenticator::new(Config::parse(config.to_string().as_bytes()).unwrap());
        let index = |name: &str| auth.config.providers.iter().position(|p| p.name == name).unwrap();
        let (r1, r2) = (index("r1"), index("r2"));
        let bearer = format!("Bearer {}", token(A, "i2", json!({})));
        let Decision::AwaitKeys { reason, providers } = run(&mut auth, "GET", "/x", &[("authorization", &bearer)])
        else {
            panic!("should wait for keys")
        };
        assert_eq!((reason, providers), (Reason::KeysUnavailable, vec![(r2, Reason::KeysUnavailable)]));
        // With r1's keys in place but not the token's kid, r1 waits for a refetch; r2 is not asked.
        let ec = crate::keys::parse_jwks(
            &format!(r#"{{"keys":[{}]}}"#, crate::keys::tests::EC_JWK),
            crate::config::ALL_ALGORITHMS,
        )
        .unwrap()
        .remove(0)
        .unwrap();
        auth.set_remote_keys(r1, vec![ec]);
        let other_kid = sign_raw(
            r#"{"alg":"ES256","kid":"new"}"#,
            &json!({"iss": "i1", "exp": NOW + 60}).to_string(),
            &EncodingKey::from_secret(b"unused"),
            Algorithm::HS256,
        );
        let bearer = format!("Bearer {other_kid}");
        let Decision::AwaitKeys { providers, .. } = run(&mut auth, "GET", "/x", &[("authorization", &bearer)]) else {
            panic!("should wait for a refetch")
        };
        assert_eq!(providers, vec![(r1, Reason::UnknownKey)]);
    }

    /// `requires_all`: every provider lacking keys is named, not only the first.
    #[test]
    fn requires_all_names_every_provider_that_lacks_keys() {
        let remote = |iss: &str| json!({"issuer": iss, "remote_jwks": {"cluster": "idp", "uri": "https://idp/keys"}, "from_headers": [{"name": format!("x-{iss}")}]});
        let config = json!({
            "providers": {"r1": remote("i1"), "r2": remote("i2")},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_all": {"requirements": [
                {"provider_name": "r1"}, {"provider_name": "r2"}]}}}]
        });
        let mut auth = Authenticator::new(Config::parse(config.to_string().as_bytes()).unwrap());
        let (t1, t2) = (token(A, "i1", json!({})), token(A, "i2", json!({})));
        let Decision::AwaitKeys { providers, .. } = run(&mut auth, "GET", "/", &[("x-i1", &t1), ("x-i2", &t2)]) else {
            panic!("should wait for keys")
        };
        assert_eq!(providers, vec![(0, Reason::KeysUnavailable), (1, Reason::KeysUnavailable)]);
    }

    #[test]
    fn unmatched_and_public_routes_pass() {
        let mut auth = authenticator();
        assert!(matches!(run(&mut auth, "GET", "/elsewhere", &[]), Decision::Pass));
        assert!(matches!(run(&mut auth, "GET", "/public/x", &[("authorization", "Bearer junk")]), Decision::Pass));
    }

    #[test]
    fn allowed_requests_carry_headers_strips_and_the_rules_failure_mode() {
        let mut auth = authenticator();
        let t = token(A, "ia", json!({}));
        let bearer = format!("Bearer {t}");
        let Decision::Allow { headers, strip, tokens, revocation } =
            run(&mut auth, "GET", "/api", &[("authorization", &bearer)])
        else {
            panic!("not allowed")
        };
        assert_eq!(headers, vec![("x-sub".to_string(), "alice".to_string())]);
        assert_eq!(strip, vec!["authorization".to_string()], "forward: false");
        assert_eq!(tokens[0].identity.sub.as_deref(), Some("alice"));
        assert_eq!(
            revocation,
            Some(Enforcement { failure_mode: FailureMode::Open, report_only: false }),
            "the top-level failure mode"
        );
        let Decision::Allow { revocation, .. } = run(&mut auth, "GET", "/health", &[("authorization", &bearer)]) else {
            panic!()
        };
        assert_eq!(revocation, None, "disabled on this rule");
        let admin = format!("Bearer {}", token(A, "ia", json!({"scope": "admin"})));
        let Decision::Allow { revocation, .. } = run(&mut auth, "GET", "/admin", &[("authorization", &admin)]) else {
            panic!()
        };
        assert_eq!(
            revocation,
            Some(Enforcement { failure_mode: FailureMode::Closed, report_only: false }),
            "the rule's own"
        );
        assert_eq!(
            denied(&run(&mut auth, "GET", "/admin", &[("authorization", &bearer)])),
            Some(Reason::InsufficientScope)
        );
    }

    #[test]
    fn requirement_trees() {
        let mut auth = authenticator();
        let (a, b) = (format!("Bearer {}", token(A, "ia", json!({}))), token(B, "ib", json!({})));
        let bad_a = format!("Bearer {}", token(B, "ia", json!({})));
        assert!(matches!(run(&mut auth, "GET", "/any", &[("x-b", &b)]), Decision::Allow { .. }));
        assert_eq!(denied(&run(&mut auth, "GET", "/any", &[])), Some(Reason::Missing));
        assert_eq!(
            denied(&run(&mut auth, "GET", "/any", &[("authorization", &bad_a)])),
            Some(Reason::BadSignature),
            "a bad token says more than missing"
        );
        assert_eq!(denied(&run(&mut auth, "GET", "/all", &[("authorization", &a)])), Some(Reason::Missing));
        let Decision::Allow { tokens, strip, .. } =
            run(&mut auth, "GET", "/all", &[("authorization", &a), ("x-b", &b)])
        else {
            panic!()
        };
        assert_eq!((tokens.len(), strip.len()), (2, 1), "b forwards its token");
        assert!(matches!(run(&mut auth, "GET", "/optional", &[]), Decision::Allow { .. }));
        assert_eq!(
            denied(&run(&mut auth, "GET", "/optional", &[("authorization", &bad_a)])),
            Some(Reason::BadSignature)
        );
        let Decision::Allow { tokens, .. } =
            run(&mut auth, "GET", "/lenient", &[("authorization", &bad_a), ("x-b", &b)])
        else {
            panic!()
        };
        assert_eq!(tokens.len(), 1, "the failed token is ignored, the good one used");
    }

    /// An alternative of `requires_any` that failed leaves nothing behind: here the `requires_all`
    /// verified a's token before b's was missing, and the second alternative verified it again.
    #[test]
    fn a_failed_alternative_adds_no_token() {
        let mut auth = authenticator();
        let a = format!("Bearer {}", token(A, "ia", json!({})));
        for _ in 0..2 {
            let Decision::Allow { tokens, headers, .. } = run(&mut auth, "GET", "/nested", &[("authorization", &a)])
            else {
                panic!("not allowed")
            };
            assert_eq!(tokens.len(), 1);
            assert_eq!(headers, vec![("x-sub".to_string(), "alice".to_string())]);
        }
    }

    /// A provider with `forward: false` strips the header its token came in, of several sources.
    #[test]
    fn the_token_is_stripped_from_the_header_it_came_in() {
        let config = json!({
            "providers": {"a": {"issuer": "ia", "hmac_secrets": [{"secret": A}],
                                "from_headers": [{"name": "x-first"}, {"name": "x-second", "value_prefix": "T "}]}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "a"}}]
        });
        let mut auth = Authenticator::new(Config::parse(config.to_string().as_bytes()).unwrap());
        let t = token(A, "ia", json!({}));
        for (header, value, stripped) in [("x-first", t.clone(), "x-first"), ("x-second", format!("T {t}"), "x-second")]
        {
            let Decision::Allow { strip, .. } = run(&mut auth, "GET", "/", &[(header, &value)]) else {
                panic!("not allowed")
            };
            assert_eq!(strip, vec![stripped.to_string()]);
        }
    }

    #[test]
    fn logout_routes_need_a_token_even_without_a_rule() {
        let mut auth = authenticator();
        let t = format!("Bearer {}", token(B, "ib", json!({"jti": "j"})));
        assert_eq!(denied(&run(&mut auth, "POST", "/logout", &[])), Some(Reason::Missing));
        // No rule covers /logout; a token of any provider (here b, via its own header) will do.
        let b = token(B, "ib", json!({"jti": "j"}));
        assert!(matches!(
            run(&mut auth, "POST", "/logout", &[("x-b", &b)]),
            Decision::Logout { everywhere: false, .. }
        ));
        assert!(matches!(
            run(&mut auth, "POST", "/logout-all?x=1", &[("x-b", &b)]),
            Decision::Logout { everywhere: true, .. }
        ));
        assert!(
            matches!(run(&mut auth, "GET", "/logout", &[("authorization", &t)]), Decision::Pass),
            "only POST logs out"
        );
    }

    #[test]
    fn a_cached_token_still_expires() {
        let mut auth = authenticator();
        let short = format!("Bearer {}", token(A, "ia", json!({"exp": NOW + 10})));
        let request = |auth: &mut Authenticator, now: u64, tally: &mut Tally| {
            let headers = vec![("authorization".to_string(), short.clone())];
            auth.authenticate(&Request { method: "GET", path: "/api", headers: &headers }, now, None, tally)
        };
        let mut tally = Tally::default();
        assert!(matches!(request(&mut auth, NOW, &mut tally), Decision::Allow { .. }));
        assert!(matches!(request(&mut auth, NOW + 5, &mut tally), Decision::Allow { .. }));
        assert_eq!((tally.cache_misses, tally.cache_hits), (1, 1));
        // Past exp + 60 s skew: refused although it was cached.
        assert_eq!(denied(&request(&mut auth, NOW + 71, &mut tally)), Some(Reason::Expired));
    }

    #[test]
    fn header_values() {
        assert_eq!(header_value(&json!("a b")), Some("a b".into()));
        assert_eq!(header_value(&json!("")), None, "empty: not sent, in either build");
        assert_eq!(header_value(&json!([])), None);
        assert_eq!(header_value(&json!(["a", 1, true])), Some("a,1,true".into()));
        assert_eq!(header_value(&json!(5)), Some("5".into()));
        assert_eq!(header_value(&json!({"a": 1})), None);
        assert_eq!(header_value(&json!([{"a": 1}])), None);
        assert_eq!(header_value(&json!("x\r\nx-admin: 1")), None);
        assert_eq!(header_value(&json!("nul\0")), None);
    }
}
