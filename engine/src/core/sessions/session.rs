//! Sessions: what the broker remembers about a client id across connections — its
//! subscriptions, its outgoing inflight window and queue, its incoming QoS 2 packet ids, its
//! will (the table that holds them is `table.rs`).
//!
//! Shard-local: a session lives on the home shard of its client id
//! ([`crate::core::shard::ShardCore::home_shard`]), and only there.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use shardmq_codec::{ByteStr, PacketId, QoS, Will};

use crate::core::ids::ConnId;
use crate::core::limits::{Limits, QueueFullPolicy};
use crate::core::mesh::{is_expired, Message};
use crate::core::persist::diff::{QEntry, SessionLog};
use crate::core::routing::replay::Replay;
use crate::core::routing::subscribe::SubOptions;

/// Where an outgoing QoS 1/2 message is in its acknowledgement flow: the packet it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // The variants are the packets' names.
pub(crate) enum Awaiting {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    PubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    PubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    PubComp,
    /// In the window (packet id taken, `Delivered` logged for a persistent session), the
    /// PUBLISH not sent yet: it leaves once the batch `ticket` is durable
    /// (`persist/gate.rs`).
    Unsent { ticket: u64 },
}

/// An outgoing QoS 1/2 message that was sent and is not yet fully acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct Inflight {
    pub(crate) packet_id: PacketId,
    pub(crate) msg: Arc<Message>,
    /// QoS after downgrading to the subscription's maximum.
    pub(crate) qos: QoS,
    /// RETAIN flag as sent.
    pub(crate) retain: bool,
    /// Subscription identifiers it was sent with (resent with them).
    pub(crate) sub_ids: Box<[u32]>,
    pub(crate) state: Awaiting,
    /// The shared subscription (`$share/{group}/{filter}`) it was delivered for, if any: a
    /// session that ends hands such messages back to the group (`routing/shared.rs`).
    pub(crate) group: Option<ByteStr>,
}

/// A message waiting in the session for the inflight window (or for the client to come
/// back), in delivery order.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub(crate) msg: Arc<Message>,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    /// Subscription identifiers of the matching subscriptions (5.0; usually empty, which
    /// does not allocate).
    pub(crate) sub_ids: Box<[u32]>,
    /// The shared subscription it was delivered for, if any (see [`Inflight::group`]).
    pub(crate) group: Option<ByteStr>,
    /// Its number in the session's queue, set by the session when it is queued (callers
    /// pass 0): messages queued later have higher numbers (wrapping), so a moving session
    /// tells what arrived since its snapshot ([`Session::queued_since`]).
    pub(crate) seq: u32,
}

/// What [`Session::enqueue_or_drop`] dropped to make room: the oldest queued messages, or
/// the new one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueDrops {
    pub(crate) oldest: u64,
    pub(crate) newest: u64,
}

impl Queued {
    /// What the entry counts against `session_queue_bytes_max`.
    pub(crate) fn size_bytes(&self) -> u64 {
        (self.msg.payload.len() + self.msg.topic.len()) as u64
    }
}

/// A will waiting for its Will Delay Interval (5.0) after the connection ended.
#[derive(Debug)]
pub(crate) struct PendingWill {
    pub(crate) will: Box<Will>,
    pub(crate) publish_at: Instant,
}

/// The parts of a session that only outstanding work uses: QoS 1/2 messages in flight either
/// way, a queue, a delayed will. Allocated on first use and freed by the periodic scan once
/// empty again ([`Session::release_idle`]), so an idle session does not carry them (~120 B
/// in every session slot otherwise), and steady traffic does not allocate per message.
///
/// Shard-local: owned by its session.
#[derive(Debug, Default)]
struct Backlog {
    /// Sent, unacknowledged QoS 1/2 messages in send order (resent in this order).
    inflight: VecDeque<Inflight>,
    /// Messages waiting for window space or for the client to reconnect, in order.
    queue: VecDeque<Queued>,
    /// What `queue` counts against `session_queue_bytes_max`.
    queue_bytes: u64,
    /// Messages dropped because the queue was full since it was last empty (an *episode*:
    /// warned once when it starts, summed up when the queue drains).
    full_drops: u64,
    /// Incoming QoS 2 packet ids awaiting PUBREL (received, routed once, PUBREC sent).
    qos2_in: Vec<PacketId>,
    /// A will waiting for its delay after the connection ended.
    pending_will: Option<PendingWill>,
    /// Retained messages still to send after a SUBACK, paced by the connection
    /// (`routing/replay.rs`).
    replay: VecDeque<Replay>,
    /// The number the next queued message gets ([`Queued::seq`]).
    next_queue_seq: u32,
    /// Kept even when empty, so queue numbers go on (the session is exporting to another
    /// node, which needs them to tell what it queued since its snapshot).
    pinned: bool,
}

