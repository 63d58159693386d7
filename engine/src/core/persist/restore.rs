//! Recovery, the core's side: rebuild a shard from the live state its log replayed
//! (`log::state::LogState`) before it serves clients.
//!
//! Persistent sessions come back offline with their subscriptions (re-announced to the other
//! shards exactly like a live SUBSCRIBE: trie, routing index, `SubDelta`), their queues,
//! in-flight messages (resent with DUP when the client returns [MQTT-4.4.0-1]), outbound
//! PUBREL state and inbound QoS 2 packet ids (so a resent QoS 2 PUBLISH is acknowledged, not
//! delivered again [MQTT-4.3.3-9]). Retained messages come back on their owner shard, which
//! replicates them to every other shard. Nothing recovered is logged again.
//!
//! Time: when the io layer told the wall-clock time ([`ShardCore::set_wall_clock`]), an
//! offline session keeps the deadline it had before the crash (`SessionOffline`), so the
//! downtime counts against its Session Expiry Interval, and a message's Message Expiry
//! Interval is reduced by its age, downtime included, which is also what a subscriber is
//! then told [MQTT-3.3.2-6]; a message that expired meanwhile is dropped when next met
//! [MQTT-3.3.2-5]. A session that was online at the crash expires its full interval after
//! the restart (the log does not know when the crash happened).
//!
//! A queued message delivered for a shared subscription keeps its group, so it goes back to
//! the group if the member leaves. A logged will becomes a delayed will again
//! (`persist/will.rs`). What the log does not keep: the Subscription Identifiers of queued
//! messages (rebuilt from the session's subscriptions).
//!
//! Shard-local.

use crate::core::hash::{KeyedState, Map};
use crate::core::routing::subscribe::{SubOptions, RESTORED_JOIN_TOKEN};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shardmq_codec::{
    decode, ByteStr, Packet, PacketId, Properties, ProtocolVersion, QoS, RetainHandling,
    SubscriptionOptions,
};

use crate::core::ids::SessionSlot;
use crate::core::mesh::{Message, Origin};
use crate::core::persist::diff::{LoggedInflight, QEntry, SessionLog};
use crate::core::routing::shared::is_shared;
use crate::core::routing::topic::filter_matches;
use crate::core::sessions::session::{Awaiting, Inflight, Queued, Session};
use crate::core::shard::{ShardCore, SCAN_INTERVAL};
use crate::log::record::{MessageStored, SessionEnded};
use crate::log::state::{LogState, SessionState};
use crate::log::Record;

/// What recovery rebuilt (for the start-up log line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Persistent sessions.
    pub sessions: usize,
    /// Subscriptions of those sessions.
    pub subscriptions: usize,
    /// Queued and in-flight messages over all sessions.
    pub messages: usize,
    /// Retained topics owned by this shard.
    pub retained: usize,
}

impl ShardCore {
    /// Rebuilds this shard from its log's recovered state. Call it once, after
    /// [`ShardCore::enable_persistence`] and before the first client; then let the io layer
    /// send the routing deltas and replicas it queued ([`ShardCore::drain_mesh_out`]).
    /// Fails if a session is not homed here (the data directory was written with another
    /// shard count).
    pub fn restore_from_log(&mut self, state: &LogState, now: Instant) -> Result<Restored, String> {
        let p = self.persist.as_deref_mut().expect("persistence enabled before recovery");
        let wall_now_ms = p.wall_ms_at(now);
        let now_ms = now.saturating_duration_since(self.config.started_at).as_millis() as u64;
        let mut done = Restored::default();
        let mut msgs: Map<u64, Arc<Message>> =
            Map::with_capacity_and_hasher(state.messages().len(), KeyedState::default());
        for (&id, stored) in state.messages() {
            let msg = Arc::new(message_from(&stored.message, self.shard, now_ms, wall_now_ms));
            p.restore_msg(id, &msg, stored.refs, stored.retained);
            msgs.insert(id, msg);
        }
        for (client_id, ss) in state.sessions() {
            if Self::home_shard(client_id.as_bytes(), self.config.shard_count) != self.shard {
                return Err(format!(
                    "session {client_id:?} is not homed on {} with {} shards: the data \
                     directory was written with another shard count",
                    self.shard, self.config.shard_count
                ));
            }
            if ss.expiry_secs == 0 {
                // Its connection was the last thing keeping it: it ended with the crash.
                let p = self.persist.as_deref_mut().expect("checked");
                let rec = SessionEnded { client_id: client_id.clone() };
                p.emit(&mut self.sessions, Record::SessionEnded(rec));
                ss.queue().for_each(|e| p.unref(e.msg_id));
                continue;
            }
            done.sessions += 1;
            done.messages += ss.queue().len();
            done.subscriptions += ss.subscriptions.len();
            let s = restore_session(client_id, ss, &msgs, now, wall_now_ms);
            let filters: Vec<(ByteStr, SubOptions)> = s.subs.clone();
            let slot = self.sessions.insert(s);
            match &ss.owner {
                Some(user) => self.sessions.set_user(slot, user.as_deref()),
                None => self.sessions.set_owner_unknown(slot),
            }
            for (filter, entry) in filters {
                self.restore_subscription(slot, filter, entry);
            }
            if self.config.auth.any_acl() {
                self.refresh_acl_coverage(slot);
            }
        }
        if done.sessions > 0 {
            // Recovered sessions expire even if no client connects.
            self.next_scan_at.get_or_insert(now + SCAN_INTERVAL);
        }
        for (topic, id) in state.retained() {
            let topic = ByteStr::from(topic.as_str());
            let msg = msgs[id].clone();
            self.persist.as_deref_mut().expect("checked").restore_retained(topic.clone(), *id);
            if self.apply_retained(topic.clone(), Some(msg.clone())) {
                self.replicate_retained(topic, Some(msg));
                done.retained += 1;
            }
        }
        Ok(done)
    }

