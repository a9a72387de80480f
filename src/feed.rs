//! The revocation feed, client side, without host calls: when to poll, what to ask for, what an
//! answer is, and whether the set built from it may decide on its own.

use jwtguard_wire::{FeedEvent, FeedResponse};
use serde_json::Value;

/// `revocation.feed` of the configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedConfig {
    pub path: String,
    /// Past this age (since the last answer) the set no longer decides alone: the failure mode
    /// does. The long-poll asks for an answer at least every fifth of it, so a healthy feed never
    /// comes near.
    pub max_staleness_ms: u64,
    /// How long a request may wait for the first complete set before the failure mode decides.
    pub wait_for_set_ms: u64,
    /// Most entries a worker holds; at the bound the set is incomplete (see `RevocationSet`).
    pub max_entries: usize,
}

impl FeedConfig {
    /// How long the service may hold a poll with nothing new: a heartbeat at least this often
    /// (at most the 60 s the service allows).
    pub fn poll_wait_ms(&self) -> u64 {
        (self.max_staleness_ms / 5).min(60_000)
    }
}

/// One worker's place in the feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedClient {
    /// Where to continue from; empty before the first answer (the service then sends the whole
    /// live set).
    pub position: String,
    /// A page with `more: false` was seen since the start (or the last start over): the set
    /// holds everything the service knew.
    pub ready: bool,
    /// The set was complete once: a request then never waits for it again.
    pub was_ready: bool,
    /// As of when the set last held everything the service knew (ms): the last page that was
    /// the last (`more: false`), less the service's `age_ms`; 0 before the first.
    pub answered_ms: u64,
    pub in_flight: bool,
    pub failures: u32,
    /// No poll before this time (backoff after failures).
    pub next_attempt_ms: u64,
    /// Bumped by `start_over`: the answer to a poll sent before it is for the old position.
    pub generation: u32,
}

/// Backoff after failed polls: 100 ms doubling to at most 2 s, so a service back from an outage
/// is found again quickly.
const BACKOFF_MS: u64 = 100;
const MAX_BACKOFF_MS: u64 = 2_000;

impl FeedClient {
    pub fn due(&self, now_ms: u64) -> bool {
        !self.in_flight && now_ms >= self.next_attempt_ms
    }

    /// The poll's `:path`. Until the set is complete the service answers at once.
    pub fn poll_path(&self, cfg: &FeedConfig) -> String {
        let wait = if self.ready { cfg.poll_wait_ms() } else { 0 };
        if self.position.is_empty() {
            format!("{}?wait_ms={wait}", cfg.path)
        } else {
            format!("{}?after={}&wait_ms={wait}", cfg.path, self.position)
        }
    }

    /// Takes in a poll's page (`read_page`): the events to apply, or `None` (and a backoff)
    /// when the poll brought none.
    pub fn answer(&mut self, page: Option<FeedResponse>, now_ms: u64) -> Option<Vec<FeedEvent>> {
        self.in_flight = false;
        let Some(response) = page else {
            self.failures = self.failures.saturating_add(1);
            let backoff = BACKOFF_MS.saturating_mul(1 << self.failures.saturating_sub(1).min(10));
            self.next_attempt_ms = now_ms.saturating_add(backoff.min(MAX_BACKOFF_MS));
            return None;
        };
        self.position = response.position;
        self.ready |= !response.more;
        self.was_ready |= self.ready;
        // Current as of when the service last heard from Redis, not as of its answer; and only
        // once the page is the last: while catching up after a gap the set lacks the later
        // pages' revocations, so it stays as old as the last time it was whole.
        if !response.more {
            self.answered_ms = now_ms.saturating_sub(response.age_ms).max(1);
        }
        self.failures = 0;
        self.next_attempt_ms = now_ms;
        Some(response.events)
    }

    /// Reads the feed again from the beginning (after the set overflowed and entries have
    /// since expired): the set is incomplete until the replay ends. A poll still out answers
    /// for the old position: `superseded` tells it apart.
    pub fn start_over(&mut self) {
        self.position.clear();
        self.ready = false;
        self.generation = self.generation.wrapping_add(1);
    }

    /// The poll in flight will not be answered: the next one may go at once, and an answer to
    /// it that came after all would be taken as superseded.
    pub fn abandon_poll(&mut self) {
        self.in_flight = false;
        self.next_attempt_ms = 0;
        self.generation = self.generation.wrapping_add(1);
    }

    /// Whether the answer to a poll sent in `generation` comes from before a `start_over`; if
    /// so it is dropped and the next poll may go at once.
    pub fn superseded(&mut self, generation: u32, now_ms: u64) -> bool {
        let old = generation != self.generation;
        if old {
            self.in_flight = false;
            self.next_attempt_ms = now_ms;
        }
        old
    }

    /// Whether the set may decide alone at `now_ms`: complete, and heard from recently.
    pub fn fresh(&self, now_ms: u64, cfg: &FeedConfig) -> bool {
        self.ready && now_ms.saturating_sub(self.answered_ms) <= cfg.max_staleness_ms
    }