impl Backlog {
    fn is_empty(&self) -> bool {
        self.inflight.is_empty()
            && self.queue.is_empty()
            && self.qos2_in.is_empty()
            && self.pending_will.is_none()
            && self.replay.is_empty()
            && !self.pinned
    }
}

pub(crate) use super::table::SessionTable;

// What the read accessors return for a session without a backlog.
static NO_INFLIGHT: VecDeque<Inflight> = VecDeque::new();
static NO_QUEUE: VecDeque<Queued> = VecDeque::new();
static NO_REPLAY: VecDeque<Replay> = VecDeque::new();

/// One session. Shard-local: lives on its client id's home shard.
///
/// One sits in a session table slot per client, connected or not, so its size counts for
/// every idle connection (`sessions/conn.rs` pins it in a test): what only outstanding messages or
/// a delayed will need is in the [`Backlog`], reached through accessors.
#[derive(Debug)]
pub(crate) struct Session {
    /// Owned and exactly sized: a slice of the CONNECT read buffer would keep that whole
    /// buffer alive as long as the session. The table's index refers to it too.
    pub(crate) client_id: Box<str>,
    /// The connection attached to it, if online.
    pub(crate) conn: Option<ConnId>,
    /// Session Expiry Interval in force (capped); 0 ends the session with its connection.
    pub(crate) expiry_secs: u32,
    /// When an offline session expires.
    pub(crate) expires_at: Option<Instant>,
    /// The session's subscriptions (filter as sent, options and Subscription Identifier).
    /// Mirrors the shard's trie (and, for shared ones, the group owner's member list).
    pub(crate) subs: Vec<(ByteStr, SubOptions)>,
    /// Inflight windows, queue, QoS 2 ids, delayed will; `None` while there are none.
    backlog: Option<Box<Backlog>>,
    /// The last packet id handed out. Kept here, not in the backlog, so ids keep advancing
    /// when the backlog is freed (clients see the same ids as before it was split out).
    pub(crate) last_packet_id: u16,
    /// The will of the current connection.
    pub(crate) will: Option<Box<Will>>,
    /// Fan-out deduplication: the epoch of the message last matched to this session, and
    /// its index in the fan-out's match list.
    pub(crate) fanout_epoch: u64,
    pub(crate) fanout_index: u32,
    /// The listener its client last connected on (`ConnInfo::listener`): the ACL it is
    /// judged by (`auth/listener.rs`). `None` until a client connects (a session recovered
    /// from the log or moved from another node).
    pub(crate) listener: Option<u16>,
    /// What the log knows about this session: `Some` while it is persistent and the broker
    /// persists (`persist/mod.rs`).
    pub(crate) plog: Option<Box<SessionLog>>,
}

impl Session {
    pub(crate) fn new(client_id: &str) -> Session {
        Session {
            client_id: client_id.into(),
            conn: None,
            expiry_secs: 0,
            expires_at: None,
            subs: Vec::new(),
            backlog: None,
            last_packet_id: 0,
            will: None,
            fanout_epoch: 0,
            fanout_index: 0,
            listener: None,
            plog: None,
        }
    }

    /// The backlog, allocated if the session has none.
    fn backlog_mut(&mut self) -> &mut Backlog {
        self.backlog.get_or_insert_with(Box::default)
    }

