//! `RouteIndex`: topic filter → the set of shards with a local subscriber to it.
//!
//! Every shard holds a replica, updated by the subscribe/unsubscribe deltas shards broadcast
//! (design.md §4 step 4). A publishing shard asks it which shards to send a message to: one
//! message per destination shard, not per subscriber.
//!
//! Each `(filter, shard)` pair carries a reference count, so a shard can use its own replica
//! to count its local sessions' subscriptions: two sessions on one shard subscribing the same
//! filter need two removes, and only the changes of a filter's shard set (first add, last
//! remove) are broadcast. A replica of a remote shard's entries sees counts of at most one.

use std::fmt;

use crate::core::ids::ShardId;
use crate::core::routing::trie::SubscriptionTrie;

/// A set of shards, as a bitmask: at most [`ShardSet::CAPACITY`] shards.
///
/// Plain `Copy` data: built and used on one shard, may be sent in a message.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ShardSet(u64);

impl ShardSet {
    /// The largest number of shards a set can hold.
    pub const CAPACITY: usize = 64;

    /// The empty set.
    pub const EMPTY: ShardSet = ShardSet(0);

    /// True if the set holds no shard.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of shards in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// True if `shard` is in the set.
    pub fn contains(self, shard: ShardId) -> bool {
        self.0 & Self::bit(shard) != 0
    }

    /// Adds `shard`; returns true if it was not in the set.
    pub fn insert(&mut self, shard: ShardId) -> bool {
        let had = self.contains(shard);
        self.0 |= Self::bit(shard);
        !had
    }

    /// Removes `shard`; returns true if it was in the set.
    pub fn remove(&mut self, shard: ShardId) -> bool {
        let had = self.contains(shard);
        self.0 &= !Self::bit(shard);
        had
    }

    /// The union of two sets.
    #[must_use]
    pub fn union(self, other: ShardSet) -> ShardSet {
        ShardSet(self.0 | other.0)
    }

    /// The shards of the set, in increasing order.
    pub fn iter(self) -> ShardSetIter {
        ShardSetIter(self.0)
    }

    fn bit(shard: ShardId) -> u64 {
        assert!(usize::from(shard.0) < Self::CAPACITY, "{shard} does not fit in a ShardSet");
        1 << shard.0
    }
}

impl fmt::Debug for ShardSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|s| s.0)).finish()
    }
}

impl FromIterator<ShardId> for ShardSet {
    fn from_iter<I: IntoIterator<Item = ShardId>>(iter: I) -> ShardSet {
        let mut set = ShardSet::EMPTY;
        for shard in iter {
            set.insert(shard);
        }
        set
    }
}

impl IntoIterator for ShardSet {
    type Item = ShardId;
    type IntoIter = ShardSetIter;

    fn into_iter(self) -> ShardSetIter {
        self.iter()
    }
}

/// Iterator over a [`ShardSet`], in increasing shard order. Lives on the stack of its user.
#[derive(Debug, Clone)]
pub struct ShardSetIter(u64);

impl Iterator for ShardSetIter {
    type Item = ShardId;

