//! The plugin configuration: parsed and validated once, in `jwt_authn`'s vocabulary. Every error
//! names the field it is about, so a bad config fails plugin start with one clear line.

use crate::claims::ClaimPolicy;
use crate::extract::{HeaderSource, Sources};
use crate::feed::FeedConfig;
use crate::jwks::RemoteJwks;
use crate::keys::{self, Key};
use crate::revocation::{FailureMode, Freshness, Mode};
use crate::rules::{ClaimRequirement, Matcher, PathMatch};
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::rc::Rc;

pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
pub const DEFAULT_JWT_CACHE_SIZE: usize = 100;

#[derive(Debug)]
pub struct Config {
    pub providers: Vec<Provider>,
    pub rules: Vec<Rule>,
    pub realm: String,
    pub include_error_description: bool,
    pub host_crypto: bool,
    pub max_token_bytes: usize,
    /// Every header this filter writes upstream; client-sent copies are removed on every request.
    pub output_headers: Vec<String>,
    pub revocation: Option<Revocation>,
}

/// Where and how the filter asks the revocation service about verified tokens.
#[derive(Debug, Clone)]
pub struct Revocation {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
    /// Sent as `Authorization: Bearer …` on status callouts.
    pub credential: Option<String>,
    /// Sent on the logout routes' revoke callouts.
    pub revoke_credential: Option<String>,
    pub mode: Mode,
    pub freshness: Freshness,
    pub cache_max_entries: u32,
    pub failure_mode: FailureMode,
    pub retry_after_seconds: u32,
    pub logout_path: Option<String>,
    pub logout_all_path: Option<String>,
    pub revoke_path: String,
    pub revoke_subject_path: String,
    /// `None`: the `status` source (a callout per token).
    pub feed: Option<FeedConfig>,
}

/// The header that marks a request let through without a revocation answer (`failure_mode: open`).
pub const UNCHECKED_HEADER: &str = "x-jwtguard-revocation";

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub keys: Vec<Key>,
    pub policy: ClaimPolicy,
    pub sources: Sources,
    pub forward: bool,
    pub forward_payload_header: Option<String>,
    pub claim_to_headers: Vec<ClaimToHeader>,
    pub jwt_cache_size: usize,
    pub remote_jwks: Option<RemoteJwks>,
    /// The provider's algorithm allowlist, for keys fetched later.
    pub algorithms: Vec<Algorithm>,
}

#[derive(Debug, Clone)]
pub struct ClaimToHeader {
    pub header_name: String,
    pub claim_path: Vec<String>,
}

#[derive(Debug)]
pub struct Rule {
    pub matcher: Matcher,
    /// `None`: a public route, no token needed or checked. Shared, so a request borrows it cheaply.
    pub requires: Option<Rc<Requirement>>,
    pub required_claims: Vec<ClaimRequirement>,
    /// `None`: no revocation check on this route; else the failure mode to apply.
    pub revocation: Option<FailureMode>,
}

/// `jwt_authn`'s `JwtRequirement`, with providers resolved to indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Provider(usize),
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    AllowMissing,
    AllowMissingOrFailed,
}

