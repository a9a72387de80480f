//! The revocation feed, service side: `GET /v1/feed?after=POSITION&wait_ms=N`.
//!
//! Every write that can refuse a token appends an event to one Redis stream (`store`). Each
//! service instance runs one reader: a task with a connection of its own that loops
//! `XREAD BLOCK 1000 COUNT 1000` after the last id it saw, keeps the most recent entries in a
//! ring and wakes every held poll through a `watch` channel. So a thousand idle long-polls cost a
//! thousand parked futures, never a Redis connection or a blocking read each. A poll whose
//! position the ring covers is answered from memory; an older one (a new client's snapshot, a
//! client far behind) with `XRANGE` on the read connection, a page at a time.
//!
//! A poll is answered only while the reader hears from Redis: if no XREAD has completed for
//! `BLOCK + 2 s`, polls get 503, held ones too, so a heartbeat never vouches for a set this
//! instance cannot see.

use crate::store::{FeedEntry, FeedReader, Store, StoreError};
use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How long one XREAD waits for new entries.
const BLOCK: Duration = Duration::from_millis(1000);
/// The reader is healthy while an XREAD completed this recently.
const HEALTHY_WITHIN: Duration = Duration::from_millis(BLOCK.as_millis() as u64 + 2000);
/// How often health is re-checked, to release held polls promptly when the reader goes quiet.
const WATCHDOG_EVERY: Duration = Duration::from_millis(250);
/// Entries read per XREAD and per XRANGE page.
const READ_COUNT: usize = 1000;
/// Recent entries kept in memory.
const RING_ENTRIES: usize = 10_000;
/// A page holds at most this many events…
pub const PAGE_EVENTS: usize = 1000;
/// …and this many bytes of events: the filter reads at most 1 MiB of answer.
pub const PAGE_BYTES: usize = 512 * 1024;
/// Entries scanned for one page (expired ones included), so a page costs bounded work.
const PAGE_SCAN: usize = 10_000;
/// How long after its `until` (on this service's clock) an event is still sent, in seconds. A
/// proxy's clock may lag this one: an event dropped the moment `until` passes here could still
/// refuse a token there, and a new worker building its set would never hear of it. The filter
/// drops events whose `until` has passed on its own clock, so sending them a little longer
/// costs a few bytes and never keeps a token refused. The stream keeps entries at least this
/// long past their `until` (see the retention in `main`).
pub const UNTIL_GRACE_SECONDS: u64 = 60;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A Redis stream id, `MS-SEQ`: the feed's positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = ();
    fn from_str(s: &str) -> Result<StreamId, ()> {
        match parse_after(s) {
            Some(After::At(id)) => Ok(id),
            _ => Err(()),
        }
    }
}

/// Where a client asks to continue from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    At(StreamId),
    /// Of the position's form (`^[0-9]{1,20}-[0-9]{1,20}$`) but past any stream id: no stream
    /// ever reached it, so the client starts over.
    Beyond,
}

/// `after` as the API document allows it; `None` otherwise (400).
pub fn parse_after(text: &str) -> Option<After> {
    let (ms, seq) = text.split_once('-')?;
    let part = |p: &str| {
        if p.is_empty() || p.len() > 20 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(p.parse::<u64>().ok())
    };
    Some(match (part(ms)?, part(seq)?) {
        (Some(ms), Some(seq)) => After::At(StreamId { ms, seq }),
        _ => After::Beyond,
    })
}

/// An entry as the feed sends it: the event's JSON (serialized once, for every poll that sends
/// it) and until when it matters. `None`: an entry this service cannot read.
#[derive(Debug, Clone)]
struct Prepared {
    id: StreamId,
    event: Option<(u64, Box<str>)>,
}

impl Prepared {
    fn new(entry: FeedEntry) -> Prepared {
        let event = entry.event.and_then(|e| {
            let until = e.until();
            serde_json::to_string(&e).ok().map(|json| (until, json.into_boxed_str()))
        });
        if event.is_none() {
            tracing::warn!(id = %entry.id, "a feed entry this service cannot read is skipped");
        }
        Prepared { id: entry.id, event }
    }
}