    fn next(&mut self) -> Option<ShardId> {
        if self.0 == 0 {
            return None;
        }
        let shard = self.0.trailing_zeros() as u16;
        self.0 &= self.0 - 1;
        Some(ShardId(shard))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.0.count_ones() as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for ShardSetIter {}

/// Topic filter → shards with a subscriber to it, with a reference count per
/// `(filter, shard)`.
///
/// Shard-local: one replica per shard, kept in step by broadcast deltas.
#[derive(Debug)]
pub struct RouteIndex {
    trie: SubscriptionTrie<ShardId, u32>,
    shard_count: u16,
}

impl RouteIndex {
    /// An empty index for `shard_count` shards, at most [`ShardSet::CAPACITY`].
    pub fn new(shard_count: u16) -> RouteIndex {
        assert!(shard_count > 0, "a broker has at least one shard");
        assert!(
            usize::from(shard_count) <= ShardSet::CAPACITY,
            "{shard_count} shards: a ShardSet holds at most {}",
            ShardSet::CAPACITY
        );
        RouteIndex { trie: SubscriptionTrie::new(), shard_count }
    }

    /// The number of shards the index was built for.
    pub fn shard_count(&self) -> u16 {
        self.shard_count
    }

    /// Number of distinct `(filter, shard)` pairs.
    pub fn len(&self) -> usize {
        self.trie.len()
    }

    /// True if no shard has any subscription.
    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }

    /// Counts one more subscription of `shard` to `filter`. Returns true if `shard` was not
    /// yet in the filter's shard set, i.e. the change must be broadcast.
    pub fn add(&mut self, filter: &str, shard: ShardId) -> bool {
        self.check_shard(shard);
        if let Some(count) = self.trie.get_mut(filter, shard) {
            *count = count.checked_add(1).expect("subscriptions per (filter, shard) fit in u32");
            return false;
        }
        self.trie.insert(filter, shard, 1);
        true
    }

    /// Counts one subscription of `shard` to `filter` less. Returns true if that was the
    /// last one, so `shard` left the filter's shard set and the change must be broadcast.
    ///
    /// Removing a pair that was never added is a caller bug: it asserts in debug builds and
    /// changes nothing (returns false) in release builds.
    pub fn remove(&mut self, filter: &str, shard: ShardId) -> bool {
        self.check_shard(shard);
        match self.trie.get_mut(filter, shard) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                self.trie.remove(filter, shard);
                true
            }
            None => {
                debug_assert!(false, "remove of {filter:?} on {shard}, which was never added");
                false
            }
        }
    }

    /// How many subscriptions `shard` has to exactly `filter` (no wildcard matching).
    pub fn count(&self, filter: &str, shard: ShardId) -> u32 {
        self.trie.get(filter, shard).copied().unwrap_or(0)
    }

    /// The shards with at least one subscription whose filter matches `topic`, with the
    /// `$` rule [MQTT-4.7.2-1]. Does not allocate.
    pub fn shards_for(&self, topic: &str) -> ShardSet {
        let mut set = ShardSet::EMPTY;
        self.trie.for_each_match(topic, |shard, _, _| {
            set.insert(shard);
        });
        set
    }

    fn check_shard(&self, shard: ShardId) {
        assert!(shard.0 < self.shard_count, "{shard} out of range: {} shards", self.shard_count);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::core::routing::topic::filter_matches;
    use crate::core::routing::topic::strategies::{filter_strategy, topic_strategy};

    #[test]
    fn shard_set_basics() {
        let mut set = ShardSet::EMPTY;
        assert!(set.is_empty());
        assert!(set.insert(ShardId(3)));
        assert!(!set.insert(ShardId(3)));
        assert!(set.insert(ShardId(0)));
        assert!(set.insert(ShardId(63)));
        assert_eq!(set.len(), 3);
        assert_eq!(set.iter().collect::<Vec<_>>(), [ShardId(0), ShardId(3), ShardId(63)]);
        assert_eq!(set.iter().len(), 3);
        assert!(set.remove(ShardId(3)));
        assert!(!set.remove(ShardId(3)));
        assert!(!set.contains(ShardId(3)));
        assert_eq!(format!("{set:?}"), "{0, 63}");
        let other: ShardSet = [ShardId(1)].into_iter().collect();
        assert_eq!(set.union(other).len(), 3);
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn shard_set_refuses_shard_64() {
        let mut set = ShardSet::EMPTY;
        set.insert(ShardId(64));
    }

    #[test]
    #[should_panic(expected = "at most 64")]
    fn index_refuses_65_shards() {
        RouteIndex::new(65);
    }

    #[test]
    fn counts_per_filter_and_shard() {
        let mut index = RouteIndex::new(4);
        // Two sessions on shard 1 subscribe to the same filter: one broadcast.
        assert!(index.add("a/+", ShardId(1)));
        assert!(!index.add("a/+", ShardId(1)));
        assert!(index.add("a/#", ShardId(2)));
        assert_eq!(index.count("a/+", ShardId(1)), 2);
        assert_eq!(index.shards_for("a/b").iter().collect::<Vec<_>>(), [ShardId(1), ShardId(2)]);
        assert_eq!(index.shards_for("a").iter().collect::<Vec<_>>(), [ShardId(2)]);
        assert!(index.shards_for("$SYS/a").is_empty());
        // The first remove leaves one subscriber: no change to broadcast.
        assert!(!index.remove("a/+", ShardId(1)));
        assert!(index.remove("a/+", ShardId(1)));
        assert_eq!(index.shards_for("a/b").iter().collect::<Vec<_>>(), [ShardId(2)]);
        assert!(index.remove("a/#", ShardId(2)));
        assert!(index.is_empty());
    }

    proptest! {
        #[test]
        fn behaves_like_a_counting_model(
            ops in prop::collection::vec((any::<bool>(), filter_strategy(), 0..3u16), 0..150),
            topics in prop::collection::vec(topic_strategy(), 1..10),
        ) {
            let mut index = RouteIndex::new(3);
            let mut model: HashMap<(String, u16), u32> = HashMap::new();
            for (add, filter, shard) in ops {
                let count = model.entry((filter.clone(), shard)).or_default();
                if add {
                    *count += 1;
                    prop_assert_eq!(index.add(&filter, ShardId(shard)), *count == 1);
                } else if *count > 0 {
                    *count -= 1;
                    prop_assert_eq!(index.remove(&filter, ShardId(shard)), *count == 0);
                }
                model.retain(|_, c| *c > 0);
                prop_assert_eq!(index.len(), model.len());
            }
            for ((filter, shard), count) in &model {
                prop_assert_eq!(index.count(filter, ShardId(*shard)), *count);
            }
            for topic in &topics {
                let expected: ShardSet = model
                    .keys()
                    .filter(|(filter, _)| filter_matches(filter, topic))
                    .map(|(_, shard)| ShardId(*shard))
                    .collect();
                prop_assert_eq!(index.shards_for(topic), expected, "topic {:?}", topic);
            }
        }
    }
}
