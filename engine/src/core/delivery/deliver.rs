//! Outbound messages: fan-out of one message to this shard's matching sessions, encode-once
//! per layout, the per-session inflight window and queue, and the client's PUBACK / PUBREC /
//! PUBCOMP for them.
//!
//! Ordering: a session sends messages in the order they were queued on it. A QoS 1/2 message
//! that does not fit the window waits in the session queue, and while the queue is not empty
//! every later message (QoS 0 too) waits behind it, so nothing is reordered.
//!
//! Shard-local: everything here works on this shard's sessions and connections.

use std::collections::VecDeque;
use std::sync::Arc;

use shardmq_codec::{ByteStr, PacketId, ProtocolVersion, PubResp, QoS, ReasonCode};

use crate::core::auth::acl::{Ident, READ};
use crate::core::delivery::drops::DropReason;
use crate::core::delivery::outgoing::{push_frame, send_custom, LayoutCache, OutPublish};
use crate::core::ids::{ConnId, SessionSlot};
use crate::core::limits::Limits;
use crate::core::mesh::{is_expired, Message};
use crate::core::policy::Denial;
use crate::core::sessions::conn::{Conn, Phase};
use crate::core::sessions::session::{Awaiting, Inflight, Queued, Session, SessionTable};
use crate::core::shard::{encode_onto, IoAction, LocalStats, ShardCore};

/// One session matched by the message being fanned out (overlapping subscriptions
/// collapsed: the highest QoS [MQTT-3.3.4-2], one copy [MQTT-3.3.5-1], every matching
/// subscription's identifier [MQTT-3.3.4-3]).
#[derive(Debug, Clone)]
struct Match {
    slot: SessionSlot,
    qos: QoS,
    retain_as_published: bool,
    /// The session's connection, if it is online with nothing queued.
    direct: Option<ConnId>,
    /// Empty (no allocation) unless the session uses Subscription Identifiers.
    sub_ids: Vec<u32>,
}

/// Fan-out scratch space, reused for every message. Shard-local.
#[derive(Debug, Default)]
pub(crate) struct Fanout {
    epoch: u64,
    matches: Vec<Match>,
    pub(crate) layouts: LayoutCache,
}

/// Match-list entries kept between fan-outs whatever the last one needed.
const FANOUT_SCRATCH_KEEP: usize = 4096;

/// The send window of a session on `c`: ours, capped by the client's Receive Maximum.
pub(crate) fn window(limits: &Limits, c: &Conn) -> usize {
    usize::from(limits.inflight_out_max.min(c.client_receive_max))
}