    /// Re-creates one subscription of a recovered session (or one that moved here from
    /// another node, `cluster/moves.rs`) like a live SUBSCRIBE would, without a SUBACK.
    pub(crate) fn restore_subscription(
        &mut self,
        slot: SessionSlot,
        filter: ByteStr,
        entry: SubOptions,
    ) {
        if is_shared(&filter) {
            self.shared_subscribe(slot, &filter, entry, RESTORED_JOIN_TOKEN);
            return;
        }
        self.trie.insert(&filter, slot, entry);
        self.cluster_sub(&filter, true);
        if self.routes.add(&filter, self.shard) {
            self.broadcast_delta(&filter, true);
        }
    }
}

/// A recovered session: offline, expiring at the deadline it had (`wall_now_ms` is the
/// wall-clock time at `now`, if known), or its full interval from now.
fn restore_session(
    client_id: &str,
    ss: &SessionState,
    msgs: &Map<u64, Arc<Message>>,
    now: Instant,
    wall_now_ms: Option<u64>,
) -> Session {
    let mut s = Session::new(client_id);
    s.expiry_secs = ss.expiry_secs;
    let full = Duration::from_secs(ss.expiry_secs.into());
    let left = match wall_now_ms {
        Some(wall_ms) if ss.expires_at_unix_ms != 0 => {
            // Past the deadline: it expires at the first scan.
            Duration::from_millis(ss.expires_at_unix_ms.saturating_sub(wall_ms)).min(full)
        }
        _ => full,
    };
    s.expires_at = Some(now + left);
    s.subs = ss
        .subscriptions
        .iter()
        .map(|(f, sub)| {
            let id = (sub.sub_id != 0).then_some(sub.sub_id);
            (
                ByteStr::from(f.as_str()),
                SubOptions { opts: options_from_byte(sub.options), id, acl_check: false },
            )
        })
        .collect();
    let mut log = SessionLog {
        expiry_secs: ss.expiry_secs,
        subs: ss.subscriptions.clone(),
        ..SessionLog::default()
    };
    let mut queued = Vec::new();
    for e in ss.queue() {
        let msg = msgs[&e.msg_id].clone();
        let ptr = Arc::as_ptr(&msg) as usize;
        let (qos, retain) = (msg.qos, msg.retain);
        match e.packet_id.and_then(PacketId::new) {
            Some(packet_id) => {
                let state =
                    if qos == QoS::AtLeastOnce { Awaiting::PubAck } else { Awaiting::PubRec };
                s.last_packet_id = s.last_packet_id.max(packet_id.get());
                log.inflight.push(LoggedInflight {
                    packet_id: packet_id.get(),
                    ptr,
                    msg_id: e.msg_id,
                    pubrel: false,
                });
                let group = ss.groups.get(&e.msg_id).map(|g| ByteStr::from(g.as_str()));
                let sub_ids = sub_ids_for(&s, &msg, group.as_deref());
                s.inflight_mut().push_back(Inflight {
                    packet_id,
                    msg,
                    qos,
                    retain,
                    sub_ids,
                    state,
                    group,
                });
            }
            None => {
                let group = ss.groups.get(&e.msg_id).map(|g| ByteStr::from(g.as_str()));
                let sub_ids = sub_ids_for(&s, &msg, group.as_deref());
                queued.push((Queued { msg, qos, retain, sub_ids, group, seq: 0 }, e.msg_id, ptr));
            }
        }
    }
    for &pid in &ss.pubrel_pending {
        let Some(packet_id) = PacketId::new(pid) else { continue };
        // Only the PUBREL is resent: the message itself is done.
        let msg = Arc::new(Message {
            topic: ByteStr::from_static("$pubrel"),
            payload: Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: None,
            origin: Origin { shard: crate::core::ids::ShardId(0), session: u32::MAX },
            received_at_ms: 0,
        });
        let ptr = Arc::as_ptr(&msg) as usize;
        log.inflight.push(LoggedInflight { packet_id: pid, ptr, msg_id: 0, pubrel: true });
        s.last_packet_id = s.last_packet_id.max(pid);
        s.inflight_mut().push_back(Inflight {
            packet_id,
            msg,
            qos: QoS::ExactlyOnce,
            retain: false,
            sub_ids: Box::default(),
            state: Awaiting::PubComp,
            group: None,
        });
    }
    if !ss.qos2_inbound.is_empty() {
        // (Only then: the backlog box is allocated on first use.)
        *s.qos2_in_mut() = ss.qos2_inbound.iter().filter_map(|&pid| PacketId::new(pid)).collect();
    }
    s.plog = Some(Box::new(log));
    if let Some(w) = &ss.will {
        crate::core::persist::will::restore_will(&mut s, w, now);
    }
    for (q, msg_id, ptr) in queued {
        s.restore_queued(q, QEntry::Logged { msg_id, ptr });
    }
    s
}

