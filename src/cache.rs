//! A bounded cache of verified tokens, per worker. Keyed by the whole token, so a different
//! token can never hit; an entry never outlives the token's own expiry, and the caller still
//! re-checks time on every hit (a token may be cached before its `nbf` ends, within the skew).

use crate::fast_hash::FastHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a token by its length and last 32 bytes, which are its signature's: any two tokens
/// that verified differ there, and only tokens that verified go in (a crafted token with a
/// cached one's tail only shares its bucket). A whole 700-byte RS256 token costs ~0.15 µs to
/// hash; its tail, a few nanoseconds.
#[derive(Default, Clone, Copy)]
pub struct TailHasher(FastHasher);

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write_usize(bytes.len());
        self.0.write(&bytes[bytes.len().saturating_sub(32)..]);
    }

    fn write_u8(&mut self, n: u8) {
        self.0.write_u8(n);
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

pub struct TokenCache<V> {
    entries: HashMap<String, (V, u64), BuildHasherDefault<TailHasher>>,
    /// Insertion order, for evicting the oldest entry when full.
    order: VecDeque<String>,
    capacity: usize,
}

impl<V: Clone> TokenCache<V> {
    pub fn new(capacity: usize) -> Self {
        TokenCache { entries: HashMap::default(), order: VecDeque::new(), capacity }
    }

    /// The cached value if present and `now` is before its expiry; expired entries are dropped.
    pub fn get(&mut self, token: &str, now: u64) -> Option<V> {
        match self.entries.get(token) {
            Some((value, expires)) if now < *expires => Some(value.clone()),
            Some(_) => {
                self.entries.remove(token);
                None
            }
            None => None,
        }
    }

    /// Stores `value` until `expires` (seconds since the epoch). Capacity 0 disables the cache.
    pub fn insert(&mut self, token: &str, value: V, expires: u64, now: u64) {
        if self.capacity == 0 || expires <= now || self.entries.contains_key(token) {
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
        // Keys of entries dropped on expiry linger in `order`; bound it too.
        if self.order.len() >= self.capacity.saturating_mul(2) {
            self.order.retain(|k| self.entries.contains_key(k));
        }
        self.entries.insert(token.to_string(), (value, expires));
        self.order.push_back(token.to_string());
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_with_a_cached_ones_tail_does_not_hit() {
        let tail = "s".repeat(40);
        let (cached, forged) = (format!("header.payload.{tail}"), format!("header.pAyload.{tail}"));
        let mut c = TokenCache::new(4);
        c.insert(&cached, 1, 100, 0);
        assert_eq!(c.get(&forged, 0), None);
        assert_eq!(c.get(&cached, 0), Some(1));
    }

    #[test]
    fn hits_only_the_same_token_before_expiry() {
        let mut c = TokenCache::new(4);
        c.insert("a.b.c", 1, 100, 10);
        assert_eq!(c.get("a.b.c", 99), Some(1));
        assert_eq!(c.get("a.b.d", 50), None);
        assert_eq!(c.get("a.b.c", 100), None);
        assert!(c.is_empty(), "expired entry removed");
    }

    #[test]
    fn bounded_oldest_first() {
        let mut c = TokenCache::new(2);
        c.insert("t1", 1, 100, 0);
        c.insert("t2", 2, 100, 0);
        c.insert("t3", 3, 100, 0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("t1", 1), None);
        assert_eq!(c.get("t3", 1), Some(3));
    }

    #[test]
    fn bounded_under_churn_of_expiring_entries() {
        let mut c = TokenCache::new(3);
        for i in 0..1000u64 {
            c.insert(&i.to_string(), i, i + 2, i);
            let _ = c.get(&(i.saturating_sub(1)).to_string(), i + 5);
        }
        assert!(c.len() <= 3);
        assert!(c.order.len() <= 6);
    }

    #[test]
    fn zero_capacity_and_already_expired_are_not_stored() {
        let mut c = TokenCache::new(0);
        c.insert("t", 1, 100, 0);
        assert!(c.is_empty());
        let mut c = TokenCache::new(2);
        c.insert("t", 1, 5, 5);
        assert!(c.is_empty());
    }
}