impl ShardCore {
    /// Delivers `msg` to every local session with a matching subscription.
    ///
    /// Two passes: the trie visit collects one match per (session, filter), with the
    /// session's connection when the QoS 0 fast path may use it; then each match is sent.
    /// Overlapping subscriptions of one session are collapsed in between, only when more
    /// than one filter matched.
    pub(crate) fn deliver_local(&mut self, msg: &Arc<Message>, now_ms: u64) {
        let ShardCore { trie, sessions, fanout, shard, config, stats, .. } = self;
        let auth = &config.auth;
        fanout.epoch += 1;
        let epoch = fanout.epoch;
        let matches = &mut fanout.matches;
        matches.clear();
        let (origin, msg_qos) = (msg.origin, msg.qos);
        let local_origin = origin.shard == *shard;
        // The trie visits a session once per matching filter, so while only one filter
        // matched there is nothing to collapse. Filters are told apart by the address of
        // the trie's copy of their text: one per filter, never empty [MQTT-4.7.3-1].
        let mut first_filter: Option<*const u8> = None;
        let mut several_filters = false;
        trie.for_each_match(&msg.topic, |slot, sub, filter| {
            let opts = &sub.opts;
            // No Local (5.0) [MQTT-3.8.3-3].
            if opts.no_local && local_origin && origin.session == slot.0 {
                return;
            }
            debug_assert!(!filter.is_empty());
            if sub.acl_check {
                // A partly readable filter: this topic is checked (`policy/authorize.rs`).
                let s = sessions.get(slot);
                let ident = Ident { user: sessions.user(slot), client_id: &s.client_id };
                // The ACL of the listener the session's client connected on.
                let acl = auth.acl_on(s.listener);
                if !acl.is_some_and(|acl| acl.allows(&ident, &msg.topic, READ)) {
                    stats.denials[Denial::Deliver as usize] += 1;
                    stats.dropped(DropReason::AclDenied, 1);
                    tracing::debug!(client_id = %s.client_id, topic = %msg.topic, "denied: deliver");
                    return;
                }
            }
            if *first_filter.get_or_insert(filter.as_ptr()) != filter.as_ptr() {
                several_filters = true;
            }
            let s = sessions.get(slot);
            matches.push(Match {
                slot,
                direct: s.conn.filter(|_| s.queue().is_empty() && !s.has_unsent()),
                qos: opts.qos.min(msg_qos),
                retain_as_published: opts.retain_as_published,
                sub_ids: sub.id.into_iter().collect(),
            });
        });
        if several_filters {
            collapse(matches, sessions, epoch);
        }
        let refuse = self.refusal_possible()
            && self.fanout.matches.iter().any(|m| self.copy_would_be_refused(m.slot, m.qos, msg));
        if refuse {
            // Decided before any copy is sent: nobody here gets a refused message.
            let why =
                if self.log_full() { DropReason::LogFull } else { DropReason::QueueFullRefused };
            return self.refuse_message(why);
        }
        self.fanout.layouts.reset();
        let expired = is_expired(msg, now_ms);
        let matches = std::mem::take(&mut self.fanout.matches);
        for m in &matches {
            // [MQTT-3.3.1-9]: RETAIN is 0 towards established subscriptions (5.0: unless
            // Retain As Published).
            let retain = m.retain_as_published && msg.retain;
            if m.qos == QoS::AtMostOnce && !expired && self.send_qos0(m, msg, retain, now_ms) {
                continue;
            }
            self.deliver_to_session(m.slot, msg, m.qos, retain, &m.sub_ids, None, now_ms);
        }
        self.fanout.matches = matches;
        let matches = &mut self.fanout.matches;
        if matches.capacity() > FANOUT_SCRATCH_KEEP && matches.capacity() / 8 > matches.len() {
            // One fan-out to many overlapping filters should not pin its peak for good.
            matches.shrink_to(matches.len().max(FANOUT_SCRATCH_KEEP));
        }
    }

    /// The QoS 0 fast path of [`ShardCore::deliver_to_session`], for the common case: an
    /// online session with nothing queued (`m.direct`), no topic alias or subscription
    /// identifier to add, so the frame is the cached one of its layout, copied whole. The
    /// caller has checked expiry once for the whole fan-out. Returns false, having done
    /// nothing, when the general path must decide.
    ///
    /// What the general path does and this one skips cannot apply to QoS 0: the log (QoS 0
    /// is not logged), the inflight window and packet ids. Nothing of the session changes,
    /// so it is not even read here.
    #[inline]
    fn send_qos0(&mut self, m: &Match, msg: &Message, retain: bool, now_ms: u64) -> bool {
        let ShardCore { conns, fanout, stats, actions, .. } = self;
        let Some(conn) = m.direct else { return false };
        let c = conns.get_mut(conn).expect("online session without its connection");
        let v5 = c.is_v5();
        if v5 && (c.client_topic_alias_max > 0 || !m.sub_ids.is_empty()) {
            // Encoded per connection (`delivery/outgoing.rs`).
            return false;
        }
        if c.tx.drops_qos0() {
            // A slow consumer, or the shard past its hard bound (`delivery/tx_budget.rs`): QoS 0 is
            // dropped rather than queued without bound.
            stats.dropped(DropReason::SlowConsumer, 1);
            return true;
        }
        match fanout.layouts.frame(msg, v5, QoS::AtMostOnce, retain, now_ms) {
            // Never a packet larger than the client's maximum [MQTT-3.1.2-24]: it is
            // discarded as if sent [MQTT-3.1.2-25].
            Some(f) if f.packet_len(msg) <= c.client_packet_size_max_bytes as usize => {
                let bytes = f.packet_len(msg);
                push_frame(c, conn, f, None, msg, actions);
                stats.sent(QoS::AtMostOnce, bytes);
            }
            _ => stats.dropped(DropReason::TooLarge, 1),
        }
        true
    }

