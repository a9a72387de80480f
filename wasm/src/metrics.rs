//! The filter's Envoy stats, defined once per VM. Envoy shows them as `wasmcustom.jwtguard.*`
//! (`/stats`) and `jwtguard_*` (`/stats/prometheus`).

use crate::host;
use jwtguard::authenticator::Tally;
use jwtguard::reason::Reason;
use jwtguard::revocation::{Failure, Known};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::{Cell, RefCell};

/// Counters are added up in the VM and handed to Envoy at most every this many milliseconds
/// (from a request or the root's tick): two host calls per request cost ≈ 1–2 µs, a fifth of
/// the filter's whole cost on a cache hit. Stats lag by at most this long.
pub const FLUSH_MS: u64 = 100;

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
    /// One set per provider with a remote JWKS, in `Shared::remote` order.
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

impl Metrics {
    /// `stat_prefix`: names become `jwtguard.<stat_prefix>.…`.
    pub fn define<'a>(
        stat_prefix: Option<&str>,
        remote_providers: impl Iterator<Item = &'a str>,
        report_only: bool,
    ) -> Option<Metrics> {
        let prefix = stat_prefix.map(|p| format!("{p}.")).unwrap_or_default();
        let def = |kind, name: &str| hostcalls::define_metric(kind, &format!("jwtguard.{prefix}{name}")).ok();
        let counter = |name: &str| def(MetricType::Counter, name);
        let by_reason = |what: &str| -> Option<Vec<(Reason, u32)>> {
            Reason::ALL.into_iter().map(|r| Some((r, counter(&format!("{what}.{}", r.name()))?))).collect()
        };
        let denied = by_reason("denied")?;
        let would_deny = if report_only { by_reason("would_deny")? } else { Vec::new() };
        let mut jwks = Vec::new();
        for name in remote_providers {
            let stat = |what: &str| format!("jwks.{name}.{what}");
            jwks.push(JwksStats {
                fetch_success: counter(&stat("fetch_success"))?,
                fetch_failed: counter(&stat("fetch_failed"))?,
                keys_loaded: def(MetricType::Gauge, &stat("keys_loaded"))?,
                stale: def(MetricType::Gauge, &stat("stale"))?,
                age_ms: def(MetricType::Gauge, &stat("age_ms"))?,
                unknown_kid_refetch: counter(&stat("unknown_kid_refetch"))?,
                requests_waited: counter(&stat("requests_waited"))?,
            });
        }
        Some(Metrics {
            allowed: counter("allowed")?,
            denied,
            would_deny,
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
            feed_answers: counter("revocation.feed.answers")?,
            feed_failed: counter("revocation.feed.failed")?,
            feed_events: counter("revocation.feed.events")?,
            feed_age_ms: def(MetricType::Gauge, "revocation.feed.age_ms")?,
            feed_entries: def(MetricType::Gauge, "revocation.feed.entries")?,
            feed_overflowed: def(MetricType::Gauge, "revocation.feed.overflowed")?,
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

    /// Adds to a counter and hands it to Envoy now: for rare events whose count tests and
    /// dashboards follow closely (the feed's events, applied once per worker).
    pub fn add_now(id: u32, n: u32) {
        if n > 0 {
            let _ = host::increment_metric(id, i64::from(n));
        }
    }

    /// Hands the added-up counts to Envoy.
    pub fn flush(&self, now_ms: u64) {
        self.last_flush_ms.set(now_ms);
        for (id, n) in self.pending.take() {
            let _ = host::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Flushes if the last flush is at least `FLUSH_MS` old.
    pub fn flush_if_due(&self, now_ms: u64) {
        if now_ms.saturating_sub(self.last_flush_ms.get()) >= FLUSH_MS {
            self.flush(now_ms);
        }
    }

    /// Gauges and histograms go to Envoy at once (they are rare).
    pub fn set(id: u32, value: u64) {
        let _ = host::record_metric(id, value);
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
