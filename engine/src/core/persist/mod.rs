//! Persistence, the core's side (design.md §6): which log records the shard's state changes
//! produce, and acknowledgements held until those records are durable.
//!
//! Sans-IO: the core never writes a file. Records collect in an outbox; after every call into
//! the core the io layer takes them as one batch ([`ShardCore::drain_log`]), appends it to
//! the shard's log, and reports back which batches are durable
//! ([`ShardCore::handle_log_durable`]) or failed ([`ShardCore::handle_log_failed`]). Batches
//! are numbered by *tickets* (1, 2, 3, … per shard); "durable up to ticket t" is a prefix.
//!
//! Where records come from:
//! - session lifecycle, subscriptions, inbound QoS 2 state and retained messages are emitted
//!   when they happen (`persist_connect`, `persist_subscriptions`, `delivery/publish.rs`);
//! - a persistent session's queue and in-flight window are compared with what the log
//!   already knows ([`SessionLog`], `persist/diff.rs`) when the batch is cut: every session
//!   touched since the last batch is visited, so the fan-out code needs no hooks, and QoS 0 and
//!   clean sessions cost nothing.
//!
//! Acknowledgements: PUBACK, PUBREC and PUBCOMP are held in one queue per shard, in the order
//! they were produced (so per connection in packet order [MQTT-4.6.0-2..4]), and leave only
//! when the batch that was current when they were produced is durable. A QoS 1/2 PUBLISH
//! routed to other shards also waits for each of them to report its own copy durable
//! (`MeshMsg::DurableReq` / `DurableAck`): an acknowledged message survives `kill -9` and is
//! delivered to every persistent session that matched it, on any shard — including a shared
//! subscription's member on a third shard (the chained round trip of `persist/ack.rs`).
//! A persistent session's SUBACK and UNSUBACK wait for the batch holding its subscription
//! records in the same way (`routing/subscribe.rs`); CONNACK does not (see ARCHITECTURE.md).
//!
//! Shard-local: one [`Persist`] per shard, owned by its core.

mod ack;
pub(super) mod diff;
mod gate;
pub(crate) mod restore;
mod will;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use shardmq_codec::{encode, ByteStr, Packet, Properties, ProtocolVersion, Publish, QoS};

use crate::core::hash::Map;
use crate::core::ids::{SessionSlot, ShardId};
use crate::core::mesh::Message;
use crate::core::routing::subscribe::SubOptions;
use crate::core::sessions::session::{Session, SessionTable};
use crate::core::shard::ShardCore;
use crate::log::ack::AckQueue;
use crate::log::record::{
    MessageStored, RetainedCleared, RetainedSet, SessionCreated, SessionEnded, SessionOwner,
    SubscriptionAdded, SubscriptionRemoved,
};
use crate::log::state::SubscriptionState;
use crate::log::Record;

pub(crate) use crate::core::persist::ack::{Ack, AckKind};
use crate::core::persist::ack::{ChainedReply, HeldAck};
pub(crate) use crate::core::persist::diff::SessionLog;

/// One batch of records for the io layer to append, numbered by `ticket`. It may be empty:
/// then it stands for "everything appended so far" (something waits for that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBatch {
    /// The batch's number: 1 for the first batch of the process, then +1 per batch.
    pub ticket: u64,
    /// Records to append as one log batch (atomic on recovery).
    pub records: Vec<Record>,
}

/// Key of a stored message: the routed message (by address: the entry holds a reference, so
/// the address is not reused while the entry lives), the QoS and RETAIN flag it is delivered
/// with (recovery rebuilds deliveries from the stored message alone).
type MsgKey = (usize, u8, bool);

/// A message stored in this shard's log and still referred to.
#[derive(Debug)]
struct StoredMsg {
    /// Its key in the shared index, if shared (only ordinary, non-retained deliveries are).
    key: Option<MsgKey>,
    /// Queue entries (all sessions) referring to it.
    refs: u32,
    /// It is the retained message of its topic.
    retained: bool,
    /// Keeps the address in `key` alive.
    _msg: Arc<Message>,
}

