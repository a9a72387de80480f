//! The revocation feed in an engine: the background engine long-polls the service and holds
//! the live set in memory, so a request's revocation check is a lookup with no callout and no
//! host call. Requests that arrive before the first complete set wait for it (bounded); a set
//! that is not complete, too old or over its bound leaves the decision to the failure mode.
//! The schedule and the set are in `feed.rs` and `revocation_set.rs`; this is the engine's side.
//! A `Feed` may be shared by the engines of several threads (a dynamic module's workers), so it
//! locks what it holds; in a wasm VM the locks are never contended.

use super::request::get_from_service;
use super::{Action, Callout, Dispatch, Engine, Record};
use crate::authenticator::Verified;
use crate::feed::{self, FeedClient, FeedConfig};
use crate::revocation::{self, Enforcement, Failure, Identity, Known, Mode, Verdict};
use crate::revocation_set::RevocationSet;
use jwtguard_wire::FeedEvent;
use log::{error, info, warn};
use std::sync::{Mutex, MutexGuard};

/// Shared-data slots in which each feed publishes its set's age and size, so the gauges show
/// the worst one of this Envoy rather than whichever wrote last.
const SLOTS: u32 = 64;
/// A slot not refreshed for this long belongs to a feed that is gone.
const SLOT_LIFETIME_MS: u64 = 5_000;
/// Expired entries are dropped this often (a pass over the whole set).
const EXPIRE_EVERY_MS: u64 = 10_000;

/// A request parked until the first complete set.
pub struct SetWaiter {
    context_id: u32,
    identity: Identity,
    enforcement: Enforcement,
    deadline_ms: u64,
}

/// One feed: its place in the stream and the set, behind one lock (a lookup holds it for a
/// hash probe; no host call is made while it is held).
pub struct Feed {
    pub cfg: FeedConfig,
    state: Mutex<FeedState>,
    /// The shared-data keys of the gauge slots: `<prefix><i>`.
    slot_prefix: String,
}

struct FeedState {
    client: FeedClient,
    set: RevocationSet,
    /// This feed's gauge slot.
    slot: Option<u32>,
    /// When this feed first polled: the age of a set that never became complete.
    started_ms: u64,
    expired_ms: u64,
    /// Whether the last decision found the set usable, for one log line per change.
    usable: bool,
}

impl Feed {
    /// `grace_seconds`: the largest clock skew of the plugin's providers.
    pub fn new(cfg: FeedConfig, namespace: &str, grace_seconds: u64) -> Feed {
        let state = FeedState {
            client: FeedClient::default(),
            set: RevocationSet::new(cfg.max_entries, grace_seconds),
            slot: None,
            started_ms: 0,
            expired_ms: 0,
            usable: true,
        };
        Feed { slot_prefix: format!("jwtguard.{namespace}.feed.slot."), cfg, state: Mutex::new(state) }
    }

    /// Forgets the poll in flight, whose answer will never come (its sender is gone): the next
    /// tick of an engine that shares this set polls again, from the same position.
    pub fn abandon_poll(&self) {
        self.lock().client.abandon_poll();
    }

