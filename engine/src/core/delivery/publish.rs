//! Inbound PUBLISH and PUBREL, their acknowledgements, routing to shards, and the retained
//! store's replication.
//!
//! Routing (design.md §4): the routing index replica names the shards with a matching
//! subscription; each remote one gets one `MeshMsg::Publish` (not one per subscriber), this
//! shard delivers directly.
//!
//! Retained messages: every shard keeps a full replica. The owner of a topic
//! (`home_shard(topic)`) sequences its updates: the publishing shard sends `RetainSet` to the
//! owner (or applies directly if it is the owner), and the owner replicates its decision to
//! every other shard with `RetainReplica`. So all replicas apply one topic's updates in the
//! same order.
//!
//! Shard-local: runs on the publisher's home shard (and, for mesh messages, the receiver).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shardmq_codec::{ByteStr, Packet, PacketId, Publish, QoS, ReasonCode};

use crate::core::auth::acl::WRITE;
use crate::core::delivery::deliver::pub_resp;
use crate::core::delivery::drops::DropReason;
use crate::core::ids::{ConnId, SessionSlot, ShardId};
use crate::core::mesh::{MeshMsg, Message, Origin};
use crate::core::persist::{Ack, AckKind};
use crate::core::policy::quota::PublishRate;
use crate::core::policy::Denial;
use crate::core::shard::{CloseKind, ShardCore};
use crate::log::record::{Qos2Received, Qos2Released};
use crate::log::Record;

/// True for `$SYS` and `$SYS/...`: the broker's own topics. PUBLISH from clients to them is
/// acknowledged but not routed (clients must not forge broker statistics). Other `$` topics
/// are ordinary topics (apart from the wildcard rule).
pub(crate) fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