/// The persistence state of one shard's core. Shard-local.
#[derive(Debug)]
pub(crate) struct Persist {
    /// Records of the batch being built.
    pub(crate) batch: Vec<Record>,
    /// Something waits for the next ticket: cut a batch even if it is empty.
    pub(crate) need_ticket: bool,
    /// Tickets handed out so far.
    pub(crate) emitted: u64,
    /// Every ticket up to this one is durable (or failed).
    pub(crate) durable: u64,
    /// Tickets whose batch could not be appended (disk full, log error).
    pub(crate) failed: BTreeSet<u64>,
    /// The log refuses appends (cap reached, device full): refuse QoS 1/2 PUBLISH.
    pub(crate) full: bool,
    /// A QoS 1/2 copy for a persistent session was refused (the log is full, or the
    /// session's queue is) since the flag was last taken: whoever routed the message
    /// answers with the failure (`ShardCore::take_copy_refused`).
    pub(crate) copy_refused: bool,
    /// A publisher waits for the answer about the message being routed (a client's QoS 1/2
    /// PUBLISH here, or a peer's routed message, whose `DurableReq` follows): a copy that
    /// cannot be kept then fails the whole message before any copy is sent on this shard
    /// (`delivery/refusal.rs`).
    pub(crate) answering: bool,
    /// Per peer: a copy of a message it routed here was refused since its last
    /// `DurableReq`, which is then answered `ok: false` at once.
    pub(crate) refused_from: Vec<bool>,
    msgs: Map<u64, StoredMsg>,
    index: Map<MsgKey, u64>,
    next_msg_id: u64,
    /// Retained topic → msg id (on the topic's owner shard).
    retained: Map<ByteStr, u64>,
    pub(crate) held: VecDeque<HeldAck>,
    /// `DurableAck`s to send once their ticket is durable (keyed by ticket): (ticket, to,
    /// token).
    pub(crate) replies: AckQueue<(u64, ShardId, u64)>,
    /// `DurableAck`s that also wait for other shards (chained requests, the second hop of
    /// shared subscriptions): released out of order when ready.
    pub(crate) chained: Vec<ChainedReply>,
    /// Per peer: the last `DurableReq` token sent, and every token up to `peer_acked`
    /// acknowledged (`peer_acked_above` holds the acknowledged tokens above it).
    pub(crate) peer_sent: Vec<u64>,
    pub(crate) peer_acked: Vec<u64>,
    pub(crate) peer_acked_above: BTreeSet<(u16, u64)>,
    /// (peer, token) acknowledged as failed.
    pub(crate) peer_failed: BTreeSet<(u16, u64)>,
    /// Per peer: a QoS 1/2 `SharedDeliver` was sent to it since the last `DurableReq`.
    pub(crate) forwarded: Vec<bool>,
    /// Per peer: the token of the last `DurableReq` sent after shared forwards (0: none).
    pub(crate) forward_token: Vec<u64>,
    /// The broker's start (`CoreConfig::started_at`) in wall-clock milliseconds since the
    /// Unix epoch, as the io layer read it ([`ShardCore::set_wall_clock`]); 0: unknown.
    wall_start_ms: u64,
    /// `CoreConfig::started_at`.
    started_at: Instant,
    /// Sends held until their records are durable (`persist/gate.rs`).
    pub(crate) gates: crate::core::persist::gate::Gates,
}

impl Persist {
    pub(crate) fn new(shard_count: u16, started_at: Instant) -> Persist {
        Persist {
            batch: Vec::new(),
            need_ticket: false,
            emitted: 0,
            durable: 0,
            failed: BTreeSet::new(),
            full: false,
            copy_refused: false,
            answering: false,
            refused_from: vec![false; usize::from(shard_count)],
            msgs: Map::default(),
            index: Map::default(),
            next_msg_id: 1,
            retained: Map::default(),
            held: VecDeque::new(),
            replies: AckQueue::default(),
            chained: Vec::new(),
            peer_sent: vec![0; usize::from(shard_count)],
            peer_acked: vec![0; usize::from(shard_count)],
            peer_acked_above: BTreeSet::new(),
            peer_failed: BTreeSet::new(),
            forwarded: vec![false; usize::from(shard_count)],
            forward_token: vec![0; usize::from(shard_count)],
            wall_start_ms: 0,
            started_at,
            gates: Default::default(),
        }
    }

    /// The wall-clock time (Unix milliseconds) of `t`, if the io layer told the time.
    pub(crate) fn wall_ms_at(&self, t: Instant) -> Option<u64> {
        let uptime_ms = t.saturating_duration_since(self.started_at).as_millis() as u64;
        (self.wall_start_ms != 0).then(|| self.wall_start_ms + uptime_ms)
    }

    /// Appends a record to the batch being built, after the `SessionEnded` of every session
    /// removed since the last record (so the log sees events in the order they happened).
    pub(crate) fn emit(&mut self, sessions: &mut SessionTable, record: Record) {
        self.flush_ended(sessions);
        self.batch.push(record);
    }

