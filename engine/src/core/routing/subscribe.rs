//! SUBSCRIBE and UNSUBSCRIBE: the session's subscriptions, the shard's trie, routing deltas
//! to the other shards, and the SUBACK gate.
//!
//! When a filter gains its first (or loses its last) subscriber on this shard, every other
//! shard is told with `MeshMsg::SubDelta` and answers `SubDeltaAck`. A SUBACK waits until
//! every peer has acknowledged every delta this shard sent up to the SUBSCRIBE (not only the
//! SUBSCRIBE's own: a filter another session added a moment ago may still be in flight).
//! Rings are FIFO and peers ack in order, so "peer p acked seq s" means it applied every
//! delta up to s, and the gate is one number per peer. After SUBACK, a PUBLISH on any shard
//! is routed to the new subscription.
//!
//! With persistence, the SUBACK and UNSUBACK of a persistent session also wait until the
//! batch holding the subscription records is durable (`persist/mod.rs`): a client told
//! "subscribed" finds the subscription again after a crash when the broker answers
//! Session Present = 1 (5.0 §3.2.2.1.1, [MQTT-3.2.2-3]). They wait in the same queue, so a
//! session's SUBACKs and UNSUBACKs leave in the order of its requests.
//!
//! Shard-local: one gate per shard.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use shardmq_codec::{
    ByteStr, Packet, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};

use crate::core::auth::acl::{Coverage, READ};
use crate::core::ids::{ConnId, SessionSlot, ShardId};
use crate::core::mesh::{is_expired, MeshMsg, Message};
use crate::core::policy::Denial;
use crate::core::routing::replay::Replay;
use crate::core::routing::shared::{is_shared, is_valid_shared};
use crate::core::shard::{CloseKind, ShardCore};

/// A subscription as the shard's trie holds it: the SUBSCRIBE options and the 5.0
/// Subscription Identifier, carried on every message the subscription matches
/// [MQTT-3.3.4-3].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubOptions {
    pub(crate) opts: SubscriptionOptions,
    /// 1..=268,435,455 when the SUBSCRIBE carried one.
    pub(crate) id: Option<u32>,
    /// The ACL grants part of the filter only: each delivered topic is checked
    /// (`auth/acl.rs`, [`ShardCore::acl_coverage`]).
    pub(crate) acl_check: bool,
}

/// A SUBACK (or UNSUBACK) waiting for routing-delta acknowledgements and for the log, with
/// the retained messages to send after it.
#[derive(Debug)]
struct PendingSubAck {
    conn: ConnId,
    slot: SessionSlot,
    /// Every peer must have acked this sequence number.
    wait_seq: u64,
    /// `SharedJoinAck`s still awaited from shared groups' owners (`routing/shared.rs`).
    joins_waiting: u32,
    /// Names this SUBACK in those acks.
    token: u64,
    /// The cluster runtime must hold this shard's filter changes up to here
    /// (`cluster/shard_side.rs`; 0 outside a cluster).
    cluster_seq: u64,
    /// The log batch holding the subscription records (0: nothing logged, no wait).
    ticket: u64,
    /// The SUBACK or UNSUBACK.
    reply: Packet,
    /// Filters whose retained messages follow the SUBACK.
    retained: Vec<(ByteStr, SubOptions)>,
}

/// Sequence numbers of this shard's routing deltas and what each peer acknowledged.
///
/// Shard-local: one per shard.
#[derive(Debug)]
pub(crate) struct SubAckGate {
    last_seq: u64,
    /// Per shard (indexed by id): the highest delta sequence it acknowledged.
    acked: Vec<u64>,
    /// SUBACKs and UNSUBACKs in request order (so `ticket` is non-decreasing where set).
    pending: VecDeque<PendingSubAck>,
    /// The last SUBSCRIBE token handed out (for `SharedJoinAck`).
    last_token: u64,
    /// As a shared group's owner: `SharedJoinAck`s (to shard, token) waiting for every peer
    /// to ack this shard's deltas up to the sequence number (and the cluster runtime up to
    /// the cluster sequence number), in join order.
    join_acks: VecDeque<(u64, u64, ShardId, u64)>,
}

impl SubAckGate {
    pub(crate) fn new(shard_count: u16) -> SubAckGate {
        SubAckGate {
            last_seq: 0,
            acked: vec![0; usize::from(shard_count)],
            pending: VecDeque::new(),
            last_token: 0,
            join_acks: VecDeque::new(),
        }
    }

    fn all_acked(&self, seq: u64, me: ShardId) -> bool {
        self.acked.iter().enumerate().all(|(i, a)| i == usize::from(me.0) || *a >= seq)
    }
}

