//! The hasher of every hash table in the core: SipHash-1-3 (the algorithm of std's
//! `HashMap`) keyed from the configuration instead of from hidden randomness.
//!
//! Why keyed at all: most keys are chosen by clients (client ids, topic levels, filters,
//! shared group names, topic aliases), and with a known hash function a client can pick keys
//! that collide and turn every lookup into a scan (HashDoS). So every table uses the same
//! keyed hasher, internal keys (message ids) included: one rule, nothing to get wrong.
//!
//! Why not std's `RandomState`: its keys come from the operating system behind the core's
//! back, so two runs of the deterministic simulator with one seed would iterate maps in
//! different orders. Here the keys are [`CoreConfig::hash_keys`](super::shard::CoreConfig):
//! drawn from the operating system by the io layer at start-up (as the authentication nonce
//! seed is), derived from the seed in the simulator.
//!
//! How a table gets its keys: [`ShardCore::new`](super::shard::ShardCore::new) installs the
//! shard's keys for its thread ([`use_keys`]) before it builds any table, and
//! [`KeyedState::default`] reads them, so tables are built with `Map::default()` like any
//! map. A table built on a thread where no core was made (unit tests of one structure) gets
//! fixed zero keys: deterministic too, just not secret.
//!
//! Shard-local: the keys are per thread; a table keeps the keys it was built with.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

/// A hash map of the core (see the module documentation).
pub(crate) type Map<K, V> = HashMap<K, V, KeyedState>;
/// A hash set of the core (see the module documentation).
pub(crate) type Set<K> = HashSet<K, KeyedState>;

/// The two 64-bit SipHash keys. `Debug` does not show them (they are a secret).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct HashKeys(pub u64, pub u64);

impl std::fmt::Debug for HashKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKeys(..)")
    }
}

impl HashKeys {
    /// Keys derived from a seed (splitmix64), for the simulator and tests.
    pub fn from_seed(seed: u64) -> HashKeys {
        let mix = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let a = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        HashKeys(mix(a), mix(a.wrapping_add(0x9E37_79B9_7F4A_7C15)))
    }
}

thread_local! {
    static THREAD_KEYS: Cell<HashKeys> = const { Cell::new(HashKeys(0, 0)) };
}

/// Makes tables built from now on, on this thread, use `keys` (called by `ShardCore::new`).
pub(crate) fn use_keys(keys: HashKeys) {
    THREAD_KEYS.with(|k| k.set(keys));
}

/// Builds [`SipHasher13`]s with fixed keys. The `Default` takes this thread's keys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyedState(HashKeys);

impl Default for KeyedState {
    fn default() -> KeyedState {
        KeyedState(THREAD_KEYS.with(Cell::get))
    }
}

impl KeyedState {
    #[cfg(test)]
    pub(crate) fn with_keys(keys: HashKeys) -> KeyedState {
        KeyedState(keys)
    }
}

impl BuildHasher for KeyedState {
    type Hasher = SipHasher13;

    fn build_hasher(&self) -> SipHasher13 {
        SipHasher::new(self.0)
    }
}

/// SipHash-1-3: one compression round per 8-byte word, three finalization rounds.
pub(crate) type SipHasher13 = SipHasher<1, 3>;

/// SipHash with `C` compression and `D` finalization rounds (Aumasson and Bernstein, 2012).
#[derive(Debug, Clone)]
pub(crate) struct SipHasher<const C: usize, const D: usize> {
    v: [u64; 4],
    /// Bytes written so far (only the low byte enters the final word).
    len: usize,
    /// Bytes not yet compressed (fewer than 8), little-endian in the low bytes.
    tail: u64,
    tail_len: usize,
}

impl<const C: usize, const D: usize> SipHasher<C, D> {
    fn new(HashKeys(k0, k1): HashKeys) -> Self {
        SipHasher {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            len: 0,
            tail: 0,
            tail_len: 0,
        }
    }

