//! Acknowledgements held until the log record they depend on is durable, released in append
//! order. Sans-IO.
//!
//! Durability is a prefix ("durable up to seq N"), so releasing every item whose seq is at
//! most N, front to back, releases them in the order they were pushed: a PUBACK for packet 7
//! never overtakes the PUBACK for packet 6 of the same connection, even though one fsync
//! completes a whole batch of them.

use std::collections::VecDeque;

use super::LogSeq;

/// Items (e.g. PUBACK/PUBREC frames to send) waiting for their log record to be durable.
///
/// Shard-local: one per connection or per shard, owned by the engine core.
#[derive(Debug, Clone)]
pub struct AckQueue<T> {
    items: VecDeque<(LogSeq, T)>,
}

impl<T> Default for AckQueue<T> {
    fn default() -> Self {
        AckQueue { items: VecDeque::new() }
    }
}

impl<T> AckQueue<T> {
    /// Holds `item` until `seq` is durable. An item that needs no record of its own (say the
    /// PUBACK of a duplicate) is pushed with the last appended seq, so it keeps its place.
    ///
    /// # Panics
    /// If `seq` is below the seq of the previously pushed item (pushes must follow appends).
    pub fn push(&mut self, seq: LogSeq, item: T) {
        if let Some((last, _)) = self.items.back() {
            assert!(seq >= *last, "ack for {seq} pushed after one for {last}");
        }
        self.items.push_back((seq, item));
    }

    /// Removes and yields, in push order, every item whose seq is at most `durable`.
    pub fn release(&mut self, durable: LogSeq) -> impl Iterator<Item = T> + '_ {
        let n = self.items.partition_point(|(seq, _)| *seq <= durable);
        self.items.drain(..n).map(|(_, item)| item)
    }

    /// The seq the oldest held item waits for.
    pub fn waiting_for(&self) -> Option<LogSeq> {
        self.items.front().map(|(seq, _)| *seq)
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True if nothing is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_a_prefix_in_push_order() {
        let mut q = AckQueue::default();
        q.push(LogSeq(3), "p1");
        q.push(LogSeq(3), "p2-duplicate");
        q.push(LogSeq(5), "p3");
        q.push(LogSeq(9), "p4");
        assert_eq!(q.release(LogSeq(2)).count(), 0);
        assert_eq!(q.release(LogSeq(5)).collect::<Vec<_>>(), ["p1", "p2-duplicate", "p3"]);
        assert_eq!(q.waiting_for(), Some(LogSeq(9)));
        assert_eq!(q.release(LogSeq(100)).collect::<Vec<_>>(), ["p4"]);
        assert!(q.is_empty());
    }

    #[test]
    #[should_panic(expected = "pushed after")]
    fn out_of_order_pushes_are_a_bug() {
        let mut q = AckQueue::default();
        q.push(LogSeq(5), ());
        q.push(LogSeq(4), ());
    }
}
