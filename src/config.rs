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
    /// Prefixes every key this plugin keeps in Envoy's shared data (`jwtguard.<namespace>.…`):
    /// a hash of the configuration, so two plugins in one Envoy (even in one VM) never read
    /// each other's key sets, answers or gauges, and identical configurations share them.
    pub namespace: String,
    /// `stat_prefix`: stats are `jwtguard.<stat_prefix>.…` instead of `jwtguard.…`, to tell two
    /// plugins apart in one Envoy.
    pub stat_prefix: Option<String>,
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
/// Set upstream on a report-only route's request that enforcement would refuse: the reason.
pub const WOULD_DENY_HEADER: &str = "x-jwtguard-would-deny";

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub keys: Vec<Key>,
    pub policy: ClaimPolicy,
    pub sources: Sources,
    pub forward: bool,
    pub forward_payload_header: Option<String>,
    /// `jwt_authn`'s: the verified payload as dynamic metadata under this key of the
    /// `envoy.filters.http.jwt_authn` namespace (`metadata.rs`). Only a build whose host can
    /// write dynamic metadata (the dynamic module) takes it.
    pub payload_in_metadata: Option<String>,
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
    /// Report only: what this route would refuse is counted, logged and marked upstream
    /// (`WOULD_DENY_HEADER`), and let through.
    pub report_only: bool,
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

/// The plugin configuration of the jwtguard filter (docs/configuration.md).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "Config", title = "jwtguard"))]
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
    max_token_bytes: u32,
    revocation: Option<RawRevocation>,
    stat_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "Revocation"))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize), schemars(rename = "RevocationSource"))]
enum RawSource {
    Feed,
    Status,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize), schemars(rename = "Feed"))]
struct RawFeed {
    #[serde(default = "default_feed_path")]
    path: String,
    #[serde(default = "default_max_staleness_ms")]
    max_staleness_ms: u64,
    #[serde(default = "default_wait_for_set_ms")]
    wait_for_set_ms: u64,
    #[serde(default = "default_feed_max_entries")]
    max_entries: u32,
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize), schemars(rename = "RevocationMode"))]
enum RawMode {
    Denylist,
    Allowlist,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize), schemars(rename = "FailureMode"))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "RuleRevocation"))]
struct RawRuleRevocation {
    #[serde(default)]
    disabled: bool,
    failure_mode: Option<RawFailureMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "Provider"))]
struct RawProvider {
    issuer: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    local_jwks: Option<InlineString>,
    #[serde(default)]
    pem_keys: Vec<RawPemKey>,
    #[serde(default)]
    hmac_secrets: Vec<RawSecret>,
    #[cfg_attr(feature = "schema", schemars(with = "Option<Vec<schema::Algorithm>>"))]
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
    payload_in_metadata: Option<String>,
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "RemoteJwks"))]
struct RawRemoteJwks {
    cluster: String,
    /// With `oidc_discovery`: the cluster of the discovered `jwks_uri`'s host, when it is not
    /// the issuer's (default: `cluster`).
    jwks_cluster: Option<String>,
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
    max_jwks_bytes: u32,
    #[serde(default = "default_max_keys")]
    max_keys: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct InlineString {
    inline_string: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "PemKey"))]
struct RawPemKey {
    pem: String,
    kid: Option<String>,
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Algorithm>"))]
    alg: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "HmacSecret"))]
struct RawSecret {
    /// The secret's bytes as UTF-8 text, or `secret_base64` for binary secrets.
    secret: Option<String>,
    secret_base64: Option<String>,
    kid: Option<String>,
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Algorithm>"))]
    alg: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "HeaderSource"))]
struct RawHeaderSource {
    name: String,
    #[serde(default)]
    value_prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "ClaimToHeader"))]
struct RawClaimToHeader {
    header_name: String,
    claim_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "JwtCacheConfig"))]
struct RawCacheConfig {
    jwt_cache_size: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "Rule"))]
struct RawRule {
    #[serde(rename = "match")]
    match_: RawMatch,
    requires: Option<RawRequirement>,
    #[serde(default)]
    required_claims: Vec<RawClaimRequirement>,
    revocation: Option<RawRuleRevocation>,
    #[serde(default)]
    report_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "Match"))]
