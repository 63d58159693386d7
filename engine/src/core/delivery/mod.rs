//! Delivery: a message's way in and out. Inbound PUBLISH/PUBREL and routing to shards
//! (`publish.rs`), fan-out to this shard's sessions (`deliver.rs`), encode-once layouts
//! and the per-subscriber path (`outgoing.rs`), the encoded frames waiting for a
//! connection's writer (`tx.rs`) and back-pressure (`tx_budget.rs`).
//!
//! Also here:
//! - `drops.rs`: the traffic counters, sent by QoS and dropped by reason.
//! - `refusal.rs`: when a QoS 1/2 PUBLISH is refused (5.0: PUBACK/PUBREC 0x97 Quota exceeded;
//!   3.1.1: the connection is closed without an acknowledgement), decided before any copy is sent.

pub(crate) mod deliver;
pub mod drops;
pub(crate) mod outgoing;
pub(crate) mod publish;
mod refusal;
pub mod tx;
pub mod tx_budget;
