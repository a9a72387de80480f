//! What the engine does with one request: authenticate it, allow or deny it, check its token's
//! revocation status, or park it until keys arrive. Requests parked here are finished later from
//! another context (the one that got the answer), so every action takes the context it is for.

use super::{Action, Dispatch, Engine, Record};
use crate::authenticator::{Decision, Request, Tally, Verified};
use crate::config;
use crate::jwks::RemoteJwks;
use crate::reason::Reason;
use crate::response;
use crate::revocation::{self, Enforcement, Entry, Failure, Identity, Known, Lookup, Verdict};
use crate::strict_json::quote;
use jsonwebtoken::Algorithm;
use log::{debug, info, warn};
use std::cell::Cell;
use std::time::Duration;

/// A callout in flight, and what its answer is for.
pub enum Callout {
    Status {
        identity: Identity,
        started_ms: u64,
    },
    Logout {
        identity: Identity,
        everywhere: bool,
    },
    Jwks {
        remote: usize,
    },
    Discovery {
        remote: usize,
    },
    /// A long-poll of the revocation feed (root context), sent in that feed generation.
    Feed {
        generation: u32,
    },
}

/// A request waiting for the revocation answer about its token.
pub struct Waiter {
    context_id: u32,
    enforcement: Enforcement,
    /// The cache's stale answer, for `failure_mode: stale`.
    stale: Option<Known>,
}

/// One status callout, shared by every request carrying the same token on this worker.
pub struct Inflight {
    pub started_ms: u64,
    /// The request whose stream sent the callout; `None` once it is gone, as its answer is then
    /// lost (the module: Envoy cancels a stream's callouts with it; wasm: the SDK drops an answer
    /// for a context that is gone): the next tick sends the check again (`resend_status`).
    pub sender: Option<u32>,
    identity: Identity,
    waiters: Vec<Waiter>,
}

/// A request parked until a remote JWKS arrives (first fetch, or a refetch for an unknown kid).
pub struct KeyWaiter {
    pub context_id: u32,
    pub headers: Vec<(String, String)>,
    /// When it parked, and until when it may wait (its own providers' longest `wait_for_keys_ms`).
    pub parked_ms: u64,
    pub deadline_ms: u64,
    /// The providers (indexes into `Engine::remote`) whose keys it waits for.
    pub remotes: Vec<usize>,
    /// The key-set version it last saw.
    pub keys_version: u64,
}

/// A provider with a remote JWKS, and what this engine has loaded of it.
pub struct Remote {
    /// Its place in `Engine::remote` (and in the per-provider stats).
    pub index: usize,
    pub provider: usize,
    pub name: String,
    /// `jwtguard.<namespace>.jwks.<name>`: its keys in Envoy's shared data.
    pub shared_key: String,
    pub cfg: RemoteJwks,
    pub algorithms: Vec<Algorithm>,
    /// `fetched_ms` of the key set loaded into this engine; 0 for none.
    pub loaded_ms: Cell<u64>,
    /// `fetched_ms` of the newest key set this engine's sync has looked at, loaded or not.
    pub seen_ms: Cell<u64>,
    /// `fetched_ms` of a stored key set this engine found unusable: not parsed, nor logged,
    /// again at each sync (ten a second) until another fetch stores a new one.
    pub rejected_ms: Cell<u64>,
}

/// How `handle` was reached: first time for the request, or retried after parking.
#[derive(Clone, Copy)]
pub struct Retry {
    pub parked_ms: u64,
    pub deadline_ms: u64,
}