    /// Emits `SessionEnded` for sessions removed from the table, releasing their messages.
    pub(crate) fn flush_ended(&mut self, sessions: &mut SessionTable) {
        for (client_id, log) in sessions.take_ended() {
            self.batch
                .push(Record::SessionEnded(SessionEnded { client_id: client_id.to_string() }));
            for id in log.logged_msg_ids() {
                self.unref(id);
            }
        }
    }

    /// The ticket of the next batch, which an item produced now waits for.
    pub(crate) fn next_ticket(&mut self) -> u64 {
        self.need_ticket = true;
        self.emitted + 1
    }

    /// Takes a reference on the stored copy of `msg` as delivered with `qos`/`retain`,
    /// storing it first if needed. `shared` copies may be reused by other sessions; the
    /// others (retained deliveries, shared-subscription deliveries, which could reach one
    /// session twice) are stored per delivery.
    pub(crate) fn msg_ref(
        &mut self,
        msg: &Arc<Message>,
        qos: QoS,
        retain: bool,
        shared: bool,
    ) -> u64 {
        let key = (Arc::as_ptr(msg) as usize, qos as u8, retain);
        if shared {
            if let Some(&id) = self.index.get(&key) {
                self.msgs.get_mut(&id).expect("indexed message is stored").refs += 1;
                return id;
            }
        }
        let id = self.store(msg, qos, retain);
        let m = self.msgs.get_mut(&id).expect("just stored");
        m.refs = 1;
        if shared {
            m.key = Some(key);
            self.index.insert(key, id);
        }
        id
    }

    /// Stores a new copy of `msg` (a `MessageStored` record) with no references yet.
    fn store(&mut self, msg: &Arc<Message>, qos: QoS, retain: bool) -> u64 {
        let id = self.next_msg_id;
        self.next_msg_id += 1;
        let received_at_unix_ms = self.wall_ms_at(self.started_at).map_or(0, |start_ms| {
            // The message's age counts across restarts (`persist/restore.rs`).
            start_ms + msg.received_at_ms
        });
        let rec = stored_record(id, msg, qos, retain, received_at_unix_ms);
        self.batch.push(Record::MessageStored(rec));
        let entry = StoredMsg { key: None, refs: 0, retained: false, _msg: msg.clone() };
        self.msgs.insert(id, entry);
        id
    }

    /// Drops a reference; a message nobody refers to is forgotten (the log drops it too).
    pub(crate) fn unref(&mut self, id: u64) {
        let m = self.msgs.get_mut(&id).expect("unref of a message not stored");
        assert!(m.refs > 0, "refcount of msg {id} underflows");
        m.refs -= 1;
        self.forget_if_dead(id);
    }

    fn forget_if_dead(&mut self, id: u64) {
        let m = &self.msgs[&id];
        if m.refs == 0 && !m.retained {
            if let Some(key) = m.key {
                self.index.remove(&key);
            }
            self.msgs.remove(&id);
        }
    }

    /// Restores a stored message at recovery (no record: it is in the log already).
    pub(crate) fn restore_msg(&mut self, id: u64, msg: &Arc<Message>, refs: u32, retained: bool) {
        let entry = StoredMsg { key: None, refs, retained, _msg: msg.clone() };
        self.msgs.insert(id, entry);
        self.next_msg_id = self.next_msg_id.max(id + 1);
    }

    /// Restores a retained topic's msg id at recovery.
    pub(crate) fn restore_retained(&mut self, topic: ByteStr, id: u64) {
        self.retained.insert(topic, id);
    }

    /// Records the retained message of `topic` (on its owner shard): set, or cleared.
    pub(crate) fn retained_update(
        &mut self,
        sessions: &mut SessionTable,
        topic: &ByteStr,
        msg: Option<&Arc<Message>>,
    ) {
        self.flush_ended(sessions);
        let old = self.retained.remove(topic);
        match msg {
            Some(m) => {
                let id = self.store(m, m.qos, true);
                self.msgs.get_mut(&id).expect("just stored").retained = true;
                self.retained.insert(topic.clone(), id);
                let rec = RetainedSet { topic: topic.to_string(), msg_id: id };
                self.batch.push(Record::RetainedSet(rec));
            }
            None if old.is_some() => {
                let rec = RetainedCleared { topic: topic.to_string() };
                self.batch.push(Record::RetainedCleared(rec));
            }
            None => {}
        }
        if let Some(old) = old {
            self.msgs.get_mut(&old).expect("retained message is stored").retained = false;
            self.forget_if_dead(old);
        }
    }

