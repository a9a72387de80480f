//! The identity providers whose signals the service accepts (`--signals-config`), and their key
//! sets: a file read at start, or a remote JWKS fetched when first needed, refreshed after
//! `cache_duration_seconds`, and when a token names a key the set lacks (one fetch at a time,
//! at most one every 2 s, and each such token judged by a set fetched after it came: forged
//! `kid`s cannot keep a rotated-in key out). A failed fetch keeps the keys held.

use crate::auth::Credentials;
use crate::signals::Trust;
use crate::token::keys_from_jwks;
use jsonwebtoken::Algorithm;
use jwtguard::keys::Key;
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest JWKS document or poll answer read (bytes).
pub const MAX_DOCUMENT_BYTES: u64 = 1024 * 1024;
/// Least time between two fetches for unknown `kid`s (forged ones must not make the service
/// hammer the identity provider); a token that comes meanwhile waits for the next one.
const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(2);
/// Most keys a fetched set may hold.
const MAX_KEYS: usize = 100;
/// Least time between two fetches after a failed one.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignalsConfig {
    issuers: Vec<RawIssuer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    remote_jwks: Option<RawRemoteJwks>,
    local_jwks: Option<RawLocalJwks>,
    #[serde(default = "default_skew")]
    clock_skew_seconds: u64,
    #[serde(default = "default_logout_max_age")]
    logout_token_max_age_seconds: u64,
    #[serde(default = "default_set_max_age")]
    set_max_age_seconds: u64,
    /// The `iss` of the tokens its signals are about (default: `issuer`); see `Trust`.
    #[serde(default)]
    subject_issuers: Vec<String>,
    #[serde(default = "yes")]
    sid_in_access_tokens: bool,
    /// Bearer credentials the issuer's SSF transmitter presents when it pushes.
    #[serde(default)]
    push_credentials: Vec<String>,
    ssf_poll: Option<PollConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemoteJwks {
    uri: String,
    #[serde(default = "default_cache_duration")]
    cache_duration_seconds: u64,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocalJwks {
    filename: String,
}

/// RFC 8936 polling of the issuer's SSF transmitter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    pub endpoint: String,
    /// The `Authorization` header value the transmitter wants (e.g. `Bearer …`).
    pub authorization: Option<String>,
    #[serde(default = "default_poll_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_max_events")]
    pub max_events: u32,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn yes() -> bool {
    true
}
fn default_skew() -> u64 {
    60
}
fn default_logout_max_age() -> u64 {
    300
}
fn default_set_max_age() -> u64 {
    86_400
}
fn default_cache_duration() -> u64 {
    300
}
fn default_timeout() -> u64 {
    5_000
}
fn default_poll_interval() -> u64 {
    5_000
}
fn default_max_events() -> u32 {
    100
}

enum Source {
    Fixed,
    Remote { uri: String, timeout: Duration, cache_duration: Duration },
}

#[derive(Default)]
struct Held {
    keys: Arc<Vec<Key>>,
    /// When the fetch of the keys held began.
    fetched: Option<Instant>,
    attempted: Option<Instant>,
    /// The last fetch to end: when it began, and whether it brought a set.
    last_ended: Option<(Instant, bool)>,
    /// When the last fetch for an unknown `kid` began.
    for_unknown_kid: Option<Instant>,
}

/// What asking for a fresh key set gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// A new set came: verify again.
    Fetched,
    /// The fetch failed: the set cannot tell whether the key exists.
    NotNow,
    /// A fixed set (`local_jwks`): the key does not exist.
    Fixed,
}

/// One trusted identity provider.
pub struct Issuer {
    pub trust: Trust,
    pub push_credentials: Credentials,
    pub poll: Option<PollConfig>,
    source: Source,
    held: Mutex<Held>,
    /// One fetch for unknown `kid`s at a time.
    unknown_kid_fetch: tokio::sync::Mutex<()>,
}

pub struct Issuers {
    list: Vec<Arc<Issuer>>,
}

