//! Per-stream bookkeeping on the receiving side: loss, duplicates, order and latency.
//!
//! A *pair* is one (publisher, subscriber) stream. Each pair keeps the set of sequence numbers
//! it received ([`SeqSet`], one bit per number), a receipt count and the highest number seen.
//! A *group* is the set of subscribers that together should receive each message once: one
//! subscriber for an ordinary subscription, all members for a `$share` group. After a run the
//! pairs of a group are merged per publisher:
//!
//! - `distinct` = size of the union of the members' sets;
//! - `duplicates` = receipts − distinct (a message received twice, by one member or two);
//! - `lost` = messages the publisher sent − distinct;
//! - `reordered` is counted per pair as it happens: a new number below the highest seen.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Sequence numbers tracked per pair; beyond this the receipt is counted but not checked
/// (1 bit each: 2^27 numbers are 16 MiB per pair).
pub const SEQ_TRACKED_MAX: u64 = 1 << 27;

/// A growable bit set of sequence numbers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeqSet {
    words: Vec<u64>,
    distinct: u64,
}

impl SeqSet {
    /// Inserts `seq`; returns whether it was new. Numbers at or above [`SEQ_TRACKED_MAX`]
    /// are reported new and not stored.
    pub fn insert(&mut self, seq: u64) -> bool {
        if seq >= SEQ_TRACKED_MAX {
            return true;
        }
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if w >= self.words.len() {
            self.words.resize((w + 1).next_power_of_two(), 0);
        }
        let new = self.words[w] & bit == 0;
        self.words[w] |= bit;
        self.distinct += new as u64;
        new
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        let w = (seq / 64) as usize;
        self.words.get(w).is_some_and(|x| x & (1u64 << (seq % 64)) != 0)
    }

    /// Number of distinct numbers inserted.
    pub fn len(&self) -> u64 {
        self.distinct
    }

    /// Whether nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.distinct == 0
    }

    /// Adds every number of `other`.
    pub fn union_with(&mut self, other: &SeqSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
        self.distinct = self.words.iter().map(|w| w.count_ones() as u64).sum();
    }
}

/// One (publisher, subscriber) stream as seen by the subscriber.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pair {
    /// The publisher's id.
    pub publisher: u32,
    /// The subscriber's group (see the module doc).
    pub group: u32,
    /// Every PUBLISH received on this stream, duplicates included.
    pub receipts: u64,
    /// Receipts of a new number below the highest number already seen.
    pub reordered: u64,
    /// Receipts whose receive time fell in the measured window.
    pub window_receipts: u64,
    /// Highest sequence number seen plus one (0: none yet).
    pub next_expected: u64,
    /// Receipts of numbers at or above [`SEQ_TRACKED_MAX`]: counted as distinct, unchecked.
    pub untracked: u64,
    /// Numbers received.
    pub seen: SeqSet,
}

impl Pair {
    /// A stream with nothing received yet.
    pub fn new(publisher: u32, group: u32) -> Pair {
        Pair { publisher, group, ..Pair::default() }
    }

    /// Records one receipt of `seq`; `ordered` is false where the broker owes no order
    /// (retained messages of different topics).
    #[inline]
    pub fn record(&mut self, seq: u64, in_window: bool, ordered: bool) {
        self.receipts += 1;
        self.window_receipts += in_window as u64;
        self.untracked += (seq >= SEQ_TRACKED_MAX) as u64;
        let new = self.seen.insert(seq);
        if seq < self.next_expected {
            if new && ordered {
                self.reordered += 1;
            }
        } else {
            self.next_expected = seq + 1;
        }
    }
}

/// Totals of a run, merged over groups.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Integrity {
    /// Messages the subscribers should have received (sent × groups per publisher).
    pub expected: u64,
    /// Distinct messages received.
    pub distinct: u64,
    /// Every receipt, duplicates included.
    pub receipts: u64,
    /// `expected − distinct` (never negative).
    pub lost: u64,
    /// `receipts − distinct`.
    pub duplicates: u64,
    /// Order violations, summed over pairs.
    pub reordered: u64,
    /// Receipts in the measured window.
    pub window_receipts: u64,
}

/// Merges pairs per (group, publisher) and computes the totals. `sent[p]` is the number of
/// messages publisher `p` sent; `groups_per_publisher` how many groups each should reach.
pub fn integrity(pairs: &[Pair], sent: &[u64], groups_per_publisher: u64) -> Integrity {
    use std::collections::BTreeMap;
    let mut merged: BTreeMap<(u32, u32), SeqSet> = BTreeMap::new();
    let mut t = Integrity::default();
    for p in pairs {
        t.receipts += p.receipts;
        t.reordered += p.reordered;
        t.window_receipts += p.window_receipts;
        merged.entry((p.group, p.publisher)).or_default().union_with(&p.seen);
    }
    let untracked: u64 = pairs.iter().map(|p| p.untracked).sum();
    t.distinct = merged.values().map(SeqSet::len).sum::<u64>() + untracked;
    t.expected = sent.iter().sum::<u64>() * groups_per_publisher;
    t.lost = t.expected.saturating_sub(t.distinct);
    t.duplicates = t.receipts.saturating_sub(t.distinct);
    t
}

/// A latency histogram in nanoseconds, 3 significant figures, up to 100 s.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Samples (messages sent and received in the measured window).
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
}

impl Latency {
    /// Percentiles of `h` (ns) in µs.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// A histogram as (value, count) pairs, to carry it across a process boundary.
pub fn histogram_to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

/// Adds (value, count) pairs to `h`.
pub fn histogram_add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, c) in pairs {
        // Values come from a histogram with the same bounds: saturate rather than fail.
        let _ = h.record_n(v.clamp(h.low(), h.high()), c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_set() {
        let mut s = SeqSet::default();
        assert!(s.insert(0));
        assert!(s.insert(1000));
        assert!(!s.insert(1000));
        assert!(s.contains(1000) && !s.contains(999) && !s.contains(1 << 20));
        assert_eq!(s.len(), 2);
        let mut t = SeqSet::default();
        t.insert(5);
        t.insert(1000);
        t.union_with(&s);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn pair_counts_reorder_and_dups() {
        let mut p = Pair::new(0, 0);
        for seq in [0, 1, 3, 2, 2, 4] {
            p.record(seq, true, true);
        }
        assert_eq!((p.receipts, p.reordered, p.seen.len()), (6, 1, 5));
        let t = integrity(&[p], &[6], 1);
        assert_eq!((t.expected, t.distinct, t.lost, t.duplicates), (6, 5, 1, 1));
    }

    #[test]
    fn shared_group_merges_members() {
        // Publisher 0 sent 4; members split them, and both got message 3.
        let mut a = Pair::new(0, 7);
        let mut b = Pair::new(0, 7);
        for s in [0, 2, 3] {
            a.record(s, false, true);
        }
        for s in [1, 3] {
            b.record(s, false, true);
        }
        let t = integrity(&[a, b], &[4], 1);
        assert_eq!((t.distinct, t.lost, t.duplicates, t.reordered), (4, 0, 1, 0));
    }

    #[test]
    fn histogram_round_trip() {
        let mut h = new_histogram();
        for v in [1_000u64, 2_000, 2_000, 50_000] {
            h.record(v).unwrap();
        }
        let mut g = new_histogram();
        histogram_add_pairs(&mut g, &histogram_to_pairs(&h));
        assert_eq!(g.len(), 4);
        let l = Latency::from_histogram(&g);
        assert!(l.p50_us >= 1.9 && l.p50_us <= 2.1 && l.max_us >= 49.9);
    }
}