    #[inline]
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    #[inline]
    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        for _ in 0..C {
            Self::round(&mut self.v);
        }
        self.v[0] ^= m;
    }
}

impl<const C: usize, const D: usize> Hasher for SipHasher<C, D> {
    fn write(&mut self, mut bytes: &[u8]) {
        self.len = self.len.wrapping_add(bytes.len());
        // Complete the pending word first.
        while self.tail_len > 0 && !bytes.is_empty() {
            self.tail |= u64::from(bytes[0]) << (8 * self.tail_len);
            self.tail_len += 1;
            bytes = &bytes[1..];
            if self.tail_len == 8 {
                let m = self.tail;
                self.compress(m);
                self.tail = 0;
                self.tail_len = 0;
            }
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let m = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            self.compress(m);
        }
        for (i, &b) in words.remainder().iter().enumerate() {
            self.tail |= u64::from(b) << (8 * i);
        }
        self.tail_len = words.remainder().len();
    }

    fn finish(&self) -> u64 {
        let mut s = self.clone();
        let m = ((self.len as u64 & 0xff) << 56) | self.tail;
        s.compress(m);
        s.v[2] ^= 0xff;
        for _ in 0..D {
            Self::round(&mut s.v);
        }
        s.v[0] ^ s.v[1] ^ s.v[2] ^ s.v[3]
    }
}

/// FNV-1a, unkeyed: for tables built from the configuration and only looked up with what
/// clients send (nothing a client sends is ever inserted, so it cannot choose colliding
/// keys), where a short key hashes in a few nanoseconds (the ACL's tries, `auth/acl.rs`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// A table of configuration keys (see [`Fnv`]).
pub type ConfigMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, Hash, Hasher};

    use super::*;

    fn sip<const C: usize, const D: usize>(keys: HashKeys, parts: &[&[u8]]) -> u64 {
        let mut h = SipHasher::<C, D>::new(keys);
        for p in parts {
            h.write(p);
        }
        h.finish()
    }

    #[test]
    fn siphash_2_4_matches_the_reference_vector() {
        // The paper's Appendix A: key 00..0f, message 00..0e.
        let keys = HashKeys(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(sip::<2, 4>(keys, &[&msg]), 0xa129_ca61_49be_45e5);
        // Written in pieces: the same.
        assert_eq!(sip::<2, 4>(keys, &[&msg[..3], &msg[3..11], &msg[11..]]), 0xa129_ca61_49be_45e5);
    }

    #[test]
    #[allow(deprecated)]
    fn siphash_1_3_with_zero_keys_is_what_std_computes() {
        // std's `DefaultHasher::new()` is SipHash-1-3 with zero keys (an implementation
        // detail of std, stable for years; if it ever changes, only this check goes).
        for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 64] {
            let key: String = (0..len).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            let mut std_hasher = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut std_hasher);
            let ours = KeyedState::with_keys(HashKeys(0, 0)).hash_one(&key);
            assert_eq!(ours, std_hasher.finish(), "{key:?}");
        }
    }

    #[test]
    fn keys_decide_the_hash_and_nothing_else_does() {
        let a = KeyedState::with_keys(HashKeys::from_seed(1));
        let b = KeyedState::with_keys(HashKeys::from_seed(1));
        let c = KeyedState::with_keys(HashKeys::from_seed(2));
        assert_eq!(a.hash_one("client-1"), b.hash_one("client-1"));
        assert_ne!(a.hash_one("client-1"), c.hash_one("client-1"));
    }

    #[test]
    fn tables_take_the_keys_installed_for_their_thread() {
        use_keys(HashKeys::from_seed(7));
        let built = KeyedState::default();
        use_keys(HashKeys::from_seed(8));
        let later = KeyedState::default();
        assert_eq!(
            built.hash_one(42u64),
            KeyedState::with_keys(HashKeys::from_seed(7)).hash_one(42u64)
        );
        assert_ne!(built.hash_one(42u64), later.hash_one(42u64));
    }
}