impl ShardCore {
    /// SUBSCRIBE from a connected client.
    pub(crate) fn handle_subscribe(
        &mut self,
        conn: ConnId,
        slot: SessionSlot,
        sub: Subscribe,
        now: Instant,
    ) {
        let v5 = self.conns.get(conn).is_some_and(|c| c.is_v5());
        // Another broker's bridge (Mosquitto's bridge bit in CONNECT): as a 5.0 bridge would
        // ask with No Local and Retain As Published, so nothing it sends comes back to it and
        // retain flags cross as published.
        let bridge = self.conns.get(conn).is_some_and(|c| c.info.bridge);
        // At most one Subscription Identifier per SUBSCRIBE (the decoder enforces it); it
        // applies to every filter of the packet (5.0 §3.8.2.1.2).
        let sub_id = sub.properties.as_ref().and_then(|p| p.subscription_identifiers.first());
        let sub_id = sub_id.copied().filter(|_| v5);
        let subs_max = self.config.limits.subscriptions_per_session_max as usize;
        let mut reasons = Vec::with_capacity(sub.filters.len());
        let mut retained = Vec::new();
        self.gate.last_token += 1;
        let token = self.gate.last_token;
        let mut joins_waiting = 0u32;
        for (filter, opts) in sub.filters {
            let mut entry = SubOptions { opts, id: sub_id, acl_check: false };
            if bridge {
                entry.opts.no_local = true;
                entry.opts.retain_as_published = true;
            }
            // Shared subscriptions (`routing/shared.rs`) live with their group's owner, not in this
            // shard's trie, and get no retained messages (5.0 §4.8.2).
            let shared = is_shared(&filter);
            let valid =
                (!shared || is_valid_shared(&filter)) && self.topic_limits.check(&filter).is_ok();
            // Authorisation (`policy/authorize.rs`): a filter with no read right is refused
            // (5.0 §3.9.3: 0x87 Not authorized); a partly readable one is checked per
            // delivered topic; a fully readable one never again.
            let coverage =
                if valid { self.acl_read_coverage(slot, &filter) } else { Coverage::Full };
            entry.acl_check = coverage == Coverage::Partial;
            let reason = if !valid {
                ReasonCode::TOPIC_FILTER_INVALID
            } else if coverage == Coverage::None {
                self.count_denial(Denial::Subscribe, slot, &filter);
                ReasonCode::NOT_AUTHORIZED
            } else {
                let session = self.sessions.get_mut(slot);
                match session.sub_position(&filter) {
                    Some(i) => {
                        // [MQTT-3.8.4-3]: a repeated filter replaces the subscription.
                        session.subs[i].1 = entry;
                        let filter = session.subs[i].0.clone();
                        if shared {
                            let waits = self.shared_subscribe(slot, &filter, entry, token);
                            joins_waiting += u32::from(waits);
                        } else {
                            self.trie.insert(&filter, slot, entry);
                            if opts.retain_handling == RetainHandling::SendAtSubscribe {
                                retained.push((filter, entry));
                            }
                        }
                        ReasonCode(opts.qos as u8)
                    }
                    None if session.subs.len() >= subs_max => ReasonCode::QUOTA_EXCEEDED,
                    None => {
                        // Own the bytes: the packet's are a slice of a read buffer.
                        let filter = ByteStr::from(filter.as_str());
                        session.subs.push((filter.clone(), entry));
                        if shared {
                            let waits = self.shared_subscribe(slot, &filter, entry, token);
                            joins_waiting += u32::from(waits);
                        } else {
                            self.trie.insert(&filter, slot, entry);
                            if opts.retain_handling != RetainHandling::DoNotSend {
                                retained.push((filter.clone(), entry));
                            }
                            self.cluster_sub(&filter, true);
                            if self.routes.add(&filter, self.shard) {
                                self.broadcast_delta(&filter, true);
                            }
                        }
                        ReasonCode(opts.qos as u8)
                    }
                }
            };
            // 3.1.1 knows only 0x80 for failure.
            reasons.push(if !v5 && reason.is_error() { ReasonCode(0x80) } else { reason });
        }
        let pending = PendingSubAck {
            conn,
            slot,
            wait_seq: self.gate.last_seq,
            cluster_seq: self.cluster_seq(),
            joins_waiting,
            token,
            ticket: self.log_wait_ticket(slot),
            reply: Packet::SubAck(SubAck { packet_id: sub.packet_id, reasons, properties: None }),
            retained,
        };
        if self.gate.pending.is_empty() && self.suback_ready(&pending) {
            self.send_suback(pending, now);
        } else {
            self.gate.pending.push_back(pending);
        }
    }

