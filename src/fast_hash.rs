//! An unkeyed multiply-rotate hasher, eight bytes a step, for the filter's maps whose entries no
//! client can add in numbers: verified tokens and their identities (an entry goes in only after
//! its signature checks; the token cache hashes only the signature's tail, `cache::TailHasher`),
//! key ids of a configured or fetched key set, and ids we number ourselves. std's SipHash reads a
//! 700-byte token at ~0.3 µs, this at a tenth of that. Being unkeyed, its collisions can be
//! computed: the revocation set, whose `sub`s a user with many accounts could choose, keeps std's
//! seeded hasher. Not for a map that takes unverified input as keys.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// `HashMap` with `FastHasher`.
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
/// `HashSet` with `FastHasher`.
pub type FastSet<T> = HashSet<T, BuildHasherDefault<FastHasher>>;

#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        // FxHash's step: the odd constant spreads each word over the high bits.
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        // The length first: a shorter input padded with zeros must not read the same.
        self.add(bytes.len() as u64);
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.add(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    /// Each step's multiply carries bits upwards only, and hash tables index by the low bits:
    /// a final avalanche (MurmurHash3's) makes every input bit reach them, so keys that differ
    /// only in their last bytes (sequential ids) do not crowd into a few slots.
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn hash(s: &str) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(s)
    }

    #[test]
    fn every_byte_counts() {
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl";
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(hash(token)));
        for i in 0..token.len() {
            let mut t = token.as_bytes().to_vec();
            t[i] ^= 1;
            assert!(seen.insert(hash(std::str::from_utf8(&t).unwrap_or_default())), "flipping byte {i} collides");
        }
        // A shorter string padded with zeros is not the same key.
        assert_ne!(hash("ab"), hash("ab\0"));
    }

    #[test]
    fn spreads_sequential_ids_of_a_whole_number_of_words() {
        // Keys of 16 characters that differ in their last ones: without the final avalanche a
        // quarter of the slots took them all.
        let slots: std::collections::HashSet<u64> = (0u32..4096)
            .map(|i| BuildHasherDefault::<FastHasher>::default().hash_one(format!("{i:016x}")) & 8191)
            .collect();
        assert!(slots.len() > 2800, "{} of 8192 slots for 4096 keys", slots.len());
    }

    #[test]
    fn spreads_sequential_ids_over_the_low_bits() {
        let buckets: std::collections::HashSet<u64> =
            (0u32..1024).map(|i| BuildHasherDefault::<FastHasher>::default().hash_one(i) & 1023).collect();
        assert!(buckets.len() > 600, "{} of 1024 buckets", buckets.len());
    }
}
