//! The route exchange's bookkeeping: this node's set of filters (folded from its shards'),
//! the node-level sequence numbers peers acknowledge, and the shards' `Filter` changes
//! waiting for those acknowledgements before their SUBACK.

use std::collections::{BTreeMap, VecDeque};

use shardmq_codec::ByteStr;

use crate::core::ids::ShardId;

/// This node's filters: each filter with the shards that hold it. The node-level set (what
/// peers are told) is the filters with at least one shard.
#[derive(Debug, Default)]
pub(crate) struct LocalFilters {
    filters: BTreeMap<ByteStr, Vec<ShardId>>,
}

impl LocalFilters {
    /// Applies one shard's change; true if the node-level set changed (the filter's first
    /// shard came or its last one left).
    pub fn apply(&mut self, shard: ShardId, filter: &ByteStr, added: bool) -> bool {
        if added {
            let shards = self.filters.entry(filter.clone()).or_default();
            if shards.contains(&shard) {
                return false;
            }
            shards.push(shard);
            shards.len() == 1
        } else {
            let Some(shards) = self.filters.get_mut(filter) else {
                return false;
            };
            let Some(i) = shards.iter().position(|s| *s == shard) else {
                return false;
            };
            shards.swap_remove(i);
            if shards.is_empty() {
                self.filters.remove(filter);
                true
            } else {
                false
            }
        }
    }

    /// The node-level set, in filter order.
    pub fn iter(&self) -> impl Iterator<Item = &ByteStr> {
        self.filters.keys()
    }

    /// Number of filters in the node-level set.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.filters.len()
    }
}

/// A shard's `Filter { seq }` waiting for every live peer with an up link to acknowledge
/// the node-level sequence number `needed`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingAck {
    pub shard: ShardId,
    pub shard_seq: u64,
    pub needed: u64,
}

/// The shards' waiting acknowledgements, in arrival order (`needed` never decreases).
#[derive(Debug, Default)]
pub(crate) struct PendingAcks {
    queue: VecDeque<PendingAck>,
}

impl PendingAcks {
    /// Queues one.
    pub fn push(&mut self, p: PendingAck) {
        debug_assert!(self.queue.back().is_none_or(|b| b.needed <= p.needed));
        self.queue.push_back(p);
    }

    /// Removes and returns the waiting acknowledgements with `needed <= threshold` (the
    /// smallest acknowledged sequence number over the peers that must still acknowledge).
    pub fn release(&mut self, threshold: u64) -> Vec<PendingAck> {
        let mut out = Vec::new();
        while self.queue.front().is_some_and(|p| p.needed <= threshold) {
            out.extend(self.queue.pop_front());
        }
        out
    }

    /// Number waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_per_shard_and_ignores_repeats() {
        let mut f = LocalFilters::default();
        let a = ByteStr::from_static("a/+");
        assert!(f.apply(ShardId(0), &a, true));
        assert!(!f.apply(ShardId(1), &a, true));
        assert!(!f.apply(ShardId(1), &a, true), "a repeated add changes nothing");
        assert!(!f.apply(ShardId(0), &a, false));
        assert!(!f.apply(ShardId(0), &a, false), "a repeated remove changes nothing");
        assert_eq!(f.len(), 1);
        assert!(f.apply(ShardId(1), &a, false), "the last shard leaving removes it");
        assert_eq!(f.len(), 0);
        assert!(!f.apply(ShardId(2), &a, false));
    }

    #[test]
    fn releases_in_order() {
        let mut p = PendingAcks::default();
        for (i, needed) in [1u64, 3, 3, 5].into_iter().enumerate() {
            p.push(PendingAck { shard: ShardId(0), shard_seq: i as u64, needed });
        }
        assert!(p.release(0).is_empty());
        assert_eq!(p.release(3).len(), 3);
        assert_eq!(p.len(), 1);
        assert_eq!(p.release(u64::MAX)[0].shard_seq, 3);
    }
}