impl Engine {
    /// Authenticates the request and carries out the decision. `waiting`: the request is parked
    /// and `context_id` must be made current first. Returns the action for the current callback
    /// and any callout started, which the caller records so its answer finds its way back.
    pub fn handle(
        &self,
        context_id: u32,
        waiting: bool,
        headers: &[(String, String)],
        retry: Option<Retry>,
        dispatch: Dispatch,
    ) -> (Action, Option<(u32, Callout)>) {
        if waiting && !self.host.set_effective_context(context_id) {
            return (Action::Pause, None); // the client went away
        }
        let Ok(mut auth) = self.auth.try_borrow_mut() else {
            self.deny(Reason::Malformed, None);
            return (Action::Pause, None);
        };
        // A client must never be able to send what looks like a verified claim.
        for name in &auth.config.output_headers {
            if headers.iter().any(|(k, _)| k == name) {
                self.host.set_request_header(name, None);
            }
        }
        let pseudo = |name: &str| headers.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
        let (method, path) = (pseudo(":method"), pseudo(":path"));
        let now = self.now_ms();
        let request = Request { method, path, headers };
        let mut tally = Tally::default();
        let decision = auth.authenticate(&request, now / 1000, self.host.crypto(), &mut tally);
        drop(auth);
        self.metrics.record(&tally);
        self.metrics.flush_if_due(self.host.as_ref(), now);
        match decision {
            Decision::Pass => {
                if waiting {
                    self.host.resume_request();
                }
                (Action::Continue, None)
            }
            Decision::Allow { headers: add, strip, tokens, revocation } => {
                for name in strip {
                    self.host.set_request_header(&name, None);
                }
                for (name, value) in add {
                    self.host.set_request_header(&name, Some(&value));
                }
                for token in &tokens {
                    if let Some(Some(key)) = self.metadata_keys.get(token.provider) {
                        // Fails closed: a policy must never find the payload missing.
                        if !self.host.set_payload_metadata(key, &token.claims) {
                            self.deny(Reason::InvalidClaims, None);
                            return (Action::Pause, None);
                        }
                    }
                }
                match (revocation, tokens.first()) {
                    // A token the service could not store could never be revoked.
                    (Some(enforcement), Some(token)) if !token.identity.revocable() => {
                        (self.settle(context_id, false, enforcement.refusal(Reason::InvalidClaims), waiting), None)
                    }
                    (Some(enforcement), Some(token)) => match &self.feed {
                        Some(feed) => self.check_on_set(feed, context_id, waiting, token, enforcement, now, dispatch),
                        None => {
                            self.check_status(context_id, waiting, &token.identity, enforcement, now, dispatch, false)
                        }
                    },
                    _ => (self.settle(context_id, false, Verdict::Allow, waiting), None),
                }
            }
            Decision::Logout { token, everywhere } => self.logout(&token, everywhere, dispatch),
            Decision::Report { reason } => {
                self.report(reason);
                self.metrics.add(self.metrics.allowed, 1);
                if waiting {
                    self.host.resume_request();
                }
                (Action::Continue, None)
            }
            Decision::AwaitKeys { reason, providers } => {
                (self.park_for_keys(context_id, headers, reason, &providers, retry, now), None)
            }
            Decision::Deny { reason, scope } => {
                // Not the path: with `from_params` it holds the token.
                debug!("jwtguard: {method} denied: {}", reason.name());
                self.deny(reason, scope.as_deref());
                (Action::Pause, None)
            }
        }
    }

    /// Parks the request until its providers' keys arrive, or denies it if it may not wait (any
    /// longer). Each provider counts alone: its own wait, its own refetch and rate limit.
    fn park_for_keys(
        &self,
        context_id: u32,
        headers: &[(String, String)],
        reason: Reason,
        providers: &[(usize, Reason)],
        retry: Option<Retry>,
        now: u64,
    ) -> Action {
        let (parked_ms, deadline_ms, remotes) = match retry {
            None => {
                // The providers worth waiting for: keys not fetched yet (a fetch is scheduled),
                // or an unknown kid whose refetch this request asked for or can join.
                let remotes: Vec<usize> = providers
                    .iter()
                    .filter_map(|&(p, why)| {
                        let i = self.remote.iter().position(|r| r.provider == p)?;
                        (why == Reason::KeysUnavailable || self.refetch_for_unknown_kid(i, now)).then_some(i)
                    })
                    .collect();
                let wait = remotes.iter().map(|&i| self.remote[i].cfg.wait_ms).max().unwrap_or(0);
                if wait == 0 {
                    self.deny(reason, None);
                    return Action::Pause;
                }
                for &i in &remotes {
                    self.metrics.add(self.metrics.jwks[i].requests_waited, 1);
                }
                (now, now.saturating_add(wait), remotes)
            }
            Some(r) => {
                let remotes: Vec<usize> = providers
                    .iter()
                    .filter_map(|&(p, why)| {
                        let i = self.remote.iter().position(|r| r.provider == p)?;
                        // An unknown kid is final once a fetch that ended after the request
                        // parked, or the newest set this engine synced, did not bring it.
                        let settled = why == Reason::UnknownKey && self.kid_wait_over(&self.remote[i], r.parked_ms);
                        (!settled).then_some(i)
                    })
                    .collect();
                if now >= r.deadline_ms || remotes.is_empty() {
                    self.deny(reason, None);
                    return Action::Pause;
                }
                (r.parked_ms, r.deadline_ms, remotes)
            }
        };
        self.key_waiters.borrow_mut().push(KeyWaiter {
            context_id,
            headers: headers.to_vec(),
            parked_ms,
            deadline_ms,
            remotes,
            keys_version: self.keys_version.get(),
        });
        Action::Pause
    }