/// One answer: the JSON body of a `jwtguard_wire::FeedResponse`.
#[derive(Debug)]
pub struct Page {
    pub position: StreamId,
    pub more: bool,
    events: Vec<Box<str>>,
}

impl Page {
    fn empty(position: StreamId) -> Page {
        Page { position, more: false, events: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Written by hand from the events' JSON, which serde wrote: the same as serializing a
    /// `FeedResponse`, without parsing each event again. `age_ms`: how long ago the reader last
    /// heard from Redis.
    pub fn body(&self, age_ms: u64) -> String {
        let size: usize = self.events.iter().map(|e| e.len() + 1).sum();
        let mut body = String::with_capacity(size + 80);
        body.push_str(&format!(
            "{{\"position\":\"{}\",\"more\":{},\"age_ms\":{age_ms},\"events\":[",
            self.position, self.more
        ));
        for (i, event) in self.events.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(event);
        }
        body.push_str("]}");
        body
    }
}

/// Fills a page from `entries` (after `after`, oldest first) within the page's bounds, leaving
/// out events whose `until` passed more than `UNTIL_GRACE_SECONDS` before `now`. `beyond`:
/// entries exist past those given.
fn fill<'a>(after: StreamId, entries: impl Iterator<Item = &'a Prepared>, beyond: bool, now: u64) -> Page {
    let mut page = Page::empty(after);
    let (mut bytes, mut scanned) = (0, 0);
    let mut entries = entries.peekable();
    while let Some(entry) = entries.peek() {
        if scanned == PAGE_SCAN {
            break;
        }
        if let Some((until, json)) = &entry.event {
            if until.saturating_add(UNTIL_GRACE_SECONDS) > now {
                if page.events.len() == PAGE_EVENTS || bytes + json.len() + 1 > PAGE_BYTES {
                    break;
                }
                bytes += json.len() + 1;
                page.events.push(json.clone());
            }
        }
        scanned += 1;
        page.position = entry.id;
        entries.next();
    }
    page.more = entries.peek().is_some() || beyond;
    page
}

/// The entries the reader saw most recently. It holds every entry after `covered_from` up to
/// `last` (the reader's position), so a poll after `covered_from` is answered from here.
#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<Prepared>,
    covered_from: StreamId,
    last: StreamId,
    /// The range of a stream tail Redis has since lost (a failover before the entries reached a
    /// replica). A client whose position is in it, and not an entry of the stream, starts over:
    /// new entries may take ids below its position (primaries' clocks differ).
    lost: Option<(StreamId, StreamId)>,
}

impl Ring {
    fn starting_at(last: StreamId) -> Ring {
        Ring { covered_from: last, last, ..Default::default() }
    }

    fn push(&mut self, entries: Vec<FeedEntry>) {
        for entry in entries {
            if entry.id <= self.last {
                continue;
            }
            self.last = entry.id;
            self.entries.push_back(Prepared::new(entry));
            if self.entries.len() > RING_ENTRIES {
                if let Some(dropped) = self.entries.pop_front() {
                    self.covered_from = dropped.id;
                }
            }
        }
    }

    /// The stream's tail is now `last`, below what the reader had seen: start over from there
    /// and remember the lost range.
    fn lost_tail(&mut self, last: StreamId) {
        let (from, to) = self.lost.map_or((last, self.last), |(a, b)| (a.min(last), b.max(self.last)));
        tracing::warn!(from = %last, to = %self.last, "the feed stream lost its tail (failover?): clients there start over");
        *self = Ring { lost: Some((from, to)), ..Ring::starting_at(last) };
    }

    /// Whether the ring holds an entry with this id.
    fn holds(&self, id: StreamId) -> bool {
        self.entries.binary_search_by(|e| e.id.cmp(&id)).is_ok()
    }

    fn page(&self, after: StreamId, now: u64) -> Option<Page> {
        if after < self.covered_from {
            return None;
        }
        let start = self.entries.partition_point(|e| e.id <= after);
        Some(fill(after, self.entries.range(start..), false, now))
    }
}