    /// Pushes a record directly (the diff of a session, which already flushed ended ones).
    pub(crate) fn push(&mut self, record: Record) {
        self.batch.push(record);
    }

    /// Takes the records of the batch being built (tests).
    #[cfg(test)]
    pub(crate) fn take_batch(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.batch)
    }

    /// Stored messages still referred to (tests).
    #[cfg(test)]
    pub(crate) fn stored_count(&self) -> usize {
        self.msgs.len()
    }
}

/// The `MessageStored` record of `msg` as delivered with `qos` and `retain`, received at
/// `received_at_unix_ms` (0: unknown).
fn stored_record(
    msg_id: u64,
    msg: &Message,
    qos: QoS,
    retain: bool,
    received_at_unix_ms: u64,
) -> MessageStored {
    MessageStored {
        msg_id,
        topic: msg.topic.to_string(),
        payload: msg.payload.to_vec(),
        qos: qos as u8,
        retain,
        properties: msg.properties.as_deref().map(encode_properties).unwrap_or_default(),
        received_at_ms: received_at_unix_ms,
    }
}

/// The opaque `properties` blob of a `MessageStored`: a 5.0 PUBLISH carrying only the
/// properties (the codec's own encoding, decoded again on recovery).
pub(crate) fn encode_properties(p: &Properties) -> Vec<u8> {
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: ByteStr::from_static("p"),
        packet_id: None,
        payload: Bytes::new(),
        properties: Some(Box::new(p.clone())),
    };
    let mut out = BytesMut::new();
    match encode(&Packet::Publish(publish), ProtocolVersion::V5, &mut out) {
        Ok(()) => out.to_vec(),
        // Properties that came in a packet always fit one again.
        Err(e) => unreachable!("re-encoding received properties failed: {e}"),
    }
}

/// A subscription as the log keeps it: every option in the options byte (the 5.0 wire
/// layout), and the Subscription Identifier, which deliveries after a restart still carry
/// [MQTT-3.3.4-3].
pub(crate) fn subscription_state(s: &SubOptions) -> SubscriptionState {
    SubscriptionState { options: options_byte(&s.opts), sub_id: s.id.unwrap_or(0) }
}

