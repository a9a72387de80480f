//! The revocation feed in the VM: each worker long-polls the service from its root context and
//! holds the live set in memory, so a request's revocation check is a lookup with no callout and
//! no host call. Requests that arrive before the first complete set wait for it (bounded); a set
//! that is not complete, too old or over its bound leaves the decision to the failure mode.
//! The schedule and the set are in `feed.rs` and `revocation_set.rs`; this is the host side.

use crate::host;
use crate::metrics::Metrics;
use crate::shared::{now_ms, Callout, Dispatch, Shared};
use jwtguard::authenticator::Verified;
use jwtguard::feed::{FeedClient, FeedConfig};
use jwtguard::revocation::{self, Enforcement, Failure, Identity, Known, Mode, Verdict};
use jwtguard::revocation_set::RevocationSet;
use jwtguard_wire::FeedEvent;
use log::{error, info, warn};
use proxy_wasm::types::Action;
use std::cell::{Cell, RefCell};
use std::time::Duration;

/// Shared-data slots in which each worker publishes its set's age and size, so the gauges show
/// the worst worker of this Envoy rather than whichever wrote last.
const SLOTS: u32 = 64;
/// A slot not refreshed for this long belongs to a VM that is gone.
const SLOT_LIFETIME_MS: u64 = 5_000;
/// Expired entries are dropped this often (a pass over the whole set).
const EXPIRE_EVERY_MS: u64 = 10_000;

/// A request parked until the first complete set.
struct SetWaiter {
    context_id: u32,
    identity: Identity,
    enforcement: Enforcement,
    deadline_ms: u64,
}

/// One worker's feed: its place in it, the set, and the requests waiting for the set.
pub struct Feed {
    pub cfg: FeedConfig,
    client: RefCell<FeedClient>,
    set: RefCell<RevocationSet>,
    waiters: RefCell<Vec<SetWaiter>>,
    /// This worker's gauge slot, and the shared-data keys of the slots (`<prefix><i>`).
    slot: Cell<Option<u32>>,
    slot_prefix: String,
    /// When this worker first polled: the age of a set that never became complete.
    started_ms: Cell<u64>,
    expired_ms: Cell<u64>,
    /// Whether the last decision found the set usable, for one log line per change.
    usable: Cell<bool>,
}

impl Feed {
    /// `grace_seconds`: the largest clock skew of the plugin's providers.
    pub fn new(cfg: FeedConfig, namespace: &str, grace_seconds: u64) -> Feed {
        Feed {
            slot_prefix: format!("jwtguard.{namespace}.feed.slot."),
            set: RefCell::new(RevocationSet::new(cfg.max_entries, grace_seconds)),
            cfg,
            client: RefCell::new(FeedClient::default()),
            waiters: RefCell::new(Vec::new()),
            slot: Cell::new(None),
            started_ms: Cell::new(0),
            expired_ms: Cell::new(0),
            usable: Cell::new(true),
        }
    }
}

