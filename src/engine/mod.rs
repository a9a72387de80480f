//! The request state machine both builds share: authenticate a request and carry out the
//! decision — allow, deny, report, check its token's revocation (a status callout or the feed's
//! set), park it until keys or the set arrive — plus the background work that feeds it (key
//! fetches, the feed's long-poll, stats). Everything it asks of Envoy goes through `Host`, which
//! the proxy-wasm glue and the dynamic-module glue implement; so it is tested natively and
//! written once.
//!
//! One `Engine` serves one thread's requests (a wasm VM, or a dynamic module's worker); what
//! threads share goes through the host's shared data (key sets, revocation answers) or an `Arc`
//! (`Feed`). A request is named by a context id the host gives it; the host's "effective
//! context" is the request the calls below act on, as in proxy-wasm.

mod feed_poll;
mod key_fetch;
mod request;
mod stats;
#[cfg(test)]
mod tests;

pub use feed_poll::Feed;
pub use request::{Callout, KeyWaiter, Remote, Retry};
pub use stats::{JwksStats, MetricKind, Metrics, FLUSH_MS};

use crate::authenticator::Authenticator;
use crate::config::{self, Config};
use crate::fast_hash::FastMap;
use crate::host_crypto::HostCrypto;
use crate::response::ResponseStyle;
use crate::revocation::Failure;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

/// What the host does for the engine. Calls on a request act on the effective context.
pub trait Host {
    /// Wall-clock milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Makes `context_id` the request later calls act on; false if it is gone (its client left).
    /// A host may reach only the request whose call runs and those that wait (their call returned
    /// `Action::Pause` without an answer): the dynamic module keeps no others.
    fn set_effective_context(&self, context_id: u32) -> bool;
    /// Sets (`Some`) or removes (`None`) a request header.
    fn set_request_header(&self, name: &str, value: Option<&str>);
    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: Option<&[u8]>);
    /// Lets a paused request go on to the next filter.
    fn resume_request(&self);
    /// A value of the host's store shared by every thread, and its compare-and-swap version.
    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Stores `value`; with `cas`, only if the version is still that (false otherwise).
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment_metric(&self, id: u32, by: u64);
    /// Sets a gauge or records a histogram value.
    fn record_metric(&self, id: u32, value: u64);
    /// How long counts may add up in the engine before the host sees them: each host call
    /// costs a wasm VM ≈ 1 µs (the module adds up its workers' counts itself).
    fn counter_flush_ms(&self) -> u64;
    /// Native signature verification, when the host has it.
    fn crypto(&self) -> Option<&dyn HostCrypto>;
    /// Whether `set_payload_metadata` reaches Envoy (a proxy-wasm filter cannot write dynamic
    /// metadata: envoyproxy/envoy#15148).
    fn writes_dynamic_metadata(&self) -> bool;
    /// Publishes a verified payload as `jwt_authn` does (`metadata::payload_struct`); false if
    /// it cannot be (it nests too deeply for Envoy), and the request is then refused.
    fn set_payload_metadata(&self, key: &str, payload: &crate::metadata::Payload) -> bool;
    /// Background state changed (keys, the feed's set) in a way that requests parked on other
    /// threads should look at now. A wasm VM does its own background work, so it has nothing to do.
    fn wake_parked(&self);
}

/// What the current host callback should do with its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// Sends an HTTP callout (cluster, headers, body, timeout) from whichever context calls; its
/// answer comes back to that context with the returned token. Err: why it could not be sent.
pub type Dispatch<'a> = &'a dyn Fn(&str, Vec<(&str, &str)>, Option<&[u8]>, Duration) -> Result<u32, String>;

/// Where a callout started while handling other requests is recorded: (token, context id, why).
pub type Record<'a> = &'a mut dyn FnMut(u32, u32, Callout);