impl ShardCore {
    /// PUBLISH from a connected client.
    pub(crate) fn handle_publish(
        &mut self,
        conn: ConnId,
        slot: SessionSlot,
        p: Publish,
        now: Instant,
    ) {
        #[cfg(debug_assertions)]
        if self.config().fault_panic_topic.as_ref().is_some_and(|t| *t == p.topic) {
            panic!("test-only fault: PUBLISH to {} (SHARDMQ_TEST_PANIC_TOPIC)", p.topic);
        }
        if !self.admit_publish_rate(conn, p.payload.len(), now) {
            // Past the connection's PUBLISH quota (`policy/quota.rs`): 5.0 DISCONNECT 0x96
            // Message rate too high; 3.1.1 has no way to say it: closed.
            let kind = CloseKind::Abnormal(Some(ReasonCode::MESSAGE_RATE_TOO_HIGH));
            return self.close_conn(conn, kind, now);
        }
        let mut properties = p.properties;
        let mut topic = p.topic;
        if !topic.is_empty() && self.topic_limits.check(&topic).is_err() {
            let kind = CloseKind::Abnormal(Some(ReasonCode::TOPIC_NAME_INVALID));
            return self.close_conn(conn, kind, now);
        }
        if let Some(props) = properties.as_deref_mut() {
            // The alias is resolved here and never forwarded: aliases belong to one
            // network connection [MQTT-3.3.2-7].
            if let Some(alias) = props.topic_alias.take() {
                match self.resolve_topic_alias(conn, alias, topic) {
                    Ok(t) => topic = t,
                    Err(reason) => {
                        return self.close_conn(conn, CloseKind::Abnormal(Some(reason)), now)
                    }
                }
            }
            // A client must not send Subscription Identifiers [MQTT-3.3.4-6]: drop them.
            props.subscription_identifiers.clear();
        }
        let properties = properties.filter(|p| !p.is_empty());
        if topic.is_empty() {
            // An empty topic without a Topic Alias (5.0 §3.3.2.1).
            let kind = CloseKind::Abnormal(Some(ReasonCode::PROTOCOL_ERROR));
            return self.close_conn(conn, kind, now);
        }
        let packet_id = match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) => None,
            (_, Some(id)) => Some(id),
            (_, None) => {
                // The codec guarantees an id for QoS > 0; be safe with the outside world.
                let kind = CloseKind::Abnormal(Some(ReasonCode::PROTOCOL_ERROR));
                return self.close_conn(conn, kind, now);
            }
        };
        self.stats.messages_received += 1;
        self.ops.received(p.qos);
        if !self.acl_allows(slot, &topic, WRITE) {
            return self.deny_publish(conn, slot, p.qos, packet_id, &topic, now);
        }

        if let (QoS::ExactlyOnce, Some(id)) = (p.qos, packet_id) {
            let inflight_in_max = usize::from(self.config.limits.inflight_in_max);
            let s = self.sessions.get_mut(slot);
            if s.qos2_in().contains(&id) {
                // A retransmission of a message we already routed and PUBREC'd: it must
                // not be delivered twice (method B, §4.3.3) [MQTT-4.3.3-9]. Acknowledge
                // again, with the original outcome (a PUBREC that failed fails again).
                if s.plog.as_deref().is_some_and(|l| l.qos2_failed.contains(&id)) {
                    let ack = Ack { conn, slot, kind: AckKind::PubRec, id };
                    return self.hold_ack(ack, Vec::new(), true, now);
                }
                return self.ack_publish(conn, slot, QoS::ExactlyOnce, id, Vec::new(), now);
            }
            if s.qos2_in().len() >= inflight_in_max {
                // More unacknowledged QoS 2 than our Receive Maximum [MQTT-3.3.4-9].
                let kind = CloseKind::Abnormal(Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
                return self.close_conn(conn, kind, now);
            }
        }
        let v5 = self.conns.get(conn).is_some_and(|c| c.is_v5());
        let retain_refused =
            packet_id.is_some() && p.retain && self.retained_refused(&topic, p.payload.len(), v5);
        if let Some(id) = packet_id.filter(|_| retain_refused) {
            // The retained store (5.0) or the owner's log cannot keep it: refuse it rather
            // than acknowledge what is not kept (0x97 Quota exceeded; 3.1.1 disconnects,
            // for the log only). QoS 0 goes on; its retained copy is dropped, counted,
            // warned (`delivery/refusal.rs`).
            let why = if self.log_full() { DropReason::LogFull } else { DropReason::RetainedFull };
            self.stats.dropped(why, 1);
            let kind = if p.qos == QoS::AtLeastOnce { AckKind::PubAck } else { AckKind::PubRec };
            return self.hold_ack(Ack { conn, slot, kind, id }, Vec::new(), true, now);
        }
        // A persistent publisher's QoS 2 message: logged as received only with every copy
        // of it (`persist/gate.rs`), and sent to nobody here before that is durable.
        let mut gate = false;
        if let (QoS::ExactlyOnce, Some(id)) = (p.qos, packet_id) {
            let s = self.sessions.get_mut(slot);
            s.qos2_in_mut().push(id);
            gate = self.persist.is_some() && s.plog.is_some();
        }

        let msg = Message {
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            origin: Origin { shard: self.shard, session: slot.0 },
            received_at_ms: self.uptime_ms(now),
        };
        let msg = Arc::new(msg);
        let gated = gate && self.gate_message(&msg).is_some();
        let mark = self.mesh_out.len();
        self.take_copy_refused();
        if packet_id.is_some() {
            self.route_answered(msg, now);
        } else {
            self.publish_from_client(msg, now);
        }
        if let Some(id) = packet_id {
            if self.take_copy_refused() {
                // A local persistent session could not keep its copy (the log is past its
                // soft cap, or its queue is full under the `refuse` policy): decided before
                // any copy was sent or routed (`delivery/refusal.rs`), and answered 0x97.
                debug_assert_eq!(self.mesh_out.len(), mark, "a refused message was routed");
                let kind =
                    if p.qos == QoS::AtLeastOnce { AckKind::PubAck } else { AckKind::PubRec };
                return self.hold_ack(Ack { conn, slot, kind, id }, Vec::new(), true, now);
            }
            let remote = self.request_remote_durability(mark);
            if gated {
                if remote.is_empty() {
                    // Every copy is in this batch: `Qos2Received` joins them (atomic).
                    self.log_qos2_received(slot, id);
                } else {
                    // Copies on other shards: logged once they reported them durable.
                    let ack = Ack { conn, slot, kind: AckKind::PubRec, id };
                    return self.hold_qos2_commit(ack, remote);
                }
            }
            self.ack_publish(conn, slot, p.qos, id, remote, now);
        }
    }

    /// Counts a PUBLISH of `bytes` payload bytes against the connection's quotas; false
    /// (counted as a denial) past one.
    fn admit_publish_rate(&mut self, conn: ConnId, bytes: usize, now: Instant) -> bool {
        let ShardCore { config, publish_rates, stats, .. } = self;
        let q = &config.auth.quotas;
        if q.publish_messages_per_sec.is_none() && q.publish_bytes_per_sec.is_none() {
            return true;
        }
        let rate = publish_rates.entry(conn).or_insert_with(|| PublishRate::new(q));
        if rate.admit(q, bytes, now) {
            return true;
        }
        stats.denials[Denial::PublishRate as usize] += 1;
        tracing::debug!(shard = %self.shard, ?conn, "denied: publish rate");
        false
    }

    /// A PUBLISH without write right (`policy/authorize.rs`): counted and dropped. 5.0
    /// QoS 1/2 get PUBACK/PUBREC 0x87 Not authorized (5.0 §3.4.2.1, §3.5.2.1; a PUBREC
    /// failure ends the flow [MQTT-4.3.3-4]); 3.1.1 has no negative acknowledgement: the
    /// message is acknowledged and dropped (as Mosquitto does), or, with
    /// `acl_deny_publish = "disconnect"`, the connection is closed.
    fn deny_publish(
        &mut self,
        conn: ConnId,
        slot: SessionSlot,
        qos: QoS,
        packet_id: Option<PacketId>,
        topic: &str,
        now: Instant,
    ) {
        self.count_denial(Denial::Publish, slot, topic);
        self.stats.dropped(DropReason::AclDenied, 1);
        let v5 = self.conns.get(conn).is_some_and(|c| c.is_v5());
        if !v5 && self.config.auth.acl_deny_publish_disconnect {
            return self.close_conn(conn, CloseKind::Abnormal(None), now);
        }
        let Some(id) = packet_id else { return };
        let kind = if qos == QoS::AtLeastOnce { AckKind::PubAck } else { AckKind::PubRec };
        let ack = Ack { conn, slot, kind, id };
        if v5 {
            self.hold_ack_or_refusal(ack, Vec::new(), Some(ReasonCode::NOT_AUTHORIZED), now);
        } else {
            // 3.1.1 QoS 2: PUBREC now; the PUBREL that follows finds no flow and still gets
            // its PUBCOMP (`handle_pubrel`).
            self.hold_ack(ack, Vec::new(), false, now);
        }
    }

    /// Logs that `slot`'s inbound QoS 2 message `id` was received and routed: a resend is
    /// a duplicate from now on, across a crash too [MQTT-4.3.3-9].
    pub(crate) fn log_qos2_received(&mut self, slot: SessionSlot, id: PacketId) {
        // Late (after other shards' answers) the flow may have ended with its session.
        if !self.sessions.try_get_mut(slot).is_some_and(|s| s.qos2_in().contains(&id)) {
            return;
        }
        let packet_id = id.get();
        self.persist_session_record(slot, |client_id| {
            Record::Qos2Received(Qos2Received { client_id, packet_id })
        });
    }

    /// Applies an inbound Topic Alias: an empty `topic` is looked up, a non-empty one
    /// (already validated) becomes the alias's mapping. Errors are the DISCONNECT reason.
    fn resolve_topic_alias(
        &mut self,
        conn: ConnId,
        alias: u16,
        topic: ByteStr,
    ) -> Result<ByteStr, ReasonCode> {
        // Alias 0 is refused by the decoder [MQTT-3.3.2-8]; above the maximum we advertised
        // [MQTT-3.3.2-9]/[MQTT-3.3.2-10].
        if alias == 0 || alias > self.config.limits.topic_alias_max {
            return Err(ReasonCode::TOPIC_ALIAS_INVALID);
        }
        let c = self.conns.get_mut(conn).ok_or(ReasonCode::PROTOCOL_ERROR)?;
        let aliases = c.aliases.get_or_insert_with(Default::default);
        if topic.is_empty() {
            // An alias with no mapping yet is a Protocol Error (5.0 §3.3.2.3.4).
            return aliases.inbound.get(&alias).cloned().ok_or(ReasonCode::PROTOCOL_ERROR);
        }
        // The table outlives the packet: own the bytes rather than pin the read buffer.
        aliases.inbound.insert(alias, ByteStr::from(topic.as_str()));
        Ok(topic)
    }

    /// The one place inbound PUBLISH acknowledgements (PUBACK, PUBREC) are emitted. With
    /// persistence they are held until the message's log records, and the copies of the
    /// shards in `remote`, are durable, and leave in the order they were produced, which is
    /// packet-id order per connection [MQTT-4.6.0-2] [MQTT-4.6.0-3] (`persist/mod.rs`).
    fn ack_publish(
        &mut self,
        conn: ConnId,
        slot: SessionSlot,
        qos: QoS,
        id: PacketId,
        remote: Vec<(ShardId, u64)>,
        now: Instant,
    ) {
        let kind = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => AckKind::PubAck,
            QoS::ExactlyOnce => AckKind::PubRec,
        };
        self.hold_ack(Ack { conn, slot, kind, id }, remote, false, now);
    }

    /// PUBREL for an incoming QoS 2 message: forget the id, answer PUBCOMP (5.0: 0x92 if the
    /// id was unknown). With persistence, PUBCOMP waits until the release is durable: after
    /// PUBCOMP the client may reuse the id, and a recovered id would make its next message
    /// look like a duplicate.
    pub(crate) fn handle_pubrel(
        &mut self,
        conn: ConnId,
        slot: SessionSlot,
        id: PacketId,
        now: Instant,
    ) {
        if !self.forget_qos2_in(slot, id) {
            let resp = pub_resp(id, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
            return self.send_packet(conn, &Packet::PubComp(resp));
        }
        let ack = Ack { conn, slot, kind: AckKind::PubComp, id };
        self.hold_ack(ack, Vec::new(), false, now);
    }

    /// Ends the inbound QoS 2 flow of `id` (PUBREL, or a refused PUBREC). False if unknown.
    pub(crate) fn forget_qos2_in(&mut self, slot: SessionSlot, id: PacketId) -> bool {
        let s = self.sessions.get_mut(slot);
        let Some(i) = s.qos2_in().iter().position(|x| *x == id) else { return false };
        s.qos2_in_mut().swap_remove(i);
        if let Some(log) = s.plog.as_deref_mut() {
            log.qos2_failed.retain(|x| *x != id);
        }
        let packet_id = id.get();
        self.persist_session_record(slot, |client_id| {
            Record::Qos2Released(Qos2Released { client_id, packet_id })
        });
        true
    }

    /// A message published by a client (or its will): routed unless it targets `$SYS`.
    pub(crate) fn publish_from_client(&mut self, msg: Arc<Message>, now: Instant) {
        if is_sys_topic(&msg.topic) {
            tracing::debug!(shard = %self.shard, topic = %msg.topic, "client PUBLISH to $SYS ignored");
            return;
        }
        self.route_message(msg, now);
    }

    /// Routes a message to every shard with a matching subscription (one mesh message per
    /// remote shard, direct delivery here) and updates the retained store if RETAIN is set.
    ///
    /// This shard's subscribers come first: when the publisher waits for the answer and a
    /// local copy cannot be kept, the message is refused before anything else happens, so
    /// it reaches nobody (`delivery/refusal.rs`).
    pub(crate) fn route_message(&mut self, msg: Arc<Message>, now: Instant) {
        let shards = self.routes.shards_for(&msg.topic);
        if shards.contains(self.shard) {
            let now_ms = self.uptime_ms(now);
            self.deliver_local(&msg, now_ms);
            if self.message_refused() {
                return;
            }
            self.deliver_shared(&msg, now_ms);
            if self.message_refused() {
                // A shared group's member here could not keep its copy (chosen after the
                // check of `deliver_local`): no retained update, nothing routed on. Local
                // subscribers may already have it (`delivery/refusal.rs`).
                return;
            }
        }
        if msg.retain {
            self.update_retained(&msg);
        }
        self.cluster_forward(&msg);
        for shard in shards.iter() {
            if shard != self.shard {
                self.note_routed(shard, &msg);
                self.mesh_out.push((shard, MeshMsg::Publish(msg.clone())));
            }
        }
    }

    /// The shard that sequences updates of `topic`'s retained message.
    pub(crate) fn retain_owner(&self, topic: &str) -> ShardId {
        Self::home_shard(topic.as_bytes(), self.config.shard_count)
    }

    /// A PUBLISH with RETAIN = 1: store it (or clear on an empty payload
    /// [MQTT-3.3.1-10]/[MQTT-3.3.1-11]) through the topic's owner.
    fn update_retained(&mut self, msg: &Arc<Message>) {
        // The stored copy owns its bytes: the routed message's topic and payload are slices
        // of a read buffer, which a long-lived retained message must not pin.
        let stored = (!msg.payload.is_empty()).then(|| {
            Arc::new(Message {
                topic: ByteStr::from(msg.topic.as_str()),
                payload: Bytes::copy_from_slice(&msg.payload),
                ..(**msg).clone()
            })
        });
        let topic = stored.as_ref().map_or_else(|| msg.topic.clone(), |m| m.topic.clone());
        let owner = self.retain_owner(&topic);
        if owner == self.shard {
            self.apply_retained_as_owner(topic, stored);
        } else {
            self.mesh_out.push((owner, MeshMsg::RetainSet { topic, msg: stored }));
        }
    }

    /// The owner applies an update and replicates it to every other shard.
    pub(crate) fn apply_retained_as_owner(&mut self, topic: ByteStr, msg: Option<Arc<Message>>) {
        if let Some(m) = msg.as_ref().filter(|_| self.log_full() && !is_sys_topic(&topic)) {
            // The log is past its soft cap: a new retained message is not stored (the rest
            // of the cap is for records that free space; clearing one is still accepted).
            // QoS 1/2: the publisher gets 0x97 (`persist/ack.rs`); QoS 0: dropped, counted.
            self.stats.dropped(DropReason::LogFull, 1);
            if m.qos == QoS::AtMostOnce {
                let shard = self.shard;
                tracing::warn!(%shard, %topic, "log full: retained QoS 0 message dropped");
            } else if let Some(p) = self.persist.as_deref_mut() {
                p.copy_refused = true;
            }
            return;
        }
        if !self.apply_retained(topic.clone(), msg.clone()) {
            // The store is full (`retained_bytes_max`, `retained_messages_max`): a QoS 1/2
            // publisher was refused before routing (`delivery/refusal.rs`) unless an update of
            // another topic raced with it; a QoS 0 one is not told.
            let n = self.retained.refusals();
            if n.is_power_of_two() {
                let shard = self.shard;
                tracing::warn!(%shard, %topic, refused = n, "retained store full: retained message dropped");
            }
            return;
        }
        if let Some(p) = self.persist.as_deref_mut().filter(|_| !is_sys_topic(&topic)) {
            // The owner logs the topic's retained message; recovery replicates it again.
            p.retained_update(&mut self.sessions, &topic, msg.as_ref());
        }
        self.replicate_retained(topic, msg);
    }

    /// Sends the owner's retained message of `topic` to every other shard's replica.
    pub(crate) fn replicate_retained(&mut self, topic: ByteStr, msg: Option<Arc<Message>>) {
        for i in 0..self.config.shard_count {
            let shard = ShardId(i);
            if shard != self.shard {
                let replica = MeshMsg::RetainReplica { topic: topic.clone(), msg: msg.clone() };
                self.mesh_out.push((shard, replica));
            }
        }
    }

    /// Applies an update to this shard's replica. False if refused (the store is full).
    pub(crate) fn apply_retained(&mut self, topic: ByteStr, msg: Option<Arc<Message>>) -> bool {
        match msg {
            Some(m) => {
                if self.retained.set(&topic, m).is_err() {
                    self.stats.dropped(DropReason::RetainedFull, 1);
                    return false;
                }
            }
            None => {
                self.retained.clear(&topic);
            }
        }
        true
    }
}
