//! Sends held until their records are durable, and when `Qos2Received` is logged: what
//! keeps a QoS 2 message from being lost or delivered twice across `kill -9` while its
//! subscribers are online (issue 10).
//!
//! Two rules, one mechanism:
//! 1. **A QoS 2 PUBLISH to a persistent session leaves only once its `Delivered` record is
//!    durable.** Once a subscriber answered PUBREC it holds the packet id until PUBREL; a
//!    broker that lost the record after a crash would send the message again under a new
//!    id (a duplicate) and reuse the held id for another message, which the subscriber
//!    takes for a resend of the first and drops (a loss) [MQTT-4.3.3-9].
//! 2. **A persistent publisher's QoS 2 message reaches no subscriber of its shard before
//!    the batch holding its `Qos2Received` (or its local copies, below) is durable.**
//!    Otherwise a crash loses the record, the publisher (never answered PUBREC) resends the
//!    PUBLISH after reconnecting, and the broker routes it again.
//!
//! Both are one thing locally: an in-flight entry put in the window while its records are
//! in the batch being built is [`Awaiting::Unsent`] with that batch's ticket; its packet id
//! is taken and `Delivered` logged as for any send, only the frame waits. When the ticket
//! is durable ([`ShardCore::release_gates`]) the frames leave in window order; an entry
//! whose batch failed is dropped. Order per session is kept: while a session has unsent
//! entries every later QoS 1/2 message joins them and QoS 0 waits in the session queue
//! (`delivery/deliver.rs`).
//!
//! `Qos2Received` is what makes a resend a duplicate after a crash, so it must never be
//! durable before every copy is (a copy lost with it is a message acknowledged and never
//! delivered: the outside test of issue 10 lost 18 that way). With copies only on this
//! shard it is in the same batch as they are (atomic). With copies on other shards it is
//! logged once they all reported them durable (`hold_qos2_commit`, `persist/ack.rs`), and
//! the PUBREC waits for it. A crash between the two leaves copies without the record: the
//! resend is routed again, a duplicate (ARCHITECTURE.md, "Known window").
//!
//! Not covered: a rule-2 message delivered at QoS 0 (a subscription's maximum QoS 0) is sent
//! at once, and a retained rule-2 message is visible to new subscriptions before it is
//! durable.
//!
//! Shard-local: one [`Gates`] per shard, in its [`Persist`](crate::core::persist::Persist).

use std::collections::{BTreeSet, VecDeque};

use crate::core::hash::Map;
use std::sync::Arc;
use std::time::Instant;

use shardmq_codec::QoS;

use crate::core::delivery::outgoing::{send_custom, OutPublish};
use crate::core::ids::SessionSlot;
use crate::core::mesh::Message;
use crate::core::persist::Persist;
use crate::core::sessions::session::{Awaiting, Inflight, Queued, Session};
use crate::core::shard::ShardCore;

/// Held sends of one shard. Shard-local.
#[derive(Debug, Default)]
pub(crate) struct Gates {
    /// Rule-2 messages whose `Qos2Received` is not durable yet: address → ticket.
    msgs: Map<usize, u64>,
    /// Sessions with unsent entries, by ticket (in ticket order).
    sessions: VecDeque<(u64, SessionSlot)>,
    /// The rule-2 messages of `msgs` by ticket (keeps their addresses alive).
    by_ticket: VecDeque<(u64, Arc<Message>)>,
}

impl Persist {
    /// The ticket an in-flight entry of `s` put in the window now must wait for before its
    /// PUBLISH leaves, if any (rules 1 and 2, and order behind unsent entries).
    pub(crate) fn gate_for(&mut self, s: &Session, msg: &Arc<Message>, qos: QoS) -> Option<u64> {
        if qos == QoS::AtMostOnce {
            return None;
        }
        let gated = s.has_unsent()
            || (qos == QoS::ExactlyOnce && s.plog.is_some())
            || (!self.gates.msgs.is_empty()
                && self.gates.msgs.contains_key(&(Arc::as_ptr(msg) as usize)));
        gated.then(|| self.next_ticket())
    }

    /// Puts `q` in `slot`'s window (packet id taken, `Delivered` logged with this batch),
    /// its PUBLISH waiting for `ticket`.
    pub(crate) fn push_unsent(
        &mut self,
        slot: SessionSlot,
        s: &mut Session,
        q: Queued,
        ticket: u64,
    ) {
        let Queued { msg, qos, retain, sub_ids, group, .. } = q;
        let packet_id = s.next_packet_id();
        let state = Awaiting::Unsent { ticket };
        s.inflight_mut().push_back(Inflight { packet_id, msg, qos, retain, sub_ids, state, group });
        self.note_gated(slot, ticket);
    }