    /// Frees the backlog if nothing is outstanding (the periodic scan: freeing it as soon as
    /// the last message is acknowledged would allocate again for the next one).
    pub(crate) fn release_idle(&mut self) {
        if self.backlog.as_deref().is_some_and(Backlog::is_empty) {
            self.backlog = None;
        }
    }

    /// Sent, unacknowledged QoS 1/2 messages in send order (resent in this order).
    pub(crate) fn inflight(&self) -> &VecDeque<Inflight> {
        self.backlog.as_deref().map_or(&NO_INFLIGHT, |b| &b.inflight)
    }

    /// The inflight messages, for adding, acknowledging or advancing one.
    pub(crate) fn inflight_mut(&mut self) -> &mut VecDeque<Inflight> {
        &mut self.backlog_mut().inflight
    }

    /// Messages waiting for window space or for the client to reconnect, in order (changed
    /// only through [`Session::enqueue`] and friends, which keep the byte count and the log
    /// view).
    pub(crate) fn queue(&self) -> &VecDeque<Queued> {
        self.backlog.as_deref().map_or(&NO_QUEUE, |b| &b.queue)
    }

    /// Retained messages still to send after a SUBACK (`routing/replay.rs`).
    pub(crate) fn replay(&self) -> &VecDeque<Replay> {
        self.backlog.as_deref().map_or(&NO_REPLAY, |b| &b.replay)
    }

    /// The retained messages still to send, for adding or taking one.
    pub(crate) fn replay_mut(&mut self) -> &mut VecDeque<Replay> {
        &mut self.backlog_mut().replay
    }

    /// What the queue counts against `session_queue_bytes_max`.
    pub(crate) fn queue_bytes(&self) -> u64 {
        self.backlog.as_deref().map_or(0, |b| b.queue_bytes)
    }

    /// Incoming QoS 2 packet ids awaiting PUBREL (received, routed once, PUBREC sent).
    pub(crate) fn qos2_in(&self) -> &[PacketId] {
        self.backlog.as_deref().map_or(&[], |b| &b.qos2_in)
    }

    /// The incoming QoS 2 packet ids, for adding or releasing one.
    pub(crate) fn qos2_in_mut(&mut self) -> &mut Vec<PacketId> {
        &mut self.backlog_mut().qos2_in
    }

    /// A will waiting for its delay after the connection ended.
    pub(crate) fn pending_will(&self) -> Option<&PendingWill> {
        self.backlog.as_deref()?.pending_will.as_ref()
    }

    /// Sets (`Some`) or cancels (`None`) the delayed will.
    pub(crate) fn set_pending_will(&mut self, will: Option<PendingWill>) {
        if will.is_some() || self.backlog.is_some() {
            self.backlog_mut().pending_will = will;
        }
    }

    /// Removes and returns the delayed will.
    pub(crate) fn take_pending_will(&mut self) -> Option<PendingWill> {
        self.backlog.as_deref_mut()?.pending_will.take()
    }

