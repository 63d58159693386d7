//! Acknowledgements held until durable (see the [`persist`](crate::core::persist) module): the
//! PUBACK/PUBREC/PUBCOMP queue of a shard, the durability round trips with other shards
//! (`MeshMsg::DurableReq`/`DurableAck`), and the answers when the log cannot take a message.
//!
//! Replies to other shards depend only on this shard's durability, so they wait in a
//! `log::ack::AckQueue` keyed by ticket. Client acknowledgements may also wait for other
//! shards, so they wait in their own queue, released front to back under both conditions
//! (which keeps the order [MQTT-4.6.0-2] [MQTT-4.6.0-3]). Keeping the two apart means a
//! shard's replies never wait behind its clients' acknowledgements, which wait for other
//! shards' replies: no cycle between shards.
//!
//! The second hop of shared subscriptions (`routing/shared.rs`): a publisher's shard sends
//! *chained* requests. A shard that forwarded QoS 1/2 messages to members on other shards
//! answers a chained request only once *plain* requests it sent behind those forwards are
//! answered too. Chained answers wait only for plain ones, and plain ones only for their
//! own shard's log, so there is still no cycle; a chained answer may overtake plain ones, so
//! each side tracks every token rather than a prefix.
//!
//! Shard-local.

use std::time::Instant;

use shardmq_codec::{Packet, PacketId, QoS, ReasonCode};

use crate::core::delivery::deliver::pub_resp;
use crate::core::ids::{ConnId, SessionSlot, ShardId};
use crate::core::mesh::MeshMsg;
use crate::core::persist::Persist;
use crate::core::shard::{CloseKind, ShardCore};
use crate::log::LogSeq;

/// Which acknowledgement a held entry sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // The variants are the packets' names.
pub(crate) enum AckKind {
    PubAck,
    PubRec,
    PubComp,
    /// PUBREL for an outgoing QoS 2 message of a persistent session (its `PubrelPending`).
    PubRel,
}

/// An acknowledgement to send: which, for which packet, on which connection of which
/// session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ack {
    pub(crate) conn: ConnId,
    pub(crate) slot: SessionSlot,
    pub(crate) kind: AckKind,
    pub(crate) id: PacketId,
}

/// A `DurableAck` waiting for this shard's batch `ticket` and for the plain requests it
/// sent to the shards it forwarded shared-subscription messages to.
#[derive(Debug)]
pub(crate) struct ChainedReply {
    ticket: u64,
    to: ShardId,
    token: u64,
    remote: Vec<(ShardId, u64)>,
}

impl Persist {
    /// Queues a `DurableReq` for `to` (behind everything queued for it so far); returns its
    /// token.
    fn send_req(
        &mut self,
        mesh_out: &mut Vec<(ShardId, MeshMsg)>,
        to: ShardId,
        chain: bool,
    ) -> u64 {
        let sent = &mut self.peer_sent[usize::from(to.0)];
        *sent += 1;
        mesh_out.push((to, MeshMsg::DurableReq { token: *sent, chain }));
        *sent
    }

    /// True if `peer` answered the request `token`.
    fn has_acked(&self, peer: ShardId, token: u64) -> bool {
        token <= self.peer_acked[usize::from(peer.0)]
            || self.peer_acked_above.contains(&(peer.0, token))
    }

    /// The plain requests covering every QoS 1/2 shared-subscription forward made so far
    /// that are not answered yet (sending one to each peer forwarded to since the last).
    fn cover_forwards(&mut self, mesh_out: &mut Vec<(ShardId, MeshMsg)>) -> Vec<(ShardId, u64)> {
        let mut remote = Vec::new();
        for i in 0..self.forwarded.len() {
            let peer = ShardId(i as u16);
            if self.forwarded[i] {
                self.forwarded[i] = false;
                self.forward_token[i] = self.send_req(mesh_out, peer, false);
            }
            let token = self.forward_token[i];
            if token != 0 && !self.has_acked(peer, token) {
                remote.push((peer, token));
            }
        }
        remote
    }
}