struct Shared {
    ring: RwLock<Ring>,
    /// Bumped on every new entry and health change: held polls look again.
    version: watch::Sender<u64>,
    started: Instant,
    /// When the last XREAD completed, in ms since `started` (0: never).
    last_ok_ms: AtomicU64,
    healthy: AtomicBool,
    closing: AtomicBool,
}

impl Shared {
    /// How long ago the last XREAD completed, in ms.
    fn age_ms(&self) -> u64 {
        (self.started.elapsed().as_millis() as u64).saturating_sub(self.last_ok_ms.load(Ordering::Relaxed))
    }

    fn healthy(&self) -> bool {
        let last = self.last_ok_ms.load(Ordering::Relaxed);
        last > 0 && self.started.elapsed().as_millis() as u64 <= last.saturating_add(HEALTHY_WITHIN.as_millis() as u64)
    }

    fn mark_ok(&self) {
        let ms = (self.started.elapsed().as_millis() as u64).max(1);
        self.last_ok_ms.store(ms, Ordering::Relaxed);
        self.note_health();
    }

    /// Publishes a change of health (gauge, log) and wakes held polls to act on it.
    fn note_health(&self) {
        let healthy = self.healthy();
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            metrics::gauge!("jwtguard_revocation_feed_reader_healthy").set(if healthy { 1.0 } else { 0.0 });
            if healthy {
                tracing::info!("feed reader hears from Redis again");
            } else {
                tracing::warn!(within = ?HEALTHY_WITHIN, "feed reader has not heard from Redis: feed polls answer 503");
            }
            self.bump();
        }
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// Counts a held poll for as long as it is held, however it ends (a client that hangs up drops
/// the request's future).
struct Held;

impl Held {
    fn new() -> Held {
        metrics::gauge!("jwtguard_revocation_feed_held_polls").increment(1.0);
        Held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        metrics::gauge!("jwtguard_revocation_feed_held_polls").decrement(1.0);
    }
}

#[derive(Clone)]
pub struct Feed {
    store: Store,
    shared: Arc<Shared>,
}

impl Feed {
    /// Opens the reader's connection, finds the stream's end and starts the reader there, with
    /// a watchdog that notices when it stops hearing from Redis.
    pub async fn start(store: Store) -> Result<Feed, StoreError> {
        let mut reader = store.feed_reader(BLOCK).await?;
        let last = reader.last().await?.unwrap_or(StreamId::ZERO);
        let (version, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            ring: RwLock::new(Ring::starting_at(last)),
            version,
            started: Instant::now(),
            last_ok_ms: AtomicU64::new(0),
            healthy: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        });
        metrics::gauge!("jwtguard_revocation_feed_reader_healthy").set(0.0);
        metrics::gauge!("jwtguard_revocation_feed_held_polls").set(0.0);
        shared.mark_ok();
        tokio::spawn(read_forever(shared.clone(), store.clone(), reader));
        let watchdog = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(WATCHDOG_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(shared) = watchdog.upgrade() else { return };
                shared.note_health();
            }
        });
        Ok(Feed { store, shared })
    }

    /// How long ago this instance last heard from Redis (ms), for the answer's `age_ms`.
    pub fn age_ms(&self) -> u64 {
        self.shared.age_ms()
    }

    /// Held polls answer at once (with what they have): the instance is going away.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        self.shared.bump();
    }

    fn unavailable(&self) -> StoreError {
        StoreError::Unavailable(format!("the feed reader has not heard from Redis within {HEALTHY_WITHIN:?}"))
    }

    /// Answers a poll: events after `after` (from the start without it), held up to `wait` while
    /// there are none. `bound` limits each Redis call made for it.
    pub async fn poll(&self, after: Option<After>, wait: Duration, bound: Duration) -> Result<Page, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.shared.version.subscribe();
        changes.borrow_and_update();
        if !self.shared.healthy() {
            return Err(self.unavailable());
        }
        self.read_own_writes(&mut changes, bound).await;
        let mut page = self.page(after.unwrap_or(After::At(StreamId::ZERO)), bound).await?;
        if !page.events.is_empty() || page.more || wait.is_zero() {
            return Ok(self.sent(page));
        }
        let _held = Held::new();
        loop {
            if self.shared.closing.load(Ordering::Relaxed) {
                return Ok(page);
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Err(self.unavailable());
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    // The heartbeat says "nothing new": true only if the reader still hears Redis.
                    return if self.shared.healthy() { Ok(page) } else { Err(self.unavailable()) };
                }
            }
            if !self.shared.healthy() {
                return Err(self.unavailable());
            }
            // Expired entries move the position on without ending the wait.
            page = self.page(After::At(page.position), bound).await?;
            if !page.events.is_empty() || page.more {
                return Ok(self.sent(page));
            }
        }
    }

    /// Waits (up to `bound`) for the reader to pass this instance's newest append: a client that
    /// wrote and then polls the same instance sees its write, whatever the reader's lag.
    async fn read_own_writes(&self, changes: &mut watch::Receiver<u64>, bound: Duration) {
        let appended = self.store.appended();
        let _ = tokio::time::timeout(bound, async {
            while self.ring().last < appended {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        changes.borrow_and_update();
    }

    fn sent(&self, page: Page) -> Page {
        metrics::counter!("jwtguard_revocation_feed_events_sent_total").increment(page.len() as u64);
        page
    }

    /// One page after `after`: from the ring when it covers the position, else from Redis. A
    /// position no stream reached, or one from a tail Redis lost, starts over from the beginning.
    async fn page(&self, after: After, bound: Duration) -> Result<Page, StoreError> {
        let after = match after {
            After::Beyond => StreamId::ZERO,
            After::At(id) => {
                let (last, suspect) = {
                    let ring = self.ring();
                    (ring.last, ring.lost.is_some_and(|(from, to)| id > from && id <= to) && !ring.holds(id))
                };
                if suspect && !within(bound, self.store.feed_has(id)).await? {
                    StreamId::ZERO
                } else if id > last {
                    // Ahead of this reader: another instance's reader was quicker (wait for
                    // ours), or the position is not in this stream at all (start over).
                    let reached = within(bound, self.store.feed_last()).await?.is_some_and(|l| l >= id);
                    if reached {
                        id
                    } else {
                        StreamId::ZERO
                    }
                } else {
                    id
                }
            }
        };
        let now = now_ms() / 1000;
        if let Some(page) = self.ring().page(after, now) {
            return Ok(page);
        }
        let entries = within(bound, self.store.feed_range(after, READ_COUNT + 1)).await?;
        let beyond = entries.len() > READ_COUNT;
        let prepared: Vec<Prepared> = entries.into_iter().take(READ_COUNT).map(Prepared::new).collect();
        Ok(fill(after, prepared.iter(), beyond, now))
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        // A poisoned lock only means a panic elsewhere while holding it; the ring is still whole.
        self.shared.ring.read().unwrap_or_else(|e| e.into_inner())
    }
}

async fn within<T>(
    bound: Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(bound, call)
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable(format!("no answer within {bound:?}"))))
}

