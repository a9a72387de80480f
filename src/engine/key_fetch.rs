//! Remote JWKS in an engine: load the newest good key set from the host's shared data, start a
//! fetch when one is due (one per Envoy, claimed by compare-and-swap), and take in what comes
//! back. The schedule and the checks are in `jwks.rs`; this is the part that touches the host.

use super::{Callout, Dispatch, Engine, Remote};
use crate::jwks::{self, FetchState, KeySetAge};
use log::{error, info, warn};
use std::time::Duration;

fn key(r: &Remote, what: &str) -> String {
    format!("{}.{what}", r.shared_key)
}

impl Engine {
    pub fn read_state(&self, r: &Remote) -> FetchState {
        let (bytes, _) = self.host.shared_data(&key(r, "state"));
        bytes.and_then(|b| FetchState::decode(&b)).unwrap_or_default()
    }

    /// Read-modify-write of the shared schedule, retried on a concurrent change.
    fn update_state(&self, r: &Remote, change: impl Fn(&FetchState) -> Option<FetchState>) -> Option<FetchState> {
        for _ in 0..8 {
            let (bytes, cas) = self.host.shared_data(&key(r, "state"));
            let current = bytes.and_then(|b| FetchState::decode(&b)).unwrap_or_default();
            let next = change(&current)?;
            if self.host.set_shared_data(&key(r, "state"), &next.encode(), cas) {
                return Some(next);
            }
        }
        None
    }

    /// Loads the newest good key set into this engine; drops keys past their stale period.
    pub fn sync_keys(&self) {
        let now = self.now_ms();
        for r in &self.remote {
            let state = self.read_state(r);
            r.seen_ms.set(state.fetched_ms);
            let freshness = jwks::key_set_age(state.fetched_ms, now, &r.cfg);
            // Stale stays 1 once the keys expire: refreshes have been failing all along.
            let stale = matches!(freshness, KeySetAge::Stale | KeySetAge::Expired);
            self.set_metric(self.metrics.jwks[r.index].stale, u64::from(stale));
            let age = if state.fetched_ms == 0 { 0 } else { now.saturating_sub(state.fetched_ms) };
            self.set_metric(self.metrics.jwks[r.index].age_ms, age);
            match freshness {
                KeySetAge::None => {}
                KeySetAge::Expired => {
                    if r.loaded_ms.get() != 0 {
                        error!("jwtguard: provider {}: JWKS older than cache_duration + max_stale; refusing tokens until a fetch succeeds", r.name);
                        self.install(r, Vec::new(), 0);
                    }
                }
                KeySetAge::Fresh | KeySetAge::Stale
                    if state.fetched_ms != r.loaded_ms.get() && state.fetched_ms != r.rejected_ms.get() =>
                {
                    let (doc, _) = self.host.shared_data(&key(r, "doc"));
                    match doc.map(|d| jwks::accept_document(&d, &r.algorithms, &r.cfg, &self.local_keys(r))) {
                        Some(Ok((keys, _))) => self.install(r, keys, state.fetched_ms),
                        Some(Err(e)) => {
                            r.rejected_ms.set(state.fetched_ms);
                            warn!("jwtguard: provider {}: stored JWKS unusable: {e}", r.name)
                        }
                        None => {}
                    }
                }
                KeySetAge::Fresh | KeySetAge::Stale => {}
            }
        }
    }

    /// The provider's configured keys, which a fetched set joins.
    fn local_keys(&self, r: &Remote) -> Vec<crate::keys::Key> {
        let auth = self.auth.try_borrow();
        auth.ok().and_then(|a| a.config.providers.get(r.provider).map(|p| p.keys.clone())).unwrap_or_default()
    }

    fn install(&self, r: &Remote, keys: Vec<crate::keys::Key>, fetched_ms: u64) {
        self.set_metric(self.metrics.jwks[r.index].keys_loaded, keys.len() as u64);
        if let Ok(mut auth) = self.auth.try_borrow_mut() {
            auth.set_remote_keys(r.provider, keys);
            r.loaded_ms.set(fetched_ms);
            self.keys_version.set(self.keys_version.get() + 1);
        }
    }

    /// Starts every fetch that is due and not in flight anywhere in this Envoy.
    pub fn start_due_fetches(&self, dispatch: Dispatch) -> Vec<(u32, Callout)> {
        let now = self.now_ms();
        let mut started = Vec::new();
        for (i, r) in self.remote.iter().enumerate() {
            if self.update_state(r, |s| s.claim(now, &r.cfg)).is_some() {
                started.extend(self.dispatch_fetch(i, dispatch));
            }
        }
        started
    }