/// An acknowledgement waiting for durability.
#[derive(Debug)]
pub(crate) struct HeldAck {
    pub(crate) ticket: u64,
    pub(crate) ack: Ack,
    /// Other shards that must report their copy durable: (shard, token).
    pub(crate) remote: Vec<(ShardId, u64)>,
    /// Refused before anything was stored (the log is full: 0x97; not authorised: 0x87):
    /// send this failure reason.
    pub(crate) refused: Option<ReasonCode>,
    /// A PUBREC whose `Qos2Received` is logged only once every copy is durable
    /// (`persist/gate.rs`): then it waits for that record's batch.
    pub(crate) commit: bool,
}

impl ShardCore {
    /// Every batch up to `ticket` is durable (or failed, see
    /// [`ShardCore::handle_log_failed`]): release what waited for them.
    pub fn handle_log_durable(&mut self, ticket: u64, now: Instant) {
        let Some(p) = self.persist.as_deref_mut() else { return };
        p.durable = p.durable.max(ticket);
        self.release_gates(now);
        // SUBACKs first: the failures they look up are pruned by `release_held`.
        self.release_subacks(now);
        self.release_held(now);
    }

    /// The batch `ticket` could not be appended (its records are not in the log): whatever
    /// waits for it gets the failure answer, and QoS 1/2 PUBLISHes are refused until
    /// [`ShardCore::set_log_full`] clears it.
    pub fn handle_log_failed(&mut self, ticket: u64) {
        let Some(p) = self.persist.as_deref_mut() else { return };
        p.failed.insert(ticket);
        p.full = true;
    }

    /// The io layer's view of the log's space: full (cap reached, device full, log failed)
    /// or not.
    pub fn set_log_full(&mut self, full: bool) {
        if let Some(p) = self.persist.as_deref_mut() {
            p.full = full;
        }
    }

    /// True when the log refuses appends.
    pub fn log_full(&self) -> bool {
        self.persist.as_ref().is_some_and(|p| p.full)
    }

    /// Holds an acknowledgement until the batch now being built is durable and `remote`
    /// shards reported their copies durable. Without persistence it is sent at once.
    pub(crate) fn hold_ack(
        &mut self,
        ack: Ack,
        remote: Vec<(ShardId, u64)>,
        refused: bool,
        now: Instant,
    ) {
        let reason = refused.then_some(ReasonCode::QUOTA_EXCEEDED);
        self.hold_ack_or_refusal(ack, remote, reason, now);
    }

    /// [`ShardCore::hold_ack`], refusing with `refused` (0x97 Quota exceeded, 0x87 Not
    /// authorized) when it is set.
    pub(crate) fn hold_ack_or_refusal(
        &mut self,
        ack: Ack,
        remote: Vec<(ShardId, u64)>,
        refused: Option<ReasonCode>,
        now: Instant,
    ) {
        let Some(p) = self.persist.as_deref_mut() else {
            return self.send_ack(ack, refused, now);
        };
        if refused.is_some() {
            // Nothing was logged: a refusal waits for no batch (which may be stalled at the
            // cap), only behind earlier answers on its connection [MQTT-4.6.0-2].
            debug_assert!(remote.is_empty(), "a refusal waits for no other shard");
            if !p.held.iter().any(|h| h.ack.conn == ack.conn) {
                return self.send_ack(ack, refused, now);
            }
            p.held.push_back(HeldAck { ticket: 0, ack, remote, refused, commit: false });
            return;
        }
        let ticket = p.next_ticket();
        p.held.push_back(HeldAck { ticket, ack, remote, refused: None, commit: false });
    }

    /// Holds the PUBREC of a persistent publisher's QoS 2 message routed to other shards:
    /// once the batch being built and `remote` copies are durable, `Qos2Received` is logged
    /// and the PUBREC waits for it too (`persist/gate.rs`).
    pub(crate) fn hold_qos2_commit(&mut self, ack: Ack, remote: Vec<(ShardId, u64)>) {
        let p = self.persist.as_deref_mut().expect("only with persistence");
        let ticket = p.next_ticket();
        p.held.push_back(HeldAck { ticket, ack, remote, refused: None, commit: true });
    }