struct RawMatch {
    prefix: Option<String>,
    path: Option<String>,
    safe_regex: Option<RawRegex>,
    #[serde(default)]
    methods: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "Regex"))]
struct RawRegex {
    regex: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "ClaimRequirement"))]
struct RawClaimRequirement {
    claim_name: String,
    contains: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "Requirement"))]
enum RawRequirement {
    ProviderName(String),
    RequiresAny(RawRequirementList),
    RequiresAll(RawRequirementList),
    AllowMissing(Empty),
    AllowMissingOrFailed(Empty),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(rename = "RequirementList"))]
struct RawRequirementList {
    requirements: Vec<RawRequirement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct Empty {}

fn yes() -> bool {
    true
}
fn default_realm() -> String {
    "jwtguard".into()
}
fn default_max_token_bytes() -> u32 {
    DEFAULT_MAX_TOKEN_BYTES as u32
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
fn default_max_jwks_bytes() -> u32 {
    64 * 1024
}
fn default_max_keys() -> u32 {
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
fn default_feed_max_entries() -> u32 {
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
    /// What the filter runs with, for its start-up log line.
    pub fn summary(&self) -> String {
        let providers: Vec<String> = self
            .providers
            .iter()
            .map(|p| match &p.remote_jwks {
                Some(r) => format!("{} (remote JWKS via {})", p.name, r.cluster),
                None => format!("{} ({} keys)", p.name, p.keys.len()),
            })
            .collect();
        let revocation = self.revocation.as_ref().map_or("off".to_string(), |r| {
            format!("cluster {}, cache {} ms, failure_mode {:?}", r.cluster, r.freshness.ttl_ms, r.failure_mode)
        });
        format!("providers {}; {} rules; revocation: {revocation}", providers.join(", "), self.rules.len())
    }

    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| {
            let message = e.to_string();
            err(error_path(bytes, e.line(), e.column(), &message), message)
        })?;
        let mut config = build(raw)?;
        config.namespace = crate::fnv::fnv1a(bytes).to_string();
        Ok(config)
    }

    /// The JSON Schema of what `parse` reads, derived from the same types: the shape (fields,
    /// types, required fields, no unknown fields, enumerations). What `parse` checks beyond the
    /// shape (values, keys, cross-references between fields) only `parse` can tell.
    #[cfg(feature = "schema")]
    pub fn json_schema() -> schemars::Schema {
        schemars::generate::SchemaSettings::draft2020_12()
            .with_transform(schemars::transform::RecursiveTransform(schema::integer_bounds))
            .into_generator()
            .into_root_schema_for::<RawConfig>()
    }
}

/// The dotted path (`providers.main.issuer`, `rules[1].match`) of the field a serde_json error is
/// about, recovered from where serde_json stopped reading: the JSON is scanned up to that byte,
/// keeping the stack of open objects (with their current key) and arrays (with the current index).
///
/// serde_json reports (1-based line, byte column) of the last byte it consumed, or, for syntax
/// errors, of the byte it peeked at. Where that byte is, for each kind of error:
/// - invalid type or value of a scalar: the value's last byte; of an object or array: the byte
///   before its `{` or `[` (the value is not consumed). Either way the key or index is current.
/// - unknown field or variant, duplicate field: the key's closing quote (or whitespace after it).
/// - missing field: the `}` of the object that lacks it; invalid length (a struct written as an
///   array): the `]`. In both the closer is not applied, so the container is still open.
/// - `invalid type: unit variant` (a variant written as a bare string) is positioned by the
///   enclosing container, which first reads on past the string over whitespace and a `,`.
/// - syntax errors: the offending byte; end of input: the last byte, which is applied (with EOF
///   nothing can be wrong at a closer, so one there has closed its container).
///
/// `message` is serde_json's text for the error, which tells these cases apart. Total: any input
/// gives some path, `(root)` when nothing is open.
fn error_path(text: &[u8], line: usize, column: usize, message: &str) -> String {
    // Bytes before the start of `line`, then `column` more: the position one past the byte.
    let line_start = match line.checked_sub(2) {
        None => 0,
        Some(newlines) => {
            text.iter().enumerate().filter(|&(_, &b)| b == b'\n').nth(newlines).map_or(text.len(), |(i, _)| i + 1)
        }
    };
    let mut seen = text.get(..line_start.saturating_add(column)).unwrap_or(text);
    if message.starts_with("invalid type: unit variant") {
        seen = seen.trim_ascii_end();
        if let Some(before) = seen.strip_suffix(b",") {
            seen = before.trim_ascii_end();
        }
    }
    let eof = message.starts_with("EOF while parsing");
    let mut levels = open_levels(seen, !eof);
    let missing = message.strip_prefix("missing field `").and_then(|m| m.split('`').next());
    if missing.is_some() {
        // The path of the object lacking the field, then the field's name.
        if let Some(Level::Object(key)) = levels.last_mut() {
            *key = None;
        }
    } else if message.starts_with("invalid length") && matches!(levels.last(), Some(Level::Array(_))) {
        levels.pop();
    }
    let mut path = String::new();
    for level in &levels {
        match level {
            Level::Object(Some(key)) => push_key(&mut path, &unescape(key)),
            Level::Object(None) => {}
            Level::Array(i) => path.push_str(&format!("[{i}]")),
        }
    }
    if let Some(field) = missing {
        push_key(&mut path, field);
    }
    if path.is_empty() {
        "(root)".into()
    } else {
        path
    }
}

/// A container open at the error: an object with the raw (still escaped) key being read, `None`
/// before the first key and after a `,`; an array with the index of the element being read.
enum Level<'a> {
    Object(Option<&'a [u8]>),
    Array(usize),
}

/// The containers open after `text`. With `hold_last_closer`, a `}` or `]` as the very last byte
/// is not applied: serde_json has consumed it but the error is about the container it closes.
fn open_levels(text: &[u8], hold_last_closer: bool) -> Vec<Level<'_>> {
    let mut levels = Vec::new();
    // The next string in the innermost object is a key (just after `{` or `,`).
    let mut key_next = false;
    // Inside a string: where its content starts and whether it is a key.
    let mut string: Option<(usize, bool)> = None;
    let mut escaped = false;
    for (i, &b) in text.iter().enumerate() {
        if let Some((start, is_key)) = string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                string = None;
                if let (true, Some(Level::Object(key))) = (is_key, levels.last_mut()) {
                    *key = text.get(start..i);
                }
            }
            continue;
        }
        match b {
            b'"' => {
                string = Some((i + 1, key_next));
                key_next = false;
            }
            b'{' => {
                levels.push(Level::Object(None));
                key_next = true;
            }
            b'[' => {
                levels.push(Level::Array(0));
                key_next = false;
            }
            b'}' | b']' if hold_last_closer && i + 1 == text.len() => {}
            b'}' | b']' => {
                levels.pop();
                key_next = false;
            }
            b',' => match levels.last_mut() {
                Some(Level::Object(key)) => {
                    *key = None;
                    key_next = true;
                }
                Some(Level::Array(n)) => *n += 1,
                None => {}
            },
            b':' => key_next = false,
            _ => {}
        }
    }
    levels
}