    /// The set's age: time since the last answer (0 before the first).
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        if self.answered_ms == 0 {
            0
        } else {
            now_ms.saturating_sub(self.answered_ms)
        }
    }
}

/// A poll's answer as a page, `None` if it is not a feed answer. A position that is not the
/// service's kind is refused: it goes into a path. Pure, so that the caller can read a page (up
/// to 512 KiB) without holding the lock the workers' lookups take.
pub fn read_page(status: Option<u16>, body: Option<&[u8]>) -> Option<FeedResponse> {
    match status {
        Some(200) => body.and_then(parse_response).filter(|r| is_position(&r.position)),
        _ => None,
    }
}

/// Reads the service's answer (`jwtguard_wire::FeedResponse`) through the strict JSON reader
/// the filter already has: serde's derive for the tagged events would add ~25 KB to the .wasm.
/// Members it does not know are ignored, so a newer service can add some.
fn parse_response(body: &[u8]) -> Option<FeedResponse> {
    let doc = crate::strict_json::parse_object(body).ok()?;
    let events = doc.get("events")?.as_array()?.iter().map(parse_event).collect::<Option<Vec<_>>>()?;
    let age_ms = match doc.get("age_ms") {
        None => 0,
        Some(age) => age.as_u64()?,
    };
    Some(FeedResponse {
        position: doc.get("position")?.as_str()?.to_string(),
        more: doc.get("more")?.as_bool()?,
        events,
        age_ms,
    })
}

fn parse_event(value: &Value) -> Option<FeedEvent> {
    let event = value.as_object()?;
    let text = |name: &str| event.get(name).and_then(Value::as_str).map(String::from);
    let number = |name: &str| event.get(name).and_then(Value::as_u64);
    Some(match event.get("type")?.as_str()? {
        "revoked" => FeedEvent::Revoked { jti: text("jti")?, until: number("until")? },
        "session_ended" => FeedEvent::SessionEnded { jti: text("jti")?, until: number("until")? },
        "sid_revoked" => FeedEvent::SidRevoked { iss: text("iss")?, sid: text("sid")?, until: number("until")? },
        "subject_cutoff" => FeedEvent::SubjectCutoff {
            sub: text("sub")?,
            iss: match event.get("iss") {
                None => None,
                Some(iss) => Some(iss.as_str()?.to_string()),
            },
            before: number("before")?,
            until: number("until")?,
        },
        _ => return None,
    })
}

