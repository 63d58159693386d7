//! When a QoS 1/2 PUBLISH is refused (5.0: PUBACK/PUBREC 0x97 Quota exceeded; 3.1.1: the
//! connection is closed without an acknowledgement), decided before any copy is sent.
//!
//! A PUBLISH is refused only when something it needs kept cannot be kept:
//! - a copy for a persistent session while this shard's log is past its soft cap (QoS 0,
//!   clean sessions and topics nobody persistent subscribes to keep flowing);
//! - a copy for a persistent session whose queue is full, under
//!   `session_queue_full = "refuse"` (the default policies drop for that session only,
//!   `delivery/deliver.rs`);
//! - a new retained message the retained store cannot take (`retained_bytes_max`,
//!   `retained_messages_max`), or whose topic's owner is this shard and its log is past its
//!   soft cap.
//!
//! **All or nothing per shard.** The publisher's shard decides for its own subscribers and
//! its retained store before routing: a refused message reaches nobody. A shard the
//! message was routed to decides for its own subscribers before sending any copy: if one
//! copy would be refused, none is sent there, and its `DurableAck` fails the PUBLISH
//! (`persist/ack.rs`). What cannot be made atomic without a round trip before every
//! delivery: subscribers on the publisher's shard and on other shards may already have the
//! message when a third shard refuses it. See README "Persistence" for the bound.
//!
//! Shard-local.

use std::sync::Arc;

use shardmq_codec::QoS;

use crate::core::delivery::deliver::window;
use crate::core::delivery::drops::DropReason;
use crate::core::delivery::publish::is_sys_topic;
use crate::core::ids::SessionSlot;
use crate::core::limits::QueueFullPolicy;
use crate::core::mesh::Message;
use crate::core::shard::ShardCore;

impl ShardCore {
    /// True while a copy of the message being routed may be refused: a publisher waits for
    /// the answer ([`crate::core::persist::Persist::answering`]) and the log is past its soft
    /// cap or full queues refuse. Otherwise (the usual case) nothing is checked.
    pub(crate) fn refusal_possible(&self) -> bool {
        let refuse_policy = self.config.limits.session_queue_full == QueueFullPolicy::Refuse;
        self.persist.as_deref().is_some_and(|p| p.answering && (p.full || refuse_policy))
    }

    /// True if the copy of `msg` for `slot` at `qos` could not be kept (see the module doc),
    /// so the message must be refused.
    pub(crate) fn copy_would_be_refused(&self, slot: SessionSlot, qos: QoS, msg: &Message) -> bool {
        let s = self.sessions.get(slot);
        if qos == QoS::AtMostOnce || s.plog.is_none() {
            return false;
        }
        if self.log_full() {
            return true;
        }
        let limits = &self.config.limits;
        if limits.session_queue_full != QueueFullPolicy::Refuse {
            return false;
        }
        // The copy would wait in the queue (offline, something queued, or the window full).
        let queued = match s.conn.and_then(|c| self.conns.get(c)) {
            None => true,
            Some(c) => !s.queue().is_empty() || s.inflight().len() >= window(limits, c),
        };
        let size_bytes = (msg.payload.len() + msg.topic.len()) as u64;
        queued
            && (s.queue().len() >= limits.session_queue_messages_max as usize
                || s.queue_bytes() + size_bytes > limits.session_queue_bytes_max)
    }

    /// The message being routed is refused as a whole, before any copy was sent here:
    /// whoever routed it answers with the failure (`ShardCore::take_copy_refused`).
    pub(crate) fn refuse_message(&mut self, why: DropReason) {
        self.stats.dropped(why, 1);
        if let Some(p) = self.persist.as_deref_mut() {
            p.copy_refused = true;
        }
    }

    /// True if the message being routed was refused here (nothing of it may leave).
    pub(crate) fn message_refused(&self) -> bool {
        self.persist.as_deref().is_some_and(|p| p.answering && p.copy_refused)
    }

    /// Routes a message whose publisher waits for the answer (`answering`): copies that
    /// cannot be kept refuse it before any is sent.
    pub(crate) fn route_answered(&mut self, msg: Arc<Message>, now: std::time::Instant) {
        self.set_answering(true);
        self.publish_from_client(msg, now);
        self.set_answering(false);
    }

    /// See [`crate::core::persist::Persist::answering`].
    pub(crate) fn set_answering(&mut self, on: bool) {
        if let Some(p) = self.persist.as_deref_mut() {
            p.answering = on;
        }
    }

    /// True if a QoS 1/2 PUBLISH with RETAIN = 1 of `payload_len` bytes on `topic` must be
    /// refused: this shard owns the topic and its log is past its soft cap, or (5.0
    /// publishers, `v5`) the retained store cannot take it, as this shard's replica says
    /// (the owner's may differ only when updates of other topics race with it). 3.1.1 has
    /// no negative PUBACK: its message is delivered and acknowledged, and only its retained
    /// copy is dropped (counted, warned) by the owner. An empty payload clears
    /// [MQTT-3.3.1-10] and is always accepted.
    pub(crate) fn retained_refused(&mut self, topic: &str, payload_len: usize, v5: bool) -> bool {
        if payload_len == 0 || is_sys_topic(topic) {
            return false;
        }
        if self.log_full() && self.retain_owner(topic) == self.shard {
            return true;
        }
        if !v5 {
            return false;
        }
        let Err(e) = self.retained.fits(topic, topic.len() + payload_len) else { return false };
        let n = self.retained.note_refusal();
        if n.is_power_of_two() {
            // Warned at the 1st, 2nd, 4th, … refusal: visible without flooding the log.
            tracing::warn!(shard = %self.shard, %topic, refused = n, "{e}: retained PUBLISH refused (0x97)");
        }
        true
    }
}
