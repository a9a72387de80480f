//! The proxy-wasm glue: read configuration, hand each request to the [`Authenticator`], carry out
//! its decision, and ask the revocation service (through Envoy's shared data cache, then a
//! single-flight callout) about verified tokens. The decisions themselves live in pure modules.

use crate::authenticator::{Authenticator, Decision, Request, Tally, Verified};
use crate::config::{self, Config};
use crate::extract::RequestHeaders;
use crate::host::{self, EnvoyCrypto};
use crate::host_crypto::{self, HostCrypto};
use crate::reason::Reason;
use crate::response::{self, ResponseStyle};
use crate::revocation::{self, Entry, Failure, FailureMode, Identity, Known, Lookup, Verdict};
use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { shared: None }) });
}}

/// Stat ids, defined once per VM. Envoy shows them as `wasmcustom.jwtguard.*`.
struct Metrics {
    allowed: u32,
    denied: Vec<(Reason, u32)>,
    cache_hit: u32,
    cache_miss: u32,
    verify_host: u32,
    verify_wasm: u32,
    check_ok: u32,
    check_revoked: u32,
    check_unavailable: u32,
    check_timeout: u32,
    rev_cache_hit: u32,
    rev_cache_miss: u32,
    coalesced: u32,
    failure_open: u32,
    failure_stale: u32,
    failure_closed: u32,
    callout_ms: u32,
    logout_ok: u32,
    logout_failed: u32,
}

impl Metrics {
    fn define() -> Option<Metrics> {
        let def = |kind, name: &str| hostcalls::define_metric(kind, &format!("jwtguard.{name}")).ok();
        let counter = |name: &str| def(MetricType::Counter, name);
        let mut denied = Vec::new();
        for reason in Reason::ALL {
            denied.push((reason, counter(&format!("denied.{}", reason.name()))?));
        }
        Some(Metrics {
            allowed: counter("allowed")?,
            denied,
            cache_hit: counter("jwt_cache_hit")?,
            cache_miss: counter("jwt_cache_miss")?,
            verify_host: counter("verify.host_crypto")?,
            verify_wasm: counter("verify.wasm_crypto")?,
            check_ok: counter("revocation.check.ok")?,
            check_revoked: counter("revocation.check.revoked")?,
            check_unavailable: counter("revocation.check.unavailable")?,
            check_timeout: counter("revocation.check.timeout")?,
            rev_cache_hit: counter("revocation.cache_hit")?,
            rev_cache_miss: counter("revocation.cache_miss")?,
            coalesced: counter("revocation.coalesced")?,
            failure_open: counter("revocation.failure_mode.open")?,
            failure_stale: counter("revocation.failure_mode.stale")?,
            failure_closed: counter("revocation.failure_mode.closed")?,
            callout_ms: def(MetricType::Histogram, "revocation.callout_ms")?,
            logout_ok: counter("logout.ok")?,
            logout_failed: counter("logout.failed")?,
        })
    }

    fn add(id: u32, n: u32) {
        if n > 0 {
            let _ = hostcalls::increment_metric(id, i64::from(n));
        }
    }

    fn record(&self, tally: &Tally) {
        Self::add(self.cache_hit, tally.cache_hits);
        Self::add(self.cache_miss, tally.cache_misses);
        Self::add(self.verify_host, tally.host_verifications);
        Self::add(self.verify_wasm, tally.wasm_verifications);
    }

    fn denied(&self, reason: Reason) {
        if let Some((_, id)) = self.denied.iter().find(|(r, _)| *r == reason) {
            Self::add(*id, 1);
        }
    }

    fn answer(&self, answer: Result<Known, Failure>) {
        Self::add(
            match answer {
                Ok(Known::Active) => self.check_ok,
                Ok(Known::Revoked | Known::NoSession) => self.check_revoked,
                Err(Failure::Unavailable) => self.check_unavailable,
                Err(Failure::Timeout) => self.check_timeout,
            },
            1,
        );
    }
}

/// A request waiting for the revocation answer about its token.
struct Waiter {
    context_id: u32,
    failure_mode: FailureMode,
    /// The cache's stale answer, for `failure_mode: stale`.
    stale: Option<Known>,
}

/// One status callout in flight, shared by every request carrying the same token on this worker.
struct Inflight {
    started_ms: u64,
    waiters: Vec<Waiter>,
}