    /// Sends `msg` to one session at `qos`, or queues it. Uses the layout cache, which the
    /// caller resets for each new message. `group` names the shared subscription it is
    /// delivered for (`None` for ordinary subscriptions).
    #[allow(clippy::too_many_arguments)] // Each is one property of this one delivery.
    pub(crate) fn deliver_to_session(
        &mut self,
        slot: SessionSlot,
        msg: &Arc<Message>,
        qos: QoS,
        retain: bool,
        sub_ids: &[u32],
        group: Option<&ByteStr>,
        now_ms: u64,
    ) {
        let ShardCore { sessions, conns, fanout, stats, actions, config, persist, .. } = self;
        let limits = &config.limits;
        if is_expired(msg, now_ms) {
            // [MQTT-3.3.2-5]: expired before onward delivery started (e.g. late off a ring).
            stats.dropped(DropReason::Expired, 1);
            return;
        }
        let s = sessions.get_mut(slot);
        // A QoS 1/2 copy for a persistent session is logged. When the log is past its soft
        // cap, or the session's queue is full, it is refused, and the publisher is told
        // (0x97): it was not acknowledged for a copy that is not kept (`persist/ack.rs`).
        let logged = qos != QoS::AtMostOnce && s.plog.is_some();
        let log_full = persist.as_deref().is_some_and(|p| p.full);
        let mut refuse = |stats: &mut LocalStats, why: DropReason| {
            stats.dropped(why, 1);
            if let Some(p) = persist.as_deref_mut().filter(|_| logged) {
                p.copy_refused = true;
            }
        };
        if logged && log_full {
            return refuse(stats, DropReason::LogFull);
        }
        let queued = || Queued {
            msg: msg.clone(),
            qos,
            retain,
            sub_ids: sub_ids.into(),
            group: group.cloned(),
            seq: 0,
        };
        let Some(conn) = s.conn else {
            // Offline: QoS 1/2 wait in the session; QoS 0 is not kept for offline sessions
            // (like Mosquitto's default), and not counted as dropped.
            if qos != QoS::AtMostOnce && !enqueue(s, queued(), limits, logged, stats) {
                refuse(stats, DropReason::QueueFullRefused);
            }
            return;
        };
        let c = conns.get_mut(conn).expect("online session without its connection");
        if !s.queue().is_empty()
            || (qos != QoS::AtMostOnce && s.inflight().len() >= window(limits, c))
            || (qos == QoS::AtMostOnce && s.has_unsent())
        {
            if !enqueue(s, queued(), limits, logged, stats) {
                refuse(stats, DropReason::QueueFullRefused);
            }
            return;
        }
        if let Some(p) = persist.as_deref_mut() {
            if let Some(ticket) = p.gate_for(s, msg, qos) {
                // Sent once its records are durable (`persist/gate.rs`).
                return p.push_unsent(slot, s, queued(), ticket);
            }
        }
        if qos == QoS::AtMostOnce && c.tx.drops_qos0() {
            stats.dropped(DropReason::SlowConsumer, 1);
            return;
        }
        if c.is_v5() && (c.client_topic_alias_max > 0 || !sub_ids.is_empty()) {
            // This frame differs per connection: encoded on its own.
            let packet_id = (qos != QoS::AtMostOnce).then(|| s.next_packet_id());
            let out = OutPublish { msg, qos, retain, packet_id, dup: false, sub_ids, now_ms };
            let Some(bytes) = send_custom(c, conn, out, actions) else {
                stats.dropped(DropReason::TooLarge, 1);
                return;
            };
            if let Some(packet_id) = packet_id {
                s.inflight_mut().push_back(Inflight {
                    packet_id,
                    msg: msg.clone(),
                    qos,
                    retain,
                    sub_ids: sub_ids.into(),
                    state: awaiting_first(qos),
                    group: group.cloned(),
                });
            }
            stats.sent(qos, bytes);
            return;
        }
        let Some(frame) = fanout.layouts.frame(msg, c.is_v5(), qos, retain, now_ms) else {
            stats.dropped(DropReason::TooLarge, 1);
            return;
        };
        // Never a packet larger than the client's maximum [MQTT-3.1.2-24]: it is discarded
        // as if sent [MQTT-3.1.2-25].
        let bytes = frame.packet_len(msg);
        if bytes > c.client_packet_size_max_bytes as usize {
            stats.dropped(DropReason::TooLarge, 1);
            return;
        }
        let packet_id = frame.pid_offset.map(|_| {
            let packet_id = s.next_packet_id();
            s.inflight_mut().push_back(Inflight {
                packet_id,
                msg: msg.clone(),
                qos,
                retain,
                sub_ids: Box::default(),
                state: awaiting_first(qos),
                group: group.cloned(),
            });
            packet_id
        });
        push_frame(c, conn, frame, packet_id, msg, actions);
        stats.sent(qos, bytes);
    }