    /// UNSUBSCRIBE from a connected client. UNSUBACK does not wait for other shards: a
    /// message still routed here for a moment finds no subscription and is dropped. For a
    /// persistent session it waits for the log (behind the session's earlier SUBACKs).
    pub(crate) fn handle_unsubscribe(
        &mut self,
        conn: ConnId,
        slot: SessionSlot,
        u: Unsubscribe,
        now: Instant,
    ) {
        let v5 = self.conns.get(conn).is_some_and(|c| c.is_v5());
        let mut reasons = Vec::with_capacity(if v5 { u.filters.len() } else { 0 });
        for filter in &u.filters {
            let session = self.sessions.get_mut(slot);
            let reason = match session.sub_position(filter) {
                Some(i) => {
                    let (owned, _) = session.subs.swap_remove(i);
                    self.remove_subscription_entry(slot, &owned, now);
                    ReasonCode::SUCCESS
                }
                None => ReasonCode::NO_SUBSCRIPTION_EXISTED,
            };
            if v5 {
                reasons.push(reason);
            }
        }
        let unsuback = UnsubAck { packet_id: u.packet_id, reasons, properties: None };
        let ticket = self.log_wait_ticket(slot);
        if ticket == 0 {
            return self.send_packet(conn, &Packet::UnsubAck(unsuback));
        }
        let pending = PendingSubAck {
            conn,
            slot,
            wait_seq: 0,
            cluster_seq: 0,
            joins_waiting: 0,
            token: 0,
            ticket,
            reply: Packet::UnsubAck(unsuback),
            retained: Vec::new(),
        };
        self.gate.pending.push_back(pending);
    }

    /// Removes `slot`'s subscription to `filter` from the trie and the routing index (the
    /// caller removes it from the session), broadcasting a delta if it was this shard's last.
    /// A shared subscription leaves its group instead.
    pub(crate) fn remove_subscription_entry(
        &mut self,
        slot: SessionSlot,
        filter: &ByteStr,
        now: Instant,
    ) {
        if is_shared(filter) {
            return self.shared_unsubscribe(slot, filter, self.uptime_ms(now));
        }
        if self.trie.remove(filter, slot).is_none() {
            return;
        }
        self.cluster_sub(filter, false);
        if self.routes.remove(filter, self.shard) {
            self.broadcast_delta(filter, false);
        }
    }

    /// Tells every other shard that `filter` entered or left this shard's set. (The other
    /// nodes of a cluster count subscriptions apart: `cluster/shard_side.rs`.)
    pub(crate) fn broadcast_delta(&mut self, filter: &ByteStr, added: bool) {
        if self.config.shard_count == 1 {
            return;
        }
        self.gate.last_seq += 1;
        let seq = self.gate.last_seq;
        for i in 0..self.config.shard_count {
            let shard = ShardId(i);
            if shard != self.shard {
                let delta = MeshMsg::SubDelta { filter: filter.clone(), added, seq };
                self.mesh_out.push((shard, delta));
            }
        }
    }

    /// A peer acknowledged our deltas up to `seq`: release the SUBACKs that waited for it.
    pub(crate) fn handle_sub_delta_ack(&mut self, from: ShardId, seq: u64, now: Instant) {
        let acked = &mut self.gate.acked[usize::from(from.0)];
        debug_assert!(seq >= *acked, "delta acks out of order from {from}");
        *acked = (*acked).max(seq);
        self.release_subacks(now);
        self.release_join_acks();
    }

    /// Sends the `SharedJoinAck`s whose deltas every peer (and every node) acknowledged.
    pub(crate) fn release_join_acks(&mut self) {
        while let Some(&(wait_seq, cluster_seq, to, token)) = self.gate.join_acks.front() {
            if !self.gate.all_acked(wait_seq, self.shard) || !self.cluster_acked(cluster_seq) {
                break;
            }
            self.gate.join_acks.pop_front();
            self.mesh_out.push((to, MeshMsg::SharedJoinAck { token }));
        }
    }

    /// True when `p`'s deltas and shared joins are acked and its log records durable.
    fn suback_ready(&self, p: &PendingSubAck) -> bool {
        p.joins_waiting == 0
            && self.gate.all_acked(p.wait_seq, self.shard)
            && self.cluster_acked(p.cluster_seq)
            && self.log_ticket_done(p.ticket)
    }

    /// The sequence number of this shard's last routing delta to the other shards.
    pub(crate) fn gate_seq(&self) -> u64 {
        self.gate.last_seq
    }

    /// True when every other shard acknowledged this shard's deltas up to `seq`.
    pub(crate) fn gate_acked(&self, seq: u64) -> bool {
        self.gate.all_acked(seq, self.shard)
    }