/// The Subscription Identifiers a recovered message is sent with: those of the session's
/// (recovered) subscriptions matching its topic, or of the shared subscription `group` it
/// was delivered for [MQTT-3.3.4-3]. The log does not keep them per message; they are the
/// same unless the session changed its subscriptions between the message's arrival and the
/// crash.
fn sub_ids_for(s: &Session, msg: &Message, group: Option<&str>) -> Box<[u32]> {
    let matching = s.subs.iter().filter(|(f, _)| match group {
        Some(g) => &**f == g,
        None => !is_shared(f) && filter_matches(f, &msg.topic),
    });
    matching.filter_map(|(_, e)| e.id).collect()
}

/// The routed message of a stored one; the origin is the broker itself. It counts as
/// received at the recovery (`now_ms`), so its Message Expiry Interval is reduced by the age
/// it had at `wall_now_ms` (when both times are known): after the
/// restart the broker forwards "the received value minus the time that the message has been
/// waiting" [MQTT-3.3.2-6]. An interval used up becomes 0: expired at once [MQTT-3.3.2-5].
fn message_from(
    m: &MessageStored,
    shard: crate::core::ids::ShardId,
    now_ms: u64,
    wall_now_ms: Option<u64>,
) -> Message {
    let mut properties = decode_properties(&m.properties);
    let age_secs = wall_now_ms
        .filter(|_| m.received_at_ms != 0)
        .map(|now_ms| now_ms.saturating_sub(m.received_at_ms) / 1000);
    if let (Some(age_secs), Some(p)) = (age_secs, properties.as_deref_mut()) {
        if let Some(secs) = p.message_expiry_interval_secs.as_mut() {
            *secs = u32::try_from(u64::from(*secs).saturating_sub(age_secs)).unwrap_or(0);
        }
    }
    Message {
        topic: ByteStr::from(m.topic.as_str()),
        payload: Bytes::copy_from_slice(&m.payload),
        qos: QoS::from_u8(m.qos).unwrap_or(QoS::AtLeastOnce),
        retain: m.retain,
        properties,
        origin: Origin { shard, session: u32::MAX },
        received_at_ms: now_ms,
    }
}

/// Reads the properties blob written by `persist::encode_properties`.
pub(crate) fn decode_properties(blob: &[u8]) -> Option<Box<Properties>> {
    if blob.is_empty() {
        return None;
    }
    let limits = shardmq_codec::Limits { packet_size_max_bytes: 268_435_460 };
    match decode(&mut BytesMut::from(blob), &limits, ProtocolVersion::V5) {
        Ok(Some(Packet::Publish(p))) => p.properties,
        other => {
            tracing::warn!("stored message properties do not decode ({other:?}); dropped");
            None
        }
    }
}

/// The options of a subscription from the log's byte (the 5.0 wire layout).
pub(crate) fn options_from_byte(b: u8) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::from_u8(b & 0x03).unwrap_or(QoS::ExactlyOnce),
        no_local: b & 0x04 != 0,
        retain_as_published: b & 0x08 != 0,
        retain_handling: match (b >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            _ => RetainHandling::DoNotSend,
        },
    }
}
