//! The filter's Envoy stats, `jwtguard.*`, defined once per engine. Envoy shows them under its
//! namespace for the build (`wasmcustom.jwtguard.*` for wasm) in `/stats`, and as `jwtguard_*`
//! in `/stats/prometheus`.

use super::{Engine, Host};
use crate::authenticator::Tally;
use crate::reason::Reason;
use crate::revocation::{Failure, Known};
use std::cell::{Cell, RefCell};

/// The tick's period: counters wait at most this long in the engine (`Host::counter_flush_ms`)
/// when host calls are dear. In a wasm VM two host calls per request cost ≈ 1–2 µs, a fifth of
/// the filter's whole cost on a cache hit.
pub const FLUSH_MS: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

pub struct Metrics {
    pub allowed: u32,
    denied: Vec<(Reason, u32)>,
    /// Report-only routes' refusals by reason (`would_deny.<reason>`); none without such routes.
    would_deny: Vec<(Reason, u32)>,
    cache_hit: u32,
    cache_miss: u32,
    verify_host: u32,
    verify_wasm: u32,
    check_ok: u32,
    check_revoked: u32,
    check_unavailable: u32,
    check_timeout: u32,
    pub rev_cache_hit: u32,
    pub rev_cache_miss: u32,
    pub coalesced: u32,
    pub failure_open: u32,
    pub failure_stale: u32,
    pub failure_closed: u32,
    pub callout_ms: u32,
    pub logout_ok: u32,
    pub logout_failed: u32,
    pub feed_answers: u32,
    pub feed_failed: u32,
    pub feed_events: u32,
    /// Gauges over every worker of this Envoy: the oldest set's age, the largest set, and
    /// whether this worker's set is over its bound.
    pub feed_age_ms: u32,
    pub feed_entries: u32,
    pub feed_overflowed: u32,
    /// One set per provider with a remote JWKS, in `Engine::remote` order.
    pub jwks: Vec<JwksStats>,
    /// Counts not yet handed to Envoy, by counter id.
    pending: RefCell<Vec<(u32, u64)>>,
    last_flush_ms: Cell<u64>,
}

/// A remote JWKS provider's stats, `jwtguard.jwks.<provider>.*`: each describes that provider
/// alone, so a stale provider beside a healthy one shows.
pub struct JwksStats {
    pub fetch_success: u32,
    pub fetch_failed: u32,
    /// Gauge: keys in force now (0 before the first fetch and once the stale period is over).
    pub keys_loaded: u32,
    /// Gauge: 1 from the end of `cache_duration` without a successful refresh until one succeeds,
    /// including after the keys expire.
    pub stale: u32,
    /// Gauge: milliseconds since the last successful fetch (0 before the first one), expired
    /// key sets included.
    pub age_ms: u32,
    pub unknown_kid_refetch: u32,
    pub requests_waited: u32,
}

use MetricKind::{Counter, Gauge, Histogram};

/// The stats of `Metrics`, in the order of its fields (a table, not a call per stat: the wasm
/// build is size-bound).
const STATS: [(MetricKind, &str); 24] = [
    (Counter, "allowed"),
    (Counter, "jwt_cache_hit"),
    (Counter, "jwt_cache_miss"),
    (Counter, "verify.host_crypto"),
    (Counter, "verify.wasm_crypto"),
    (Counter, "revocation.check.ok"),
    (Counter, "revocation.check.revoked"),
    (Counter, "revocation.check.unavailable"),
    (Counter, "revocation.check.timeout"),
    (Counter, "revocation.cache_hit"),
    (Counter, "revocation.cache_miss"),
    (Counter, "revocation.coalesced"),
    (Counter, "revocation.failure_mode.open"),
    (Counter, "revocation.failure_mode.stale"),
    (Counter, "revocation.failure_mode.closed"),
    (Histogram, "revocation.callout_ms"),
    (Counter, "logout.ok"),
    (Counter, "logout.failed"),
    (Counter, "revocation.feed.answers"),
    (Counter, "revocation.feed.failed"),
    (Counter, "revocation.feed.events"),
    (Gauge, "revocation.feed.age_ms"),
    (Gauge, "revocation.feed.entries"),
    (Gauge, "revocation.feed.overflowed"),
];

/// `JwksStats`' stats, in the order of its fields: `jwks.<provider>.<name>`.
const JWKS_STATS: [(MetricKind, &str); 7] = [
    (Counter, "fetch_success"),
    (Counter, "fetch_failed"),
    (Gauge, "keys_loaded"),
    (Gauge, "stale"),
    (Gauge, "age_ms"),
    (Counter, "unknown_kid_refetch"),
    (Counter, "requests_waited"),
];

/// Defines each (kind, name); their ids in the same order, or None if the host refused one.
fn define_all<const N: usize>(
    stats: [(MetricKind, String); N],
    def: &dyn Fn(MetricKind, &str) -> Option<u32>,
) -> Option<[u32; N]> {
    let mut ids = [0; N];
    for (id, (kind, name)) in ids.iter_mut().zip(stats) {
        *id = def(kind, &name)?;
    }
    Some(ids)
}