    /// Takes the flag telling that a QoS 1/2 copy for a persistent session was refused
    /// (`delivery/deliver.rs`) since it was last taken.
    pub(crate) fn take_copy_refused(&mut self) -> bool {
        self.persist.as_deref_mut().is_some_and(|p| std::mem::take(&mut p.copy_refused))
    }

    /// A message from `from` was handled: if a copy of it was refused, `from`'s next
    /// `DurableReq` (sent right behind it) is answered `ok: false`, and its publisher gets
    /// 0x97 rather than an acknowledgement for a copy that is not kept.
    pub(crate) fn note_copies_refused(&mut self, from: ShardId) {
        if self.take_copy_refused() {
            if let Some(p) = self.persist.as_deref_mut() {
                p.refused_from[usize::from(from.0)] = true;
            }
        }
    }

    /// Holds the PUBREL answering a PUBREC for `slot`'s outgoing message `id` until the batch
    /// that logs `PubrelPending` (and `Acknowledged`) is durable; false (send it now) without
    /// persistence or for a session the log does not keep.
    pub(crate) fn hold_pubrel(&mut self, conn: ConnId, slot: SessionSlot, id: PacketId) -> bool {
        let Some(p) = self.persist.as_deref_mut() else { return false };
        if self.sessions.get(slot).plog.is_none() {
            return false;
        }
        let ticket = p.next_ticket();
        let ack = Ack { conn, slot, kind: AckKind::PubRel, id };
        p.held.push_back(HeldAck { ticket, ack, remote: Vec::new(), refused: None, commit: false });
        true
    }

    /// A PUBREC for inbound QoS 2 `id` failed while `slot`'s client was away: a persistent
    /// session remembers it (the resend gets the failure again, and is not routed again);
    /// otherwise the flow ends now.
    fn mark_qos2_failed(&mut self, slot: SessionSlot, id: PacketId) {
        let Some(s) = self.sessions.try_get_mut(slot) else { return };
        if !s.qos2_in().contains(&id) {
            return;
        }
        match s.plog.as_deref_mut() {
            Some(log) if !log.qos2_failed.contains(&id) => log.qos2_failed.push(id),
            Some(_) => {}
            None => {
                self.forget_qos2_in(slot, id);
            }
        }
    }

    /// Asks every shard that got a message from this PUBLISH (in `mesh_out[mark..]`) to
    /// report its copy durable; returns what to wait for.
    pub(crate) fn request_remote_durability(&mut self, mark: usize) -> Vec<(ShardId, u64)> {
        let Some(p) = self.persist.as_deref_mut() else { return Vec::new() };
        let mut shards: Vec<ShardId> = self.mesh_out[mark..]
            .iter()
            .filter(|(_, m)| match m {
                MeshMsg::Publish(_) | MeshMsg::RetainSet { .. } => true,
                // This shard owns a shared group and forwarded to a member directly.
                MeshMsg::SharedDeliver { qos, .. } => *qos != QoS::AtMostOnce,
                _ => false,
            })
            .map(|(to, _)| *to)
            .collect();
        shards.sort_unstable();
        shards.dedup();
        let mut remote = Vec::with_capacity(shards.len());
        for to in shards {
            // Chained: a group owner among them also waits for its members' shards.
            remote.push((to, p.send_req(&mut self.mesh_out, to, true)));
        }
        remote
    }

    /// A QoS 1/2 `SharedDeliver` to `peer` was queued: the next chained durability request
    /// this shard answers also waits for `peer`.
    pub(crate) fn note_shared_forward(&mut self, peer: ShardId) {
        if let Some(p) = self.persist.as_deref_mut() {
            p.forwarded[usize::from(peer.0)] = true;
        }
    }