    /// A lock is poisoned only by a panic while it is held, which ends the process (panic =
    /// abort) in every build Envoy loads; the state is taken as it is.
    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Engine {
    /// Decides a verified request's revocation on the set; parks it if the first set is still
    /// coming. Allowlist mode still asks the service once about a token the set cannot vouch
    /// for (is it a registered session?).
    #[allow(clippy::too_many_arguments)]
    pub fn check_on_set(
        &self,
        feed: &Feed,
        context_id: u32,
        waiting: bool,
        token: &Verified,
        enforcement: Enforcement,
        now: u64,
        dispatch: Dispatch,
    ) -> (Action, Option<(u32, Callout)>) {
        match self.set_verdict(feed, &token.identity, enforcement, now) {
            SetAnswer::Decided(verdict) => (self.settle(context_id, false, verdict, waiting), None),
            SetAnswer::AskService { until_exp } => {
                self.check_status(context_id, waiting, &token.identity, enforcement, now, dispatch, until_exp)
            }
            SetAnswer::Wait => {
                self.set_waiters.borrow_mut().push(SetWaiter {
                    context_id,
                    identity: token.identity.clone(),
                    enforcement,
                    deadline_ms: now.saturating_add(feed.cfg.wait_for_set_ms),
                });
                (Action::Pause, None)
            }
        }
    }

    fn set_verdict(&self, feed: &Feed, identity: &Identity, enforcement: Enforcement, now: u64) -> SetAnswer {
        let mut state = feed.lock();
        // A revoked token is refused whatever state the set is in.
        if let Some(known) = state.set.check(identity, now / 1000) {
            return SetAnswer::Decided(revocation::verdict(Ok(known), enforcement, None));
        }
        let usable = state.client.fresh(now, &feed.cfg) && !state.set.overflowed();
        if state.usable != usable {
            state.usable = usable;
            note_usable(feed, &state, now);
        }
        let Some(rev) = &self.revocation else {
            return SetAnswer::Decided(Verdict::Allow);
        };
        if rev.mode == Mode::Allowlist {
            // With the set current, an active session is kept until the token expires (the feed
            // brings its end); without it, the status lookup and its cache decide as they would
            // with `source: status` (stale answers within `stale_ms` included).
            return SetAnswer::AskService { until_exp: usable };
        }
        if usable {
            return SetAnswer::Decided(Verdict::Allow);
        }
        let client = &state.client;
        if !client.was_ready && feed.cfg.wait_for_set_ms > 0 {
            return SetAnswer::Wait;
        }
        // `failure_mode: stale` may take the set as the last answer while it is complete and at
        // most `stale_ms` past `max_staleness_ms`.
        let stale_ok = client.was_ready
            && !state.set.overflowed()
            && client.age_ms(now) <= feed.cfg.max_staleness_ms.saturating_add(rev.freshness.stale_ms);
        SetAnswer::Decided(revocation::verdict(
            Err(Failure::Unavailable),
            enforcement,
            stale_ok.then_some(Known::Active),
        ))
    }

    /// Starts this feed's next poll if one is due (called on the tick and after each answer).
    pub fn poll_feed(&self, feed: &Feed, dispatch: Dispatch) -> Option<(u32, Callout)> {
        let rev = self.revocation.as_ref()?;
        let now = self.now_ms();
        let path = {
            let mut state = feed.lock();
            if state.started_ms == 0 {
                state.started_ms = now;
            }
            if !state.client.due(now) {
                return None;
            }
            state.client.poll_path(&feed.cfg)
        };
        // The service holds the poll up to the heartbeat; allow it the usual timeout on top.
        let wait = feed.cfg.poll_wait_ms().saturating_add(rev.timeout_ms);
        match get_from_service(rev, &path, wait, dispatch) {
            Ok(token) => {
                let mut state = feed.lock();
                state.client.in_flight = true;
                Some((token, Callout::Feed { generation: state.client.generation }))
            }
            Err(why) => {
                warn!("jwtguard: revocation feed poll to cluster {:?} failed: {why}", rev.cluster);
                let _ = feed.lock().client.answer(None, now);
                self.metrics.add(self.metrics.feed_failed, 1);
                None
            }
        }
    }

    /// A poll's answer: apply its events; once the set is complete, the parked requests go on.
    #[allow(clippy::too_many_arguments)]
    pub fn on_feed_answer(
        &self,
        feed: &Feed,
        generation: u32,
        status: Option<u16>,
        body: Option<&[u8]>,
        dispatch: Dispatch,
        record: Record,
    ) {
        let now = self.now_ms();
        // Read before taking the lock, which every request on the feed takes too.
        let page = feed::read_page(status, body);
        let (applied, completed) = {
            let mut state = feed.lock();
            if state.client.superseded(generation, now) {
                return;
            }
            let was_ready = state.client.ready;
            let Some(events) = state.client.answer(page, now) else {
                drop(state);
                self.metrics.add(self.metrics.feed_failed, 1);
                return;
            };
            let applied = events.len();
            for event in events {
                state.set.apply(event, now / 1000);
            }
            let completed = (!was_ready && state.client.ready).then(|| state.set.len());
            (applied, completed)
        };
        self.metrics.add(self.metrics.feed_answers, 1);
        self.add_metric_now(self.metrics.feed_events, u32::try_from(applied).unwrap_or(u32::MAX));
        if let Some(entries) = completed {
            info!("jwtguard: revocation set complete: {entries} entries");
            self.release_set_waiters(feed, now, dispatch, record);
        }
    }

    /// Marks a token this engine just logged out, before the feed brings it back.
    pub fn mark_logged_out(&self, feed: &Feed, identity: &Identity, everywhere: bool) {
        let now = self.now_ms() / 1000;
        // A day past `exp`: beyond any clock skew a provider allows, so the mark never ends
        // while the token could still pass; the service's own event ends at exp + its skew.
        let until = identity.exp.unwrap_or(now).saturating_add(86_400);
        let event = match (&identity.sub, &identity.jti) {
            // This token at least: it was issued before `before`.
            (Some(sub), _) if everywhere => FeedEvent::SubjectCutoff {
                sub: sub.clone(),
                iss: identity.iss.clone(),
                before: now.max(identity.iat.map_or(0, |i| i.saturating_add(1))),
                until,
            },
            (_, Some(jti)) => FeedEvent::Revoked { jti: jti.clone(), until },
            _ => return,
        };
        feed.lock().set.apply(event, now);
    }

    /// The background engine's upkeep: expired entries out, the gauges.
    pub fn feed_upkeep(&self, feed: &Feed) {
        let now = self.now_ms();
        let mine = {
            let mut state = feed.lock();
            if now.saturating_sub(state.expired_ms) >= EXPIRE_EVERY_MS {
                state.expired_ms = now;
                state.set.expire(now / 1000);
                if state.set.room_to_start_over() {
                    info!(
                        "jwtguard: revocation set has room again ({} entries); reading the feed from the start",
                        state.set.len()
                    );
                    state.client.start_over();
                }
            }
            let client = &state.client;
            let age = if client.ready { client.age_ms(now) } else { now.saturating_sub(state.started_ms) };
            format!("{now}|{age}|{}|{}", state.set.len(), u8::from(state.set.overflowed()))
        };
        self.publish_gauges(feed, &mine, now);
    }

    /// This engine's parked requests go on once the set has been complete, or at their deadline.
    pub fn release_set_waiters(&self, feed: &Feed, now: u64, dispatch: Dispatch, record: Record) {
        if self.set_waiters.borrow().is_empty() {
            return;
        }
        let ready = feed.lock().client.was_ready;
        let waiters = std::mem::take(&mut *self.set_waiters.borrow_mut());
        for w in waiters {
            if !ready && now < w.deadline_ms {
                self.set_waiters.borrow_mut().push(w);
                continue;
            }
            let answer = match self.set_verdict(feed, &w.identity, w.enforcement, now) {
                SetAnswer::Wait => {
                    SetAnswer::Decided(revocation::verdict(Err(Failure::Unavailable), w.enforcement, None))
                }
                other => other,
            };
            match answer {
                SetAnswer::Decided(verdict) => {
                    self.settle(w.context_id, true, verdict, true);
                }
                SetAnswer::AskService { until_exp } => {
                    if !self.host.set_effective_context(w.context_id) {
                        continue;
                    }
                    let (_, callout) =
                        self.check_status(w.context_id, true, &w.identity, w.enforcement, now, dispatch, until_exp);
                    if let Some((token, c)) = callout {
                        record(token, w.context_id, c);
                    }
                }
                SetAnswer::Wait => {}
            }
        }
    }

    /// Publishes this feed's `mine` (time, age, size, overflowed) in its slot, and sets the
    /// gauges to the worst live slot of this Envoy.
    fn publish_gauges(&self, feed: &Feed, mine: &str, now: u64) {
        let claimed = feed.lock().slot;
        let slot = match claimed.or_else(|| self.claim_slot(feed, now)) {
            Some(s) => s,
            None => return,
        };
        feed.lock().slot = Some(slot);
        self.host.set_shared_data(&slot_key(feed, slot), mine.as_bytes(), None);
        let (mut worst_age, mut most, mut overflowed) = (0u64, 0u64, 0u64);
        for i in 0..SLOTS {
            if let Some([seen, age, entries, over]) = self.read_slot(feed, i) {
                if now.saturating_sub(seen) < SLOT_LIFETIME_MS {
                    worst_age = worst_age.max(age);
                    most = most.max(entries);
                    overflowed = overflowed.max(over);
                }
            }
        }
        self.set_metric(self.metrics.feed_age_ms, worst_age);
        self.set_metric(self.metrics.feed_entries, most);
        self.set_metric(self.metrics.feed_overflowed, overflowed);
    }
}

fn note_usable(feed: &Feed, state: &FeedState, now: u64) {
    if state.usable {
        info!("jwtguard: revocation set usable again ({} entries)", state.set.len());
    } else if state.set.overflowed() {
        error!(
            "jwtguard: revocation set over revocation.feed.max_entries ({}); failure_mode decides until it fits",
            feed.cfg.max_entries
        );
    } else if state.client.ready {
        warn!(
            "jwtguard: revocation set is {} ms old (max_staleness_ms {}); failure_mode decides until the feed answers",
            state.client.age_ms(now),
            feed.cfg.max_staleness_ms
        );
    }
}

enum SetAnswer {
    Decided(Verdict),
    /// Allowlist mode: the set has nothing against the token; the service says whether it is a
    /// registered session (`until_exp`: an active answer holds until the token expires).
    AskService {
        until_exp: bool,
    },
    Wait,
}

fn slot_key(feed: &Feed, i: u32) -> String {
    format!("{}{i}", feed.slot_prefix)
}

impl Engine {
    /// [last seen ms, age ms, entries, overflowed] of slot `i`.
    fn read_slot(&self, feed: &Feed, i: u32) -> Option<[u64; 4]> {
        let (bytes, _) = self.host.shared_data(&slot_key(feed, i));
        let text = String::from_utf8(bytes?).ok()?;
        let mut parts = text.split('|').map(|p| p.parse::<u64>().ok());
        Some([parts.next()??, parts.next()??, parts.next()??, parts.next()??])
    }

    /// Claims a free slot (never written, or left by a feed that is gone) with compare-and-swap;
    /// a live feed refreshes its slot every tick, so it is never taken from under it.
    fn claim_slot(&self, feed: &Feed, now: u64) -> Option<u32> {
        for i in 0..SLOTS {
            let (bytes, cas) = self.host.shared_data(&slot_key(feed, i));
            let free = match bytes.and_then(|b| String::from_utf8(b).ok()) {
                None => true,
                Some(text) => {
                    let seen = text.split('|').next().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
                    now.saturating_sub(seen) >= SLOT_LIFETIME_MS
                }
            };
            let claim = format!("{now}|0|0|0");
            if free && self.host.set_shared_data(&slot_key(feed, i), claim.as_bytes(), cas) {
                return Some(i);
            }
        }
        None
    }
}
