//! The client id → session slot index of a [`crate::core::sessions::session::SessionTable`]: an
//! open-addressing table of bare slot numbers; the key of a slot is read from its session.
//!
//! Why not a `HashMap<ByteStr, SessionSlot>`: its 40-byte entries cost ~90 B per session at
//! 15,000 sessions (the table grown to 32,768 buckets), and each key is a second reference to
//! the client id. Here a bucket is 4 bytes (~9 B per session) and the client id is held once,
//! by the session. Keys are hashed with the core's keyed SipHash (`hash.rs`, keys drawn at
//! start-up), so clients cannot choose ids that collide. Linear probing, at most 3/4
//! full (so a probe always ends at an empty bucket), backward-shift deletion (no tombstones).
//!
//! Shard-local: one per session table.

use std::hash::BuildHasher;

use crate::core::hash::KeyedState;

/// An empty bucket. Never a session slot: `u32::MAX` is the broker's own origin
/// (`SessionTable::insert` asserts it is never handed out).
const EMPTY: u32 = u32::MAX;

/// Slot numbers by the hash of their key. `key_of` arguments map a slot held here to its key.
#[derive(Debug, Default)]
pub(crate) struct SlotIndex {
    /// Length 0 or a power of two.
    buckets: Vec<u32>,
    len: usize,
    hasher: KeyedState,
}

impl SlotIndex {
    /// Slots held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.buckets.len() - 1
    }

    /// The bucket where a probe for `key` starts.
    fn home(&self, key: &str) -> usize {
        self.hasher.hash_one(key) as usize & self.mask()
    }

    /// The bucket holding `key`'s slot.
    fn bucket_of<'a>(&self, key: &str, key_of: impl Fn(u32) -> &'a str) -> Option<usize> {
        if self.buckets.is_empty() {
            return None;
        }
        let mut i = self.home(key);
        loop {
            match self.buckets[i] {
                EMPTY => return None,
                slot if key_of(slot) == key => return Some(i),
                _ => i = (i + 1) & self.mask(),
            }
        }
    }

    /// The slot whose key is `key`.
    pub(crate) fn find<'a>(&self, key: &str, key_of: impl Fn(u32) -> &'a str) -> Option<u32> {
        self.bucket_of(key, key_of).map(|i| self.buckets[i])
    }

    /// Adds `slot`, whose key must not be held yet.
    pub(crate) fn insert<'a>(&mut self, slot: u32, key_of: impl Fn(u32) -> &'a str + Copy) {
        assert!(slot != EMPTY, "slot u32::MAX cannot be indexed");
        debug_assert!(self.find(key_of(slot), key_of).is_none(), "key indexed twice");
        if (self.len + 1) * 4 > self.buckets.len() * 3 {
            self.grow(key_of);
        }
        self.place(slot, key_of(slot));
        self.len += 1;
    }

    /// Puts `slot` in the first empty bucket from its key's home.
    fn place(&mut self, slot: u32, key: &str) {
        let mut i = self.home(key);
        while self.buckets[i] != EMPTY {
            i = (i + 1) & self.mask();
        }
        self.buckets[i] = slot;
    }

    /// Doubles the table (8 buckets at first) and re-places every slot.
    fn grow<'a>(&mut self, key_of: impl Fn(u32) -> &'a str) {
        let size = (self.buckets.len() * 2).max(8);
        let old = std::mem::replace(&mut self.buckets, vec![EMPTY; size]);
        for slot in old.into_iter().filter(|&s| s != EMPTY) {
            self.place(slot, key_of(slot));
        }
    }

    /// Removes the slot whose key is `key`; `key_of` must still know every slot held
    /// (including that one). Returns the slot.
    pub(crate) fn remove<'a>(
        &mut self,
        key: &str,
        key_of: impl Fn(u32) -> &'a str + Copy,
    ) -> Option<u32> {
        let found = self.bucket_of(key, key_of)?;
        let slot = self.buckets[found];
        // Backward shift: walk the run after the hole; an entry whose home is not
        // (cyclically) after the hole moves into it, so every probe still reaches it.
        let mut hole = found;
        let mut j = found;
        loop {
            j = (j + 1) & self.mask();
            let s = self.buckets[j];
            if s == EMPTY {
                break;
            }
            let home = self.home(key_of(s));
            if j.wrapping_sub(home) & self.mask() >= j.wrapping_sub(hole) & self.mask() {
                self.buckets[hole] = s;
                hole = j;
            }
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_is_left_after_removals() {
        let keys: Vec<String> = (0..2000).map(|i| format!("client-{i}")).collect();
        let key_of = |s: u32| keys[s as usize].as_str();
        let mut index = SlotIndex::default();
        for s in 0..keys.len() as u32 {
            index.insert(s, key_of);
        }
        assert_eq!(index.len(), keys.len());
        // Every third removed: runs with moved entries, wrapped probes.
        for s in (0..keys.len() as u32).step_by(3) {
            assert_eq!(index.remove(key_of(s), key_of), Some(s));
            assert_eq!(index.remove(key_of(s), key_of), None, "removed twice");
        }
        for (s, key) in keys.iter().enumerate() {
            let expected = (s % 3 != 0).then_some(s as u32);
            assert_eq!(index.find(key, key_of), expected, "{key}");
        }
        assert_eq!(index.find("unknown", key_of), None);
        assert_eq!(index.len(), keys.len() - keys.len().div_ceil(3));
        assert!(index.buckets.len() <= 4096, "at most 3/4 full, doubled only when needed");
    }

    #[test]
    fn empty_index_finds_nothing() {
        let index = SlotIndex::default();
        assert_eq!(index.find("a", |_| ""), None);
        assert_eq!(index.len(), 0);
    }
}