/// The reader: XREAD after the last id seen, forever. After an error it drops its connection
/// (a timed-out XREAD may still be queued on it, and would hold the next one behind it), opens
/// another, and checks the stream did not lose entries it had seen.
async fn read_forever(shared: Arc<Shared>, store: Store, reader: FeedReader) {
    let mut reader = Some(reader);
    let mut backoff = Duration::from_millis(100);
    loop {
        if Arc::strong_count(&shared) == 1 {
            return; // the service is gone
        }
        let conn = match reader.as_mut() {
            Some(conn) => conn,
            None => match reconnect(&shared, &store).await {
                Ok(conn) => reader.insert(conn),
                Err(e) => {
                    failed(&e.to_string(), &mut backoff).await;
                    continue;
                }
            },
        };
        let last = shared.ring.read().unwrap_or_else(|e| e.into_inner()).last;
        let read = tokio::time::timeout(BLOCK * 2 + Duration::from_secs(1), conn.read(last, READ_COUNT)).await;
        match read {
            Ok(Ok(entries)) => {
                backoff = Duration::from_millis(100);
                let new = !entries.is_empty();
                if new {
                    shared.ring.write().unwrap_or_else(|e| e.into_inner()).push(entries);
                }
                shared.mark_ok();
                if new {
                    shared.bump();
                }
            }
            Ok(Err(e)) => {
                reader = None;
                failed(&e.to_string(), &mut backoff).await;
            }
            Err(_) => {
                reader = None;
                failed("XREAD did not return", &mut backoff).await;
            }
        }
    }
}