    /// Retries parked requests whose keys changed, whose deadline passed, or whose providers'
    /// refetch ended (in any worker: the schedule is in shared data).
    pub fn retry_key_waiters(&self, dispatch: Dispatch, record: Record) {
        let now = self.now_ms();
        let version = self.keys_version.get();
        let waiters = std::mem::take(&mut *self.key_waiters.borrow_mut());
        let states: Vec<_> = self.remote.iter().map(|r| self.read_state(r)).collect();
        for w in waiters {
            let refetch_ended = w.remotes.iter().any(|&i| states.get(i).is_some_and(|s| s.settled_since(w.parked_ms)));
            if w.keys_version == version && now < w.deadline_ms && !refetch_ended {
                self.key_waiters.borrow_mut().push(w);
                continue;
            }
            let retry = Retry { parked_ms: w.parked_ms, deadline_ms: w.deadline_ms };
            let (_, callout) = self.handle(w.context_id, true, &w.headers, Some(retry), dispatch);
            if let Some((token, c)) = callout {
                record(token, w.context_id, c);
            }
        }
    }

    /// Finishes a request whose revocation question is settled; the returned action is for
    /// the current callback when the request is the current one.
    pub fn settle(&self, context_id: u32, set_context: bool, verdict: Verdict, resume: bool) -> Action {
        if set_context && !self.host.set_effective_context(context_id) {
            return Action::Pause;
        }
        let m = &self.metrics;
        let mark = match verdict {
            Verdict::Allow => None,
            Verdict::AllowUnchecked => Some((m.failure_open, "unchecked")),
            Verdict::AllowStale => Some((m.failure_stale, "stale")),
            Verdict::Deny(reason) => {
                if reason == Reason::RevocationUnavailable {
                    m.add(m.failure_closed, 1);
                }
                self.deny(reason, None);
                return Action::Pause;
            }
            // Counted in would_deny.<reason> only: failure_mode.closed counts requests refused.
            Verdict::WouldDeny(reason) => {
                self.report(reason);
                None
            }
        };
        if let Some((counter, value)) = mark {
            m.add(counter, 1);
            self.host.set_request_header(config::UNCHECKED_HEADER, Some(value));
        }
        m.add(m.allowed, 1);
        if resume {
            self.host.resume_request();
        }
        Action::Continue
    }

    /// A report-only route would refuse the current request: counted by reason, marked upstream
    /// with the reason, logged at most once a second per engine; the caller lets it through.
    pub fn report(&self, reason: Reason) {
        self.metrics.would_deny(reason);
        self.host.set_request_header(config::WOULD_DENY_HEADER, Some(reason.name()));
        if self.report_log.allows(self.now_ms()) {
            info!("jwtguard: report-only: a request let through would be refused: {}", reason.name());
        }
    }

    /// Sends the denial on the current context.
    pub fn deny(&self, reason: Reason, scope: Option<&str>) {
        self.metrics.denied(reason);
        let r = response::denial(&self.style, reason, scope);
        let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.host.send_response(r.status, &headers, Some(r.body.as_bytes()));
    }

    /// The shared cache first; on a miss, join or start the single status callout for this token.
    /// `active_until_exp`: an active answer holds until the token expires (allowlist mode with
    /// a current feed, which brings every end of a session).
    #[allow(clippy::too_many_arguments)]
    pub fn check_status(
        &self,
        context_id: u32,
        waiting: bool,
        identity: &Identity,
        enforcement: Enforcement,
        now: u64,
        dispatch: Dispatch,
        active_until_exp: bool,
    ) -> (Action, Option<(u32, Callout)>) {
        let Some(rev) = &self.revocation else {
            return (self.settle(context_id, false, Verdict::Allow, waiting), None);
        };
        let (cached, _) = self.host.shared_data(&identity.slot_key(&self.namespace, rev.cache_max_entries));
        let entry = cached.and_then(|bytes| Entry::decode(&bytes));
        let stale = match revocation::lookup(entry.as_ref(), identity, now, rev.freshness, active_until_exp) {
            Lookup::Fresh(known) => {
                self.metrics.add(self.metrics.rev_cache_hit, 1);
                return (
                    self.settle(context_id, false, revocation::verdict(Ok(known), enforcement, None), waiting),
                    None,
                );
            }
            Lookup::Stale(known) => Some(known),
            Lookup::Miss => None,
        };
        self.metrics.add(self.metrics.rev_cache_miss, 1);
        // A check older than any answer can take was lost (its request's client left and the
        // callout went with it): its waiters get the failure mode, this request a check of its own.
        let lost = self
            .inflight
            .borrow()
            .get(&identity.key)
            .is_some_and(|f| f.sender.is_some() && lost(rev, f.started_ms, now));
        if lost {
            self.metrics.answer(Err(Failure::Timeout));
            self.finish_inflight(&identity.key, Err(Failure::Timeout));
            self.host.set_effective_context(context_id);
        }
        let waiter = Waiter { context_id, enforcement, stale };
        if let Some(inflight) = self.inflight.borrow_mut().get_mut(&identity.key) {
            self.metrics.add(self.metrics.coalesced, 1);
            inflight.waiters.push(waiter);
            return (Action::Pause, None);
        }
        let path = revocation::status_path(&rev.path, identity, rev.mode);
        match get_from_service(rev, &path, rev.timeout_ms, dispatch) {
            Ok(token) => {
                let inflight = Inflight {
                    started_ms: now,
                    sender: Some(context_id),
                    identity: identity.clone(),
                    waiters: vec![waiter],
                };
                self.inflight.borrow_mut().insert(identity.key.clone(), inflight);
                (Action::Pause, Some((token, Callout::Status { identity: identity.clone(), started_ms: now })))
            }
            Err(why) => {
                self.log_service_failure(format_args!("revocation callout to cluster {:?} failed: {why}", rev.cluster));
                self.metrics.answer(Err(Failure::Unavailable));
                let verdict = revocation::verdict(Err(Failure::Unavailable), enforcement, stale);
                (self.settle(context_id, false, verdict, waiting), None)
            }
        }
    }

