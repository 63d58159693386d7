//! What makes one outgoing PUBLISH differ between subscribers, and the slow path that builds
//! such a frame: the remaining Message Expiry Interval, Subscription Identifiers and topic
//! aliases (5.0).
//!
//! The fan-out fast path (`deliver.rs`) encodes a header once per layout and shares it. The
//! remaining expiry is the same for every subscriber of one fan-out (one `now`), so it lives
//! in the cached header. Subscription identifiers and topic aliases are per session or per
//! connection: a delivery that needs either is encoded on its own here. Clients that ask for
//! neither (and every 3.1.1 client) never take this path.
//!
//! Shard-local: works on this shard's connections.

use std::collections::VecDeque;

use bytes::BytesMut;
use shardmq_codec::{
    encode_publish_header, ByteStr, PacketId, Properties, ProtocolVersion, Publish, QoS,
};

use crate::core::conn::Conn;
use crate::core::mesh::Message;
use crate::core::shard::{push_publish_frame, ConnId, IoAction};

/// True once `msg`'s Message Expiry Interval has passed at `now_ms` (broker uptime). A
/// message without the property never expires.
pub(crate) fn is_expired(msg: &Message, now_ms: u64) -> bool {
    let Some(secs) = msg.properties.as_ref().and_then(|p| p.message_expiry_interval_secs) else {
        return false;
    };
    now_ms.saturating_sub(msg.received_at_ms) >= u64::from(secs) * 1000
}

/// The Message Expiry Interval to forward at `now_ms`: the received value minus the whole
/// seconds the message waited in the broker [MQTT-3.3.2-6], at least 1 (a message already
/// sent once and now resent keeps a non-zero interval; an unsent one was dropped before).
fn remaining_expiry_secs(secs: u32, received_at_ms: u64, now_ms: u64) -> u32 {
    let waited_secs = now_ms.saturating_sub(received_at_ms) / 1000;
    u32::try_from(u64::from(secs).saturating_sub(waited_secs)).unwrap_or(secs).max(1)
}

/// The properties `msg` carries to a subscriber at `now_ms`: everything the publisher sent,
/// unchanged and in order (user properties, response topic, correlation data, payload format,
/// content type), with the expiry interval counted down and `sub_ids` added. `None` if there
/// are none.
pub(crate) fn outgoing_properties(
    msg: &Message,
    sub_ids: &[u32],
    now_ms: u64,
) -> Option<Box<Properties>> {
    let expiry = msg.properties.as_ref().and_then(|p| p.message_expiry_interval_secs);
    if expiry.is_none() && sub_ids.is_empty() {
        return msg.properties.clone();
    }
    let mut p = msg.properties.as_deref().cloned().unwrap_or_default();
    p.message_expiry_interval_secs =
        expiry.map(|secs| remaining_expiry_secs(secs, msg.received_at_ms, now_ms));
    // [MQTT-3.3.4-3]/[MQTT-3.3.4-4]: the identifiers of every matching subscription.
    p.subscription_identifiers = sub_ids.to_vec();
    Some(Box::new(p))
}

/// One PUBLISH for one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutPublish<'a> {
    pub(crate) msg: &'a Message,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) packet_id: Option<PacketId>,
    pub(crate) dup: bool,
    /// Subscription identifiers to attach (5.0 only; ignored for 3.1.1).
    pub(crate) sub_ids: &'a [u32],
    pub(crate) now_ms: u64,
}

/// Encodes `p` for `c` (topic alias applied if the client accepts aliases) and queues it.
/// Returns false, changing nothing, if the packet exceeds the client's Maximum Packet Size
/// [MQTT-3.1.2-25] or cannot be encoded.
pub(crate) fn send_custom(
    c: &mut Conn,
    conn: ConnId,
    p: OutPublish<'_>,
    actions: &mut VecDeque<IoAction>,
) -> bool {
    let v5 = c.is_v5();
    let mut properties =
        if v5 { outgoing_properties(p.msg, p.sub_ids, p.now_ms) } else { p.msg.properties.clone() };
    let mut topic = p.msg.topic.clone();
    // Outbound topic alias (5.0 §3.3.2.3.4): the first message on a topic carries the topic
    // and a new alias, later ones an empty topic and the alias. Never more aliases than the
    // client's Topic Alias Maximum [MQTT-3.3.2-11]; once the table is full, new topics go
    // out in full.
    let mut new_alias = None;
    if v5 && c.client_topic_alias_max > 0 {
        let aliases = c.aliases.get_or_insert_with(Default::default);
        let alias = match aliases.outbound.get(&p.msg.topic) {
            Some(&a) => {
                topic = ByteStr::default();
                Some(a)
            }
            None if aliases.outbound.len() < usize::from(c.client_topic_alias_max) => {
                let a = u16::try_from(aliases.outbound.len() + 1).expect("bounded by a u16");
                new_alias = Some(a);
                Some(a)
            }
            None => None,
        };
        if let Some(a) = alias {
            properties.get_or_insert_with(Default::default).topic_alias = Some(a);
        }
    }
    let publish = Publish {
        dup: p.dup,
        qos: p.qos,
        retain: p.retain,
        topic,
        packet_id: p.packet_id,
        payload: p.msg.payload.clone(),
        properties,
    };
    let version = c.version.unwrap_or(ProtocolVersion::V3_1_1);
    let mut header = BytesMut::new();
    if encode_publish_header(&publish, version, &mut header).is_err()
        || header.len() + publish.payload.len() > c.client_packet_size_max_bytes as usize
    {
        return false;
    }
    if let Some(a) = new_alias {
        // The table outlives the message: own the topic's bytes.
        let aliases = c.aliases.as_mut().expect("created above");
        aliases.outbound.insert(ByteStr::from(p.msg.topic.as_str()), a);
    }
    push_publish_frame(&mut c.tx, &header, None, &publish.payload, conn, actions);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_expiry_counts_whole_seconds_waited_and_stays_positive() {
        assert_eq!(remaining_expiry_secs(10, 1_000, 1_999), 10);
        assert_eq!(remaining_expiry_secs(10, 1_000, 4_500), 7);
        assert_eq!(remaining_expiry_secs(10, 1_000, 60_000), 1);
        assert_eq!(remaining_expiry_secs(10, 5_000, 1_000), 10, "clock never goes back");
    }
}