/// `providers.NAME`, written as a configuration error would name it.
fn provider_path(name: &str) -> String {
    let mut path = "providers".to_string();
    push_key(&mut path, name);
    path
}

/// Appends `.key`, or `["key"]` for a key that would make the path ambiguous (a dot, bracket,
/// quote, backslash, whitespace or control character, or empty).
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && !key.chars().any(|c| matches!(c, '.' | '[' | ']' | '"' | '\\') || c.is_whitespace() || c.is_control());
    if !plain {
        path.push_str(&format!("[{key:?}]"));
        return;
    }
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// A JSON string's content with its escapes decoded; anything malformed becomes U+FFFD.
fn unescape(raw: &[u8]) -> String {
    let hex = |at: usize| -> Option<u32> {
        let digits = raw.get(at..at + 4)?;
        digits.iter().try_fold(0, |n, &d| Some(n * 16 + char::from(d).to_digit(16)?))
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&e) = raw.get(i) else { break };
        i += 1;
        let c = match e {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = hex(i);
                i += 4;
                // A high surrogate takes the `\uDC00`-`\uDFFF` escape after it as its pair.
                let low = match unit {
                    Some(0xD800..=0xDBFF) if raw.get(i..i + 2) == Some(b"\\u") => hex(i + 2),
                    _ => None,
                };
                match (unit, low) {
                    (Some(high), Some(low @ 0xDC00..=0xDFFF)) => {
                        i += 6;
                        char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
                    }
                    (unit, _) => unit.and_then(char::from_u32),
                }
                .unwrap_or(char::REPLACEMENT_CHARACTER)
            }
            // `\"`, `\\`, `\/` (and anything serde_json would have refused) stand for themselves.
            other => char::from(other),
        };
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn build(raw: RawConfig) -> Result<Config, ConfigError> {
    if raw.providers.is_empty() {
        return Err(err("providers", "at least one provider is required"));
    }
    if raw.max_token_bytes == 0 {
        return Err(err("max_token_bytes", "must be positive"));
    }
    header_value_ok(&raw.realm).map_err(|m| err("realm", m))?;
    if let Some(prefix) = &raw.stat_prefix {
        let ok =
            !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(err("stat_prefix", "must be lowercase letters, digits and _"));
        }
    }
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
    // Each name once (a handful: a linear check costs less code than a sort).
    let mut output_headers: Vec<String> = Vec::new();
    let names = providers
        .iter()
        .flat_map(|p| p.claim_to_headers.iter().map(|c| c.header_name.clone()).chain(p.forward_payload_header.clone()))
        // jwtguard's own marks are never a client's, whatever this configuration uses.
        .chain([UNCHECKED_HEADER.to_string(), WOULD_DENY_HEADER.to_string()]);
    for name in names {
        if !output_headers.contains(&name) {
            output_headers.push(name);
        }
    }
    Ok(Config {
        providers,
        rules,
        realm: raw.realm,
        include_error_description: raw.include_error_description,
        host_crypto: raw.host_crypto,
        max_token_bytes: raw.max_token_bytes as usize,
        output_headers,
        revocation,
        namespace: String::new(),
        stat_prefix: raw.stat_prefix,
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
        max_entries: f.max_entries as usize,
    })
}

