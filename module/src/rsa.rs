//! RSASSA-PKCS1-v1_5 verification (RFC 8017 §8.2.2) on aws-lc's bignums, with each key's
//! Montgomery constants made once and one `BN_CTX` per thread. aws-lc-rs's verify allocates an
//! EVP context, a digest context and a `BN_CTX` per call, about 0.5–0.9 µs of a 14 µs RS256
//! verification here (`cargo run --release` in bench/native_crypto). As the RFC recommends, the
//! encoded message is rebuilt from the hash and compared whole: nothing of the signature's
//! padding is parsed.

use aws_lc_sys as ffi;
use std::cell::RefCell;

/// The key sizes aws-lc-rs's `RSA_PKCS1_2048_8192_*` accept, which this replaces.
const BITS: std::ops::RangeInclusive<u32> = 2048..=8192;

/// `DigestInfo` up to the hash, per hash (RFC 8017 §9.2, note 1).
const SHA256_PREFIX: &[u8] =
    &[0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20];
const SHA384_PREFIX: &[u8] =
    &[0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30];
const SHA512_PREFIX: &[u8] =
    &[0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40];

/// The hashes RS256/384/512 use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    /// The `DigestInfo` of `text`'s hash: prefix then hash, at most 19 + 64 octets, and its
    /// length. `None` only if that did not fit, which the sizes above rule out.
    fn digest_info(self, text: &[u8]) -> Option<([u8; 83], usize)> {
        let (prefix, len, hash): (_, _, unsafe extern "C" fn(*const u8, usize, *mut u8) -> *mut u8) = match self {
            Hash::Sha256 => (SHA256_PREFIX, 32, ffi::SHA256),
            Hash::Sha384 => (SHA384_PREFIX, 48, ffi::SHA384),
            Hash::Sha512 => (SHA512_PREFIX, 64, ffi::SHA512),
        };
        let mut out = [0; 83];
        let (head, rest) = out.split_at_mut_checked(prefix.len())?;
        head.copy_from_slice(prefix);
        let digest = rest.get_mut(..len)?;
        // SAFETY: `text` is readable for its length; `digest` has room for `len` octets, the
        // size of this hash's output.
        unsafe { hash(text.as_ptr(), text.len(), digest.as_mut_ptr()) };
        Some((out, prefix.len() + len))
    }
}

/// A `BN_CTX`: scratch bignums, kept per thread so that a verification allocates nothing.
struct Scratch(*mut ffi::BN_CTX);

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: made by BN_CTX_new, freed once.
        unsafe { ffi::BN_CTX_free(self.0) }
    }
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// An RSA public key, checked by aws-lc, with its modulus's Montgomery constants.
pub struct PublicKey {
    rsa: *mut ffi::RSA,
    mont: *mut ffi::BN_MONT_CTX,
    /// The modulus's length in octets: what a signature must be.
    size: usize,
}

impl Drop for PublicKey {
    fn drop(&mut self) {
        // SAFETY: both were made in `parse` for this key alone, and are freed once.
        unsafe {
            ffi::BN_MONT_CTX_free(self.mont);
            ffi::RSA_free(self.rsa);
        }
    }
}

impl PublicKey {
    /// A PKCS#1 `RSAPublicKey`. `None` for one aws-lc refuses (`RSA_check_key`: an even or too
    /// small exponent, an even modulus, …) or cannot take (allocation); `Some(Err(()))` for a
    /// size outside 2048–8192 bits, which verifies nothing.
    pub fn parse(pkcs1: &[u8]) -> Option<Result<PublicKey, ()>> {
        // SAFETY: `pkcs1` is readable for its length; aws-lc copies what it keeps.
        let rsa = unsafe { ffi::RSA_public_key_from_bytes(pkcs1.as_ptr(), pkcs1.len()) };
        if rsa.is_null() {
            return None;
        }
        // SAFETY: `rsa` is a valid key, owned here; its modulus lives as long as it does. A key
        // built from a null `mont` is dropped at once, which frees `rsa` (BN_MONT_CTX_free
        // takes null).
        unsafe {
            let n = ffi::RSA_get0_n(rsa);
            let mont = with_scratch(|ctx| ffi::BN_MONT_CTX_new_for_modulus(n, ctx)).unwrap_or(std::ptr::null_mut());
            let key = PublicKey { rsa, mont, size: ffi::BN_num_bytes(n) as usize };
            if key.mont.is_null() {
                reset_scratch();
                return None;
            }
            Some(if BITS.contains(&ffi::BN_num_bits(n)) { Ok(key) } else { Err(()) })
        }
    }

