//! The proxy-wasm glue: the root context (configuration, the 100 ms tick that flushes counters,
//! fetches keys and answers lost waits, callouts it started) and the HTTP context (one request). Everything they do with a
//! request is in `shared.rs`; the decisions are in the pure modules.

use crate::host::{self, EnvoyCrypto};
use crate::metrics::Metrics;
use crate::poll::Feed;
use crate::shared::{now_ms, Callout, Remote, Shared};
use jwtguard::authenticator::Authenticator;
use jwtguard::config::Config;
use jwtguard::host_crypto;
use jwtguard::response::ResponseStyle;
use jwtguard::revocation::Failure;
use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { shared: None, callouts: HashMap::new() }) });
}}

/// The status and body of the callout answer being delivered.
fn callout_answer(body_size: usize) -> (Option<u16>, Option<Vec<u8>>) {
    let status = host::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
    let body = host::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(1 << 20)).ok().flatten();
    (status, body)
}

struct Root {
    shared: Option<Rc<Shared>>,
    /// Callouts this root started: the request they are for (0 for key fetches) and why.
    callouts: HashMap<u32, (u32, Callout)>,
}

impl Root {
    fn dispatch(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, proxy_wasm::types::Status> {
        self.dispatch_http_call(cluster, headers, body, vec![], timeout)
    }

    /// Key fetches due, and parked requests to retry.
    fn run_keys(&mut self, shared: &Shared) {
        let mut started = Vec::new();
        shared.sync_keys();
        for (token, callout) in shared.start_due_fetches(&|c, h, b, t| self.dispatch(c, h, b, t)) {
            started.push((token, 0, callout));
        }
        shared.retry_key_waiters(&|c, h, b, t| self.dispatch(c, h, b, t), &mut |token, ctx, callout| {
            started.push((token, ctx, callout))
        });
        for (token, ctx, callout) in started {
            self.callouts.insert(token, (ctx, callout));
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let Some(shared) = self.shared.clone() else { return };
        let Some((context_id, callout)) = self.callouts.remove(&token) else { return };
        let (status, body) = callout_answer(body_size);
        match callout {
            fetch @ (Callout::Jwks { .. } | Callout::Discovery { .. }) => {
                if let Some((t, next)) =
                    shared.on_fetch_callout(fetch, status, body.as_deref(), &|c, h, b, t| self.dispatch(c, h, b, t))
                {
                    self.callouts.insert(t, (0, next));
                }
                self.run_keys(&shared);
            }
            Callout::Feed { generation } => {
                let Some(feed) = &shared.feed else { return };
                let mut started = Vec::new();
                let dispatch = |c: &str, h: Vec<(&str, &str)>, b: Option<&[u8]>, t| self.dispatch(c, h, b, t);
                shared.on_feed_answer(
                    feed,
                    generation,
                    status,
                    body.as_deref(),
                    &dispatch,
                    &mut |token, ctx, callout| started.push((token, ctx, callout)),
                );
                // The next poll at once: a long-poll is always out, so a revocation arrives as
                // soon as the service has it.
                started.extend(shared.poll_feed(feed, &dispatch).map(|(t, c)| (t, 0, c)));
                for (token, ctx, callout) in started {
                    self.callouts.insert(token, (ctx, callout));
                }
            }
            request => shared.on_request_callout(request, context_id, status, body.as_deref()),
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = host::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                error!("jwtguard: {e}");
                return false;
            }
        };
        let host = (config.host_crypto && host_crypto::self_test(&EnvoyCrypto)).then_some(EnvoyCrypto);
        if config.host_crypto && host.is_none() {
            warn!("jwtguard: the host has no working verify_signature; RS*/ES* verify in wasm (slower)");
        }
        let providers: Vec<String> = config
            .providers
            .iter()
            .map(|p| match &p.remote_jwks {
                Some(r) => format!("{} (remote JWKS {}{} via {})", p.name, r.authority, r.path, r.cluster),
                None => format!("{} ({} keys)", p.name, p.keys.len()),
            })
            .collect();
        let revocation = config.revocation.as_ref().map_or("off".to_string(), |r| {
            format!("cluster {}, cache {} ms, failure_mode {:?}", r.cluster, r.freshness.ttl_ms, r.failure_mode)
        });
        info!(
            "jwtguard: providers {}; {} rules; crypto: {}; revocation: {revocation}",
            providers.join(", "),
            config.rules.len(),
            if host.is_some() { "Envoy verify_signature for RS*/ES*, wasm for the rest" } else { "wasm" }
        );
        let remote: Vec<Remote> = config
            .providers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p, p.remote_jwks.clone()?)))
            .enumerate()
            .map(|(index, (provider, p, cfg))| Remote {
                index,
                provider,
                name: p.name.clone(),
                shared_key: format!("jwtguard.{}.jwks.{}", config.namespace, p.name),
                cfg,
                algorithms: p.algorithms.clone(),
                loaded_ms: Cell::new(0),
            })
            .collect();
        let report_only = config.rules.iter().any(|r| r.report_only);
        let Some(metrics) =
            Metrics::define(config.stat_prefix.as_deref(), remote.iter().map(|r| r.name.as_str()), report_only)
        else {
            error!("jwtguard: the host refused to define stats");
            return false;
        };
        // The tick flushes counters, fetches keys, retries parked requests and answers waits
        // whose callout was lost.
        let tick = match &config.revocation {
            Some(r) if remote.is_empty() => r.timeout_ms.clamp(50, crate::metrics::FLUSH_MS),
            _ => crate::metrics::FLUSH_MS,
        };
        let _ = host::set_tick_period(Duration::from_millis(tick));
        let style = ResponseStyle {
            realm: config.realm.clone(),
            include_error_description: config.include_error_description,
            retry_after_seconds: config.revocation.as_ref().map_or(1, |r| r.retry_after_seconds),
        };
        let revocation = config.revocation.clone();
        let namespace = config.namespace.clone();
        let grace = config.providers.iter().map(|p| p.policy.clock_skew_seconds).max().unwrap_or(0);
        let feed = revocation.as_ref().and_then(|r| r.feed.clone()).map(|f| Feed::new(f, &namespace, grace));
        let shared = Rc::new(Shared {
            auth: RefCell::new(Authenticator::new(config)),
            style,
            metrics,
            host,
            revocation,
            feed,
            namespace,
            inflight: RefCell::new(HashMap::new()),
            key_waiters: RefCell::new(Vec::new()),
            remote,
            keys_version: Cell::new(0),
            report_logged_ms: Cell::new(0),
        });
        // Keys are fetched from the first tick, not here: Envoy configures a short-lived VM on
        // the main thread too, and a fetch it claimed would be lost with it.
        self.shared = Some(shared);
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else { return };
        shared.metrics.flush(now_ms());
        if let Some(rev) = &shared.revocation {
            let deadline = now_ms().saturating_sub(rev.timeout_ms.saturating_add(500));
            let lost: Vec<String> = shared
                .inflight
                .borrow()
                .iter()
                .filter(|(_, f)| f.started_ms < deadline)
                .map(|(k, _)| k.clone())
                .collect();
            for key in lost {
                shared.finish_inflight(&key, Err(Failure::Timeout));
            }
        }
        if !shared.remote.is_empty() {
            self.run_keys(&shared);
        }
        if let Some(feed) = &shared.feed {
            let mut started = Vec::new();
            shared.feed_upkeep(feed, &|c, h, b, t| self.dispatch(c, h, b, t), &mut |token, ctx, callout| {
                started.push((token, ctx, callout))
            });
            started.extend(shared.poll_feed(feed, &|c, h, b, t| self.dispatch(c, h, b, t)).map(|(t, c)| (t, 0, c)));
            for (token, ctx, callout) in started {
                self.callouts.insert(token, (ctx, callout));
            }
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

struct Filter {
    shared: Rc<Shared>,
    context_id: u32,
    callout: Option<Callout>,
}

impl Context for Filter {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let (status, body) = callout_answer(body_size);
        if let Some(callout) = self.callout.take() {
            self.shared.on_request_callout(callout, self.context_id, status, body.as_deref());
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // One host call for all headers: cheaper than one per header we look at. Without them
        // nothing can be judged (no path, no token): refuse rather than let it pass unchecked.
        let shared = self.shared.clone();
        let Ok(headers) = host::get_map(MapType::HttpRequestHeaders) else {
            shared.deny(jwtguard::reason::Reason::Malformed, None);
            return Action::Pause;
        };
        let (action, callout) = shared
            .handle(self.context_id, false, headers, None, &|c, h, b, t| self.dispatch_http_call(c, h, b, vec![], t));
        self.callout = callout.map(|(_, c)| c);
        action
    }
}