    fn dispatch_fetch(&self, i: usize, dispatch: Dispatch) -> Option<(u32, Callout)> {
        let r = &self.remote[i];
        let discovered = if r.cfg.oidc_discovery {
            let (uri, _) = self.host.shared_data(&key(r, "uri"));
            uri.and_then(|u| String::from_utf8(u).ok())
                .and_then(|u| u.split_once('|').map(|(a, p)| (a.to_string(), p.to_string())))
        } else {
            None
        };
        let (cluster, authority, path, callout) = match discovered {
            // A jwks_uri on another host than the issuer's goes through its own cluster.
            Some((a, p)) => (&r.cfg.jwks_cluster, a, p, Callout::Jwks { remote: i }),
            None if r.cfg.oidc_discovery => {
                (&r.cfg.cluster, r.cfg.authority.clone(), r.cfg.path.clone(), Callout::Discovery { remote: i })
            }
            None => (&r.cfg.cluster, r.cfg.authority.clone(), r.cfg.path.clone(), Callout::Jwks { remote: i }),
        };
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", authority.as_str()),
            ("accept", "application/json"),
        ];
        match dispatch(cluster, headers, None, Duration::from_millis(r.cfg.timeout_ms)) {
            Ok(token) => Some((token, callout)),
            Err(why) => {
                self.fetch_failed(i, &format!("callout to cluster {cluster:?} refused: {why}"));
                None
            }
        }
    }

    /// Asks remote provider `i` for a refetch because a token's kid is unknown to it. True if
    /// a refetch is now asked for or under way (one asked for within the rate limit by another
    /// request counts: the new key may be in it), or if a key set fetched since this engine
    /// last synced waits in shared data (another engine's fetch, which the next sync loads);
    /// false if there is nothing to wait for.
    pub fn refetch_for_unknown_kid(&self, i: usize, now: u64) -> bool {
        let Some(r) = self.remote.get(i) else { return false };
        if self.update_state(r, |s| s.ask_for_kid(now, &r.cfg)).is_some() {
            self.metrics.add(self.metrics.jwks[i].unknown_kid_refetch, 1);
            return true;
        }
        let state = self.read_state(r);
        state.fetch_pending() || state.fetched_ms != r.seen_ms.get()
    }

    /// Whether a request parked at `parked_ms` for an unknown kid of `r` has its answer: a
    /// fetch ended after it parked, or, none pending, this engine has synced the newest set.
    pub fn kid_wait_over(&self, r: &Remote, parked_ms: u64) -> bool {
        let state = self.read_state(r);
        state.settled_since(parked_ms) || (!state.fetch_pending() && state.fetched_ms == r.seen_ms.get())
    }

    /// The answer to a JWKS or discovery fetch; a discovery answer starts the JWKS fetch.
    pub fn on_fetch_callout(
        &self,
        callout: Callout,
        status: Option<u16>,
        body: Option<&[u8]>,
        dispatch: Dispatch,
    ) -> Option<(u32, Callout)> {
        let body = body.unwrap_or_default();
        match callout {
            Callout::Jwks { remote: i } => {
                let r = &self.remote[i];
                let accepted = match status {
                    Some(200) => jwks::accept_document(body, &r.algorithms, &r.cfg, &self.local_keys(r)),
                    other => Err(format!("answered {other:?}")),
                };
                match accepted {
                    Ok((keys, skipped)) => {
                        for s in skipped {
                            warn!("jwtguard: provider {}: skipped a JWKS key: {s}", r.name);
                        }
                        let now = self.now_ms();
                        self.host.set_shared_data(&key(r, "doc"), body, None);
                        self.update_state(r, |s| Some(s.succeeded(now)));
                        self.metrics.add(self.metrics.jwks[i].fetch_success, 1);
                        info!("jwtguard: provider {}: loaded {} keys from the JWKS", r.name, keys.len());
                        self.install(r, keys, now);
                    }
                    Err(e) => self.fetch_failed(i, &e),
                }
                None
            }
            Callout::Discovery { remote: i } => {
                let r = &self.remote[i];
                let found = match status {
                    Some(200) => jwks::discovered_jwks_uri(body, r.cfg.max_bytes),
                    other => Err(format!("answered {other:?}")),
                };
                match found {
                    Ok((authority, path)) => {
                        self.host.set_shared_data(&key(r, "uri"), format!("{authority}|{path}").as_bytes(), None);
                        self.dispatch_fetch(i, dispatch)
                    }
                    Err(e) => {
                        self.fetch_failed(i, &format!("discovery: {e}"));
                        None
                    }
                }
            }
            Callout::Status { .. } | Callout::Logout { .. } | Callout::Feed { .. } => None,
        }
    }

    fn fetch_failed(&self, i: usize, why: &str) {
        let r = &self.remote[i];
        let now = self.now_ms();
        let state = self.update_state(r, |s| Some(s.failed(now, &r.cfg))).unwrap_or_default();
        self.metrics.add(self.metrics.jwks[i].fetch_failed, 1);
        let keeping = match jwks::key_set_age(state.fetched_ms, now, &r.cfg) {
            KeySetAge::None => "no keys yet".to_string(),
            KeySetAge::Expired => "no usable keys".to_string(),
            KeySetAge::Fresh | KeySetAge::Stale => {
                format!("serving the last good keys, fetched {} s ago", now.saturating_sub(state.fetched_ms) / 1000)
            }
        };
        warn!(
            "jwtguard: provider {}: JWKS fetch failed ({why}); {keeping}; retry in {} ms",
            r.name,
            state.next_attempt_ms.saturating_sub(now)
        );
    }
}