    /// A packet id not used by any inflight message. The caller guarantees the window is
    /// smaller than the id space (`inflight_out_max` is a `u16` and the window is checked
    /// before calling).
    pub(crate) fn next_packet_id(&mut self) -> PacketId {
        let inflight = self.backlog.as_deref().map_or(&NO_INFLIGHT, |b| &b.inflight);
        assert!(inflight.len() < usize::from(u16::MAX), "inflight window exceeds id space");
        loop {
            self.last_packet_id = self.last_packet_id.wrapping_add(1);
            let Some(id) = PacketId::new(self.last_packet_id) else { continue };
            if !inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }

    /// True if the window ends with entries whose PUBLISH waits for durability
    /// (`persist/gate.rs`): later messages must wait behind them.
    pub(crate) fn has_unsent(&self) -> bool {
        self.inflight().back().is_some_and(|i| matches!(i.state, Awaiting::Unsent { .. }))
    }

    /// Index of the inflight entry with `id` (acks mostly arrive in order: the front).
    pub(crate) fn inflight_position(&self, id: PacketId) -> Option<usize> {
        self.inflight().iter().position(|i| i.packet_id == id)
    }

    /// Appends to the queue unless a limit is hit; `false` means dropped.
    pub(crate) fn enqueue(&mut self, mut q: Queued, messages_max: u32, bytes_max: u64) -> bool {
        let size = q.size_bytes();
        if self.queue().len() >= messages_max as usize || self.queue_bytes() + size > bytes_max {
            return false;
        }
        if let Some(log) = self.plog.as_deref_mut() {
            let e = QEntry::for_queued(&q);
            log.pending += usize::from(matches!(e, QEntry::Pending { .. }));
            log.queue.push_back(e);
        }
        q.seq = self.take_queue_seq();
        let b = self.backlog_mut();
        b.queue_bytes += size;
        b.queue.push_back(q);
        true
    }

    /// The number for a message queued now.
    fn take_queue_seq(&mut self) -> u32 {
        let b = self.backlog_mut();
        let seq = b.next_queue_seq;
        b.next_queue_seq = seq.wrapping_add(1);
        seq
    }

    /// Pins the queue numbering (`pinned`: the backlog is kept while empty, so numbers go
    /// on) or releases it; the number the next queued message gets. A moving session's
    /// snapshot remembers it (`cluster/moves.rs`).
    pub(crate) fn pin_queue_seq(&mut self, pinned: bool) -> u32 {
        if !pinned && self.backlog.is_none() {
            return 0;
        }
        let b = self.backlog_mut();
        b.pinned = pinned;
        b.next_queue_seq
    }

    /// The queued messages numbered `from` or later, i.e. queued since [`pin_queue_seq`]
    /// answered `from` (in order: a queue only grows at the back). Numbers wrap; a queue
    /// never spans 2^31 of them.
    ///
    /// [`pin_queue_seq`]: Session::pin_queue_seq
    pub(crate) fn queued_since(&self, from: u32) -> impl Iterator<Item = &Queued> + '_ {
        self.queue().iter().filter(move |q| q.seq.wrapping_sub(from) < 1 << 31)
    }

    /// Appends to the queue; a full queue applies `limits.session_queue_full` for this
    /// session alone. `None`: refused (`logged`, a copy the log would keep, under
    /// `refuse`); otherwise how many messages were dropped (the oldest, or `q` itself).
    pub(crate) fn enqueue_or_drop(
        &mut self,
        q: Queued,
        limits: &Limits,
        logged: bool,
    ) -> Option<QueueDrops> {
        let (messages_max, bytes_max) =
            (limits.session_queue_messages_max, limits.session_queue_bytes_max);
        let size = q.size_bytes();
        let fits = |s: &Session| {
            s.queue().len() < messages_max as usize && s.queue_bytes() + size <= bytes_max
        };
        let mut dropped = QueueDrops::default();
        if !fits(self) {
            match limits.session_queue_full {
                QueueFullPolicy::Refuse if logged => return None,
                QueueFullPolicy::DropOldest => {
                    while !fits(self) && self.drop_oldest().is_some() {
                        dropped.oldest += 1;
                        self.note_full_drop("drop_oldest");
                    }
                }
                QueueFullPolicy::DropNewest | QueueFullPolicy::Refuse => {
                    self.note_full_drop("drop_newest");
                    dropped.newest = 1;
                    return Some(dropped);
                }
            }
        }
        if !self.enqueue(q, messages_max, bytes_max) {
            dropped.newest += 1;
        }
        Some(dropped)
    }

    /// Appends a recovered entry to the queue (no limits: it was accepted before) whose log
    /// view is `entry`.
    pub(crate) fn restore_queued(&mut self, mut q: Queued, entry: QEntry) {
        if let Some(log) = self.plog.as_deref_mut() {
            log.queue.push_back(entry);
        }
        q.seq = self.take_queue_seq();
        let b = self.backlog_mut();
        b.queue_bytes += q.size_bytes();
        b.queue.push_back(q);
    }

