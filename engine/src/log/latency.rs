//! A fixed-bucket latency histogram (the log's fsync latency), in the shape Prometheus
//! histograms take: cumulative buckets are computed when rendered.

/// Upper bounds of the buckets, in microseconds (one more, unbounded, follows).
pub const BUCKETS_US: [u64; 12] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

/// Counts per bucket (not cumulative; the last one is past every bound) and the sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// `counts[i]`: observations in `(BUCKETS_US[i-1], BUCKETS_US[i]]`; the last entry:
    /// above every bound.
    pub counts: [u64; BUCKETS_US.len() + 1],
    /// Sum of every observation, in microseconds.
    pub sum_us: u64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn record(&mut self, us: u64) {
        let i = BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(BUCKETS_US.len());
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Observations recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s observations (summing shards).
    pub fn add(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_take_their_upper_bound_and_overflow_goes_last() {
        let mut h = LatencyHistogram::default();
        for us in [0, 100, 101, 1_000_000, 1_000_001] {
            h.record(us);
        }
        assert_eq!(h.counts[0], 2);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[BUCKETS_US.len() - 1], 1);
        assert_eq!(h.counts[BUCKETS_US.len()], 1);
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum_us, 2_000_202);
    }
}
