//! What the shard counts of its message traffic: PUBLISH packets and bytes sent by QoS, and
//! messages dropped by reason. Plain `u64`s in [`Traffic`], shard-local in `LocalStats`
//! (`core/shard.rs`): a delivery adds to two array slots, nothing shared. They leave the
//! shard two ways: copied into `CoreStats` when the control plane asks (`GET /metrics`), and
//! stored into the shard's `ShardCounters` slot on every tick (shard 0 publishes the sums as
//! `$SYS/broker/messages/sent/qos/<n>`, `$SYS/broker/messages/dropped/<reason>`).
//!
//! A dropped message is one copy not delivered (or one inbound message not routed): a
//! message refused to three subscribers counts three.

/// Why a message (or one copy of it) was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// A QoS 0 copy for a slow consumer, or with the shard past its hard transmit bound
    /// (`delivery/tx_budget.rs`).
    SlowConsumer,
    /// The oldest message of a full session queue, dropped for a new one
    /// (`session_queue_full = "drop_oldest"`).
    QueueFullOldest,
    /// A new message for a full session queue (`"drop_newest"`, or `"refuse"` for a copy
    /// the log would not keep), or one larger than the whole queue.
    QueueFullNewest,
    /// A QoS 1/2 copy refused because a session queue is full (`"refuse"`): the publisher is
    /// told (5.0 0x97).
    QueueFullRefused,
    /// The message's expiry interval passed before it was sent [MQTT-3.3.2-5].
    Expired,
    /// Larger than the client's Maximum Packet Size [MQTT-3.1.2-25] (or than any packet).
    TooLarge,
    /// Refused by the ACL: a PUBLISH without write right, a will, a copy (or a retained
    /// message) the subscriber may not read.
    AclDenied,
    /// The log is past its soft cap, or its write failed: a copy (or a retained message)
    /// that must be logged is not kept.
    LogFull,
    /// The retained store is full.
    RetainedFull,
    /// Retained messages for a SUBSCRIBE past the session's replay backlog (one store's
    /// worth).
    ReplayFull,
    /// A shared subscription's message handed back with no member left to take it.
    NoSubscribers,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 11] = [
        DropReason::SlowConsumer,
        DropReason::QueueFullOldest,
        DropReason::QueueFullNewest,
        DropReason::QueueFullRefused,
        DropReason::Expired,
        DropReason::TooLarge,
        DropReason::AclDenied,
        DropReason::LogFull,
        DropReason::RetainedFull,
        DropReason::ReplayFull,
        DropReason::NoSubscribers,
    ];
    /// Number of reasons.
    pub const COUNT: usize = DropReason::ALL.len();

    /// The name in `$SYS/broker/messages/dropped/<name>` and the `reason` label of
    /// `shardmq_messages_dropped_total`.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::QueueFullOldest => "queue_full_oldest",
            DropReason::QueueFullNewest => "queue_full_newest",
            DropReason::QueueFullRefused => "queue_full_refused",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
            DropReason::AclDenied => "acl_denied",
            DropReason::LogFull => "log_full",
            DropReason::RetainedFull => "retained_full",
            DropReason::ReplayFull => "replay_full",
            DropReason::NoSubscribers => "no_subscribers",
        }
    }
}

/// Message traffic counters of one shard since start. Shard-local.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// PUBLISH packets sent to clients, by QoS (resends included).
    pub sent_messages_by_qos: [u64; 3],
    /// Bytes of those PUBLISH packets (fixed header to payload), by QoS.
    pub sent_bytes_by_qos: [u64; 3],
    /// Messages dropped, indexed by [`DropReason`].
    pub dropped_by_reason: [u64; DropReason::COUNT],
}

impl Traffic {
    /// All PUBLISH packets sent.
    pub fn messages_sent(&self) -> u64 {
        self.sent_messages_by_qos.iter().sum()
    }

    /// All messages dropped.
    pub fn messages_dropped(&self) -> u64 {
        self.dropped_by_reason.iter().sum()
    }

    /// Adds `other`'s counts (summing shards).
    pub fn add(&mut self, other: &Traffic) {
        let pairs = [
            (&mut self.sent_messages_by_qos[..], &other.sent_messages_by_qos[..]),
            (&mut self.sent_bytes_by_qos[..], &other.sent_bytes_by_qos[..]),
            (&mut self.dropped_by_reason[..], &other.dropped_by_reason[..]),
        ];
        for (to, from) in pairs {
            for (t, f) in to.iter_mut().zip(from) {
                *t += f;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sum_and_totals_are_the_sums() {
        let mut a = Traffic { sent_messages_by_qos: [1, 2, 3], ..Traffic::default() };
        a.dropped_by_reason[DropReason::Expired as usize] = 4;
        let mut b = Traffic { sent_bytes_by_qos: [10, 0, 5], ..Traffic::default() };
        b.dropped_by_reason[DropReason::Expired as usize] = 1;
        b.dropped_by_reason[DropReason::TooLarge as usize] = 2;
        a.add(&b);
        assert_eq!(a.sent_messages_by_qos, [1, 2, 3]);
        assert_eq!(a.sent_bytes_by_qos, [10, 0, 5]);
        assert_eq!(a.messages_sent(), 6);
        assert_eq!(a.messages_dropped(), 7);
        assert_eq!(a.dropped_by_reason[DropReason::Expired as usize], 5);
    }

    #[test]
    fn reasons_are_in_counter_order_with_distinct_label_safe_names() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} is out of order");
            let name = r.name();
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
            assert_eq!(DropReason::ALL.iter().filter(|o| o.name() == name).count(), 1, "{name}");
        }
    }
}
