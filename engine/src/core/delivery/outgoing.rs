//! Outgoing PUBLISH frames: the per-layout frame cache of the fan-out, what makes one
//! outgoing PUBLISH differ between subscribers, and the slow path that builds such a frame:
//! the remaining Message Expiry Interval, Subscription Identifiers and topic aliases (5.0).
//!
//! The fan-out fast path (`delivery/deliver.rs`) encodes a frame once per layout ([`LayoutCache`]:
//! header, and the payload too when it is small enough to be copied) and copies it to every
//! subscriber of that layout, patching only the packet id. The remaining expiry is the same
//! for every subscriber of one fan-out (one `now`), so it lives in the cached frame. Subscription identifiers and topic aliases are per session or per
//! connection: a delivery that needs either is encoded on its own here. Clients that ask for
//! neither (and every 3.1.1 client) never take this path.
//!
//! Shard-local: works on this shard's connections.

use std::collections::VecDeque;

use bytes::BytesMut;
use shardmq_codec::{
    encode_publish_header, ByteStr, PacketId, Properties, ProtocolVersion, Publish, QoS,
};

use crate::core::delivery::tx::COALESCE_MAX_BYTES;
use crate::core::ids::ConnId;
use crate::core::mesh::Message;
use crate::core::sessions::conn::Conn;
use crate::core::shard::IoAction;

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
/// Returns the packet's size in bytes; `None`, changing nothing, if the packet exceeds the
/// client's Maximum Packet Size [MQTT-3.1.2-25] or cannot be encoded.
pub(crate) fn send_custom(
    c: &mut Conn,
    conn: ConnId,
    p: OutPublish<'_>,
    actions: &mut VecDeque<IoAction>,
) -> Option<usize> {
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
        return None;
    }
    if let Some(a) = new_alias {
        // The table outlives the message: own the topic's bytes.
        let aliases = c.aliases.as_mut().expect("created above");
        aliases.outbound.insert(ByteStr::from(p.msg.topic.as_str()), a);
    }
    if c.tx.is_empty() {
        actions.push_back(IoAction::Flush(conn));
    }
    c.tx.push_parts(&header, &publish.payload);
    Some(header.len() + publish.payload.len())
}

/// PUBLISH layouts: protocol class (3.x / 5.0) × QoS × RETAIN.
const LAYOUTS: usize = 12;

fn layout_index(v5: bool, qos: QoS, retain: bool) -> usize {
    usize::from(v5) * 6 + (qos as usize) * 2 + usize::from(retain)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum LayoutState {
    #[default]
    Empty,
    /// Encoded; the packet id's offset in the frame (QoS > 0).
    Ready(Option<usize>),
    /// The message cannot be encoded in this layout (too large).
    Failed,
}

/// PUBLISH frames of the message being fanned out, encoded once per layout and reused for
/// every subscriber with that layout; only the packet id is patched. A payload small enough
/// to be coalesced ([`COALESCE_MAX_BYTES`]) is part of the cached frame, so queueing it is
/// one copy; a larger one is not (it is shared, never copied, by the `TxQueue`).
///
/// Shard-local scratch, reset for every message.
#[derive(Debug, Default)]
pub(crate) struct LayoutCache {
    frames: [BytesMut; LAYOUTS],
    states: [LayoutState; LAYOUTS],
}

/// One cached PUBLISH frame: the header, followed by the payload if `whole`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<'a> {
    pub(crate) bytes: &'a [u8],
    /// Where the packet id goes (QoS > 0).
    pub(crate) pid_offset: Option<usize>,
    /// `bytes` includes the payload.
    pub(crate) whole: bool,
}

impl Frame<'_> {
    /// The encoded size of the whole PUBLISH.
    pub(crate) fn packet_len(&self, msg: &Message) -> usize {
        self.bytes.len() + if self.whole { 0 } else { msg.payload.len() }
    }
}

impl LayoutCache {
    pub(crate) fn reset(&mut self) {
        self.states = [LayoutState::Empty; LAYOUTS];
    }

    /// The frame of `msg` in a layout, encoding it on first use. The cache is valid for
    /// one fan-out at one `now_ms` (the remaining expiry interval is part of the header).
    #[inline]
    pub(crate) fn frame(
        &mut self,
        msg: &Message,
        v5: bool,
        qos: QoS,
        retain: bool,
        now_ms: u64,
    ) -> Option<Frame<'_>> {
        let i = layout_index(v5, qos, retain);
        if self.states[i] == LayoutState::Empty {
            self.states[i] = self.encode(i, msg, v5, qos, retain, now_ms);
        }
        match self.states[i] {
            LayoutState::Ready(pid_offset) => Some(Frame {
                bytes: &self.frames[i][..],
                pid_offset,
                whole: msg.payload.len() <= COALESCE_MAX_BYTES,
            }),
            _ => None,
        }
    }

    #[cold]
    fn encode(
        &mut self,
        i: usize,
        msg: &Message,
        v5: bool,
        qos: QoS,
        retain: bool,
        now_ms: u64,
    ) -> LayoutState {
        let buf = &mut self.frames[i];
        buf.clear();
        // The placeholder id is patched per subscriber.
        let pid = (qos != QoS::AtMostOnce).then(|| PacketId::new(1).expect("non-zero"));
        match encode_publish_header(
            &publish_for(msg, qos, retain, pid, now_ms),
            if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 },
            buf,
        ) {
            Ok(offset) => {
                if msg.payload.len() <= COALESCE_MAX_BYTES {
                    buf.extend_from_slice(&msg.payload);
                }
                LayoutState::Ready(offset)
            }
            Err(_) => LayoutState::Failed,
        }
    }
}

/// Queues a cached frame on `c` (patching in `packet_id`), and wakes its writer if the queue
/// was empty.
#[inline]
pub(crate) fn push_frame(
    c: &mut Conn,
    conn: ConnId,
    frame: Frame<'_>,
    packet_id: Option<PacketId>,
    msg: &Message,
    actions: &mut VecDeque<IoAction>,
) {
    let was_empty = c.tx.is_empty();
    let copied = c.tx.push_copy(frame.bytes);
    if let (Some(offset), Some(id)) = (frame.pid_offset, packet_id) {
        copied[offset..offset + 2].copy_from_slice(&id.get().to_be_bytes());
    }
    if !frame.whole {
        c.tx.push_parts(&[], &msg.payload);
    }
    if was_empty {
        actions.push_back(IoAction::Flush(conn));
    }
}

/// The PUBLISH for `msg` as the layout cache encodes it (no per-session properties).
fn publish_for(
    msg: &Message,
    qos: QoS,
    retain: bool,
    packet_id: Option<PacketId>,
    now_ms: u64,
) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: msg.topic.clone(),
        packet_id,
        payload: msg.payload.clone(),
        properties: outgoing_properties(msg, &[], now_ms),
    }
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

    #[test]
    fn layout_indices_are_distinct_and_in_range() {
        let mut seen = [false; LAYOUTS];
        for v5 in [false, true] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                for retain in [false, true] {
                    let i = layout_index(v5, qos, retain);
                    assert!(!seen[i]);
                    seen[i] = true;
                }
            }
        }
        assert!(seen.iter().all(|s| *s));
    }
}