impl Issuers {
    /// Reads and checks `--signals-config`; an error names the file and what is wrong.
    pub fn load(path: &std::path::Path) -> Result<Issuers, String> {
        let at = |e: String| format!("--signals-config {}: {e}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
        let raw: RawSignalsConfig = serde_json::from_str(&text).map_err(|e| at(e.to_string()))?;
        let mut list = Vec::new();
        for (i, issuer) in raw.issuers.into_iter().enumerate() {
            let issuer = Issuer::new(issuer).map_err(|e| at(format!("issuers[{i}]: {e}")))?;
            if list.iter().any(|known: &Arc<Issuer>| known.trust.issuer == issuer.trust.issuer) {
                return Err(at(format!("issuers[{i}].issuer: {:?} is listed twice", issuer.trust.issuer)));
            }
            list.push(Arc::new(issuer));
        }
        if list.is_empty() {
            return Err(at("issuers: at least one is required".into()));
        }
        Ok(Issuers { list })
    }

    pub fn find(&self, iss: &str) -> Option<&Arc<Issuer>> {
        self.list.iter().find(|i| i.trust.issuer == iss)
    }

    pub fn all(&self) -> &[Arc<Issuer>] {
        &self.list
    }
}

impl Issuer {
    fn new(raw: RawIssuer) -> Result<Issuer, String> {
        if let Some(problem) =
            jwtguard::revocation::id_problem("issuer", &raw.issuer, jwtguard::revocation::MAX_ISS_CHARS)
        {
            return Err(problem);
        }
        if raw.audiences.is_empty() || raw.audiences.iter().any(String::is_empty) {
            return Err("audiences: at least one, none empty".into());
        }
        if raw.algorithms.is_empty() {
            return Err("algorithms: at least one".into());
        }
        let mut subject_issuers = raw.subject_issuers;
        if subject_issuers.is_empty() {
            subject_issuers.push(raw.issuer.clone());
        }
        if let Some(problem) = subject_issuers
            .iter()
            .find_map(|i| jwtguard::revocation::id_problem("subject_issuers[]", i, jwtguard::revocation::MAX_ISS_CHARS))
        {
            return Err(problem);
        }
        let (source, keys) = match (raw.remote_jwks, raw.local_jwks) {
            (Some(remote), None) => {
                if !(remote.uri.starts_with("https://") || remote.uri.starts_with("http://")) {
                    return Err("remote_jwks.uri: an http(s) URL".into());
                }
                let source = Source::Remote {
                    uri: remote.uri,
                    timeout: Duration::from_millis(remote.timeout_ms.max(1)),
                    cache_duration: Duration::from_secs(remote.cache_duration_seconds.max(1)),
                };
                (source, Vec::new())
            }
            (None, Some(local)) => {
                let text = std::fs::read_to_string(&local.filename)
                    .map_err(|e| format!("local_jwks.filename {}: {e}", local.filename))?;
                let keys = keys_from_jwks(&text, &raw.algorithms).map_err(|e| format!("local_jwks: {e}"))?;
                (Source::Fixed, keys)
            }
            _ => return Err("exactly one of remote_jwks and local_jwks".into()),
        };
        for (field, uri) in [
            ("remote_jwks.uri", source_uri(&source)),
            ("ssf_poll.endpoint", raw.ssf_poll.as_ref().map(|p| p.endpoint.as_str())),
        ] {
            if uri.is_some_and(|u| u.starts_with("http://")) {
                // Allowed for a mesh that originates TLS (a sidecar, an egress gateway).
                tracing::warn!(issuer = %raw.issuer, field, "plain http: keys and signals can be read and forged in transit unless the mesh originates TLS");
            }
        }
        if let Some(poll) = &raw.ssf_poll {
            if !(poll.endpoint.starts_with("https://") || poll.endpoint.starts_with("http://")) {
                return Err("ssf_poll.endpoint: an http(s) URL".into());
            }
            if poll.max_events == 0 {
                return Err("ssf_poll.max_events: at least 1".into());
            }
            if !(100..=3_600_000).contains(&poll.interval_ms) {
                return Err("ssf_poll.interval_ms: 100 to 3600000".into());
            }
        }
        Ok(Issuer {
            trust: Trust {
                issuer: raw.issuer,
                audiences: raw.audiences,
                algorithms: raw.algorithms,
                clock_skew_seconds: raw.clock_skew_seconds,
                logout_token_max_age_seconds: raw.logout_token_max_age_seconds,
                set_max_age_seconds: raw.set_max_age_seconds,
                subject_issuers,
                sid_in_access_tokens: raw.sid_in_access_tokens,
            },
            push_credentials: Credentials::parse(&raw.push_credentials.join("\n")),
            poll: raw.ssf_poll,
            source,
            held: Mutex::new(Held { keys: Arc::new(keys), ..Default::default() }),
            unknown_kid_fetch: tokio::sync::Mutex::new(()),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The keys to verify with now: fetched first when the set is empty or older than its
    /// cache duration (and no fetch failed in the last few seconds).
    pub async fn keys(&self) -> Arc<Vec<Key>> {
        if let Source::Remote { cache_duration, .. } = &self.source {
            let due = {
                let held = self.held();
                let stale = held.fetched.is_none_or(|at| at.elapsed() >= *cache_duration);
                stale && held.attempted.is_none_or(|at| at.elapsed() >= RETRY_INTERVAL)
            };
            if due {
                self.fetch().await;
            }
        }
        self.held().keys.clone()
    }

    /// A token that came at `arrived` named a key the set lacks: judge it by a set fetched after
    /// it came — one another such token started, or a fetch of its own once the last began
    /// `UNKNOWN_KID_INTERVAL` ago.
    pub async fn refresh_for_unknown_key(&self, arrived: Instant) -> Refresh {
        if matches!(self.source, Source::Fixed) {
            return Refresh::Fixed;
        }
        let _one_at_a_time = self.unknown_kid_fetch.lock().await;
        let (ended, last) = {
            let held = self.held();
            (held.last_ended, held.for_unknown_kid)
        };
        // A fetch begun after the token came has answered for it, either way: a failed one too
        // (while the JWKS is unreachable a queue of tokens would otherwise take a slot each).
        if let Some((_, ok)) = ended.filter(|(began, _)| *began >= arrived) {
            return if ok { Refresh::Fetched } else { Refresh::NotNow };
        }
        if let Some(wait) = last.and_then(|at| UNKNOWN_KID_INTERVAL.checked_sub(at.elapsed())) {
            tokio::time::sleep(wait).await;
        }
        self.held().for_unknown_kid = Some(Instant::now());
        if self.fetch().await {
            Refresh::Fetched
        } else {
            Refresh::NotNow
        }
    }

    async fn fetch(&self) -> bool {
        let Source::Remote { uri, timeout, .. } = &self.source else {
            return false;
        };
        let started = Instant::now();
        self.held().attempted = Some(started);
        let (uri, timeout, allowed) = (uri.clone(), *timeout, self.trust.algorithms.clone());
        // A fetched set follows the filter's rules for one (jwks::accept_keys): keys not for
        // signatures, of other algorithms, or secret (a published document is public) are
        // skipped, not fatal; the rest must make a valid set.
        let fetched = tokio::task::spawn_blocking(move || {
            let text = get_text(&uri, timeout)?;
            let (keys, skipped) =
                jwtguard::jwks::accept_keys(text.as_bytes(), &allowed, MAX_DOCUMENT_BYTES as usize, MAX_KEYS, &[])?;
            if !skipped.is_empty() {
                tracing::info!(uri, skipped = %skipped.join("; "), "signals: keys of the issuer's JWKS not used");
            }
            Ok::<_, String>(keys)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let mut held = self.held();
        if held.last_ended.is_none_or(|(began, _)| began <= started) {
            held.last_ended = Some((started, fetched.is_ok()));
        }
        match fetched {
            Ok(keys) => {
                // Kept by when it began (a document fetched then may predate a key published
                // meanwhile); an older fetch that ends last does not replace a newer set.
                if held.fetched.is_none_or(|f| f <= started) {
                    held.keys = Arc::new(keys);
                    held.fetched = Some(started);
                }
                metrics::counter!("jwtguard_revocation_signal_jwks_fetches_total", "outcome" => "ok").increment(1);
                true
            }
            Err(error) => {
                tracing::warn!(issuer = %self.trust.issuer, %error, "signals: fetching the issuer's JWKS failed");
                metrics::counter!("jwtguard_revocation_signal_jwks_fetches_total", "outcome" => "error").increment(1);
                false
            }
        }
    }
}

fn source_uri(source: &Source) -> Option<&str> {
    match source {
        Source::Remote { uri, .. } => Some(uri),
        Source::Fixed => None,
    }
}

/// A GET of a small document (blocking; run it off the async workers).
fn get_text(uri: &str, timeout: Duration) -> Result<String, String> {
    let response = ureq::AgentBuilder::new().timeout(timeout).build().get(uri).call().map_err(|e| e.to_string())?;
    read_limited(response)
}

/// The body of a response, at most `MAX_DOCUMENT_BYTES`.
pub fn read_limited(response: ureq::Response) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    response.into_reader().take(MAX_DOCUMENT_BYTES + 1).read_to_string(&mut text).map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(format!("the document is larger than {MAX_DOCUMENT_BYTES} bytes"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Issuers, String> {
        let dir = std::env::temp_dir().join(format!("jwtguard-issuers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:x}.json", jwtguard::fnv::fnv1a(text.as_bytes())));
        std::fs::write(&path, text).unwrap();
        let jwks = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"ec1","x":"04N0xi21hshyvBp7I167sbE_bXqyqkAPfefdklMO7wY","y":"UI8exy-C06a7DUnjIdENkxeFtHM4-l_41LqEw9nVgmw"}]}"#;
        // Tests run in parallel: each writes the same file, whole (a rename), before reading it.
        let part = dir.join(format!("jwks.{:?}.part", std::thread::current().id()));
        std::fs::write(&part, jwks).unwrap();
        std::fs::rename(&part, dir.join("jwks.json")).unwrap();
        let loaded = Issuers::load(&path);
        let _ = std::fs::remove_file(&path);
        loaded
    }

    fn issuer(extra: &str) -> String {
        let jwks = std::env::temp_dir().join(format!("jwtguard-issuers-{}", std::process::id())).join("jwks.json");
        format!(
            r#"{{"issuers":[{{"issuer":"https://idp","audiences":["rp"],"algorithms":["ES256"],"local_jwks":{{"filename":{:?}}}{extra}}}]}}"#,
            jwks.display()
        )
    }

    #[test]
    fn a_valid_configuration_and_its_defaults() {
        let issuers = load(&issuer("")).unwrap();
        let idp = issuers.find("https://idp").unwrap();
        assert_eq!((idp.trust.clock_skew_seconds, idp.trust.logout_token_max_age_seconds), (60, 300));
        assert_eq!(idp.trust.set_max_age_seconds, 86_400);
        assert!(idp.poll.is_none() && idp.push_credentials.is_empty());
        assert!(issuers.find("https://other").is_none());
        let polled = load(&issuer(r#","ssf_poll":{"endpoint":"https://idp/poll"},"push_credentials":["p"]"#)).unwrap();
        let poll = polled.all()[0].poll.clone().unwrap();
        assert_eq!((poll.interval_ms, poll.max_events, poll.timeout_ms), (5_000, 100, 5_000));
        assert!(polled.all()[0].push_credentials.allows(Some("Bearer p")));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        for (text, words) in [
            (issuer(r#","unknown":1"#), "unknown field `unknown`"),
            (issuer(r#","remote_jwks":{"uri":"https://idp/jwks"}"#), "exactly one of remote_jwks and local_jwks"),
            (issuer("").replace(r#"["ES256"]"#, r#"["ES999"]"#), "unknown variant `ES999`"),
            (issuer("").replace(r#"["ES256"]"#, "[]"), "algorithms"),
            (issuer("").replace(r#"["rp"]"#, "[]"), "audiences"),
            (issuer("").replace("https://idp", ""), "issuer"),
            (issuer(r#","ssf_poll":{"endpoint":"ftp://x"}"#), "ssf_poll.endpoint"),
            (issuer(r#","ssf_poll":{"endpoint":"https://x","max_events":0}"#), "max_events"),
            (r#"{"issuers":[]}"#.to_string(), "at least one"),
            (issuer("").replace(r#"[{"#, r#"[{"issuer":"https://idp","audiences":["rp"],"algorithms":["ES256"],"local_jwks":{"filename":"/nonexistent"}},{"#), "filename /nonexistent"),
        ] {
            let error = load(&text).err().unwrap_or_else(|| panic!("accepted {text}"));
            assert!(error.starts_with("--signals-config ") && error.contains(words), "{words:?} not in {error}");
        }
        let twice = issuer("").replace("]}", r#",{"issuer":"https://idp","audiences":["rp"],"algorithms":["ES256"],"remote_jwks":{"uri":"https://idp/jwks"}}]}"#);
        assert!(load(&twice).err().is_some_and(|e| e.contains("listed twice")));
        let es256_only = load(&issuer("")).unwrap();
        assert!(es256_only.all()[0].held().keys.iter().all(|k| k.fits(Algorithm::ES256, Some("ec1"))));
    }
}