    /// `slot` got an unsent entry waiting for `ticket`.
    fn note_gated(&mut self, slot: SessionSlot, ticket: u64) {
        if self.gates.sessions.back() != Some(&(ticket, slot)) {
            self.gates.sessions.push_back((ticket, slot));
        }
    }
}

impl ShardCore {
    /// A QoS 2 PUBLISH of a persistent publisher (rule 2): its local deliveries wait for the
    /// batch being built, which holds its `Qos2Received` (or, routed to other shards too,
    /// the local copies; `Qos2Received` follows them, see the module doc). Returns that
    /// ticket.
    pub(crate) fn gate_message(&mut self, msg: &Arc<Message>) -> Option<u64> {
        let p = self.persist.as_deref_mut()?;
        let ticket = p.next_ticket();
        p.gates.msgs.insert(Arc::as_ptr(msg) as usize, ticket);
        p.gates.by_ticket.push_back((ticket, msg.clone()));
        Some(ticket)
    }

    /// Everything up to `p.durable` is durable: the unsent PUBLISHes whose ticket it covers
    /// leave, in order.
    pub(crate) fn release_gates(&mut self, now: Instant) {
        let Some(p) = self.persist.as_deref_mut() else { return };
        let durable = p.durable;
        while p.gates.by_ticket.front().is_some_and(|(t, _)| *t <= durable) {
            let (_, m) = p.gates.by_ticket.pop_front().expect("front exists");
            p.gates.msgs.remove(&(Arc::as_ptr(&m) as usize));
        }
        let mut slots = Vec::new();
        while p.gates.sessions.front().is_some_and(|(t, _)| *t <= durable) {
            let (_, slot) = p.gates.sessions.pop_front().expect("front exists");
            if slots.last() != Some(&slot) {
                slots.push(slot);
            }
        }
        if slots.is_empty() {
            return;
        }
        let failed = p.failed.clone();
        let now_ms = self.uptime_ms(now);
        for slot in slots {
            self.send_unsent(slot, durable, &failed, now_ms);
        }
    }

    /// Sends `slot`'s unsent entries whose ticket is durable (all of them are at the back of
    /// the window, in ticket order), then what waited in its queue behind them. An offline
    /// session's entries become ordinary in-flight entries, resent when it resumes.
    fn send_unsent(
        &mut self,
        slot: SessionSlot,
        durable: u64,
        failed: &BTreeSet<u64>,
        now_ms: u64,
    ) {
        let ShardCore { sessions, conns, stats, actions, .. } = self;
        // The slot may have been reused by another session since: its entries are released
        // by their own tickets, which only says they are durable too.
        let Some(s) = sessions.try_get_mut(slot) else { return };
        if !s.has_unsent() {
            return;
        }
        let mut c = s.conn.and_then(|conn| conns.get_mut(conn).map(|c| (conn, c)));
        let mut sent = false;
        if !failed.is_empty() {
            // An entry whose batch failed is not in the log (and its publisher was refused):
            // it is dropped, never sent.
            let dropped = |i: &Inflight| matches!(i.state, Awaiting::Unsent { ticket } if failed.contains(&ticket));
            let n = s.inflight().iter().filter(|i| dropped(i)).count();
            if n > 0 {
                s.inflight_mut().retain(|i| !dropped(i));
                stats.dropped(crate::core::delivery::drops::DropReason::LogFull, n as u64);
            }
        }
        for i in s.inflight_mut().iter_mut() {
            let Awaiting::Unsent { ticket } = i.state else { continue };
            if ticket > durable {
                break;
            }
            i.state = if i.qos == QoS::AtLeastOnce { Awaiting::PubAck } else { Awaiting::PubRec };
            if let Some((conn, c)) = c.as_mut() {
                let out = OutPublish {
                    msg: &i.msg,
                    qos: i.qos,
                    retain: i.retain,
                    packet_id: Some(i.packet_id),
                    dup: false,
                    sub_ids: &i.sub_ids,
                    now_ms,
                };
                // A message too large for the client stays in flight, never acknowledged
                // (as on a resume): it only costs a window slot.
                if let Some(bytes) = send_custom(c, *conn, out, actions) {
                    stats.sent(i.qos, bytes);
                    sent = true;
                }
            }
        }
        if sent || c.is_some() {
            self.pump_session(slot, now_ms);
        }
    }
}
