//! The live revocation set a worker holds in feed mode: revoked `jti`s, subject cutoffs, the
//! identity provider's logged-out sessions (`sid`) and (in allowlist mode) ended sessions, each kept only while it can still refuse a token. Fed by the
//! service's feed (`feed.rs`), checked on every request with no host call.
//!
//! Nothing is ever un-revoked, so the set is a join: applying an event twice, out of order, or on
//! top of an older snapshot gives the same set.

use crate::revocation::{session_key, Identity, Known};
use jwtguard_wire::FeedEvent;
use std::collections::HashMap;

/// Whether a subject cutoff at `before` refuses a token issued at `iat`. A token without `iat`
/// cannot show it came after the cutoff. The service decides by the same rule.
pub fn cutoff_revokes(before: u64, iat: Option<u64>) -> bool {
    iat.is_none_or(|iat| iat < before)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Cutoff {
    /// `None`: every issuer.
    iss: Option<String>,
    before: u64,
    until: u64,
}

#[derive(Debug, Default)]
pub struct RevocationSet {
    // std's seeded hasher, not `fast_hash`: a user with many accounts could choose `sub`s.
    /// `jti` → until when it is revoked.
    revoked: HashMap<String, u64>,
    /// `sub` → its cutoffs (one per issuer named, one for every issuer).
    cutoffs: HashMap<String, Vec<Cutoff>>,
    /// The number of cutoffs, kept so `len` is cheap (the gauges read it every tick).
    cutoff_count: usize,
    /// Allowlist mode: `jti` of an ended session → until when that matters.
    ended: HashMap<String, u64>,
    /// `session_key(iss, sid)` of a session the identity provider logged out → until when.
    sids: HashMap<String, u64>,
    max_entries: usize,
    /// Added to every event's `until`: the largest clock skew a provider allows, so a revoked
    /// token is refused for as long as any provider could still accept it.
    grace_seconds: u64,
    /// An event was refused for want of room: the set no longer knows everything.
    overflowed: bool,
}

impl RevocationSet {
    pub fn new(max_entries: usize, grace_seconds: u64) -> Self {
        RevocationSet { max_entries, grace_seconds, ..Default::default() }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.revoked.len() + self.cutoff_count + self.ended.len() + self.sids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an event was ever refused for want of room. Such a set cannot vouch for a token
    /// (it may lack its revocation): the failure mode decides until the feed starts over.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Takes in one event; one that no longer matters at `now` (seconds) is dropped.
    pub fn apply(&mut self, event: FeedEvent, now: u64) {
        let full = self.len() >= self.max_entries;
        let event = with_grace(event, self.grace_seconds);
        match event {
            FeedEvent::Revoked { until, .. }
            | FeedEvent::SessionEnded { until, .. }
            | FeedEvent::SidRevoked { until, .. }
                if until <= now => {}
            FeedEvent::Revoked { jti, until } => keep_latest(&mut self.revoked, jti, until, full, &mut self.overflowed),
            FeedEvent::SessionEnded { jti, until } => {
                keep_latest(&mut self.ended, jti, until, full, &mut self.overflowed)
            }
            FeedEvent::SidRevoked { iss, sid, until } => {
                keep_latest(&mut self.sids, session_key(&iss, &sid), until, full, &mut self.overflowed)
            }
            FeedEvent::SubjectCutoff { until, .. } if until <= now => {}
            FeedEvent::SubjectCutoff { sub, iss, before, until } => {
                let known = self.cutoffs.get_mut(&sub).and_then(|list| list.iter_mut().find(|c| c.iss == iss));
                match known {
                    // Cutoffs only move forward.
                    Some(c) => {
                        c.before = c.before.max(before);
                        c.until = c.until.max(until);
                    }
                    None if full => self.overflowed = true,
                    None => {
                        self.cutoffs.entry(sub).or_default().push(Cutoff { iss, before, until });
                        self.cutoff_count += 1;
                    }
                }
            }
        }
    }

    /// What the set says about a token at `now` (seconds): `Revoked`, `NoSession` (its session
    /// ended), or `None` when nothing in the set refuses it.
    pub fn check(&self, id: &Identity, now: u64) -> Option<Known> {
        let live = |until: &u64| *until > now;
        if let Some(jti) = &id.jti {
            if self.revoked.get(jti).is_some_and(live) {
                return Some(Known::Revoked);
            }
        }
        if !self.sids.is_empty() && id.session_key().is_some_and(|k| self.sids.get(&k).is_some_and(live)) {
            return Some(Known::Revoked);
        }
        if let Some(cutoffs) = id.sub.as_ref().and_then(|sub| self.cutoffs.get(sub)) {
            let applies = |c: &&Cutoff| c.iss.is_none() || c.iss == id.iss;
            if cutoffs.iter().filter(applies).any(|c| live(&c.until) && cutoff_revokes(c.before, id.iat)) {
                return Some(Known::Revoked);
            }
        }
        if id.jti.as_ref().is_some_and(|jti| self.ended.get(jti).is_some_and(live)) {
            return Some(Known::NoSession);
        }
        None
    }

    /// Drops everything that no longer matters at `now` (seconds).
    pub fn expire(&mut self, now: u64) {
        self.revoked.retain(|_, until| *until > now);
        self.ended.retain(|_, until| *until > now);
        self.sids.retain(|_, until| *until > now);
        self.cutoffs.retain(|_, list| {
            list.retain(|c| c.until > now);
            !list.is_empty()
        });
        self.cutoff_count = self.cutoffs.values().map(Vec::len).sum();
    }

    /// Whether an overflowed set has room again (entries expired) to replay the feed from the
    /// beginning; if so the overflow is forgotten and the replay tells whether it fits now.
    /// What it holds stays: a replay on top of it gives the same set (a join).
    pub fn room_to_start_over(&mut self) -> bool {
        let room = self.overflowed && self.len() < self.max_entries;
        if room {
            self.overflowed = false;
        }
        room
    }
}

fn with_grace(event: FeedEvent, grace: u64) -> FeedEvent {
    match event {
        FeedEvent::Revoked { jti, until } => FeedEvent::Revoked { jti, until: until.saturating_add(grace) },
        FeedEvent::SessionEnded { jti, until } => FeedEvent::SessionEnded { jti, until: until.saturating_add(grace) },
        FeedEvent::SidRevoked { iss, sid, until } => {
            FeedEvent::SidRevoked { iss, sid, until: until.saturating_add(grace) }
        }
        FeedEvent::SubjectCutoff { sub, iss, before, until } => {
            FeedEvent::SubjectCutoff { sub, iss, before, until: until.saturating_add(grace) }
        }
    }
}

fn keep_latest(map: &mut HashMap<String, u64>, jti: String, until: u64, full: bool, overflowed: &mut bool) {
    match map.get_mut(&jti) {
        Some(current) => *current = (*current).max(until),
        None if full => *overflowed = true,
        None => {
            map.insert(jti, until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(claims: serde_json::Value) -> Identity {
        Identity::from_claims(claims.as_object().unwrap())
    }

    fn revoked(jti: &str, until: u64) -> FeedEvent {
        FeedEvent::Revoked { jti: jti.into(), until }
    }

    fn cutoff(sub: &str, iss: Option<&str>, before: u64, until: u64) -> FeedEvent {
        FeedEvent::SubjectCutoff { sub: sub.into(), iss: iss.map(String::from), before, until }
    }

    #[test]
    fn revoked_jtis_until_they_expire() {
        let mut set = RevocationSet::new(10, 0);
        set.apply(revoked("j1", 200), 100);
        set.apply(revoked("gone", 100), 100);
        assert_eq!(set.len(), 1, "an event that no longer matters is dropped");
        assert_eq!(set.check(&id(json!({"jti": "j1"})), 150), Some(Known::Revoked));
        assert_eq!(set.check(&id(json!({"jti": "j2"})), 150), None);
        assert_eq!(set.check(&id(json!({"jti": "j1"})), 200), None, "past until");
        set.expire(200);
        assert!(set.is_empty());
    }

    #[test]
    fn entries_outlive_until_by_the_providers_skew() {
        let mut set = RevocationSet::new(10, 60);
        set.apply(revoked("j1", 200), 100);
        set.apply(revoked("late", 90), 100);
        assert_eq!(set.check(&id(json!({"jti": "j1"})), 259), Some(Known::Revoked), "accepted until exp + skew");
        assert_eq!(set.check(&id(json!({"jti": "j1"})), 260), None);
        assert_eq!(set.check(&id(json!({"jti": "late"})), 120), Some(Known::Revoked), "still within the skew");
    }

    #[test]
    fn cutoffs_by_issuer_or_for_all() {
        let mut set = RevocationSet::new(10, 0);
        set.apply(cutoff("alice", Some("i1"), 1_000, 5_000), 100);
        set.apply(cutoff("bob", None, 1_000, 5_000), 100);
        let token = |sub: &str, iss: &str, iat: Option<u64>| {
            let mut c = json!({"sub": sub, "iss": iss});
            if let Some(iat) = iat {
                c["iat"] = json!(iat);
            }
            id(c)
        };
        assert_eq!(set.check(&token("alice", "i1", Some(999)), 2_000), Some(Known::Revoked));
        assert_eq!(set.check(&token("alice", "i1", Some(1_000)), 2_000), None, "issued at the cutoff");
        assert_eq!(set.check(&token("alice", "i2", Some(999)), 2_000), None, "another issuer");
        assert_eq!(set.check(&token("alice", "i1", None), 2_000), Some(Known::Revoked), "no iat");
        assert_eq!(set.check(&token("bob", "any", Some(999)), 2_000), Some(Known::Revoked), "every issuer");
        assert_eq!(set.check(&token("bob", "any", Some(999)), 5_000), None, "past until");
    }

    #[test]
    fn logged_out_sessions_by_issuer_and_sid() {
        let mut set = RevocationSet::new(10, 60);
        set.apply(FeedEvent::SidRevoked { iss: "i1".into(), sid: "s1".into(), until: 1_000 }, 100);
        set.apply(FeedEvent::SidRevoked { iss: "i1".into(), sid: "old".into(), until: 50 }, 100);
        assert_eq!(set.len(), 2, "kept for the skew past until");
        let token = id;
        let s1 = token(json!({"iss": "i1", "sid": "s1", "sub": "alice", "jti": "a"}));
        assert_eq!(set.check(&s1, 500), Some(Known::Revoked));
        assert_eq!(set.check(&s1, 1_059), Some(Known::Revoked), "until + skew");
        assert_eq!(set.check(&s1, 1_060), None);
        for other in [
            json!({"iss": "i2", "sid": "s1"}),
            json!({"iss": "i1", "sid": "s2"}),
            json!({"sid": "s1"}),
            json!({"iss": "i1"}),
            json!({"iss": "i", "sid": "1s1"}),
        ] {
            assert_eq!(set.check(&token(other.clone()), 500), None, "{other}");
        }
        set.expire(1_060);
        assert!(set.is_empty());
    }

    /// Events applied in any order, twice, or over an older snapshot give the same answers.
    #[test]
    fn the_set_is_a_join() {
        let events = [
            cutoff("alice", None, 1_000, 9_000),
            cutoff("alice", None, 500, 8_000),
            revoked("j1", 3_000),
            revoked("j1", 4_000),
            FeedEvent::SessionEnded { jti: "s1".into(), until: 5_000 },
        ];
        let probes = [
            id(json!({"sub": "alice", "iat": 700})),
            id(json!({"sub": "alice", "iat": 1_000})),
            id(json!({"jti": "j1"})),
            id(json!({"jti": "s1"})),
        ];
        let answers = |order: &[usize]| {
            let mut set = RevocationSet::new(100, 0);
            for &i in order {
                set.apply(events[i].clone(), 100);
            }
            [2_000, 3_500, 8_500].map(|t| probes.iter().map(|p| set.check(p, t)).collect::<Vec<_>>())
        };
        let expected = answers(&[0, 1, 2, 3, 4]);
        for order in [[4, 3, 2, 1, 0], [1, 0, 3, 2, 4], [2, 2, 0, 0, 1]] {
            let mut order = order.to_vec();
            order.extend([1, 3, 4]);
            assert_eq!(answers(&order), expected, "{order:?}");
        }
        assert_eq!(expected[1][0], Some(Known::Revoked), "the later cutoff holds");
        assert_eq!(expected[1][2], Some(Known::Revoked), "the later until holds");
        assert_eq!(expected[0][3], Some(Known::NoSession));
    }

    #[test]
    fn at_the_bound_the_set_says_it_is_incomplete() {
        let mut set = RevocationSet::new(2, 0);
        set.apply(revoked("a", 500), 100);
        set.apply(cutoff("s", None, 10, 500), 100);
        assert!(!set.overflowed());
        set.apply(revoked("a", 600), 100);
        assert!(!set.overflowed(), "an update takes no room");
        set.apply(revoked("b", 500), 100);
        assert!(set.overflowed());
        assert_eq!(set.check(&id(json!({"jti": "a"})), 200), Some(Known::Revoked), "what it holds still counts");
        assert!(!set.room_to_start_over(), "still full");
        set.expire(550);
        assert!(set.room_to_start_over() && !set.overflowed());
        assert!(!set.room_to_start_over(), "once");
    }
}