// ---- the JSON shape ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default = "yes")]
    include_error_description: bool,
    #[serde(default = "yes")]
    host_crypto: bool,
    #[serde(default = "default_max_token_bytes")]
    max_token_bytes: usize,
    revocation: Option<RawRevocation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocation {
    cluster: String,
    authority: String,
    #[serde(default = "default_status_path")]
    path: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    credential: Option<String>,
    revoke_credential: Option<String>,
    #[serde(default = "default_mode")]
    mode: RawMode,
    #[serde(default = "default_cache_ttl_ms")]
    cache_ttl_ms: u64,
    #[serde(default = "default_cache_max_entries")]
    cache_max_entries: u32,
    #[serde(default = "default_failure_mode")]
    failure_mode: RawFailureMode,
    #[serde(default = "default_stale_ms")]
    stale_ms: u64,
    #[serde(default = "default_retry_after")]
    retry_after_seconds: u32,
    logout_path: Option<String>,
    logout_all_path: Option<String>,
    #[serde(default = "default_revoke_path")]
    revoke_path: String,
    #[serde(default = "default_revoke_subject_path")]
    revoke_subject_path: String,
    /// Where revocations come from: `feed` (default: every worker holds the live set, kept
    /// current by a long-poll) or `status` (a callout per token, cached `cache_ttl_ms`).
    #[serde(default = "default_source")]
    source: RawSource,
    #[serde(default)]
    feed: RawFeed,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawSource {
    Feed,
    Status,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    #[serde(default = "default_feed_path")]
    path: String,
    #[serde(default = "default_max_staleness_ms")]
    max_staleness_ms: u64,
    #[serde(default = "default_wait_for_set_ms")]
    wait_for_set_ms: u64,
    #[serde(default = "default_feed_max_entries")]
    max_entries: usize,
}

impl Default for RawFeed {
    fn default() -> Self {
        RawFeed {
            path: default_feed_path(),
            max_staleness_ms: default_max_staleness_ms(),
            wait_for_set_ms: default_wait_for_set_ms(),
            max_entries: default_feed_max_entries(),
        }
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawMode {
    Denylist,
    Allowlist,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawFailureMode {
    Closed,
    Open,
    Stale,
}

impl From<RawFailureMode> for FailureMode {
    fn from(m: RawFailureMode) -> FailureMode {
        match m {
            RawFailureMode::Closed => FailureMode::Closed,
            RawFailureMode::Open => FailureMode::Open,
            RawFailureMode::Stale => FailureMode::Stale,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleRevocation {
    #[serde(default)]
    disabled: bool,
    failure_mode: Option<RawFailureMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    issuer: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    local_jwks: Option<InlineString>,
    #[serde(default)]
    pem_keys: Vec<RawPemKey>,
    #[serde(default)]
    hmac_secrets: Vec<RawSecret>,
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    from_headers: Vec<RawHeaderSource>,
    #[serde(default)]
    from_params: Vec<String>,
    #[serde(default)]
    from_cookies: Vec<String>,
    #[serde(default)]
    forward: bool,
    forward_payload_header: Option<String>,
    #[serde(default)]
    claim_to_headers: Vec<RawClaimToHeader>,
    #[serde(default = "default_skew")]
    clock_skew_seconds: u64,
    #[serde(default = "yes")]
    require_expiration: bool,
    max_lifetime_seconds: Option<u64>,
    typ: Option<String>,
    jwt_cache_config: Option<RawCacheConfig>,
    remote_jwks: Option<RawRemoteJwks>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemoteJwks {
    cluster: String,
    uri: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    #[serde(default)]
    oidc_discovery: bool,
    #[serde(default = "default_jwks_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_cache_duration_seconds")]
    cache_duration_seconds: u64,
    #[serde(default = "default_failed_refetch_seconds")]
    failed_refetch_seconds: u64,
    #[serde(default = "default_max_backoff_seconds")]
    max_backoff_seconds: u64,
    #[serde(default = "default_max_stale_seconds")]
    max_stale_seconds: u64,
    #[serde(default = "default_wait_for_keys_ms")]
    wait_for_keys_ms: u64,
    #[serde(default = "default_unknown_kid_interval_seconds")]
    unknown_kid_min_interval_seconds: u64,
    #[serde(default = "default_max_jwks_bytes")]
    max_jwks_bytes: usize,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InlineString {
    inline_string: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPemKey {
    pem: String,
    kid: Option<String>,
    alg: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    /// The secret's bytes as UTF-8 text, or `secret_base64` for binary secrets.
    secret: Option<String>,
    secret_base64: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderSource {
    name: String,
    #[serde(default)]
    value_prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimToHeader {
    header_name: String,
    claim_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCacheConfig {
    jwt_cache_size: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "match")]
    match_: RawMatch,
    requires: Option<RawRequirement>,
    #[serde(default)]
    required_claims: Vec<RawClaimRequirement>,
    revocation: Option<RawRuleRevocation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    prefix: Option<String>,
    path: Option<String>,
    safe_regex: Option<RawRegex>,
    #[serde(default)]
    methods: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegex {
    regex: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimRequirement {
    claim_name: String,
    contains: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawRequirement {
    ProviderName(String),
    RequiresAny(RawRequirementList),
    RequiresAll(RawRequirementList),
    AllowMissing(Empty),
    AllowMissingOrFailed(Empty),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirementList {
    requirements: Vec<RawRequirement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

fn yes() -> bool {
    true
}
fn default_realm() -> String {
    "jwtguard".into()
}
fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}
fn default_skew() -> u64 {
    60
}
fn default_jwks_timeout_ms() -> u64 {
    1000
}
fn default_cache_duration_seconds() -> u64 {
    600
}
fn default_failed_refetch_seconds() -> u64 {
    1
}
fn default_max_backoff_seconds() -> u64 {
    60
}
fn default_max_stale_seconds() -> u64 {
    3600
}
fn default_wait_for_keys_ms() -> u64 {
    2000
}
fn default_unknown_kid_interval_seconds() -> u64 {
    10
}
fn default_max_jwks_bytes() -> usize {
    64 * 1024
}
fn default_max_keys() -> usize {
    100
}
fn default_status_path() -> String {
    "/v1/status".into()
}
fn default_revoke_path() -> String {
    "/v1/revoke".into()
}
fn default_revoke_subject_path() -> String {
    "/v1/revoke-subject".into()
}
fn default_timeout_ms() -> u64 {
    200
}
fn default_mode() -> RawMode {
    RawMode::Denylist
}
fn default_cache_ttl_ms() -> u64 {
    1000
}
fn default_cache_max_entries() -> u32 {
    10_000
}
fn default_failure_mode() -> RawFailureMode {
    RawFailureMode::Closed
}
fn default_stale_ms() -> u64 {
    60_000
}
fn default_source() -> RawSource {
    RawSource::Feed
}
fn default_feed_path() -> String {
    "/v1/feed".into()
}
fn default_max_staleness_ms() -> u64 {
    30_000
}
fn default_wait_for_set_ms() -> u64 {
    2_000
}
/// A million entries is on the order of 100 MB per worker at the worst (long `jti`s).
fn default_feed_max_entries() -> usize {
    1_000_000
}
fn default_retry_after() -> u32 {
    1
}

/// A configuration error: the dotted field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration at {}: {}", self.field, self.message)
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), message: message.into() }
}

pub const ALL_ALGORITHMS: &[Algorithm] = &[
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            err(if path == "." { "(root)".into() } else { path }, e.inner().to_string())
        })?;
        build(raw)
    }
}

fn build(raw: RawConfig) -> Result<Config, ConfigError> {
    if raw.providers.is_empty() {
        return Err(err("providers", "at least one provider is required"));
    }
    if raw.max_token_bytes == 0 {
        return Err(err("max_token_bytes", "must be positive"));
    }
    header_value_ok(&raw.realm).map_err(|m| err("realm", m))?;
    let names: Vec<String> = raw.providers.keys().cloned().collect();
    let mut providers = Vec::with_capacity(raw.providers.len());
    for (name, p) in raw.providers {
        providers.push(build_provider(&name, p)?);
    }
    let revocation = match raw.revocation {
        Some(r) => Some(build_revocation(r)?),
        None => None,
    };
    let default_failure_mode = revocation.as_ref().map(|r| r.failure_mode);
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, r) in raw.rules.into_iter().enumerate() {
        rules.push(build_rule(&format!("rules[{i}]"), r, &names, default_failure_mode)?);
    }
    let mut output_headers: Vec<String> = providers
        .iter()
        .flat_map(|p| p.claim_to_headers.iter().map(|c| c.header_name.clone()).chain(p.forward_payload_header.clone()))
        .chain(revocation.as_ref().map(|_| UNCHECKED_HEADER.to_string()))
        .collect();
    output_headers.sort();
    output_headers.dedup();
    Ok(Config {
        providers,
        rules,
        realm: raw.realm,
        include_error_description: raw.include_error_description,
        host_crypto: raw.host_crypto,
        max_token_bytes: raw.max_token_bytes,
        output_headers,
        revocation,
    })
}

fn build_revocation(r: RawRevocation) -> Result<Revocation, ConfigError> {
    let at = |field: &str| format!("revocation.{field}");
    if r.cluster.is_empty() {
        return Err(err(at("cluster"), "must name an Envoy cluster (under Istio: outbound|PORT||HOST)"));
    }
    for (field, path) in
        [("path", &r.path), ("revoke_path", &r.revoke_path), ("revoke_subject_path", &r.revoke_subject_path)]
    {
        if !path.starts_with('/') {
            return Err(err(at(field), "must start with /"));
        }
    }
    for (field, path) in [("logout_path", &r.logout_path), ("logout_all_path", &r.logout_all_path)] {
        if path.as_ref().is_some_and(|p| !p.starts_with('/')) {
            return Err(err(at(field), "must start with /"));
        }
    }
    if r.timeout_ms == 0 {
        return Err(err(at("timeout_ms"), "must be positive"));
    }
    if r.cache_max_entries == 0 {
        return Err(err(at("cache_max_entries"), "must be positive"));
    }
    for (field, credential) in [("credential", &r.credential), ("revoke_credential", &r.revoke_credential)] {
        if let Some(c) = credential {
            header_value_ok(c).map_err(|m| err(at(field), m))?;
        }
    }
    if (r.logout_path.is_some() || r.logout_all_path.is_some()) && r.revoke_credential.is_none() {
        return Err(err(at("revoke_credential"), "the logout routes need a credential to revoke with"));
    }
    let feed = match r.source {
        RawSource::Status => None,
        RawSource::Feed => Some(build_feed(r.feed)?),
    };
    Ok(Revocation {
        cluster: r.cluster,
        authority: r.authority,
        path: r.path,
        timeout_ms: r.timeout_ms,
        credential: r.credential,
        revoke_credential: r.revoke_credential,
        mode: match r.mode {
            RawMode::Denylist => Mode::Denylist,
            RawMode::Allowlist => Mode::Allowlist,
        },
        freshness: Freshness { ttl_ms: r.cache_ttl_ms, stale_ms: r.stale_ms.max(r.cache_ttl_ms) },
        cache_max_entries: r.cache_max_entries,
        failure_mode: r.failure_mode.into(),
        retry_after_seconds: r.retry_after_seconds,
        logout_path: r.logout_path,
        logout_all_path: r.logout_all_path,
        revoke_path: r.revoke_path,
        revoke_subject_path: r.revoke_subject_path,
        feed,
    })
}

fn build_feed(f: RawFeed) -> Result<FeedConfig, ConfigError> {
    let at = |field: &str| format!("revocation.feed.{field}");
    if !f.path.starts_with('/') || f.path.contains(['?', '#']) {
        return Err(err(at("path"), "must start with / and have no query"));
    }
    // The heartbeat comes every fifth of it; below a second that is a poll every 200 ms.
    if f.max_staleness_ms < 1_000 {
        return Err(err(at("max_staleness_ms"), "must be at least 1000"));
    }
    if f.max_entries == 0 {
        return Err(err(at("max_entries"), "must be positive"));
    }
    Ok(FeedConfig {
        path: f.path,
        max_staleness_ms: f.max_staleness_ms,
        wait_for_set_ms: f.wait_for_set_ms,
        max_entries: f.max_entries,
    })
}

fn build_provider(name: &str, p: RawProvider) -> Result<Provider, ConfigError> {
    let at = |field: &str| format!("providers.{name}.{field}");
    let allowed: Vec<Algorithm> = match &p.algorithms {
        None => ALL_ALGORITHMS.to_vec(),
        Some(list) => {
            let mut out = Vec::new();
            for a in list {
                match a.parse::<Algorithm>() {
                    Ok(alg) => out.push(alg),
                    Err(_) => return Err(err(at("algorithms"), format!("unknown algorithm {a:?}"))),
                }
            }
            out
        }
    };
    let mut keys = Vec::new();
    if let Some(jwks) = &p.local_jwks {
        let parsed = keys::parse_jwks(&jwks.inline_string, &allowed).map_err(|m| err(at("local_jwks"), m))?;
        for key in parsed {
            keys.push(key.map_err(|m| err(at("local_jwks"), m))?);
        }
    }
    for (i, k) in p.pem_keys.iter().enumerate() {
        let key = keys::from_pem(&k.pem, k.kid.clone(), k.alg.as_deref(), &allowed)
            .map_err(|m| err(at(&format!("pem_keys[{i}]")), m))?;
        keys.push(key);
    }
    for (i, s) in p.hmac_secrets.iter().enumerate() {
        let field = at(&format!("hmac_secrets[{i}]"));
        let secret = match (&s.secret, &s.secret_base64) {
            (Some(text), None) => text.as_bytes().to_vec(),
            (None, Some(b64)) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| err(&field, format!("secret_base64: {e}")))?
            }
            _ => return Err(err(&field, "exactly one of secret and secret_base64 is required")),
        };
        keys.push(keys::from_secret(&secret, s.kid.clone(), s.alg.as_deref(), &allowed).map_err(|m| err(&field, m))?);
    }
    let remote_jwks = match p.remote_jwks {
        Some(r) => Some(build_remote_jwks(name, r, p.issuer.as_deref())?),
        None => None,
    };
    if keys.is_empty() && remote_jwks.is_none() {
        return Err(err(
            at("local_jwks"),
            "the provider has no keys (local_jwks, remote_jwks, pem_keys or hmac_secrets)",
        ));
    }
    keys::check_set(&keys).map_err(|m| err(format!("providers.{name}"), m))?;
    // Fetched key sets are public: a provider that fetches one cannot also hold secrets.
    if remote_jwks.is_some() && keys.iter().any(Key::is_secret) {
        return Err(err(format!("providers.{name}"), "a provider with remote_jwks cannot have HMAC secrets"));
    }
    let mut headers = Vec::new();
    for (i, h) in p.from_headers.iter().enumerate() {
        headers.push(HeaderSource {
            name: header_name(&h.name).map_err(|m| err(at(&format!("from_headers[{i}].name")), m))?,
            value_prefix: h.value_prefix.clone(),
        });
    }
    let sources = if headers.is_empty() && p.from_params.is_empty() && p.from_cookies.is_empty() {
        Sources::default_bearer()
    } else {
        Sources { headers, params: p.from_params, cookies: p.from_cookies }
    };
    let forward_payload_header = match &p.forward_payload_header {
        Some(h) => Some(header_name(h).map_err(|m| err(at("forward_payload_header"), m))?),
        None => None,
    };
    let mut claim_to_headers = Vec::new();
    for (i, c) in p.claim_to_headers.iter().enumerate() {
        claim_to_headers.push(ClaimToHeader {
            header_name: header_name(&c.header_name)
                .map_err(|m| err(at(&format!("claim_to_headers[{i}].header_name")), m))?,
            claim_path: claim_path(&c.claim_name)
                .map_err(|m| err(at(&format!("claim_to_headers[{i}].claim_name")), m))?,
        });
    }
    Ok(Provider {
        name: name.to_string(),
        keys,
        policy: ClaimPolicy {
            issuer: p.issuer,
            audiences: p.audiences,
            require_expiration: p.require_expiration,
            max_lifetime_seconds: p.max_lifetime_seconds,
            clock_skew_seconds: p.clock_skew_seconds,
            typ: p.typ,
        },
        sources,
        forward: p.forward,
        forward_payload_header,
        claim_to_headers,
        jwt_cache_size: p.jwt_cache_config.map_or(DEFAULT_JWT_CACHE_SIZE, |c| c.jwt_cache_size),
        remote_jwks,
        algorithms: allowed,
    })
}

fn build_remote_jwks(name: &str, r: RawRemoteJwks, issuer: Option<&str>) -> Result<RemoteJwks, ConfigError> {
    let at = |field: &str| format!("providers.{name}.remote_jwks.{field}");
    if r.cluster.is_empty() {
        return Err(err(at("cluster"), "must name an Envoy cluster"));
    }
    // With discovery and no uri, the issuer's own configuration document.
    let uri = match (&r.uri, r.oidc_discovery, issuer) {
        (Some(u), _, _) => Some(u.clone()),
        (None, true, Some(iss)) => Some(format!("{}/.well-known/openid-configuration", iss.trim_end_matches('/'))),
        _ => None,
    };
    let (authority, path) = match (uri, r.authority, r.path) {
        (Some(u), None, None) => {
            crate::jwks::split_uri(&u).ok_or_else(|| err(at("uri"), format!("{u:?} is not an http(s) URL")))?
        }
        (None, Some(a), Some(p)) if p.starts_with('/') => (a, p),
        (None, Some(_), Some(_)) => return Err(err(at("path"), "must start with /")),
        _ => return Err(err(at("uri"), "give uri, or authority and path (or oidc_discovery with an issuer)")),
    };
    let positive = |field: &str, v: u64| if v == 0 { Err(err(at(field), "must be positive")) } else { Ok(v) };
    Ok(RemoteJwks {
        cluster: r.cluster,
        authority,
        path,
        oidc_discovery: r.oidc_discovery,
        timeout_ms: positive("timeout_ms", r.timeout_ms)?,
        cache_duration_ms: positive("cache_duration_seconds", r.cache_duration_seconds)?.saturating_mul(1000),
        failed_refetch_ms: positive("failed_refetch_seconds", r.failed_refetch_seconds)?.saturating_mul(1000),
        max_backoff_ms: r.max_backoff_seconds.max(r.failed_refetch_seconds).saturating_mul(1000),
        max_stale_ms: r.max_stale_seconds.saturating_mul(1000),
        wait_ms: r.wait_for_keys_ms,
        unknown_kid_interval_ms: r.unknown_kid_min_interval_seconds.saturating_mul(1000),
        max_bytes: r.max_jwks_bytes,
        max_keys: r.max_keys,
    })
}

fn build_rule(
    at: &str,
    r: RawRule,
    providers: &[String],
    failure_mode: Option<FailureMode>,
) -> Result<Rule, ConfigError> {
    let m = r.match_;
    let path = match (m.prefix, m.path, m.safe_regex) {
        (Some(p), None, None) => PathMatch::Prefix(p),
        (None, Some(p), None) => PathMatch::Exact(p),
        (None, None, Some(re)) => PathMatch::Regex(
            regex_lite::Regex::new(&re.regex)
                .map_err(|e| err(format!("{at}.match.safe_regex.regex"), e.to_string()))?,
        ),
        _ => return Err(err(format!("{at}.match"), "exactly one of prefix, path and safe_regex is required")),
    };
    let methods = m.methods.iter().map(|s| s.to_ascii_uppercase()).collect();
    let requires = match r.requires {
        Some(req) => Some(Rc::new(build_requirement(&format!("{at}.requires"), req, providers)?)),
        None => None,
    };
    let mut required_claims = Vec::new();
    for (i, c) in r.required_claims.into_iter().enumerate() {
        let field = format!("{at}.required_claims[{i}].claim_name");
        required_claims.push(ClaimRequirement {
            claim_path: claim_path(&c.claim_name).map_err(|m| err(field, m))?,
            contains: c.contains,
        });
    }
    if requires.is_none() && !required_claims.is_empty() {
        return Err(err(format!("{at}.required_claims"), "claims can only be required where a token is required"));
    }
    let revocation = match r.revocation {
        None => failure_mode,
        Some(_) if failure_mode.is_none() => {
            return Err(err(format!("{at}.revocation"), "there is no top-level revocation section to override"));
        }
        Some(RawRuleRevocation { disabled: true, .. }) => None,
        Some(RawRuleRevocation { failure_mode: own, .. }) => own.map(FailureMode::from).or(failure_mode),
    };
    Ok(Rule { matcher: Matcher { path, methods }, requires, required_claims, revocation })
}

fn build_requirement(at: &str, r: RawRequirement, providers: &[String]) -> Result<Requirement, ConfigError> {
    let list = |l: RawRequirementList, kind: &str| -> Result<Vec<Requirement>, ConfigError> {
        if l.requirements.is_empty() {
            return Err(err(format!("{at}.{kind}.requirements"), "must not be empty"));
        }
        l.requirements
            .into_iter()
            .enumerate()
            .map(|(i, r)| build_requirement(&format!("{at}.{kind}.requirements[{i}]"), r, providers))
            .collect()
    };
    Ok(match r {
        RawRequirement::ProviderName(name) => match providers.iter().position(|p| *p == name) {
            Some(i) => Requirement::Provider(i),
            None => return Err(err(format!("{at}.provider_name"), format!("no provider named {name:?}"))),
        },
        RawRequirement::RequiresAny(l) => Requirement::Any(list(l, "requires_any")?),
        RawRequirement::RequiresAll(l) => Requirement::All(list(l, "requires_all")?),
        RawRequirement::AllowMissing(_) => Requirement::AllowMissing,
        RawRequirement::AllowMissingOrFailed(_) => Requirement::AllowMissingOrFailed,
    })
}

/// Header names are compared lower-case; pseudo-headers and non-token characters are refused.
fn header_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("{name:?} is not a valid header name"))
    }
}

fn header_value_ok(value: &str) -> Result<(), String> {
    if value.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') {
        Ok(())
    } else {
        Err(format!("{value:?} must be printable ASCII without quotes or backslashes"))
    }
}

fn claim_path(name: &str) -> Result<Vec<String>, String> {
    let path: Vec<String> = name.split('.').map(String::from).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(format!("{name:?} is not a claim name or dotted path"));
    }
    Ok(path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::tests::EC_JWK;
    use crate::revocation::{FailureMode, Mode};

    pub fn sample() -> String {
        let jwks = serde_json::to_string(&format!(r#"{{"keys":[{EC_JWK}]}}"#)).unwrap();
        format!(
            r#"{{
              "providers": {{
                "ec": {{"issuer": "https://issuer", "audiences": ["api"], "local_jwks": {{"inline_string": {jwks}}},
                        "claim_to_headers": [{{"header_name": "x-jwt-sub", "claim_name": "sub"}}],
                        "forward_payload_header": "x-jwt-payload"}},
                "hs": {{"hmac_secrets": [{{"secret": "0123456789abcdef0123456789abcdef"}}],
                        "from_headers": [{{"name": "X-Token"}}]}}
              }},
              "rules": [
                {{"match": {{"prefix": "/public"}}}},
                {{"match": {{"path": "/either"}}, "requires": {{"requires_any": {{"requirements": [{{"provider_name": "ec"}}, {{"provider_name": "hs"}}]}}}}}},
                {{"match": {{"safe_regex": {{"regex": "/admin/.*"}}, "methods": ["post"]}}, "requires": {{"provider_name": "ec"}},
                  "required_claims": [{{"claim_name": "scope", "contains": "admin"}}]}}
              ]
            }}"#
        )
    }

    fn error_of(json: &str) -> ConfigError {
        Config::parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_the_sample() {
        let c = Config::parse(sample().as_bytes()).unwrap();
        assert_eq!(c.providers.len(), 2);
        assert_eq!(c.providers[0].name, "ec");
        assert_eq!(c.providers[1].sources.headers[0].name, "x-token");
        assert_eq!(
            c.rules[1].requires.as_deref(),
            Some(&Requirement::Any(vec![Requirement::Provider(0), Requirement::Provider(1)]))
        );
        assert_eq!(c.rules[2].matcher.methods, vec!["POST"]);
        assert_eq!(c.output_headers, vec!["x-jwt-payload", "x-jwt-sub"]);
        assert_eq!(c.providers[0].jwt_cache_size, DEFAULT_JWT_CACHE_SIZE);
        assert_eq!(c.providers[0].sources, Sources::default_bearer());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (sample().replace(r#""issuer": "https://issuer""#, r#""issuer": 5"#), "providers.ec.issuer"),
            (sample().replace("\"audiences\"", "\"audience\""), "providers.ec.audience"),
            (sample().replace("0123456789abcdef0123456789abcdef", "short"), "providers.hs.hmac_secrets[0]"),
            (
                sample().replace(r#""provider_name": "hs""#, r#""provider_name": "nope""#),
                "rules[1].requires.requires_any.requirements[1].provider_name",
            ),
            (sample().replace("/admin/.*", "(("), "rules[2].match.safe_regex.regex"),
            (sample().replace("\"x-jwt-sub\"", "\"bad header\""), "providers.ec.claim_to_headers[0].header_name"),
            (sample().replace("P-256", "P-999"), "providers.ec.local_jwks"),
            (r#"{"providers":{}}"#.to_string(), "providers"),
            ("not json".to_string(), "(root)"),
        ];
        for (json, field) in cases {
            let e = error_of(&json);
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn rule_claims_need_a_requirement_and_one_path_kind() {
        let e = error_of(&sample().replace(
            r#"{"match": {"prefix": "/public"}}"#,
            r#"{"match": {"prefix": "/public"}, "required_claims": [{"claim_name": "a", "contains": "b"}]}"#,
        ));
        assert_eq!(e.field, "rules[0].required_claims");
        let e = error_of(&sample().replace(r#""prefix": "/public""#, r#""prefix": "/public", "path": "/x""#));
        assert_eq!(e.field, "rules[0].match");
    }

    #[test]
    fn duplicate_kids_and_mixed_hmac_are_refused() {
        let jwks = serde_json::to_string(&format!(r#"{{"keys":[{EC_JWK},{EC_JWK}]}}"#)).unwrap();
        let e = error_of(&format!(r#"{{"providers":{{"p":{{"local_jwks":{{"inline_string":{jwks}}}}}}}}}"#));
        assert!(e.message.contains("duplicate kid"), "{e}");
        let jwks = serde_json::to_string(&format!(r#"{{"keys":[{EC_JWK}]}}"#)).unwrap();
        let e = error_of(&format!(
            r#"{{"providers":{{"p":{{"local_jwks":{{"inline_string":{jwks}}},"hmac_secrets":[{{"secret":"0123456789abcdef0123456789abcdef"}}]}}}}}}"#
        ));
        assert_eq!(e.field, "providers.p");
    }

    fn hs_provider(extra: &str) -> String {
        format!(
            r#""p": {{"issuer": "https://idp.example", "hmac_secrets": [{{"secret": "0123456789abcdef0123456789abcdef"}}]{extra}}}"#
        )
    }

    #[test]
    fn revocation_section_defaults_and_errors() {
        let ok = format!(
            r#"{{"providers": {{{}}}, "revocation": {{"cluster": "outbound|8080||rev", "authority": "rev"}}}}"#,
            hs_provider("")
        );
        let r = Config::parse(ok.as_bytes()).unwrap().revocation.unwrap();
        assert_eq!(
            (r.path.as_str(), r.timeout_ms, r.freshness.ttl_ms, r.cache_max_entries),
            ("/v1/status", 200, 1000, 10_000)
        );
        assert_eq!((r.failure_mode, r.mode), (FailureMode::Closed, Mode::Denylist));
        let c = Config::parse(ok.as_bytes()).unwrap();
        assert!(
            c.output_headers.contains(&UNCHECKED_HEADER.to_string()),
            "the open-mode mark is always stripped from clients"
        );
        let cases = [
            (r#""cluster": "", "authority": "r""#, "revocation.cluster"),
            (r#""cluster": "c", "authority": "r", "path": "status""#, "revocation.path"),
            (r#""cluster": "c", "authority": "r", "timeout_ms": 0"#, "revocation.timeout_ms"),
            (r#""cluster": "c", "authority": "r", "logout_path": "/logout""#, "revocation.revoke_credential"),
            (r#""cluster": "c", "authority": "r", "failure_mode": "maybe""#, "revocation.failure_mode"),
            (r#""cluster": "c", "authority": "r", "credential": "a\nb""#, "revocation.credential"),
        ];
        for (section, field) in cases {
            let json = format!(r#"{{"providers": {{{}}}, "revocation": {{{section}}}}}"#, hs_provider(""));
            assert_eq!(error_of(&json).field, field, "{section}");
        }
        let orphan = format!(
            r#"{{"providers": {{{}}}, "rules": [{{"match": {{"prefix": "/"}}, "requires": {{"provider_name": "p"}}, "revocation": {{"disabled": true}}}}]}}"#,
            hs_provider("")
        );
        assert_eq!(error_of(&orphan).field, "rules[0].revocation", "a rule cannot override what does not exist");
    }

    #[test]
    fn remote_jwks_from_uri_parts_or_discovery() {
        let parse = |remote: &str| {
            let json = format!(
                r#"{{"providers": {{"p": {{"issuer": "https://idp.example/", "remote_jwks": {{{remote}}}}}}}}}"#
            );
            Config::parse(json.as_bytes()).map(|mut c| c.providers.remove(0).remote_jwks.unwrap())
        };
        let r = parse(r#""cluster": "idp", "uri": "https://idp.example:8443/keys""#).unwrap();
        assert_eq!(
            (r.authority.as_str(), r.path.as_str(), r.cache_duration_ms, r.wait_ms),
            ("idp.example:8443", "/keys", 600_000, 2_000)
        );
        let r = parse(r#""cluster": "idp", "authority": "a", "path": "/k""#).unwrap();
        assert_eq!((r.authority.as_str(), r.path.as_str()), ("a", "/k"));
        let r = parse(r#""cluster": "idp", "oidc_discovery": true"#).unwrap();
        assert_eq!(r.path, "/.well-known/openid-configuration", "derived from the issuer");
        for (remote, field) in [
            (r#""cluster": "idp""#, "providers.p.remote_jwks.uri"),
            (r#""cluster": "idp", "uri": "ftp://x/k""#, "providers.p.remote_jwks.uri"),
            (r#""cluster": "idp", "authority": "a", "path": "k""#, "providers.p.remote_jwks.path"),
            (r#""cluster": "", "uri": "http://a/k""#, "providers.p.remote_jwks.cluster"),
            (
                r#""cluster": "idp", "uri": "http://a/k", "cache_duration_seconds": 0"#,
                "providers.p.remote_jwks.cache_duration_seconds",
            ),
        ] {
            assert_eq!(parse(remote).unwrap_err().field, field, "{remote}");
        }
    }
}