    /// Sends queued messages while the window allows (after an acknowledgement, or when a
    /// session resumes). Messages that expired while queued are dropped [MQTT-3.3.2-5].
    pub(crate) fn pump_session(&mut self, slot: SessionSlot, now_ms: u64) {
        let ShardCore { sessions, conns, stats, actions, config, persist, .. } = self;
        let limits = &config.limits;
        let s = sessions.get_mut(slot);
        let Some(conn) = s.conn else { return };
        let c = conns.get_mut(conn).expect("online session without its connection");
        let window = window(limits, c);
        while let Some(front) = s.queue().front() {
            if is_expired(&front.msg, now_ms) {
                s.dequeue();
                stats.dropped(DropReason::Expired, 1);
                continue;
            }
            if front.qos != QoS::AtMostOnce && s.inflight().len() >= window {
                return;
            }
            if front.qos == QoS::AtMostOnce && s.has_unsent() {
                // Behind PUBLISHes waiting for durability (`persist/gate.rs`).
                return;
            }
            let ticket = persist.as_deref_mut().and_then(|p| p.gate_for(s, &front.msg, front.qos));
            let q = s.dequeue().expect("front exists");
            if let Some(ticket) = ticket {
                persist.as_deref_mut().expect("gated").push_unsent(slot, s, q, ticket);
                continue;
            }
            send_queued(s, c, conn, q, stats, actions, now_ms);
        }
        if !s.replay().is_empty() {
            // Retained messages after a SUBACK, paced by the window (`routing/replay.rs`).
            self.poll_replay(slot, now_ms);
        }
    }

