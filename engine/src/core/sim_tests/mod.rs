//! Simulator scenarios: pub/sub across shards, QoS flows, retained, wills, keep alive,
//! takeover, persistent sessions, the SUBACK gate, fan-out. Each runs for several seeds
//! with 2 and 4 shards.

use bytes::Bytes;
use shardmq_codec::{
    ByteStr, Packet, PacketType, Properties, ProtocolVersion, QoS, ReasonCode, Will,
};

pub(super) const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
pub(super) const V5: ProtocolVersion = ProtocolVersion::V5;
pub(super) const Q0: QoS = QoS::AtMostOnce;
pub(super) const Q1: QoS = QoS::AtLeastOnce;
pub(super) const Q2: QoS = QoS::ExactlyOnce;

/// Every (shard count, seed) combination a scenario runs with.
pub(super) fn configs() -> impl Iterator<Item = (u16, u64)> {
    [2u16, 4].into_iter().flat_map(|n| (0..4u64).map(move |seed| (n, seed)))
}

pub(super) fn disconnect_reasons(packets: &[Packet]) -> Vec<ReasonCode> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Disconnect(d) => Some(d.reason),
            _ => None,
        })
        .collect()
}

/// The reason codes of the acknowledgements of type `t` (PUBACK, PUBREC, …) in `packets`.
pub(super) fn ack_reasons(packets: &[Packet], t: PacketType) -> Vec<ReasonCode> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r)
                if p.packet_type() == t =>
            {
                Some(r.reason)
            }
            _ => None,
        })
        .collect()
}

pub(super) fn will(topic: &str, payload: &str, retain: bool, delay_secs: Option<u32>) -> Will {
    Will {
        topic: ByteStr::from(topic),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: Q1,
        retain,
        properties: Properties { will_delay_interval_secs: delay_secs, ..Properties::default() },
    }
}

mod mqtt5;
mod mqtt5_flow;
mod persist;
mod persist_acks;
mod persist_shared;
mod protocol;
mod pubsub;
mod queue_full;
mod retained_limits;
mod sessions;
mod shared;