/// A Redis stream id, `MS-SEQ`: the only position the service hands out.
fn is_position(p: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    p.split_once('-').is_some_and(|(ms, seq)| digits(ms) && digits(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes in a page that is the feed's last (no events) at `now_ms`.
    fn last_page(f: &mut FeedClient, position: &str, now_ms: u64) -> bool {
        let page = format!(r#"{{"position":"{position}","more":false,"events":[]}}"#);
        f.answer(read_page(Some(200), Some(page.as_bytes())), now_ms).is_some()
    }

    fn cfg() -> FeedConfig {
        FeedConfig { path: "/v1/feed".into(), max_staleness_ms: 30_000, wait_for_set_ms: 2_000, max_entries: 100 }
    }

    #[test]
    fn polls_resume_from_the_position_and_wait_once_complete() {
        let c = cfg();
        let mut f = FeedClient::default();
        assert!(f.due(0));
        assert_eq!(f.poll_path(&c), "/v1/feed?wait_ms=0");
        let page = br#"{"position":"17-0","more":true,"events":[{"type":"revoked","jti":"a","until":9}]}"#;
        assert_eq!(f.answer(read_page(Some(200), Some(page)), 1_000).map(|e| e.len()), Some(1));
        assert!(!f.ready && !f.fresh(1_000, &c), "a snapshot page is not the whole set");
        assert_eq!(f.poll_path(&c), "/v1/feed?after=17-0&wait_ms=0");
        assert!(f
            .answer(read_page(Some(200), Some(br#"{"position":"18-3","more":false,"age_ms":300,"events":[]}"#)), 1_800)
            .is_some());
        assert!(f.ready && f.fresh(1_500, &c));
        assert_eq!(f.age_ms(1_800), 300, "as of when the service last heard from Redis");
        assert_eq!(f.poll_path(&c), "/v1/feed?after=18-3&wait_ms=6000");
        let long = FeedConfig { max_staleness_ms: 3_600_000, ..c.clone() };
        assert_eq!(long.poll_wait_ms(), 60_000, "the most the service allows");
        assert!(f.fresh(1_500 + 30_000, &c) && !f.fresh(1_501 + 30_000, &c), "max_staleness");
        assert_eq!(f.age_ms(2_000), 500);
    }

    #[test]
    fn a_set_catching_up_is_as_old_as_when_it_was_last_whole() {
        let c = cfg();
        let mut f = FeedClient::default();
        assert!(last_page(&mut f, "9-0", 1_000));
        // The service was away; the first page after the gap is not the last.
        let page = br#"{"position":"40-0","more":true,"events":[{"type":"revoked","jti":"a","until":9}]}"#;
        assert!(f.answer(read_page(Some(200), Some(page)), 40_000).is_some());
        assert!(!f.fresh(40_000, &c), "the later pages' revocations are not in the set yet");
        assert_eq!(f.age_ms(40_000), 39_000);
        assert!(last_page(&mut f, "41-0", 40_050));
        assert!(f.fresh(40_050, &c));
    }

    #[test]
    fn starting_over_replays_from_the_beginning() {
        let c = cfg();
        let mut f = FeedClient::default();
        assert!(last_page(&mut f, "9-0", 1_000));
        f.in_flight = true;
        let sent_in = f.generation;
        f.start_over();
        assert!(!f.ready && f.was_ready && !f.fresh(1_000, &c));
        assert!(f.superseded(sent_in, 1_050), "the poll out before the start over answers for the old position");
        assert!(!f.in_flight && !f.superseded(f.generation, 1_050));
        assert_eq!(f.poll_path(&c), "/v1/feed?wait_ms=0");
        assert!(last_page(&mut f, "9-0", 1_100));
        assert!(f.fresh(1_100, &c));
    }

    #[test]
    fn an_abandoned_poll_is_sent_again_from_the_same_position() {
        let c = cfg();
        let mut f = FeedClient::default();
        assert!(last_page(&mut f, "9-0", 1_000));
        f.in_flight = true;
        f.next_attempt_ms = 5_000;
        let sent_in = f.generation;
        f.abandon_poll();
        assert!(f.due(1_001), "the next poll goes at once");
        assert_eq!(f.poll_path(&c), format!("/v1/feed?after=9-0&wait_ms={}", c.poll_wait_ms()));
        assert!(f.superseded(sent_in, 1_002), "an answer to the abandoned poll is not taken");
        assert!(f.ready && f.fresh(1_002, &c), "the set stays as complete as it was");
    }

    #[test]
    fn anything_but_a_feed_answer_backs_off_and_keeps_the_position() {
        let c = cfg();
        let mut f = FeedClient { position: "5-0".into(), ready: true, answered_ms: 1_000, ..Default::default() };
        for (status, body) in [
            (Some(503), None),
            (Some(504), None),
            (Some(200), Some(&b"upstream connect error"[..])),
            (Some(200), Some(br#"{"position":"../../admin","more":false,"events":[]}"#)),
            (Some(200), Some(br#"{"position":"9-0","more":false,"events":[{"type":"unknown"}]}"#)),
            (None, None),
        ] {
            f.in_flight = true;
            assert_eq!(f.answer(read_page(status, body), 2_000), None, "{status:?}");
            assert_eq!(f.position, "5-0");
            assert!(!f.in_flight);
        }
        assert_eq!(f.next_attempt_ms, 2_000 + 2_000, "capped backoff");
        assert!(!f.due(3_999) && f.due(4_000));
        assert_eq!(f.age_ms(10_000), 9_000);
        assert!(!f.fresh(31_001, &c));
    }

    /// The hand-written reader agrees with the wire types' serde form, which the service writes.
    #[test]
    fn reads_what_the_service_writes() {
        let response = FeedResponse {
            position: "1733000000000-7".into(),
            more: true,
            age_ms: 250,
            events: vec![
                FeedEvent::Revoked { jti: "j \"1\"".into(), until: 10 },
                FeedEvent::SubjectCutoff { sub: "alice".into(), iss: Some("https://i".into()), before: 5, until: 20 },
                FeedEvent::SubjectCutoff { sub: "bob".into(), iss: None, before: 5, until: 20 },
                FeedEvent::SessionEnded { jti: "s".into(), until: 30 },
                FeedEvent::SidRevoked { iss: "https://i".into(), sid: "s\"1".into(), until: 40 },
            ],
        };
        let bytes = serde_json::to_vec(&response).unwrap();
        assert_eq!(parse_response(&bytes), Some(response));
        for bad in [
            &br#"{"position":"1-0","more":false,"events":[{"type":"revoked","jti":"a"}]}"#[..],
            br#"{"position":"1-0","more":false,"events":[{"type":"revoked","jti":5,"until":1}]}"#,
            br#"{"position":"1-0","more":false,"events":[{"type":"subject_cutoff","sub":"a","iss":7,"before":1,"until":2}]}"#,
            br#"{"position":"1-0","more":"no","events":[]}"#,
            br#"{"position":"1-0","position":"2-0","more":false,"events":[]}"#,
            br#"{"more":false,"events":[]}"#,
        ] {
            assert_eq!(parse_response(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn positions_are_stream_ids() {
        for good in ["0-0", "1733000000000-12"] {
            assert!(is_position(good), "{good}");
        }
        for bad in ["", "-", "1", "1-", "-1", "1-2-3", "a-1", "1-1&x=1", "123456789012345678901-0"] {
            assert!(!is_position(bad), "{bad}");
        }
    }
}