    /// Asks every other shard for a durability round trip (after recovery: when all have
    /// answered, they have applied this shard's routing deltas and retained replicas).
    pub fn persist_barrier(&mut self) {
        let Some(p) = self.persist.as_deref_mut() else { return };
        for i in 0..self.config.shard_count {
            if i != self.shard.0 {
                p.send_req(&mut self.mesh_out, ShardId(i), false);
            }
        }
    }

    /// True once every other shard answered every durability request of this shard.
    pub fn persist_settled(&self) -> bool {
        self.persist.as_ref().is_none_or(|p| p.peer_acked == p.peer_sent)
    }

    /// `MeshMsg::DurableReq` from `from`: answer once everything logged so far is durable
    /// (and, if `chain`, every shard this one forwarded shared-subscription messages to has
    /// answered for them).
    pub(crate) fn handle_durable_req(&mut self, from: ShardId, token: u64, chain: bool) {
        let Some(p) = self.persist.as_deref_mut() else {
            return self.mesh_out.push((from, MeshMsg::DurableAck { token, ok: true }));
        };
        if std::mem::take(&mut p.refused_from[usize::from(from.0)]) {
            // A copy was refused (nothing logged for it): the answer waits for nothing.
            return self.mesh_out.push((from, MeshMsg::DurableAck { token, ok: false }));
        }
        let ticket = p.next_ticket();
        let remote = if chain { p.cover_forwards(&mut self.mesh_out) } else { Vec::new() };
        if remote.is_empty() {
            p.replies.push(LogSeq(ticket), (ticket, from, token));
        } else {
            p.chained.push(ChainedReply { ticket, to: from, token, remote });
        }
    }

    /// `MeshMsg::DurableAck` from `from`.
    pub(crate) fn handle_durable_ack(&mut self, from: ShardId, token: u64, ok: bool, now: Instant) {
        let Some(p) = self.persist.as_deref_mut() else { return };
        let acked = &mut p.peer_acked[usize::from(from.0)];
        debug_assert!(!p.peer_acked_above.contains(&(from.0, token)), "{from} acked twice");
        debug_assert!(token > *acked, "{from} acked {token} twice");
        if token == *acked + 1 {
            *acked = token;
            while p.peer_acked_above.remove(&(from.0, *acked + 1)) {
                *acked += 1;
            }
        } else {
            p.peer_acked_above.insert((from.0, token));
        }
        if !ok {
            p.peer_failed.insert((from.0, token));
        }
        self.release_held(now);
    }

    /// Sends the replies and acknowledgements whose conditions hold, front to back.
    fn release_held(&mut self, now: Instant) {
        let Some(p) = self.persist.as_deref_mut() else { return };
        for (ticket, to, token) in p.replies.release(LogSeq(p.durable)) {
            let ok = !p.failed.contains(&ticket);
            self.mesh_out.push((to, MeshMsg::DurableAck { token, ok }));
        }
        let mut i = 0;
        while i < p.chained.len() {
            let c = &p.chained[i];
            if c.ticket > p.durable || !c.remote.iter().all(|(s, t)| p.has_acked(*s, *t)) {
                i += 1;
                continue;
            }
            let c = p.chained.swap_remove(i);
            let ok = !p.failed.contains(&c.ticket)
                && !c.remote.iter().any(|(s, t)| p.peer_failed.contains(&(s.0, *t)));
            self.mesh_out.push((c.to, MeshMsg::DurableAck { token: c.token, ok }));
        }
        loop {
            let Some(p) = self.persist.as_deref_mut() else { return };
            let Some(h) = p.held.front() else { break };
            let remote_done = h.remote.iter().all(|(s, t)| p.has_acked(*s, *t));
            if h.ticket > p.durable || !remote_done {
                break;
            }
            let h = p.held.pop_front().expect("front exists");
            let log_failed = p.failed.contains(&h.ticket)
                || h.remote.iter().any(|(s, t)| p.peer_failed.contains(&(s.0, *t)));
            let failed = h.refused.or(log_failed.then_some(ReasonCode::QUOTA_EXCEEDED));
            if h.commit && failed.is_none() {
                // Every copy is durable: now the record that makes a resend a duplicate.
                let ack = h.ack;
                let ticket = p.next_ticket();
                let h = HeldAck { ticket, ack, remote: Vec::new(), refused: None, commit: false };
                p.held.push_front(h);
                self.log_qos2_received(ack.slot, ack.id);
                break;
            }
            self.send_ack(h.ack, failed, now);
        }
        self.release_refusals(now);
        let suback_oldest = self.suback_oldest_ticket();
        if let Some(p) = self.persist.as_deref_mut() {
            // Failures older than every waiting item are no longer looked up.
            let oldest = p.held.front().map_or(p.durable, |h| h.ticket);
            let oldest = p.replies.waiting_for().map_or(oldest, |t| t.0.min(oldest));
            let oldest = if suback_oldest == 0 { oldest } else { oldest.min(suback_oldest) };
            let oldest = p.chained.iter().map(|c| c.ticket).fold(oldest, u64::min);
            p.failed = p.failed.split_off(&oldest);
        }
    }