impl Shared {
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
                feed.waiters.borrow_mut().push(SetWaiter {
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
        // A revoked token is refused whatever state the set is in.
        if let Some(known) = feed.set.borrow().check(identity, now / 1000) {
            return SetAnswer::Decided(revocation::verdict(Ok(known), enforcement, None));
        }
        let client = feed.client.borrow();
        let usable = client.fresh(now, &feed.cfg) && !feed.set.borrow().overflowed();
        self.note_usable(feed, usable, &client, now);
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
        if !client.was_ready && feed.cfg.wait_for_set_ms > 0 {
            return SetAnswer::Wait;
        }
        // `failure_mode: stale` may take the set as the last answer while it is complete and at
        // most `stale_ms` past `max_staleness_ms`.
        let stale_ok = client.was_ready
            && !feed.set.borrow().overflowed()
            && client.age_ms(now) <= feed.cfg.max_staleness_ms.saturating_add(rev.freshness.stale_ms);
        SetAnswer::Decided(revocation::verdict(
            Err(Failure::Unavailable),
            enforcement,
            stale_ok.then_some(Known::Active),
        ))
    }

    fn note_usable(&self, feed: &Feed, usable: bool, client: &FeedClient, now: u64) {
        if feed.usable.replace(usable) == usable {
            return;
        }
        if usable {
            info!("jwtguard: revocation set usable again ({} entries)", feed.set.borrow().len());
        } else if feed.set.borrow().overflowed() {
            error!(
                "jwtguard: revocation set over revocation.feed.max_entries ({}); failure_mode decides until it fits",
                feed.cfg.max_entries
            );
        } else if client.ready {
            warn!(
                "jwtguard: revocation set is {} ms old (max_staleness_ms {}); failure_mode decides until the feed answers",
                client.age_ms(now),
                feed.cfg.max_staleness_ms
            );
        }
    }

    /// Starts this worker's next poll if one is due (called on the tick and after each answer).
    pub fn poll_feed(&self, feed: &Feed, dispatch: Dispatch) -> Option<(u32, Callout)> {
        let rev = self.revocation.as_ref()?;
        let now = now_ms();
        if feed.started_ms.get() == 0 {
            feed.started_ms.set(now);
        }
        if !feed.client.borrow().due(now) {
            return None;
        }
        let path = feed.client.borrow().poll_path(&feed.cfg);
        let authorization = rev.credential.as_ref().map(|c| format!("Bearer {c}"));
        let mut headers = vec![(":method", "GET"), (":path", path.as_str()), (":authority", rev.authority.as_str())];
        if let Some(a) = &authorization {
            headers.push(("authorization", a.as_str()));
        }
        // The service holds the poll up to the heartbeat; allow it the usual timeout on top.
        let wait = feed.cfg.poll_wait_ms().saturating_add(rev.timeout_ms);
        match dispatch(&rev.cluster, headers, None, Duration::from_millis(wait)) {
            Ok(token) => {
                let mut client = feed.client.borrow_mut();
                client.in_flight = true;
                Some((token, Callout::Feed { generation: client.generation }))
            }
            Err(status) => {
                warn!("jwtguard: revocation feed poll to cluster {:?} failed: {status:?}", rev.cluster);
                let _ = feed.client.borrow_mut().answer(None, None, now);
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
        record: &mut dyn FnMut(u32, u32, Callout),
    ) {
        let now = now_ms();
        if feed.client.borrow_mut().superseded(generation, now) {
            return;
        }
        let was_ready = feed.client.borrow().ready;
        let events = feed.client.borrow_mut().answer(status, body, now);
        let Some(events) = events else {
            self.metrics.add(self.metrics.feed_failed, 1);
            return;
        };
        self.metrics.add(self.metrics.feed_answers, 1);
        Metrics::add_now(self.metrics.feed_events, u32::try_from(events.len()).unwrap_or(u32::MAX));
        self.apply(feed, events, now);
        if !was_ready && feed.client.borrow().ready {
            info!("jwtguard: revocation set complete: {} entries", feed.set.borrow().len());
            self.release_set_waiters(feed, now, true, dispatch, record);
        }
    }

    fn apply(&self, feed: &Feed, events: Vec<FeedEvent>, now: u64) {
        let mut set = feed.set.borrow_mut();
        for event in events {
            set.apply(event, now / 1000);
        }
    }

    /// Marks a token this worker just logged out, before the feed brings it back.
    pub fn mark_logged_out(&self, feed: &Feed, identity: &Identity, everywhere: bool) {
        let now = now_ms() / 1000;
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
        feed.set.borrow_mut().apply(event, now);
    }

    /// The tick's upkeep: parked requests past their wait, expired entries, the gauges.
    pub fn feed_upkeep(&self, feed: &Feed, dispatch: Dispatch, record: &mut dyn FnMut(u32, u32, Callout)) {
        let now = now_ms();
        self.release_set_waiters(feed, now, false, dispatch, record);
        if now.saturating_sub(feed.expired_ms.get()) >= EXPIRE_EVERY_MS {
            feed.expired_ms.set(now);
            let mut set = feed.set.borrow_mut();
            set.expire(now / 1000);
            if set.room_to_start_over() {
                info!(
                    "jwtguard: revocation set has room again ({} entries); reading the feed from the start",
                    set.len()
                );
                feed.client.borrow_mut().start_over();
            }
        }
        self.publish_gauges(feed, now);
    }

    /// Parked requests go on when the set is complete (`all`), or at their deadline.
    fn release_set_waiters(
        &self,
        feed: &Feed,
        now: u64,
        all: bool,
        dispatch: Dispatch,
        record: &mut dyn FnMut(u32, u32, Callout),
    ) {
        let waiters = std::mem::take(&mut *feed.waiters.borrow_mut());
        for w in waiters {
            if !all && now < w.deadline_ms {
                feed.waiters.borrow_mut().push(w);
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
                    if !crate::host::set_effective_context(w.context_id) {
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

    /// Publishes this worker's set age and size in its slot, and sets the gauges to the worst
    /// live slot of this Envoy.
    fn publish_gauges(&self, feed: &Feed, now: u64) {
        let client = feed.client.borrow();
        let age = if client.ready { client.age_ms(now) } else { now.saturating_sub(feed.started_ms.get()) };
        let set = feed.set.borrow();
        let mine = format!("{now}|{age}|{}|{}", set.len(), u8::from(set.overflowed()));
        let slot = match feed.slot.get() {
            Some(s) => s,
            None => match claim_slot(feed, now) {
                Some(s) => {
                    feed.slot.set(Some(s));
                    s
                }
                None => return,
            },
        };
        let _ = host::set_shared_data(&slot_key(feed, slot), Some(mine.as_bytes()), None);
        let (mut worst_age, mut most, mut overflowed) = (0u64, 0u64, 0u64);
        for i in 0..SLOTS {
            if let Some([seen, age, entries, over]) = read_slot(feed, i) {
                if now.saturating_sub(seen) < SLOT_LIFETIME_MS {
                    worst_age = worst_age.max(age);
                    most = most.max(entries);
                    overflowed = overflowed.max(over);
                }
            }
        }
        Metrics::set(self.metrics.feed_age_ms, worst_age);
        Metrics::set(self.metrics.feed_entries, most);
        Metrics::set(self.metrics.feed_overflowed, overflowed);
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

/// [last seen ms, age ms, entries, overflowed] of slot `i`.
fn read_slot(feed: &Feed, i: u32) -> Option<[u64; 4]> {
    let (bytes, _) = host::get_shared_data(&slot_key(feed, i)).ok()?;
    let text = String::from_utf8(bytes?).ok()?;
    let mut parts = text.split('|').map(|p| p.parse::<u64>().ok());
    Some([parts.next()??, parts.next()??, parts.next()??, parts.next()??])
}

/// Claims a free slot (never written, or left by a VM that is gone) with compare-and-swap; a
/// live VM refreshes its slot every tick, so it is never taken from under it.
fn claim_slot(feed: &Feed, now: u64) -> Option<u32> {
    for i in 0..SLOTS {
        let (bytes, cas) = host::get_shared_data(&slot_key(feed, i)).ok()?;
        let free = match bytes.and_then(|b| String::from_utf8(b).ok()) {
            None => true,
            Some(text) => {
                let seen = text.split('|').next().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
                now.saturating_sub(seen) >= SLOT_LIFETIME_MS
            }
        };
        let claim = format!("{now}|0|0|0");
        if free && host::set_shared_data(&slot_key(feed, i), Some(claim.as_bytes()), cas).is_ok() {
            return Some(i);
        }
    }
    None
}