impl Metrics {
    /// `stat_prefix`: names become `jwtguard.<stat_prefix>.…`.
    pub fn define<'a>(
        host: &dyn Host,
        stat_prefix: Option<&str>,
        remote_providers: impl Iterator<Item = &'a str>,
        report_only: bool,
    ) -> Option<Metrics> {
        let prefix = stat_prefix.map(|p| format!("{p}.")).unwrap_or_default();
        let def = |kind, name: &str| host.define_metric(kind, &format!("jwtguard.{prefix}{name}"));
        let counter = |name: &str| def(Counter, name);
        let by_reason = |what: &str| -> Option<Vec<(Reason, u32)>> {
            Reason::ALL.into_iter().map(|r| Some((r, counter(&format!("{what}.{}", r.name()))?))).collect()
        };
        let denied = by_reason("denied")?;
        let would_deny = if report_only { by_reason("would_deny")? } else { Vec::new() };
        let mut jwks = Vec::new();
        for name in remote_providers {
            let [fetch_success, fetch_failed, keys_loaded, stale, age_ms, unknown_kid_refetch, requests_waited] =
                define_all(JWKS_STATS.map(|(kind, what)| (kind, format!("jwks.{name}.{what}"))), &def)?;
            jwks.push(JwksStats {
                fetch_success,
                fetch_failed,
                keys_loaded,
                stale,
                age_ms,
                unknown_kid_refetch,
                requests_waited,
            });
        }
        let [allowed, cache_hit, cache_miss, verify_host, verify_wasm, check_ok, check_revoked, check_unavailable, check_timeout, rev_cache_hit, rev_cache_miss, coalesced, failure_open, failure_stale, failure_closed, callout_ms, logout_ok, logout_failed, feed_answers, feed_failed, feed_events, feed_age_ms, feed_entries, feed_overflowed] =
            define_all(STATS.map(|(kind, name)| (kind, name.to_string())), &def)?;
        Some(Metrics {
            allowed,
            denied,
            would_deny,
            cache_hit,
            cache_miss,
            verify_host,
            verify_wasm,
            check_ok,
            check_revoked,
            check_unavailable,
            check_timeout,
            rev_cache_hit,
            rev_cache_miss,
            coalesced,
            failure_open,
            failure_stale,
            failure_closed,
            callout_ms,
            logout_ok,
            logout_failed,
            feed_answers,
            feed_failed,
            feed_events,
            feed_age_ms,
            feed_entries,
            feed_overflowed,
            jwks,
            pending: RefCell::new(Vec::new()),
            last_flush_ms: Cell::new(0),
        })
    }

    /// Adds to a counter; Envoy sees it at the next flush.
    pub fn add(&self, id: u32, n: u32) {
        if n == 0 {
            return;
        }
        let mut pending = self.pending.borrow_mut();
        match pending.iter_mut().find(|(i, _)| *i == id) {
            Some((_, count)) => *count += u64::from(n),
            None => pending.push((id, u64::from(n))),
        }
    }

    /// Hands the added-up counts to the host at `now_ms` (from which `flush_if_due` counts).
    pub fn flush(&self, host: &dyn Host, now_ms: u64) {
        self.last_flush_ms.set(now_ms);
        self.flush_pending(host);
    }

    /// Hands the added-up counts to the host, reading no clock.
    pub fn flush_pending(&self, host: &dyn Host) {
        let mut pending = self.pending.take();
        for &(id, n) in &pending {
            host.increment_metric(id, n);
        }
        // The list goes back empty, its allocation kept: a native host flushes every request.
        pending.clear();
        let mut current = self.pending.borrow_mut();
        if current.is_empty() {
            *current = pending;
        }
    }

    /// Flushes if the last flush is at least the host's flush interval old.
    pub fn flush_if_due(&self, host: &dyn Host, now_ms: u64) {
        if now_ms.saturating_sub(self.last_flush_ms.get()) >= host.counter_flush_ms() {
            self.flush(host, now_ms);
        }
    }

    pub fn record(&self, tally: &Tally) {
        self.add(self.cache_hit, tally.cache_hits);
        self.add(self.cache_miss, tally.cache_misses);
        self.add(self.verify_host, tally.host_verifications);
        self.add(self.verify_wasm, tally.wasm_verifications);
    }

    pub fn denied(&self, reason: Reason) {
        self.add_by_reason(&self.denied, reason);
    }

    pub fn would_deny(&self, reason: Reason) {
        self.add_by_reason(&self.would_deny, reason);
    }

    fn add_by_reason(&self, counters: &[(Reason, u32)], reason: Reason) {
        if let Some((_, id)) = counters.iter().find(|(r, _)| *r == reason) {
            self.add(*id, 1);
        }
    }

    pub fn answer(&self, answer: Result<Known, Failure>) {
        let id = match answer {
            Ok(Known::Active) => self.check_ok,
            Ok(Known::Revoked | Known::NoSession) => self.check_revoked,
            Err(Failure::Unavailable) => self.check_unavailable,
            Err(Failure::Timeout) => self.check_timeout,
        };
        self.add(id, 1);
    }
}

impl Engine {
    /// Adds to a counter and hands it to the host now: for rare events whose count tests and
    /// dashboards follow closely (the feed's events).
    pub fn add_metric_now(&self, id: u32, n: u32) {
        if n > 0 {
            self.host.increment_metric(id, u64::from(n));
        }
    }

    /// Gauges and histograms go to the host at once (they are rare).
    pub fn set_metric(&self, id: u32, value: u64) {
        self.host.record_metric(id, value);
    }
}
