//! FNV-1a: small and fast, for spreading keys over cache slots and naming a configuration.
//! Not for anything an attacker must not steer.

pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}