    /// Sends the SUBACKs and UNSUBACKs at the front of the queue that are ready.
    pub(crate) fn release_subacks(&mut self, now: Instant) {
        self.release_moved_connects(now);
        while let Some(front) = self.gate.pending.front() {
            if !self.suback_ready(front) {
                break;
            }
            let pending = self.gate.pending.pop_front().expect("front exists");
            self.send_suback(pending, now);
        }
    }

    /// The oldest log ticket a waiting SUBACK or UNSUBACK needs (0: none).
    pub(crate) fn suback_oldest_ticket(&self) -> u64 {
        self.gate.pending.iter().map(|p| p.ticket).find(|&t| t != 0).unwrap_or(0)
    }

    /// As the owner of a shared group, acknowledges `from`'s `SharedJoin` once every peer
    /// has acked this shard's deltas so far (including one the join may have caused).
    pub(crate) fn ack_shared_join(&mut self, from: ShardId, token: u64) {
        let wait_seq = self.gate.last_seq;
        let cluster_seq = self.cluster_seq();
        if self.gate.join_acks.is_empty()
            && self.gate.all_acked(wait_seq, self.shard)
            && self.cluster_acked(cluster_seq)
        {
            self.mesh_out.push((from, MeshMsg::SharedJoinAck { token }));
        } else {
            self.gate.join_acks.push_back((wait_seq, cluster_seq, from, token));
        }
    }

    /// A group's owner acknowledged one of the joins of the SUBSCRIBE named `token`.
    pub(crate) fn handle_shared_join_ack(&mut self, token: u64, now: Instant) {
        if let Some(p) = self.gate.pending.iter_mut().find(|p| p.token == token) {
            debug_assert!(p.joins_waiting > 0, "more join acks than joins");
            p.joins_waiting = p.joins_waiting.saturating_sub(1);
        } else {
            // Recovery's joins (`persist/restore.rs`) have no SUBACK waiting.
            let restored = token == RESTORED_JOIN_TOKEN;
            debug_assert!(restored, "join ack {token} for no pending SUBACK");
        }
        self.release_subacks(now);
    }

    /// Sends a SUBACK (or UNSUBACK), then the retained messages matching its filters
    /// (RETAIN = 1 [MQTT-3.3.1-8], `$` rule applied by the store). Dropped if the connection
    /// is gone. Expired retained messages are not sent and are removed from this shard's
    /// replica (every replica does the same when it next meets them).
    ///
    /// If the log could not take the subscription records, the session's subscriptions
    /// are not what a restart would recover: rather than acknowledge them, the connection is
    /// closed (5.0: DISCONNECT 0x97 Quota exceeded), as for a PUBLISH the log refused.
    fn send_suback(&mut self, pending: PendingSubAck, now: Instant) {
        let PendingSubAck { conn, slot, reply, retained, ticket, .. } = pending;
        if !self.conn_serves(conn, slot) {
            return;
        }
        if self.log_ticket_failed(ticket) {
            let kind = CloseKind::Abnormal(Some(ReasonCode::QUOTA_EXCEEDED));
            return self.close_conn(conn, kind, now);
        }
        self.send_packet(conn, &reply);
        let now_ms = self.uptime_ms(now);
        let mut found: Vec<(Arc<Message>, SubOptions)> = Vec::new();
        let mut expired: Vec<Arc<Message>> = Vec::new();
        for (filter, entry) in &retained {
            self.retained.for_each_matching(filter, |_topic, msg| {
                if is_expired(msg, now_ms) {
                    expired.push(msg.clone());
                } else {
                    found.push((msg.clone(), *entry));
                }
            });
        }
        // A partly readable filter gets only the retained messages its client may read.
        let mut denied = Vec::new();
        found.retain(|(msg, entry)| {
            let ok = !entry.acl_check || self.acl_allows(slot, &msg.topic, READ);
            if !ok {
                denied.push(msg.topic.clone());
            }
            ok
        });
        for topic in denied {
            self.count_denial(Denial::Retained, slot, &topic);
            self.stats.dropped(crate::core::delivery::drops::DropReason::AclDenied, 1);
        }
        for msg in expired {
            if self.retained.get(&msg.topic).is_some_and(|m| Arc::ptr_eq(m, &msg)) {
                self.retained.clear(&msg.topic);
            }
        }
        // Paced by what the connection drains, not cut off at its bounds (`routing/replay.rs`).
        let found = found
            .into_iter()
            .map(|(msg, entry)| Replay { msg, qos: entry.opts.qos, sub_id: entry.id })
            .collect();
        self.start_replay(slot, found, now);
    }
}

/// The token of `SharedJoin`s sent by recovery: no SUBACK waits for their acknowledgement.
pub(crate) const RESTORED_JOIN_TOKEN: u64 = 0;