pub struct Engine {
    pub host: Box<dyn Host>,
    pub auth: RefCell<Authenticator>,
    pub style: ResponseStyle,
    pub metrics: Metrics,
    pub revocation: Option<config::Revocation>,
    /// The revocation feed and set, with `revocation.source: feed`.
    pub feed: Option<Arc<Feed>>,
    /// Whether this engine does the background work (key fetches, the feed's poll): every wasm
    /// VM does; of a dynamic module's engines, the main thread's.
    pub background: bool,
    /// This plugin's part of the host's shared data (`Config::namespace`).
    pub namespace: String,
    pub inflight: RefCell<FastMap<String, request::Inflight>>,
    pub key_waiters: RefCell<Vec<KeyWaiter>>,
    pub set_waiters: RefCell<Vec<feed_poll::SetWaiter>>,
    pub remote: Vec<Remote>,
    /// Bumped whenever any remote key set changes in this engine.
    pub keys_version: Cell<u64>,
    /// The report-only refusal's log line.
    pub report_log: LogLimit,
    /// The log lines of a revocation service or cluster that fails a request's callout.
    pub service_log: LogLimit,
    /// Each provider's `payload_in_metadata` key, by provider index; empty when none has one.
    pub metadata_keys: Vec<Option<String>>,
    /// When `sync_keys_if_due` last loaded keys (ms).
    keys_synced_ms: Cell<u64>,
}

/// A log line that could come with every request (a report-only refusal, a revocation service
/// or cluster that is not there) is written at most once a second per engine, so that a flood
/// of requests is not a flood of Envoy's log; the counters count every one.
#[derive(Default)]
pub struct LogLimit(Cell<Option<u64>>);

impl LogLimit {
    /// Whether to write the line at `now_ms`.
    pub fn allows(&self, now_ms: u64) -> bool {
        let allowed = self.0.get().is_none_or(|last| now_ms >= last.saturating_add(1_000));
        if allowed {
            self.0.set(Some(now_ms));
        }
        allowed
    }
}