    /// Sends the refusals held behind a blocked front whose connection has nothing earlier
    /// waiting (the order per connection is kept [MQTT-4.6.0-2]).
    fn release_refusals(&mut self, now: Instant) {
        let Some(p) = self.persist.as_deref_mut() else { return };
        if !p.held.iter().any(|h| h.refused.is_some()) {
            return;
        }
        let mut blocked = crate::core::hash::Set::default();
        let mut ready = Vec::new();
        p.held.retain(|h| {
            if let Some(reason) = h.refused.filter(|_| !blocked.contains(&h.ack.conn)) {
                ready.push((h.ack, reason));
                return false;
            }
            blocked.insert(h.ack.conn);
            true
        });
        for (ack, reason) in ready {
            self.send_ack(ack, Some(reason), now);
        }
    }

    /// Sends an acknowledgement, or its failure form: 5.0 PUBACK/PUBREC with the reason
    /// (0x97 Quota exceeded, 0x87 Not authorized; 5.0 §3.4.2.1, §3.5.2.1), which ends a QoS 2
    /// flow [MQTT-4.3.3-4]; 3.1.1 has no negative acknowledgement, so the connection is
    /// closed without one.
    fn send_ack(&mut self, ack: Ack, failure: Option<ReasonCode>, now: Instant) {
        let Ack { conn, slot, kind, id } = ack;
        let failed = failure.is_some();
        if !self.conn_serves(conn, slot) {
            // The connection is gone: the client resends after reconnecting. A failed
            // PUBREC is remembered, so the resend of a message that was routed gets the
            // failure again instead of the duplicate's success [MQTT-4.3.3-9].
            if failed && kind == AckKind::PubRec {
                self.mark_qos2_failed(slot, id);
            }
            return;
        }
        // PUBREL has no failure form: the flow goes on (if its batch failed, the log has
        // stopped anyway and the session resends PUBREL when it resumes).
        if !failed || kind == AckKind::PubRel {
            let r = pub_resp(id, ReasonCode::SUCCESS);
            let packet = match kind {
                AckKind::PubAck => Packet::PubAck(r),
                AckKind::PubRec => Packet::PubRec(r),
                AckKind::PubComp => Packet::PubComp(r),
                AckKind::PubRel => Packet::PubRel(r),
            };
            return self.send_packet(conn, &packet);
        }
        if kind == AckKind::PubRec {
            // The flow ends here: the packet id is free again, and not a duplicate later.
            self.forget_qos2_in(slot, id);
        }
        let v5 = self.conns.get(conn).is_some_and(|c| c.is_v5());
        if v5 && kind != AckKind::PubComp {
            let r = pub_resp(id, failure.unwrap_or(ReasonCode::QUOTA_EXCEEDED));
            let packet =
                if kind == AckKind::PubAck { Packet::PubAck(r) } else { Packet::PubRec(r) };
            self.send_packet(conn, &packet);
        } else {
            let reason = failure.unwrap_or(ReasonCode::QUOTA_EXCEEDED);
            self.close_conn(conn, CloseKind::Abnormal(Some(reason)), now);
        }
    }
}