struct Shared {
    auth: RefCell<Authenticator>,
    style: ResponseStyle,
    metrics: Metrics,
    host: Option<EnvoyCrypto>,
    revocation: Option<config::Revocation>,
    inflight: RefCell<HashMap<String, Inflight>>,
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    /// Finishes a request whose revocation question is settled. `waiting`: the request is paused
    /// and `context_id` must be made current and resumed; otherwise it is the current one.
    fn settle(&self, context_id: u32, waiting: bool, verdict: Verdict) -> Action {
        if waiting && !host::set_effective_context(context_id) {
            return Action::Pause; // the client went away
        }
        let m = &self.metrics;
        let mark = match verdict {
            Verdict::Allow => None,
            Verdict::AllowUnchecked => Some((m.failure_open, "unchecked")),
            Verdict::AllowStale => Some((m.failure_stale, "stale")),
            Verdict::Deny(reason) => {
                if reason == Reason::RevocationUnavailable {
                    Metrics::add(m.failure_closed, 1);
                }
                self.deny(reason, None);
                return Action::Pause;
            }
        };
        if let Some((counter, value)) = mark {
            Metrics::add(counter, 1);
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, config::UNCHECKED_HEADER, Some(value));
        }
        Metrics::add(m.allowed, 1);
        if waiting {
            let _ = hostcalls::resume_http_request();
        }
        Action::Continue
    }

    /// Sends the denial on the current context.
    fn deny(&self, reason: Reason, scope: Option<&str>) {
        self.metrics.denied(reason);
        let r = response::denial(&self.style, reason, scope);
        let headers = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let _ = hostcalls::send_http_response(r.status, headers, Some(r.body.as_bytes()));
    }

    /// Answers every request waiting on `key` and forgets the callout.
    fn finish_inflight(&self, key: &str, answer: Result<Known, Failure>) {
        let Some(inflight) = self.inflight.borrow_mut().remove(key) else {
            return;
        };
        for w in inflight.waiters {
            self.settle(w.context_id, true, revocation::verdict(answer, w.failure_mode, w.stale));
        }
    }

    fn remember(&self, rev: &config::Revocation, identity: &Identity, known: Known) {
        let entry =
            Entry { known, fetched_ms: now_ms(), exp: identity.exp.unwrap_or(0), identity: identity.key.clone() };
        let _ = hostcalls::set_shared_data(&identity.slot_key(rev.cache_max_entries), Some(&entry.encode()), None);
    }
}

struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes =
            hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                error!("jwtguard: {e}");
                return false;
            }
        };
        let Some(metrics) = Metrics::define() else {
            error!("jwtguard: the host refused to define stats");
            return false;
        };
        let host = (config.host_crypto && host_crypto::self_test(&EnvoyCrypto)).then_some(EnvoyCrypto);
        if config.host_crypto && host.is_none() {
            warn!("jwtguard: the host has no working verify_signature; RS*/ES* verify in wasm (slower)");
        }
        let providers: Vec<String> =
            config.providers.iter().map(|p| format!("{} ({} keys)", p.name, p.keys.len())).collect();
        let revocation = config.revocation.as_ref().map_or("off".to_string(), |r| {
            format!("cluster {}, cache {} ms, failure_mode {:?}", r.cluster, r.freshness.ttl_ms, r.failure_mode)
        });
        info!(
            "jwtguard: providers {}; {} rules; crypto: {}; revocation: {revocation}",
            providers.join(", "),
            config.rules.len(),
            if host.is_some() { "Envoy verify_signature for RS*/ES*, wasm for the rest" } else { "wasm" }
        );
        if let Some(r) = &config.revocation {
            // The sweep answers requests whose callout was lost (its first request went away).
            let _ = hostcalls::set_tick_period(Duration::from_millis(r.timeout_ms.clamp(50, 1000)));
        }
        let style = ResponseStyle {
            realm: config.realm.clone(),
            include_error_description: config.include_error_description,
            retry_after_seconds: config.revocation.as_ref().map_or(1, |r| r.retry_after_seconds),
        };
        let revocation = config.revocation.clone();
        self.shared = Some(Rc::new(Shared {
            auth: RefCell::new(Authenticator::new(config)),
            style,
            metrics,
            host,
            revocation,
            inflight: RefCell::new(HashMap::new()),
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = &self.shared else { return };
        let Some(rev) = &shared.revocation else { return };
        let deadline = now_ms().saturating_sub(rev.timeout_ms + 500);
        let lost: Vec<String> =
            shared.inflight.borrow().iter().filter(|(_, f)| f.started_ms < deadline).map(|(k, _)| k.clone()).collect();
        for key in lost {
            shared.finish_inflight(&key, Err(Failure::Timeout));
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(Filter { shared, context_id, callout: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What this request's own callout is for.
enum Callout {
    Status { identity: Identity, started_ms: u64 },
    Logout { identity: Identity },
}

struct Filter {
    shared: Rc<Shared>,
    context_id: u32,
    callout: Option<Callout>,
}

impl Context for Filter {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u16>().ok());
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(64 * 1024)).ok().flatten();
        let shared = self.shared.clone();
        let Some(rev) = &shared.revocation else { return };
        match self.callout.take() {
            Some(Callout::Status { identity, started_ms }) => {
                let _ = hostcalls::record_metric(shared.metrics.callout_ms, now_ms().saturating_sub(started_ms));
                let answer = revocation::read_answer(status, body.as_deref());
                shared.metrics.answer(answer);
                if let Ok(known) = answer {
                    shared.remember(rev, &identity, known);
                }
                shared.finish_inflight(&identity.key, answer);
            }
            Some(Callout::Logout { identity }) => {
                host::set_effective_context(self.context_id);
                if status == Some(200) {
                    // This Envoy refuses the token at once; the others within cache_ttl_ms.
                    shared.remember(rev, &identity, Known::Revoked);
                    Metrics::add(shared.metrics.logout_ok, 1);
                    let _ = hostcalls::send_http_response(204, vec![("cache-control", "no-store")], None);
                } else {
                    warn!("jwtguard: logout failed: revocation service answered {status:?}");
                    Metrics::add(shared.metrics.logout_failed, 1);
                    shared.deny(Reason::RevocationUnavailable, None);
                }
            }
            None => {}
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let shared = self.shared.clone();
        let Ok(mut auth) = shared.auth.try_borrow_mut() else {
            shared.deny(Reason::Malformed, None);
            return Action::Pause;
        };
        // One host call for all headers: cheaper than one per header we look at.
        let headers = hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        // A client must never be able to send what looks like a verified claim.
        for name in &auth.config.output_headers {
            if headers.iter().any(|(k, _)| k == name) {
                self.set_http_request_header(name, None);
            }
        }
        let pseudo = |name: &str| headers.values(name).first().copied().unwrap_or("");
        let (method, path) = (pseudo(":method"), pseudo(":path"));
        let now = self.get_current_time().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let request = Request { method, path, headers: &headers };
        let mut tally = Tally::default();
        let host = shared.host.as_ref().map(|h| h as &dyn HostCrypto);
        let decision = auth.authenticate(&request, now, host, &mut tally);
        drop(auth);
        shared.metrics.record(&tally);
        match decision {
            Decision::Pass => Action::Continue,
            Decision::Allow { headers, strip, tokens, revocation } => {
                for name in strip {
                    self.set_http_request_header(&name, None);
                }
                for (name, value) in headers {
                    self.set_http_request_header(&name, Some(&value));
                }
                match (revocation, tokens.first()) {
                    (Some(failure_mode), Some(token)) => self.check_revocation(token, failure_mode),
                    _ => shared.settle(self.context_id, false, Verdict::Allow),
                }
            }
            Decision::Logout { token, everywhere } => self.logout(&token, everywhere),
            Decision::Deny { reason, scope } => {
                debug!("jwtguard: {method} {path} denied: {}", reason.name());
                shared.deny(reason, scope.as_deref());
                Action::Pause
            }
        }
    }
}

impl Filter {
    /// The shared cache first; on a miss, join or start the single status callout for this token.
    fn check_revocation(&mut self, token: &Verified, failure_mode: FailureMode) -> Action {
        let shared = self.shared.clone();
        let Some(rev) = &shared.revocation else {
            return shared.settle(self.context_id, false, Verdict::Allow);
        };
        let identity = &token.identity;
        let now = now_ms();
        let (cached, _) = hostcalls::get_shared_data(&identity.slot_key(rev.cache_max_entries)).unwrap_or((None, None));
        let entry = cached.and_then(|bytes| Entry::decode(&bytes));
        let stale = match revocation::lookup(entry.as_ref(), identity, now, rev.freshness) {
            Lookup::Fresh(known) => {
                Metrics::add(shared.metrics.rev_cache_hit, 1);
                return shared.settle(self.context_id, false, revocation::verdict(Ok(known), failure_mode, None));
            }
            Lookup::Stale(known) => Some(known),
            Lookup::Miss => None,
        };
        Metrics::add(shared.metrics.rev_cache_miss, 1);
        let waiter = Waiter { context_id: self.context_id, failure_mode, stale };
        if let Some(inflight) = shared.inflight.borrow_mut().get_mut(&identity.key) {
            Metrics::add(shared.metrics.coalesced, 1);
            inflight.waiters.push(waiter);
            return Action::Pause;
        }
        let path = revocation::status_path(&rev.path, identity, rev.mode);
        let authorization = rev.credential.as_ref().map(|c| format!("Bearer {c}"));
        let mut headers = vec![(":method", "GET"), (":path", path.as_str()), (":authority", rev.authority.as_str())];
        if let Some(a) = &authorization {
            headers.push(("authorization", a.as_str()));
        }
        match self.dispatch_http_call(&rev.cluster, headers, None, vec![], Duration::from_millis(rev.timeout_ms)) {
            Ok(_) => {
                shared
                    .inflight
                    .borrow_mut()
                    .insert(identity.key.clone(), Inflight { started_ms: now, waiters: vec![waiter] });
                self.callout = Some(Callout::Status { identity: identity.clone(), started_ms: now });
                Action::Pause
            }
            Err(status) => {
                warn!("jwtguard: revocation callout to cluster {:?} failed: {status:?}", rev.cluster);
                shared.metrics.answer(Err(Failure::Unavailable));
                shared.settle(
                    self.context_id,
                    false,
                    revocation::verdict(Err(Failure::Unavailable), failure_mode, stale),
                )
            }
        }
    }

    /// Revokes the presented token (or its subject, `everywhere`) through the service; 204 once done.
    fn logout(&mut self, token: &Verified, everywhere: bool) -> Action {
        let shared = self.shared.clone();
        let Some(rev) = &shared.revocation else {
            return Action::Continue;
        };
        let id = &token.identity;
        let (path, body) = if everywhere {
            let Some(sub) = id.sub.clone() else {
                return self.bad_logout("the token has no sub");
            };
            let body = jwtguard_wire::RevokeSubjectRequest { sub, iss: id.iss.clone(), issued_before: None };
            (&rev.revoke_subject_path, serde_json::to_vec(&body))
        } else {
            let (Some(jti), Some(exp)) = (id.jti.clone(), id.exp) else {
                return self.bad_logout("the token has no jti and exp; use the log-out-everywhere route");
            };
            let body = jwtguard_wire::RevokeRequest { jti: Some(jti), exp: Some(exp), ..Default::default() };
            (&rev.revoke_path, serde_json::to_vec(&body))
        };
        let Ok(body) = body else {
            return self.bad_logout("the token's claims cannot be sent");
        };
        let authorization = format!("Bearer {}", rev.revoke_credential.as_deref().unwrap_or(""));
        let headers = vec![
            (":method", "POST"),
            (":path", path.as_str()),
            (":authority", rev.authority.as_str()),
            ("content-type", "application/json"),
            ("authorization", authorization.as_str()),
        ];
        match self.dispatch_http_call(&rev.cluster, headers, Some(&body), vec![], Duration::from_millis(rev.timeout_ms))
        {
            Ok(_) => {
                self.callout = Some(Callout::Logout { identity: id.clone() });
                Action::Pause
            }
            Err(_) => {
                Metrics::add(shared.metrics.logout_failed, 1);
                shared.deny(Reason::RevocationUnavailable, None);
                Action::Pause
            }
        }
    }

    fn bad_logout(&self, description: &str) -> Action {
        let body = serde_json::json!({"error": "invalid_request", "error_description": description}).to_string();
        let _ = hostcalls::send_http_response(400, vec![("content-type", "application/json")], Some(body.as_bytes()));
        Action::Pause
    }
}