    /// Whether `signature` is this key's RSASSA-PKCS1-v1_5 signature of `text` with `hash`;
    /// `None` if aws-lc could not compute it (allocation), so that RustCrypto decides.
    pub fn verify(&self, hash: Hash, text: &[u8], signature: &[u8]) -> Option<bool> {
        if signature.len() != self.size {
            return Some(false);
        }
        // EM = 0x00 || 0x01 || PS (0xff, at least 8) || 0x00 || DigestInfo (RFC 8017 §9.2).
        let Some((info, info_len)) = hash.digest_info(text) else { return Some(false) };
        let Some(padding) = self.size.checked_sub(info_len + 3).filter(|p| *p >= 8) else {
            return Some(false);
        };
        // On the stack: `size` is at most 1024 octets (8192 bits).
        let (mut expected, mut em) = ([0xff; 1024], [0; 1024]);
        let (Some(expected), Some(em)) = (expected.get_mut(..self.size), em.get_mut(..self.size)) else {
            return Some(false);
        };
        // Built without indexing, as everything on the request path: no panic, whatever the sizes.
        let Some((head, tail)) = expected.split_at_mut_checked(padding + 3) else { return Some(false) };
        let Some(digest_info) = info.get(..info_len).filter(|d| d.len() == tail.len()) else { return Some(false) };
        for (at, octet) in head.iter_mut().enumerate() {
            *octet = match at {
                0 => 0,
                1 => 1,
                at if at == padding + 2 => 0,
                _ => 0xff,
            };
        }
        tail.copy_from_slice(digest_info);
        // `Some(s < n)`, and then `em` holds m; `None` if aws-lc failed.
        // SAFETY: `signature` and `em` are valid for `size` octets; the key's fields live as
        // long as it does; BN_CTX_start/end bracket the scratch bignums' use.
        let in_range = with_scratch(|ctx| unsafe {
            ffi::BN_CTX_start(ctx);
            let (s, m) = (ffi::BN_CTX_get(ctx), ffi::BN_CTX_get(ctx));
            let (n, e) = (ffi::RSA_get0_n(self.rsa), ffi::RSA_get0_e(self.rsa));
            // RSAVP1: s < n, m = s^e mod n; then I2OSP(m, k), which fits as m < n.
            let outcome =
                if s.is_null() || m.is_null() || ffi::BN_bin2bn(signature.as_ptr(), signature.len(), s).is_null() {
                    None
                } else if ffi::BN_ucmp(s, n) >= 0 {
                    Some(false)
                } else if ffi::BN_mod_exp_mont(m, s, e, n, ctx, self.mont) == 1
                    && ffi::BN_bn2bin_padded(em.as_mut_ptr(), em.len(), m) == 1
                {
                    Some(true)
                } else {
                    None
                };
            ffi::BN_CTX_end(ctx);
            outcome
        })
        .flatten();
        match in_range {
            Some(true) => Some(em == expected),
            Some(false) => Some(false),
            None => {
                reset_scratch();
                None
            }
        }
    }
}

/// Runs `f` with this thread's `BN_CTX`, made on first use; `None` if it cannot be made.
fn with_scratch<T>(f: impl FnOnce(*mut ffi::BN_CTX) -> T) -> Option<T> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.is_none() {
            // SAFETY: no arguments; null on failure, checked below.
            let ctx = unsafe { ffi::BN_CTX_new() };
            if ctx.is_null() {
                return None;
            }
            *scratch = Some(Scratch(ctx));
        }
        scratch.as_ref().map(|s| f(s.0))
    })
}

/// Drops this thread's `BN_CTX` after a failure: one that failed once fails from then on (aws-lc
/// keeps its error), so the next use makes a new one.
fn reset_scratch() {
    SCRATCH.with(|scratch| scratch.borrow_mut().take());
}