    /// Revokes the presented token (or its subject, `everywhere`) through the service.
    fn logout(&self, token: &Verified, everywhere: bool, dispatch: Dispatch) -> (Action, Option<(u32, Callout)>) {
        let Some(rev) = &self.revocation else {
            return (Action::Continue, None);
        };
        let id = &token.identity;
        let (path, body) = if everywhere {
            let Some(sub) = id.sub.clone() else {
                return (self.bad_logout("the token has no sub"), None);
            };
            // jwtguard_wire::RevokeSubjectRequest, by hand (serde's serializer costs wasm).
            let body = match &id.iss {
                Some(iss) => format!(r#"{{"sub":{},"iss":{}}}"#, quote(&sub), quote(iss)),
                None => format!(r#"{{"sub":{}}}"#, quote(&sub)),
            };
            (&rev.revoke_subject_path, body)
        } else {
            let (Some(jti), Some(exp)) = (id.jti.clone(), id.exp) else {
                return (self.bad_logout("the token has no jti and exp; use the log-out-everywhere route"), None);
            };
            // jwtguard_wire::RevokeRequest's {jti, exp}, by hand.
            (&rev.revoke_path, format!(r#"{{"jti":{},"exp":{exp}}}"#, quote(&jti)))
        };
        let authorization = format!("Bearer {}", rev.revoke_credential.as_deref().unwrap_or(""));
        let headers = vec![
            (":method", "POST"),
            (":path", path.as_str()),
            (":authority", rev.authority.as_str()),
            ("content-type", "application/json"),
            ("authorization", authorization.as_str()),
        ];
        match dispatch(&rev.cluster, headers, Some(body.as_bytes()), Duration::from_millis(rev.timeout_ms)) {
            Ok(t) => (Action::Pause, Some((t, Callout::Logout { identity: id.clone(), everywhere }))),
            Err(why) => {
                self.log_service_failure(format_args!("logout callout to cluster {:?} failed: {why}", rev.cluster));
                self.metrics.add(self.metrics.logout_failed, 1);
                self.deny(Reason::RevocationUnavailable, None);
                (Action::Pause, None)
            }
        }
    }

    /// The answer to a status or logout callout started for `context_id`.
    pub fn on_request_callout(&self, callout: Callout, context_id: u32, status: Option<u16>, body: Option<&[u8]>) {
        let Some(rev) = &self.revocation else { return };
        match callout {
            Callout::Status { identity, started_ms } => {
                self.set_metric(self.metrics.callout_ms, self.now_ms().saturating_sub(started_ms));
                let answer = revocation::read_answer(status, body);
                self.metrics.answer(answer);
                if let Ok(known) = answer {
                    self.remember(rev, &identity, known);
                }
                self.finish_inflight(&identity.key, answer);
            }
            Callout::Logout { identity, everywhere } => {
                if !self.host.set_effective_context(context_id) {
                    return;
                }
                if status == Some(200) {
                    // This Envoy (status source) or worker (feed; the module: all its workers)
                    // refuses the token at once; the others within cache_ttl_ms, or as soon as
                    // the feed brings it.
                    self.remember(rev, &identity, Known::Revoked);
                    if let Some(feed) = &self.feed {
                        self.mark_logged_out(feed, &identity, everywhere);
                    }
                    self.metrics.add(self.metrics.logout_ok, 1);
                    self.host.send_response(204, &[("cache-control", "no-store")], None);
                } else {
                    self.log_service_failure(format_args!("logout failed: revocation service answered {status:?}"));
                    self.metrics.add(self.metrics.logout_failed, 1);
                    self.deny(Reason::RevocationUnavailable, None);
                }
            }
            Callout::Jwks { .. } | Callout::Discovery { .. } | Callout::Feed { .. } => {}
        }
    }

    /// Request `context_id` is gone (its client left, or it was answered): it waits on no status
    /// check any more, and one it sent, whose answer went with it, is sent again by the next
    /// tick for the requests still waiting on it. Were they left to the timeout instead, its
    /// failure mode would settle them: a client could reset its own request to have a revoked
    /// token let through (`failure_mode: open` or `stale`). In the wasm build a check sent from
    /// a tick belongs to the root and is still answered: sending it again costs one callout.
    pub fn request_gone(&self, context_id: u32) {
        // No path calls this with the map borrowed (no host call is made under a borrow). Were
        // one to, the waiters would time out into the failure mode: a borrow panic would abort
        // Envoy (the module) instead.
        let Ok(mut inflight) = self.inflight.try_borrow_mut() else { return };
        inflight.retain(|_, f| {
            f.waiters.retain(|w| w.context_id != context_id);
            if f.sender == Some(context_id) {
                f.sender = None;
            }
            !f.waiters.is_empty()
        });
    }

    /// Asks again about the token of status check `key`, whose sender went (`request_gone`):
    /// each request still waiting checks anew, the first sending the callout and the others
    /// joining it (or all answered from the shared cache, if an answer came meanwhile).
    pub(super) fn resend_status(&self, key: &str, now: u64, dispatch: Dispatch, record: Record) {
        let Some(orphan) = self.inflight.borrow_mut().remove(key) else { return };
        for w in orphan.waiters {
            if self.host.set_effective_context(w.context_id) {
                let (_, callout) =
                    self.check_status(w.context_id, true, &orphan.identity, w.enforcement, now, dispatch, false);
                if let Some((token, c)) = callout {
                    record(token, w.context_id, c);
                }
            }
        }
    }

    /// Answers every request waiting on `key` and forgets the callout.
    pub fn finish_inflight(&self, key: &str, answer: Result<Known, Failure>) {
        let Some(inflight) = self.inflight.borrow_mut().remove(key) else {
            return;
        };
        for w in inflight.waiters {
            self.settle(w.context_id, true, revocation::verdict(answer, w.enforcement, w.stale), true);
        }
    }

    fn remember(&self, rev: &config::Revocation, identity: &Identity, known: Known) {
        let entry =
            Entry { known, fetched_ms: self.now_ms(), exp: identity.exp.unwrap_or(0), identity: identity.key.clone() };
        self.host.set_shared_data(&identity.slot_key(&self.namespace, rev.cache_max_entries), &entry.encode(), None);
    }

    /// A callout the revocation service or its cluster did not take or answer well: it can
    /// come with every request, so it is logged at most once a second (`LogLimit`).
    fn log_service_failure(&self, what: std::fmt::Arguments) {
        if self.service_log.allows(self.now_ms()) {
            warn!("jwtguard: {what}");
        }
    }

    fn bad_logout(&self, description: &str) -> Action {
        let body = format!(r#"{{"error":"invalid_request","error_description":{}}}"#, quote(description));
        self.host.send_response(400, &[("content-type", "application/json")], Some(body.as_bytes()));
        Action::Pause
    }
}

/// A GET to the revocation service, with the service credential when one is configured.
pub(super) fn get_from_service(
    rev: &config::Revocation,
    path: &str,
    timeout_ms: u64,
    dispatch: Dispatch,
) -> Result<u32, String> {
    let authorization = rev.credential.as_ref().map(|c| format!("Bearer {c}"));
    let mut headers = vec![(":method", "GET"), (":path", path), (":authority", rev.authority.as_str())];
    if let Some(a) = &authorization {
        headers.push(("authorization", a.as_str()));
    }
    dispatch(&rev.cluster, headers, None, Duration::from_millis(timeout_ms))
}

/// Whether a status check started at `started_ms` can no longer be answered.
pub(super) fn lost(rev: &config::Revocation, started_ms: u64, now: u64) -> bool {
    now.saturating_sub(started_ms) > rev.timeout_ms.saturating_add(500)
}