    /// A session resumed on `conn`: resend unacknowledged messages in their original order
    /// (PUBLISH with DUP = 1, or PUBREL once PUBREC was received) [MQTT-4.4.0-1], then the
    /// queue.
    pub(crate) fn resume_session(&mut self, conn: ConnId, slot: SessionSlot, now_ms: u64) {
        let ShardCore { sessions, conns, stats, actions, persist, .. } = self;
        let s = sessions.get_mut(slot);
        let c = conns.get_mut(conn).expect("resuming on a live connection");
        let version = c.version.unwrap_or(ProtocolVersion::V3_1_1);
        // A PUBREL whose `PubrelPending` may not be durable yet is held like the first one
        // (`handle_pubrec`), in order, behind the resent PUBLISHes.
        let hold_pubrels = persist.is_some() && s.plog.is_some();
        let mut held_pubrels = Vec::new();
        for i in s.inflight() {
            match i.state {
                Awaiting::PubAck | Awaiting::PubRec => {
                    // Onward delivery has started: resent even if expired since, with the
                    // remaining interval floored at 1 second.
                    let p = OutPublish {
                        msg: &i.msg,
                        qos: i.qos,
                        retain: i.retain,
                        packet_id: Some(i.packet_id),
                        dup: true,
                        sub_ids: &i.sub_ids,
                        now_ms,
                    };
                    // A message now too large for the client stays inflight; the client
                    // never acknowledges it, which only costs a window slot.
                    if let Some(bytes) = send_custom(c, conn, p, actions) {
                        stats.sent(i.qos, bytes);
                    }
                }
                // Sent once durable (`persist/gate.rs`), behind the resent ones.
                Awaiting::Unsent { .. } => {}
                Awaiting::PubComp if hold_pubrels => held_pubrels.push(i.packet_id),
                Awaiting::PubComp => {
                    let r = pub_resp(i.packet_id, ReasonCode::SUCCESS);
                    encode_onto(
                        &mut c.tx,
                        &shardmq_codec::Packet::PubRel(r),
                        version,
                        conn,
                        actions,
                    );
                }
            }
        }
        for id in held_pubrels {
            self.hold_pubrel(conn, slot, id);
        }
        self.pump_session(slot, now_ms);
    }

    /// PUBACK for an outgoing QoS 1 message.
    pub(crate) fn handle_puback(&mut self, slot: SessionSlot, id: PacketId, now_ms: u64) {
        self.complete_inflight(slot, id, Awaiting::PubAck, now_ms);
    }

    /// Ends the flow of the in-flight message `id` if it awaited `last` (PUBACK or PUBCOMP),
    /// and sends what the freed window allows.
    fn complete_inflight(&mut self, slot: SessionSlot, id: PacketId, last: Awaiting, now_ms: u64) {
        let s = self.sessions.get_mut(slot);
        if let Some(i) = s.inflight_position(id) {
            if s.inflight()[i].state == last {
                s.inflight_mut().remove(i);
                self.pump_session(slot, now_ms);
            }
        }
    }

    /// PUBREC for an outgoing QoS 2 message: answer PUBREL (5.0: a failure reason ends the
    /// flow instead).
    pub(crate) fn handle_pubrec(
        &mut self,
        conn: ConnId,
        slot: SessionSlot,
        r: PubResp,
        now_ms: u64,
    ) {
        let s = self.sessions.get_mut(slot);
        let reason = match s.inflight_position(r.packet_id) {
            Some(i) if r.reason.is_error() && s.inflight()[i].state == Awaiting::PubRec => {
                s.inflight_mut().remove(i);
                self.pump_session(slot, now_ms);
                return;
            }
            Some(i) if matches!(s.inflight()[i].state, Awaiting::PubRec | Awaiting::PubComp) => {
                s.inflight_mut()[i].state = Awaiting::PubComp;
                ReasonCode::SUCCESS
            }
            // Unknown, or a QoS 1 message's id: no QoS 2 flow to continue.
            _ => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        };
        if reason == ReasonCode::SUCCESS && self.hold_pubrel(conn, slot, r.packet_id) {
            // Held until `PubrelPending` is durable: after PUBREL the client may answer
            // PUBCOMP and reuse the id, so a crash must not resend the PUBLISH
            // [MQTT-4.3.3-6] (the message would be delivered twice).
            return;
        }
        let rel = pub_resp(r.packet_id, reason);
        self.send_packet(conn, &shardmq_codec::Packet::PubRel(rel));
    }

    /// PUBCOMP for an outgoing QoS 2 message.
    pub(crate) fn handle_pubcomp(&mut self, slot: SessionSlot, id: PacketId, now_ms: u64) {
        self.complete_inflight(slot, id, Awaiting::PubComp, now_ms);
    }