async fn reconnect(shared: &Shared, store: &Store) -> Result<FeedReader, StoreError> {
    let mut conn = store.feed_reader(BLOCK).await?;
    let last = conn.last().await?.unwrap_or(StreamId::ZERO);
    let mut ring = shared.ring.write().unwrap_or_else(|e| e.into_inner());
    if last < ring.last {
        ring.lost_tail(last);
    }
    Ok(conn)
}

async fn failed(error: &str, backoff: &mut Duration) {
    tracing::warn!(error, "feed reader: Redis read failed; retrying");
    metrics::counter!("jwtguard_revocation_feed_reader_errors_total").increment(1);
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwtguard_wire::FeedEvent;

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    fn revoked(ms: u64, jti: &str, until: u64) -> FeedEntry {
        FeedEntry { id: id(ms, 0), event: Some(FeedEvent::Revoked { jti: jti.into(), until }) }
    }

    #[test]
    fn positions_are_stream_ids_of_the_documented_form() {
        assert_eq!(parse_after("0-0"), Some(After::At(StreamId::ZERO)));
        assert_eq!(parse_after("1733000000000-12"), Some(After::At(id(1_733_000_000_000, 12))));
        assert_eq!(parse_after("007-1"), Some(After::At(id(7, 1))));
        assert_eq!(parse_after("18446744073709551615-0"), Some(After::At(id(u64::MAX, 0))));
        assert_eq!(parse_after("18446744073709551616-0"), Some(After::Beyond));
        assert_eq!(parse_after("99999999999999999999-99999999999999999999"), Some(After::Beyond));
        for bad in ["", "-", "1", "1-", "-1", "1-2-3", "a-1", "+1-1", "1-+1", " 1-1", "123456789012345678901-0", "1–1"]
        {
            assert_eq!(parse_after(bad), None, "{bad:?}");
        }
        assert!(id(1, 9) < id(2, 0) && id(2, 0) < id(2, 1));
        assert_eq!(id(5, 3).to_string(), "5-3");
    }

    #[test]
    fn pages_skip_expired_events_but_move_past_them() {
        const GRACE: u64 = UNTIL_GRACE_SECONDS;
        let mut ring = Ring::starting_at(StreamId::ZERO);
        ring.push(vec![
            revoked(1, "a", 100),
            revoked(2, "gone", 10),
            FeedEntry { id: id(3, 0), event: None },
            revoked(4, "b", 100),
        ]);
        let now = 10 + GRACE; // "gone" expired a grace period ago
        let page = ring.page(StreamId::ZERO, now).unwrap();
        assert_eq!((page.position, page.len(), page.more), (id(4, 0), 2, false));
        let body: jwtguard_wire::FeedResponse = serde_json::from_str(&page.body(0)).unwrap();
        assert_eq!(body.position, "4-0");
        assert_eq!(
            body.events,
            vec![
                FeedEvent::Revoked { jti: "a".into(), until: 100 },
                FeedEvent::Revoked { jti: "b".into(), until: 100 }
            ]
        );
        let page = ring.page(id(1, 0), now).unwrap();
        assert_eq!((page.position, page.len()), (id(4, 0), 1));
        let page = ring.page(id(4, 0), now).unwrap();
        assert_eq!((page.position, page.len(), page.more), (id(4, 0), 0, false), "nothing new: the same position");
        let page = ring.page(id(2, 0), 100 + GRACE).unwrap();
        assert_eq!((page.position, page.len()), (id(4, 0), 0), "all expired: the position still moves");
    }

    /// A proxy whose clock lags this one still needs an event whose `until` has just passed
    /// here: it is sent for a grace period after `until`, then left out.
    #[test]
    fn events_are_sent_for_a_grace_period_after_their_until() {
        let mut ring = Ring::starting_at(StreamId::ZERO);
        ring.push(vec![revoked(1, "just-expired", 1_000), revoked(2, "live", 5_000)]);
        let jtis = |now: u64| {
            let page = ring.page(StreamId::ZERO, now).unwrap();
            assert_eq!(page.position, id(2, 0), "the position moves past what is left out");
            let body: jwtguard_wire::FeedResponse = serde_json::from_str(&page.body(0)).unwrap();
            body.events
                .into_iter()
                .map(|e| match e {
                    FeedEvent::Revoked { jti, .. } => jti,
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(jtis(999), ["just-expired", "live"]);
        assert_eq!(jtis(1_000), ["just-expired", "live"], "until has just passed here");
        assert_eq!(jtis(1_000 + UNTIL_GRACE_SECONDS - 1), ["just-expired", "live"]);
        assert_eq!(jtis(1_000 + UNTIL_GRACE_SECONDS), ["live"], "past the grace: left out");
        // Redis answers (an older position than the ring covers) are filled the same way.
        let from_redis = [revoked(1, "just-expired", 1_000)].map(Prepared::new);
        assert_eq!(fill(StreamId::ZERO, from_redis.iter(), false, 1_001).len(), 1);
        assert_eq!(fill(StreamId::ZERO, from_redis.iter(), false, 1_000 + UNTIL_GRACE_SECONDS).len(), 0);
        assert_eq!(fill(StreamId::ZERO, [revoked(1, "far", u64::MAX)].map(Prepared::new).iter(), false, 7).len(), 1);
    }

    #[test]
    fn pages_are_bounded_in_events_and_bytes() {
        let mut ring = Ring::starting_at(StreamId::ZERO);
        ring.push((1..=2500).map(|i| revoked(i, &format!("j{i}"), 100)).collect());
        let page = ring.page(StreamId::ZERO, 0).unwrap();
        assert_eq!((page.len(), page.position, page.more), (PAGE_EVENTS, id(1000, 0), true));
        let page = ring.page(id(2000, 0), 0).unwrap();
        assert_eq!((page.len(), page.more), (500, false));

        let long = "é".repeat(256);
        let mut ring = Ring::starting_at(StreamId::ZERO);
        ring.push((1..=1000).map(|i| revoked(i, &format!("{long}{i}"), 100)).collect());
        let page = ring.page(StreamId::ZERO, 0).unwrap();
        let body = page.body(0);
        assert!(page.more && page.len() < PAGE_EVENTS && body.len() <= PAGE_BYTES + 64, "{}", body.len());
        let parsed: jwtguard_wire::FeedResponse = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed.events.len(), page.len());
    }

    #[test]
    fn the_ring_covers_what_it_holds_and_forgets_a_lost_tail() {
        let mut ring = Ring::starting_at(id(10, 0));
        assert!(ring.page(id(9, 0), 0).is_none(), "before the reader started: ask Redis");
        ring.push((11..11 + RING_ENTRIES as u64 + 5).map(|i| revoked(i, "j", 100)).collect());
        assert_eq!(ring.entries.len(), RING_ENTRIES);
        assert_eq!(ring.covered_from, id(15, 0));
        assert!(ring.page(id(14, 0), 0).is_none() && ring.page(id(15, 0), 0).is_some());
        let seen = ring.last;
        ring.push(vec![revoked(3, "old", 100)]);
        assert_eq!(ring.last, seen, "entries at or before the last are not taken twice");
        ring.lost_tail(id(20, 0));
        assert_eq!((ring.last, ring.covered_from, ring.entries.len()), (id(20, 0), id(20, 0), 0));
        assert_eq!(ring.lost, Some((id(20, 0), seen)));
    }
}