/// Subscription options as one byte (the 5.0 wire layout; `restore::options_from_byte`
/// reads it back).
pub(crate) fn options_byte(o: &shardmq_codec::SubscriptionOptions) -> u8 {
    (o.qos as u8)
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

impl ShardCore {
    /// Turns persistence on (the io layer calls it before recovery when a data directory is
    /// configured). Without it the core keeps everything in memory and acknowledges at once.
    pub fn enable_persistence(&mut self) {
        let p = Persist::new(self.config.shard_count, self.config.started_at);
        self.persist = Some(Box::new(p));
    }

    /// The io layer tells the wall-clock time (`unix_ms`, milliseconds since the Unix epoch)
    /// at `now`; the core reads no clock. Call it after [`ShardCore::enable_persistence`] and
    /// before recovery: the log then records when offline sessions expire and when messages
    /// arrived, and recovery subtracts the time the broker was down from both intervals.
    pub fn set_wall_clock(&mut self, unix_ms: u64, now: Instant) {
        let start_ms = unix_ms.saturating_sub(self.uptime_ms(now));
        if let Some(p) = self.persist.as_deref_mut() {
            p.wall_start_ms = start_ms.max(1);
        }
    }

    /// The records produced since the last call, as one batch (or `None` if nothing was
    /// produced and nothing waits). Called by the io layer after every call into the core.
    pub fn drain_log(&mut self) -> Option<LogBatch> {
        let p = self.persist.as_deref_mut()?;
        p.flush_ended(&mut self.sessions);
        let mut dirty = self.sessions.take_dirty();
        for &slot in &dirty {
            if let Some(s) = self.sessions.try_get_log(slot) {
                crate::core::persist::diff::diff_session(p, s);
            }
        }
        dirty.clear();
        self.sessions.give_back_dirty(dirty);
        if p.batch.is_empty() && !p.need_ticket {
            return None;
        }
        p.need_ticket = false;
        p.emitted += 1;
        Some(LogBatch { ticket: p.emitted, records: std::mem::take(&mut p.batch) })
    }

    /// A session became persistent, was resumed, or stopped being persistent at CONNECT.
    /// Called once the session is attached to its connection, before anything is resent.
    pub(crate) fn persist_connect(&mut self, slot: SessionSlot, session_present: bool) {
        let Some(p) = self.persist.as_deref_mut() else { return };
        let s = self.sessions.get_mut(slot);
        let client_id = s.client_id.to_string();
        let expiry_secs = s.expiry_secs;
        if expiry_secs == 0 {
            // Not persistent (any more): the log forgets it now.
            if let Some(log) = s.plog.take() {
                let ids: Vec<u64> = log.logged_msg_ids().collect();
                p.emit(&mut self.sessions, Record::SessionEnded(SessionEnded { client_id }));
                for id in ids {
                    p.unref(id);
                }
            }
            return;
        }
        let clean = !session_present || s.plog.is_none();
        if s.plog.is_none() {
            s.plog = Some(Box::new(SessionLog::for_session(s)));
        }
        let plog = s.plog.as_deref_mut().expect("just set");
        plog.expiry_secs = expiry_secs;
        // Online again: the log forgets the offline deadline (`SessionCreated` clears it).
        plog.offline_logged = None;
        if clean {
            plog.subs.clear();
        }
        if !plog.dirty {
            // Entries it held before becoming persistent are logged with the next batch.
            plog.dirty = true;
            self.sessions.mark(slot);
        }
        let user = self.sessions.user(slot).map(str::to_owned);
        let owner = SessionOwner { client_id: client_id.clone(), user };
        let created = SessionCreated { client_id, expiry_secs, clean };
        p.emit(&mut self.sessions, Record::SessionCreated(created));
        // Whose session it is (`sessions/connect.rs`), across restarts.
        p.emit(&mut self.sessions, Record::SessionOwner(owner));
        self.persist_will(slot, clean);
        if clean {
            self.persist_subscriptions(slot);
        }
    }

    /// Logs the difference between a persistent session's subscriptions and what the log
    /// has (after SUBSCRIBE, UNSUBSCRIBE, or when a session becomes persistent).
    pub(crate) fn persist_subscriptions(&mut self, slot: SessionSlot) {
        let Some(p) = self.persist.as_deref_mut() else { return };
        let Some(s) = self.sessions.try_get_mut(slot) else { return };
        let Some(plog) = s.plog.as_deref_mut() else { return };
        let client_id = s.client_id.to_string();
        let mut records = Vec::new();
        let current: Map<&str, SubscriptionState> =
            s.subs.iter().map(|(f, o)| (f.as_str(), subscription_state(o))).collect();
        plog.subs.retain(|filter, _| {
            let keep = current.contains_key(filter.as_str());
            if !keep {
                let rec =
                    SubscriptionRemoved { client_id: client_id.clone(), filter: filter.clone() };
                records.push(Record::SubscriptionRemoved(rec));
            }
            keep
        });
        for (filter, sub) in current {
            if plog.subs.get(filter) != Some(&sub) {
                plog.subs.insert(filter.to_string(), sub);
                let rec = SubscriptionAdded {
                    client_id: client_id.clone(),
                    filter: filter.to_string(),
                    options: sub.options,
                    sub_id: sub.sub_id,
                };
                records.push(Record::SubscriptionAdded(rec));
            }
        }
        for r in records {
            p.emit(&mut self.sessions, r);
        }
    }

    /// The ticket an answer about `slot`'s subscriptions waits for: the batch being built,
    /// if the session is persistent; 0 (no wait) otherwise or without persistence.
    pub(crate) fn log_wait_ticket(&mut self, slot: SessionSlot) -> u64 {
        let Some(p) = self.persist.as_deref_mut() else { return 0 };
        if self.sessions.get(slot).plog.is_none() {
            return 0;
        }
        p.next_ticket()
    }

    /// True once the batch `ticket` is durable or failed (0 always is).
    pub(crate) fn log_ticket_done(&self, ticket: u64) -> bool {
        ticket == 0 || self.persist.as_ref().is_some_and(|p| p.durable >= ticket)
    }

    /// True if the batch `ticket` could not be appended.
    pub(crate) fn log_ticket_failed(&self, ticket: u64) -> bool {
        ticket != 0 && self.persist.as_ref().is_some_and(|p| p.failed.contains(&ticket))
    }

    /// Emits the record `record` builds from the client id if the session in `slot` is
    /// persistent (otherwise, or without persistence, nothing is logged).
    pub(crate) fn persist_session_record(
        &mut self,
        slot: SessionSlot,
        record: impl FnOnce(String) -> Record,
    ) {
        let Some(p) = self.persist.as_deref_mut() else { return };
        let s: &Session = self.sessions.get(slot);
        if s.plog.is_none() {
            return;
        }
        let r = record(s.client_id.to_string());
        p.emit(&mut self.sessions, r);
    }
}