    /// Sends `msg` as a retained message (RETAIN = 1 [MQTT-3.3.1-8]) to a session that just
    /// subscribed with maximum QoS `qos` (and Subscription Identifier `sub_id`).
    pub(crate) fn deliver_retained(
        &mut self,
        slot: SessionSlot,
        msg: &Arc<Message>,
        qos: QoS,
        sub_id: Option<u32>,
        now_ms: u64,
    ) {
        self.fanout.layouts.reset();
        let sub_ids: &[u32] = sub_id.as_slice();
        self.deliver_to_session(slot, msg, qos.min(msg.qos), true, sub_ids, None, now_ms);
    }

    /// True if `conn` is connected to `slot` (a deferred reply still has its addressee).
    pub(crate) fn conn_serves(&self, conn: ConnId, slot: SessionSlot) -> bool {
        self.conns.get(conn).is_some_and(|c| c.phase == Phase::Connected(slot))
    }
}

/// Collapses the matches of one session through several filters into one: the highest QoS
/// [MQTT-3.3.4-2], one copy [MQTT-3.3.5-1], every matching subscription's identifier
/// [MQTT-3.3.4-3]. Keeps the order of first matches.
fn collapse(matches: &mut Vec<Match>, sessions: &mut SessionTable, epoch: u64) {
    let mut kept = 0;
    for i in 0..matches.len() {
        let s = sessions.get_mut(matches[i].slot);
        if s.fanout_epoch == epoch {
            let (before, rest) = matches.split_at_mut(i);
            let (into, from) = (&mut before[s.fanout_index as usize], &mut rest[0]);
            into.qos = into.qos.max(from.qos);
            into.retain_as_published |= from.retain_as_published;
            into.sub_ids.append(&mut from.sub_ids);
        } else {
            s.fanout_epoch = epoch;
            s.fanout_index = kept as u32;
            matches.swap(kept, i);
            kept += 1;
        }
    }
    matches.truncate(kept);
}

/// Queues `q` on `s` (`Session::enqueue_or_drop`, which applies `session_queue_full` to a
/// full queue); false: refused (a copy the log would keep, under `refuse`).
fn enqueue(
    s: &mut Session,
    q: Queued,
    limits: &Limits,
    logged: bool,
    stats: &mut LocalStats,
) -> bool {
    let Some(dropped) = s.enqueue_or_drop(q, limits, logged) else { return false };
    stats.dropped(DropReason::QueueFullOldest, dropped.oldest);
    stats.dropped(DropReason::QueueFullNewest, dropped.newest);
    true
}

/// The acknowledgement a freshly sent QoS 1/2 message waits for.
fn awaiting_first(qos: QoS) -> Awaiting {
    if qos == QoS::AtLeastOnce {
        Awaiting::PubAck
    } else {
        Awaiting::PubRec
    }
}

#[allow(clippy::too_many_arguments)] // Disjoint borrows of the core's fields.
fn send_queued(
    s: &mut Session,
    c: &mut Conn,
    conn: ConnId,
    q: Queued,
    stats: &mut LocalStats,
    actions: &mut VecDeque<IoAction>,
    now_ms: u64,
) {
    let Queued { msg, qos, retain, sub_ids, group, .. } = q;
    if qos == QoS::AtMostOnce && c.tx.drops_qos0() {
        stats.dropped(DropReason::SlowConsumer, 1);
        return;
    }
    let packet_id = (qos != QoS::AtMostOnce).then(|| s.next_packet_id());
    let out =
        OutPublish { msg: &msg, qos, retain, packet_id, dup: false, sub_ids: &sub_ids, now_ms };
    let Some(bytes) = send_custom(c, conn, out, actions) else {
        stats.dropped(DropReason::TooLarge, 1);
        return;
    };
    stats.sent(qos, bytes);
    if let Some(packet_id) = packet_id {
        let state = awaiting_first(qos);
        s.inflight_mut().push_back(Inflight { packet_id, msg, qos, retain, sub_ids, state, group });
    }
}

/// A PUBACK/PUBREC/PUBREL/PUBCOMP body.
pub(crate) fn pub_resp(packet_id: PacketId, reason: ReasonCode) -> PubResp {
    PubResp { packet_id, reason, properties: None }
}

#[cfg(test)]
#[path = "deliver_tests.rs"]
mod tests;