fn build_provider(name: &str, p: RawProvider) -> Result<Provider, ConfigError> {
    let base = provider_path(name);
    let at = |field: &str| format!("{base}.{field}");
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
    keys::check_set(&keys).map_err(|m| err(base.clone(), m))?;
    // Fetched key sets are public: a provider that fetches one cannot also hold secrets.
    if remote_jwks.is_some() && keys.iter().any(Key::is_secret) {
        return Err(err(base, "a provider with remote_jwks cannot have HMAC secrets"));
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
    if p.payload_in_metadata.as_deref() == Some("") {
        return Err(err(at("payload_in_metadata"), "must not be empty"));
    }
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
        payload_in_metadata: p.payload_in_metadata,
        claim_to_headers,
        jwt_cache_size: p.jwt_cache_config.map_or(DEFAULT_JWT_CACHE_SIZE, |c| c.jwt_cache_size as usize),
        remote_jwks,
        algorithms: allowed,
    })
}

fn build_remote_jwks(name: &str, r: RawRemoteJwks, issuer: Option<&str>) -> Result<RemoteJwks, ConfigError> {
    let base = provider_path(name);
    let at = |field: &str| format!("{base}.remote_jwks.{field}");
    if r.cluster.is_empty() {
        return Err(err(at("cluster"), "must name an Envoy cluster"));
    }
    let jwks_cluster = match r.jwks_cluster {
        None => r.cluster.clone(),
        Some(_) if !r.oidc_discovery => {
            return Err(err(at("jwks_cluster"), "only with oidc_discovery (the cluster of the jwks_uri it finds)"))
        }
        Some(c) if c.is_empty() => return Err(err(at("jwks_cluster"), "must name an Envoy cluster")),
        Some(c) => c,
    };
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
        jwks_cluster,
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
        max_bytes: r.max_jwks_bytes as usize,
        max_keys: r.max_keys as usize,
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
    Ok(Rule { matcher: Matcher { path, methods }, requires, required_claims, revocation, report_only: r.report_only })
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

#[cfg(feature = "schema")]
mod schema {
    use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
    use std::borrow::Cow;

    /// An algorithm name (`alg`): a string in the configuration, one of `ALL_ALGORITHMS`.
    pub struct Algorithm;

    impl JsonSchema for Algorithm {
        fn schema_name() -> Cow<'static, str> {
            "Algorithm".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            // Debug prints the names FromStr reads (`RS256`, `EdDSA`).
            let names: Vec<String> = super::ALL_ALGORITHMS.iter().map(|a| format!("{a:?}")).collect();
            json_schema!({"type": "string", "enum": names})
        }
    }

    /// The largest value of each unsigned integer type, which schemars only names in `format`
    /// (an annotation validators ignore). `uint` is `usize`: 32 bits in the wasm32 filter.
    pub fn integer_bounds(schema: &mut Schema) {
        let max = match schema.get("format").and_then(|f| f.as_str()) {
            Some("uint" | "uint32") => u64::from(u32::MAX),
            Some("uint64") => u64::MAX,
            _ => return,
        };
        schema.insert("maximum".into(), max.into());
    }
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
        assert_eq!(c.output_headers, vec!["x-jwt-sub", "x-jwt-payload", UNCHECKED_HEADER, WOULD_DENY_HEADER]);
        // Each name once, however many providers write it.
        let twice = with_provider(
            r#", "claim_to_headers": [{"header_name": "X-Sub", "claim_name": "sub"}, {"header_name": "x-sub", "claim_name": "email"}]"#,
            "",
        );
        let c = Config::parse(twice.as_bytes()).unwrap();
        assert_eq!(c.output_headers, vec!["x-sub", UNCHECKED_HEADER, WOULD_DENY_HEADER]);
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
        assert_eq!(r.jwks_cluster, "idp", "the discovered jwks_uri through the issuer's cluster by default");
        let r = parse(r#""cluster": "idp", "oidc_discovery": true, "jwks_cluster": "keys""#).unwrap();
        assert_eq!((r.cluster.as_str(), r.jwks_cluster.as_str()), ("idp", "keys"));
        for (remote, field) in [
            (
                r#""cluster": "idp", "uri": "http://a/k", "jwks_cluster": "keys""#,
                "providers.p.remote_jwks.jwks_cluster",
            ),
            (r#""cluster": "idp", "oidc_discovery": true, "jwks_cluster": """#, "providers.p.remote_jwks.jwks_cluster"),
            (r#""cluster": "idp", "uri": "http://a/k", "max_keys": 4294967296"#, "providers.p.remote_jwks.max_keys"),
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

    // ---- the field named by a JSON error (error_path) ----

    /// `{"providers": {"p": …}}` with `provider` the body of `p`, and `rest` more top-level members.
    fn with_provider(provider: &str, rest: &str) -> String {
        format!(
            r#"{{"providers": {{"p": {{"hmac_secrets": [{{"secret": "0123456789abcdef0123456789abcdef"}}]{provider}}}}}{rest}}}"#
        )
    }

    /// A config whose rule 0 requires `requires` (a JSON requirement).
    fn with_requirement(requires: &str) -> String {
        with_provider("", &format!(r#", "rules": [{{"match": {{"prefix": "/"}}, "requires": {requires}}}]"#))
    }

    fn assert_fields(cases: &[(String, &str)]) {
        for (json, field) in cases {
            let e = error_of(json);
            assert_eq!(e.field, *field, "{json}\n{e}");
        }
    }

    #[test]
    fn unknown_fields_end_the_path() {
        assert_fields(&[
            (with_provider("", r#", "bogus": 1"#), "bogus"),
            (with_provider(r#", "isuer": "x""#, ""), "providers.p.isuer"),
            (with_provider(r#", "isuer"  :  "x""#, ""), "providers.p.isuer"),
            (with_provider(", \"isuer\"\n\n : \"x\"", ""), "providers.p.isuer"),
            (
                with_provider(r#", "from_headers": [{"name": "a"}, {"name": "b", "prefix": "B "}]"#, ""),
                "providers.p.from_headers[1].prefix",
            ),
            (with_provider("", r#", "rules": [{"match": {"prefx": "/"}}]"#), "rules[0].match.prefx"),
            (with_provider(r#", "local_jwks": {"inline": "x"}"#, ""), "providers.p.local_jwks.inline"),
            (with_provider("", r#", "x.\"y\"[0]": 1"#), r#"["x.\"y\"[0]"]"#),
            (with_provider(r#", "is\u0073uer": "x", "iss\"uer": 1"#, ""), r#"providers.p["iss\"uer"]"#),
            (
                with_provider("", r#", "rules": [{"match": {"prefix": "/"}, "revocation": {"off": true}}]"#),
                "rules[0].revocation.off",
            ),
            (with_requirement(r#"{"allow_missing": {"x": 1}}"#), "rules[0].requires.allow_missing.x"),
        ]);
        let e = error_of(&with_provider(r#", "isuer": "x""#, ""));
        assert!(
            e.to_string()
                .starts_with("invalid configuration at providers.p.isuer: unknown field `isuer`, expected one of"),
            "{e}"
        );
    }

    #[test]
    fn invalid_types_and_values_name_the_value() {
        assert_fields(&[
            ("5".to_string(), "(root)"),
            ("  [1] ".to_string(), "[0]"), // a struct as an array: element 0 is `providers`
            (with_provider("", r#", "max_token_bytes": "big""#), "max_token_bytes"),
            (with_provider("", r#", "realm": {"a": 1}"#), "realm"),
            (with_provider("", r#", "realm":["a"]"#), "realm"),
            (
                with_provider("", r#", "revocation": {"cluster": "c", "authority": "a", "timeout_ms": -1}"#),
                "revocation.timeout_ms",
            ),
            (
                with_provider(
                    "",
                    r#", "revocation": {"cluster": "c", "authority": "a", "cache_max_entries": 5000000000}"#,
                ),
                "revocation.cache_max_entries",
            ),
            (with_provider("", r#", "revocation": {"cluster": "c", "authority": "a", "mode": 5}"#), "revocation.mode"),
            (with_provider(r#", "issuer": 5"#, ""), "providers.p.issuer"),
            (with_provider(r#", "clock_skew_seconds": 1.5"#, ""), "providers.p.clock_skew_seconds"),
            (with_provider(r#", "issuer": null, "audiences": {}"#, ""), "providers.p.audiences"),
            (with_provider(r#", "audiences": ["a", 5]"#, ""), "providers.p.audiences[1]"),
            (with_provider(r#", "audiences": ["a", {}]"#, ""), "providers.p.audiences[1]"),
            (with_provider(r#", "audiences": ["a",{}]"#, ""), "providers.p.audiences[1]"),
            (with_provider(r#", "audiences": [["a"]]"#, ""), "providers.p.audiences[0]"),
            (with_provider(", \"audiences\": [\"a\",\n\n  true]", ""), "providers.p.audiences[1]"),
            (
                with_provider(r#", "from_headers": [{"name": "a"}, {"name": "b", "value_prefix": false}]"#, ""),
                "providers.p.from_headers[1].value_prefix",
            ),
            (
                with_requirement(
                    r#"{"requires_any": {"requirements": [{"provider_name": "p"}, {"provider_name": 5}]}}"#,
                ),
                "rules[0].requires.requires_any.requirements[1].provider_name",
            ),
            (with_requirement(r#"{"allow_missing": null}"#), "rules[0].requires.allow_missing"),
            (with_requirement(r#""allow_missing""#), "rules[0].requires"),
            (with_requirement(r#""allow_missing" "#), "rules[0].requires"),
            (
                with_requirement(r#"{"requires_all": {"requirements": ["allow_missing"]}}"#),
                "rules[0].requires.requires_all.requirements[0]",
            ),
            (
                with_requirement(r#"{"requires_all": {"requirements": ["allow_missing" , {"provider_name": "p"}]}}"#),
                "rules[0].requires.requires_all.requirements[0]",
            ),
            (
                with_requirement(
                    "{\"requires_all\": {\"requirements\": [{\"provider_name\": \"p\"}, \"allow_missing\"\n]}}",
                ),
                "rules[0].requires.requires_all.requirements[1]",
            ),
            (
                r#"{"providers": {"we\"ird.name[0]": {"issuer": 5}}}"#.to_string(),
                r#"providers["we\"ird.name[0]"].issuer"#,
            ),
            (
                r#"{"providers": {"caf\u00e9 \ud83d\ude00": {"issuer": 5}}}"#.to_string(),
                r#"providers["café 😀"].issuer"#,
            ),
            (r#"{"providers": {"caf\u00e9": {"issuer": 5}}}"#.to_string(), "providers.café.issuer"),
            (r#"{"providers": {"a\\": {"issuer": 5}}}"#.to_string(), r#"providers["a\\"].issuer"#),
            (r#"{"providers": {"": {"issuer": 5}}}"#.to_string(), r#"providers[""].issuer"#),
        ]);
        let e = error_of(&with_provider(r#", "issuer": 5"#, ""));
        assert!(
            e.to_string().starts_with("invalid configuration at providers.p.issuer: invalid type: integer `5`, expected a string at line 1 column"),
            "{e}"
        );
    }

    #[test]
    fn missing_fields_are_named_in_their_object() {
        assert_fields(&[
            ("{}".to_string(), "providers"),
            (" {\n\"rules\": [] }\n".to_string(), "providers"),
            (with_provider("", r#", "revocation": {"authority": "a"}"#), "revocation.cluster"),
            (with_provider("", r#", "revocation": {"cluster": "c"}"#), "revocation.authority"),
            (with_provider("", r#", "revocation": {}"#), "revocation.cluster"),
            (with_provider(r#", "remote_jwks": { }"#, ""), "providers.p.remote_jwks.cluster"),
            (with_provider(r#", "local_jwks": {}"#, ""), "providers.p.local_jwks.inline_string"),
            (with_provider(r#", "from_headers": [{"name": "a"}, {}]"#, ""), "providers.p.from_headers[1].name"),
            (with_provider(r#", "from_headers": [{"value_prefix": "a"}]"#, ""), "providers.p.from_headers[0].name"),
            (
                with_provider("", r#", "rules": [{"match": {"prefix": "/"}}, {"requires": {"provider_name": "p"}}]"#),
                "rules[1].match",
            ),
            (with_requirement(r#"{"requires_any": {}}"#), "rules[0].requires.requires_any.requirements"),
            (
                r#"{"providers": {"a.b": {"remote_jwks": {"uri": "http://x/k"}}}}"#.to_string(),
                r#"providers["a.b"].remote_jwks.cluster"#,
            ),
        ]);
        let e = error_of(&with_provider("", r#", "revocation": {"authority": "a"}"#));
        assert!(
            e.to_string().starts_with("invalid configuration at revocation.cluster: missing field `cluster` at line 1"),
            "{e}"
        );
    }

    #[test]
    fn unknown_variants_and_structs_written_as_arrays() {
        assert_fields(&[
            (
                with_provider("", r#", "revocation": {"cluster": "c", "authority": "a", "source": "both"}"#),
                "revocation.source",
            ),
            (
                with_provider("", r#", "revocation": {"cluster": "c", "authority": "a", "mode": {"greylist": null}}"#),
                "revocation.mode.greylist",
            ),
            (with_requirement(r#"{"provider": "p"}"#), "rules[0].requires.provider"),
            (with_requirement(r#""provider""#), "rules[0].requires"),
            (with_requirement(r#"{}"#), "rules[0].requires"),
            (
                with_requirement(r#"{"requires_any": {"requirements": [{"provider_name": "p"}, {"nope": {}}]}}"#),
                "rules[0].requires.requires_any.requirements[1].nope",
            ),
            (with_requirement(r#"{"a.\"b\"": 1}"#), r#"rules[0].requires["a.\"b\""]"#),
            (with_provider(r#", "issuer": "a", "issuer": "b""#, ""), "providers.p.issuer"),
            // A struct may be written as an array of its fields; too few is about the struct.
            ("[]".to_string(), "(root)"),
            (with_provider("", r#", "rules": [{"match": []}]"#), "rules[0].match"),
            (with_provider("", r#", "rules": [{"match": ["/x"]}]"#), "rules[0].match"),
            (with_provider("", r#", "rules": [{"match": ["/x", null, null, [], 5]}]"#), "rules[0].match[4]"),
        ]);
    }

    #[test]
    fn syntax_errors_name_what_is_open() {
        assert_fields(&[
            ("not json".to_string(), "(root)"),
            (String::new(), "(root)"),
            ("\n\n".to_string(), "(root)"),
            (with_provider("", "} x"), "(root)"),
            (with_provider("", "}}"), "(root)"),
            (r#"{"providers": {"p": {"issuer": "x",}}}"#.to_string(), "providers.p"),
            (r#"{"providers": {"p": {"issuer": }}}"#.to_string(), "providers.p.issuer"),
            (r#"{"providers": {"p": {"issuer" "x"}}}"#.to_string(), "providers.p.issuer"),
            (r#"{"providers": {"p": {"issuer": "x""#.to_string(), "providers.p.issuer"),
            (r#"{"providers": {"p": {"issuer": "x}}}"#.to_string(), "providers.p.issuer"),
            (r#"{"providers": {"p": {"audiences": ["a" "b"]}}}"#.to_string(), "providers.p.audiences[0]"),
            (r#"{"providers": {"p": {"audiences": ["a", ]}}}"#.to_string(), "providers.p.audiences[1]"),
            (r#"{"providers": {5: 1}}"#.to_string(), "providers"),
            (r#"{"providers": {"p"#.to_string(), "providers"),
            (r#"{"providers": {"p": {}}"#.to_string(), "providers"),
            (r#"{"providers": {"x.y": {"issuer": tru}}}"#.to_string(), r#"providers["x.y"].issuer"#),
        ]);
    }

    /// Hostile input is refused with some field named, never a panic; and the path recovery itself
    /// is total whatever position and message it is given.
    #[test]
    fn hostile_configs_are_refused_without_panic() {
        let mut inputs: Vec<Vec<u8>> = vec![
            "[".repeat(5_000).into_bytes(),
            r#"{"providers": "#.repeat(5_000).into_bytes(),
            format!(r#"{{"providers": {{"p": {}1{}}}}}"#, "[".repeat(200), "]".repeat(200)).into_bytes(),
            b"\"abc".to_vec(),
            br#"{"providers": {"\"#.to_vec(),
            br#"{"providers": {"\u12"#.to_vec(),
            br#"{"providers": {"\ud800": {}}, "x": 1}"#.to_vec(),
            br#"{"providers": {"\udc00\ud800\u": 1}}"#.to_vec(),
            br#"{"max_token_bytes": 1e999999}"#.to_vec(),
            br#"{"max_token_bytes": 999999999999999999999999999999999999}"#.to_vec(),
            br#"{"max_token_bytes": -0.0e-99999}"#.to_vec(),
            b"{\"providers\": {\"\xff\xfe\": {}}}".to_vec(),
            b"{\"\xff\": 1}".to_vec(),
            b"\xff\xfe\x00".to_vec(),
            b"{\"providers\": {\"p\": {\"issuer\": \"a\x00b\"}}}".to_vec(),
            b"{\"providers\": {\"p\": {\"issuer\": \"\xc3\"}}}".to_vec(),
            b"\\\\\\\"\"\"]]]}}}".to_vec(),
            b"{\"\\".to_vec(),
            b" \n\r\t".to_vec(),
        ];
        inputs.push(sample().into_bytes().split_last().map_or(vec![], |(_, rest)| rest.to_vec()));
        for input in &inputs {
            let e = Config::parse(input).expect_err("hostile input accepted");
            assert!(!e.field.is_empty());
            for line in [0, 1, 2, 3, usize::MAX] {
                for column in [0, 1, 7, input.len(), usize::MAX] {
                    for message in [
                        "missing field `x`",
                        "missing field `",
                        "invalid length 0",
                        "invalid type: unit variant",
                        "EOF while parsing a value",
                        "",
                    ] {
                        assert!(!error_path(input, line, column, message).is_empty());
                    }
                }
            }
        }
    }

    #[test]
    fn keys_are_unescaped() {
        assert_eq!(unescape(br#"a\"b\\c\/d\n\u0041\u00e9\ud83d\ude00"#), "a\"b\\c/d\nAé😀");
        assert_eq!(unescape(br#"\ud800\u0041\udc00\u12\"#), "\u{fffd}A\u{fffd}\u{fffd}");
    }
}