impl Engine {
    /// An engine for `config`. `feed`: the set to share with the other engines of this host, or
    /// `None` to make this engine's own. Err: the one log line saying why the filter cannot start.
    pub fn new(
        config: Config,
        host: Box<dyn Host>,
        background: bool,
        feed: Option<Arc<Feed>>,
    ) -> Result<Engine, String> {
        let mut metadata_keys = Vec::new();
        if let Some(p) = config.providers.iter().find(|p| p.payload_in_metadata.is_some()) {
            if !host.writes_dynamic_metadata() {
                return Err(format!(
                    "providers.{}.payload_in_metadata: proxy-wasm cannot write dynamic metadata",
                    p.name
                ));
            }
            metadata_keys = config.providers.iter().map(|p| p.payload_in_metadata.clone()).collect();
        }
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
                seen_ms: Cell::new(0),
                rejected_ms: Cell::new(0),
            })
            .collect();
        let report_only = config.rules.iter().any(|r| r.report_only);
        let metrics = Metrics::define(
            host.as_ref(),
            config.stat_prefix.as_deref(),
            remote.iter().map(|r| r.name.as_str()),
            report_only,
        )
        .ok_or("the host refused to define stats")?;
        let style = ResponseStyle {
            realm: config.realm.clone(),
            include_error_description: config.include_error_description,
            retry_after_seconds: config.revocation.as_ref().map_or(1, |r| r.retry_after_seconds),
        };
        let revocation = config.revocation.clone();
        let namespace = config.namespace.clone();
        let grace = config.providers.iter().map(|p| p.policy.clock_skew_seconds).max().unwrap_or(0);
        let feed = feed.or_else(|| {
            let cfg = revocation.as_ref()?.feed.clone()?;
            Some(Arc::new(Feed::new(cfg, &namespace, grace)))
        });
        Ok(Engine {
            host,
            auth: RefCell::new(Authenticator::new(config)),
            style,
            metrics,
            revocation,
            feed,
            background,
            namespace,
            inflight: RefCell::default(),
            key_waiters: RefCell::new(Vec::new()),
            set_waiters: RefCell::new(Vec::new()),
            remote,
            keys_version: Cell::new(0),
            report_log: LogLimit::default(),
            service_log: LogLimit::default(),
            keys_synced_ms: Cell::new(0),
            metadata_keys,
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.host.now_ms()
    }

    /// How often `tick` should run: often enough to answer lost revocation waits within their
    /// timeout, and at most the counter flush interval.
    pub fn tick_ms(&self) -> u64 {
        match &self.revocation {
            Some(r) if self.remote.is_empty() => r.timeout_ms.clamp(50, stats::FLUSH_MS),
            _ => stats::FLUSH_MS,
        }
    }

    /// The periodic work: hand counts to the host, answer waits whose callout was lost, load
    /// and fetch keys, retry parked requests, keep the feed polled and its waiters answered.
    /// Callouts it starts are recorded with `record`; `dispatch` sends them.
    pub fn tick(&self, dispatch: Dispatch, record: Record) {
        let now = self.now_ms();
        self.metrics.flush(self.host.as_ref(), now);
        if let Some(rev) = &self.revocation {
            // A check whose sender went is asked again; one that was never answered, though
            // Envoy answers every callout (a failure at its timeout), counts as timed out.
            let due: Vec<(String, bool)> = self
                .inflight
                .borrow()
                .iter()
                .filter(|(_, f)| f.sender.is_none() || request::lost(rev, f.started_ms, now))
                .map(|(k, f)| (k.clone(), f.sender.is_none()))
                .collect();
            for (key, orphan) in due {
                if orphan {
                    self.resend_status(&key, now, dispatch, record);
                } else {
                    self.metrics.answer(Err(Failure::Timeout));
                    self.finish_inflight(&key, Err(Failure::Timeout));
                }
            }
        }
        if !self.remote.is_empty() {
            self.run_keys(dispatch, record);
        }
        if let Some(feed) = self.feed.clone() {
            if self.background {
                self.feed_upkeep(&feed);
                if let Some((token, callout)) = self.poll_feed(&feed, dispatch) {
                    record(token, 0, callout);
                }
            }
            self.release_set_waiters(&feed, now, dispatch, record);
        }
    }

    /// Loads keys fetched elsewhere if the last load is a tick old: for an engine whose tick runs
    /// only while it has parked requests (a dynamic module's worker), called per request.
    pub fn sync_keys_if_due(&self) {
        if self.remote.is_empty() {
            return;
        }
        let now = self.now_ms();
        if now.saturating_sub(self.keys_synced_ms.get()) >= stats::FLUSH_MS {
            self.keys_synced_ms.set(now);
            self.sync_keys();
        }
    }

    /// Hands the counts added up so far to the host: a native host's glue, after each event.
    /// No clock read (it would cost every request one more): `flush_if_due`'s interval is for
    /// hosts that wait.
    pub fn flush_stats(&self) {
        self.metrics.flush_pending(self.host.as_ref());
    }

    /// Loads keys fetched anywhere, starts the fetches that are due (background only) and
    /// retries parked requests.
    pub fn run_keys(&self, dispatch: Dispatch, record: Record) {
        self.sync_keys();
        if self.background {
            for (token, callout) in self.start_due_fetches(dispatch) {
                record(token, 0, callout);
            }
        }
        self.retry_key_waiters(dispatch, record);
    }

    /// The answer to a callout this engine started. Key fetches and feed polls may start the
    /// next callout (recorded with `record`); a request's answer settles it.
    pub fn on_callout(
        &self,
        callout: Callout,
        context_id: u32,
        status: Option<u16>,
        body: Option<&[u8]>,
        dispatch: Dispatch,
        record: Record,
    ) {
        match callout {
            fetch @ (Callout::Jwks { .. } | Callout::Discovery { .. }) => {
                if let Some((token, next)) = self.on_fetch_callout(fetch, status, body, dispatch) {
                    record(token, 0, next);
                }
                self.run_keys(dispatch, record);
                self.host.wake_parked();
            }
            Callout::Feed { generation } => {
                let Some(feed) = self.feed.clone() else { return };
                self.on_feed_answer(&feed, generation, status, body, dispatch, record);
                // The next poll at once: a long-poll is always out, so a revocation arrives as
                // soon as the service has it.
                if let Some((token, callout)) = self.poll_feed(&feed, dispatch) {
                    record(token, 0, callout);
                }
                self.host.wake_parked();
            }
            request => self.on_request_callout(request, context_id, status, body),
        }
    }
}