    /// Puts messages of a session that moved here from another node into the queue at
    /// position `at` (the end if `None`; no limits: they were accepted there). The sent,
    /// unacknowledged messages (the inflight window) stay as they are. Only for a session
    /// the log does not hold yet (its entries are logged when it becomes persistent).
    pub(crate) fn insert_moved(
        &mut self,
        at: Option<usize>,
        moved: impl IntoIterator<Item = Queued>,
    ) {
        debug_assert!(self.plog.is_none(), "a moved message for a logged session");
        let b = self.backlog_mut();
        let at = at.unwrap_or(b.queue.len()).min(b.queue.len());
        let rest = b.queue.split_off(at);
        for q in rest.iter() {
            b.queue_bytes -= q.size_bytes();
        }
        for mut q in moved.into_iter().chain(rest) {
            q.seq = self.take_queue_seq();
            let b = self.backlog_mut();
            b.queue_bytes += q.size_bytes();
            b.queue.push_back(q);
        }
    }

    /// Removes the queue's first entry.
    pub(crate) fn dequeue(&mut self) -> Option<Queued> {
        let b = self.backlog.as_deref_mut()?;
        let q = b.queue.pop_front()?;
        b.queue_bytes -= q.size_bytes();
        if b.queue.is_empty() && b.full_drops > 0 {
            let dropped = std::mem::take(&mut b.full_drops);
            tracing::info!(client_id = %self.client_id, dropped, "session queue drained");
        }
        if let Some(log) = self.plog.as_deref_mut() {
            log.on_dequeue();
        }
        Some(q)
    }

    /// Drops the queue's first entry to make room (`QueueFullPolicy::DropOldest`). A logged
    /// entry is acknowledged in the log, so recovery does not bring it back.
    fn drop_oldest(&mut self) -> Option<Queued> {
        let b = self.backlog.as_deref_mut()?;
        let q = b.queue.pop_front()?;
        b.queue_bytes -= q.size_bytes();
        if let Some(log) = self.plog.as_deref_mut() {
            log.on_removed(&[0]);
        }
        Some(q)
    }

    /// Counts a message dropped because the queue was full; warns at the first drop of an
    /// episode (until the queue is empty again), so an abandoned session logs once.
    fn note_full_drop(&mut self, policy: &str) {
        let b = self.backlog_mut();
        b.full_drops += 1;
        if b.full_drops == 1 {
            let len = b.queue.len();
            tracing::warn!(
                client_id = %self.client_id, queued = len, policy,
                "session queue full: dropping messages for this session"
            );
        }
    }

    /// Drops queued messages whose expiry interval has passed [MQTT-3.3.2-5]; returns how
    /// many (counted as dropped by the caller).
    pub(crate) fn drop_expired(&mut self, now_ms: u64) -> u64 {
        let Some(b) = self.backlog.as_deref_mut() else { return 0 };
        let before = b.queue.len();
        let mut freed_bytes = 0;
        // Positions of the removed entries (usually none), for the log view.
        let mut removed = Vec::new();
        let mut i = 0;
        b.queue.retain(|q| {
            let expired = is_expired(&q.msg, now_ms);
            if expired {
                freed_bytes += q.size_bytes();
                removed.push(i);
            }
            i += 1;
            !expired
        });
        b.queue_bytes -= freed_bytes;
        let dropped = before - b.queue.len();
        if dropped > 0 {
            if let Some(log) = self.plog.as_deref_mut() {
                log.on_removed(&removed);
            }
        }
        dropped as u64
    }

    /// Removes and returns the queued messages delivered for the shared subscription
    /// `group`, in order (the session left the group: they go to another member).
    pub(crate) fn take_group_queued(&mut self, group: &str) -> Vec<Queued> {
        let Some(b) = self.backlog.as_deref_mut() else { return Vec::new() };
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(b.queue.len());
        let mut removed = Vec::new();
        for (i, q) in b.queue.drain(..).enumerate() {
            let take = q.group.as_deref() == Some(group);
            if take {
                removed.push(i);
                b.queue_bytes -= q.size_bytes();
                taken.push(q);
            } else {
                kept.push_back(q);
            }
        }
        b.queue = kept;
        if let Some(log) = self.plog.as_deref_mut().filter(|_| !taken.is_empty()) {
            log.on_removed(&removed);
        }
        taken
    }

    /// Index of the subscription to `filter`.
    pub(crate) fn sub_position(&self, filter: &str) -> Option<usize> {
        self.subs.iter().position(|(f, _)| &**f == filter)
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
