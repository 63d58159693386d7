//! The live state a log describes: records folded into sessions, subscriptions, stored
//! messages with reference counts, QoS 2 state and retained topics. Sans-IO.
//!
//! Recovery folds every record into a [`LogState`] and hands it to the engine; compaction
//! folds the sealed segments and writes [`LogState::snapshot`] in their place. The fold is
//! strict: a record that does not fit the state (a message queued for an unknown session, a
//! message acknowledged that was never queued) is an [`ApplyError`], because it means the
//! writer or the disk is wrong.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::record::{
    Acknowledged, Checkpoint, Delivered, MessageQueued, MessageStored, PubrelCompleted,
    PubrelPending, Qos2Received, Qos2Released, RetainedCleared, RetainedSet, SessionCreated,
    SessionEnded, SessionOffline, SessionOwner, SubscriptionAdded, SubscriptionRemoved,
    WillCleared, WillSet,
};
use super::Record;

/// A record that does not fit the state it is applied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {reason}")]
pub struct ApplyError {
    /// The record's kind.
    pub kind: &'static str,
    /// What did not fit.
    pub reason: String,
}

/// A message waiting in a session's queue, or in flight to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueEntry {
    /// The stored message.
    pub msg_id: u64,
    /// `Some` once sent (in flight, waiting for PUBACK/PUBREC).
    pub packet_id: Option<u16>,
}

/// One subscription as the log has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionState {
    /// The 5.0 subscription options byte (maximum QoS, No Local, Retain As Published,
    /// Retain Handling).
    pub options: u8,
    /// The Subscription Identifier, 0 for none.
    pub sub_id: u32,
}

/// One session's durable state.
#[derive(Debug, Clone, Default)]
pub struct SessionState {
    /// Session expiry interval.
    pub expiry_secs: u32,
    /// The clean-start flag of its last `SessionCreated`.
    pub clean: bool,
    /// Offline since its last `SessionOffline`: when it expires (Unix milliseconds). 0 while
    /// online, or if the broker crashed while it was online.
    pub expires_at_unix_ms: u64,
    /// Filter → subscription options and identifier.
    pub subscriptions: BTreeMap<String, SubscriptionState>,
    /// Inbound QoS 2 packet ids received and not yet released.
    pub qos2_inbound: BTreeSet<u16>,
    /// Outbound QoS 2 packet ids with PUBREL sent, waiting for PUBCOMP.
    pub pubrel_pending: BTreeSet<u16>,
    /// Queued messages delivered for a shared subscription: msg id → `$share/...` group.
    pub groups: BTreeMap<u64, String>,
    /// The session's will (published after a restart unless the session resumes first).
    pub will: Option<WillSet>,
    /// Its owner's user name (`Some(None)`: anonymous), if the log recorded one.
    pub owner: Option<Option<String>>,
    /// Queue in order: position → entry.
    queue: BTreeMap<u64, QueueEntry>,
    /// msg_id → position in `queue`.
    queue_index: HashMap<u64, u64>,
    next_position: u64,
}

impl SessionState {
    /// Queued and in-flight messages, in queue order.
    pub fn queue(&self) -> impl ExactSizeIterator<Item = &QueueEntry> + '_ {
        self.queue.values()
    }
}

impl PartialEq for SessionState {
    fn eq(&self, other: &Self) -> bool {
        self.expiry_secs == other.expiry_secs
            && self.clean == other.clean
            && self.expires_at_unix_ms == other.expires_at_unix_ms
            && self.subscriptions == other.subscriptions
            && self.qos2_inbound == other.qos2_inbound
            && self.pubrel_pending == other.pubrel_pending
            && self.groups == other.groups
            && self.will == other.will
            && self.queue.values().eq(other.queue.values())
    }
}

impl Eq for SessionState {}

/// A stored message and who refers to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The message as stored.
    pub message: MessageStored,
    /// Queue entries (queued or in flight) that refer to it, over all sessions.
    pub refs: u32,
    /// True while it is the retained message of its topic.
    pub retained: bool,
}

impl StoredMessage {
    fn is_live(&self) -> bool {
        self.refs > 0 || self.retained
    }
}

/// The live state of one shard's log.
///
/// Shard-local: built by the shard's recovery, consumed by its engine core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogState {
    sessions: BTreeMap<String, SessionState>,
    messages: BTreeMap<u64, StoredMessage>,
    retained: BTreeMap<String, u64>,
}

fn fail(kind: &'static str, reason: String) -> ApplyError {
    ApplyError { kind, reason }
}

impl LogState {
    /// Sessions by client id.
    pub fn sessions(&self) -> &BTreeMap<String, SessionState> {
        &self.sessions
    }

    /// Stored messages by msg id. After [`LogState::prune`], only live ones.
    pub fn messages(&self) -> &BTreeMap<u64, StoredMessage> {
        &self.messages
    }

    /// Retained topic → msg id.
    pub fn retained(&self) -> &BTreeMap<String, u64> {
        &self.retained
    }

    /// True if nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.messages.is_empty() && self.retained.is_empty()
    }

    /// The highest msg id stored, so the engine can continue numbering above it.
    pub fn msg_id_max(&self) -> Option<u64> {
        self.messages.keys().next_back().copied()
    }

    /// Like [`LogState::apply`], but takes the record, so a stored message is moved in rather
    /// than copied (recovery's path).
    pub fn apply_owned(&mut self, record: Record) -> Result<(), ApplyError> {
        match record {
            Record::MessageStored(m) => {
                if self.messages.contains_key(&m.msg_id) {
                    return Err(fail("MessageStored", format!("msg id {} stored twice", m.msg_id)));
                }
                self.messages
                    .insert(m.msg_id, StoredMessage { message: m, refs: 0, retained: false });
                Ok(())
            }
            other => self.apply(&other),
        }
    }

    /// Folds one record into the state. On error the state is unchanged.
    pub fn apply(&mut self, record: &Record) -> Result<(), ApplyError> {
        let kind = record.kind_name();
        match record {
            Record::SessionCreated(SessionCreated { client_id, expiry_secs, clean }) => {
                if *clean {
                    self.end_session(client_id);
                }
                let s = self.sessions.entry(client_id.clone()).or_default();
                s.expiry_secs = *expiry_secs;
                s.expires_at_unix_ms = 0;
                s.clean = *clean;
            }
            Record::SessionEnded(SessionEnded { client_id }) => {
                self.session(kind, client_id)?;
                self.end_session(client_id);
            }
            Record::SubscriptionAdded(SubscriptionAdded { client_id, filter, options, sub_id }) => {
                let sub = SubscriptionState { options: *options, sub_id: *sub_id };
                self.session(kind, client_id)?.subscriptions.insert(filter.clone(), sub);
            }
            Record::SubscriptionRemoved(SubscriptionRemoved { client_id, filter }) => {
                self.session(kind, client_id)?.subscriptions.remove(filter);
            }
            Record::MessageStored(m) => {
                if self.messages.contains_key(&m.msg_id) {
                    return Err(fail(kind, format!("msg id {} stored twice", m.msg_id)));
                }
                let stored = StoredMessage { message: m.clone(), refs: 0, retained: false };
                self.messages.insert(m.msg_id, stored);
            }
            Record::MessageQueued(MessageQueued { client_id, msg_id, group }) => {
                let Some(msg) = self.messages.get_mut(msg_id) else {
                    return Err(fail(kind, format!("unknown msg id {msg_id}")));
                };
                let Some(s) = self.sessions.get_mut(client_id) else {
                    return Err(fail(kind, format!("unknown session {client_id:?}")));
                };
                if s.queue_index.contains_key(msg_id) {
                    return Err(fail(
                        kind,
                        format!("msg id {msg_id} queued twice for {client_id:?}"),
                    ));
                }
                msg.refs += 1;
                let pos = s.next_position;
                s.next_position += 1;
                s.queue.insert(pos, QueueEntry { msg_id: *msg_id, packet_id: None });
                s.queue_index.insert(*msg_id, pos);
                if !group.is_empty() {
                    s.groups.insert(*msg_id, group.clone());
                }
            }
            Record::Delivered(Delivered { client_id, msg_id, packet_id }) => {
                let s = self.session(kind, client_id)?;
                let Some(pos) = s.queue_index.get(msg_id) else {
                    return Err(fail(
                        kind,
                        format!("msg id {msg_id} not queued for {client_id:?}"),
                    ));
                };
                s.queue.get_mut(pos).expect("index and queue agree").packet_id = Some(*packet_id);
            }
            Record::Acknowledged(Acknowledged { client_id, msg_id }) => {
                let s = self.session(kind, client_id)?;
                let Some(pos) = s.queue_index.remove(msg_id) else {
                    return Err(fail(
                        kind,
                        format!("msg id {msg_id} not queued for {client_id:?}"),
                    ));
                };
                s.queue.remove(&pos).expect("index and queue agree");
                s.groups.remove(msg_id);
                self.release(*msg_id);
            }
            Record::Qos2Received(Qos2Received { client_id, packet_id }) => {
                self.session(kind, client_id)?.qos2_inbound.insert(*packet_id);
            }
            Record::Qos2Released(Qos2Released { client_id, packet_id }) => {
                self.session(kind, client_id)?.qos2_inbound.remove(packet_id);
            }
            Record::PubrelPending(PubrelPending { client_id, packet_id }) => {
                self.session(kind, client_id)?.pubrel_pending.insert(*packet_id);
            }
            Record::PubrelCompleted(PubrelCompleted { client_id, packet_id }) => {
                self.session(kind, client_id)?.pubrel_pending.remove(packet_id);
            }
            Record::WillSet(w) => {
                self.session(kind, &w.client_id)?.will = Some(w.clone());
            }
            Record::WillCleared(WillCleared { client_id }) => {
                self.session(kind, client_id)?.will = None;
            }
            Record::SessionOwner(SessionOwner { client_id, user }) => {
                self.session(kind, client_id)?.owner = Some(user.clone());
            }
            Record::RetainedSet(RetainedSet { topic, msg_id }) => {
                let Some(msg) = self.messages.get_mut(msg_id) else {
                    return Err(fail(kind, format!("unknown msg id {msg_id}")));
                };
                if msg.message.topic != *topic {
                    return Err(fail(kind, format!("msg id {msg_id} is not on topic {topic:?}")));
                }
                msg.retained = true;
                if let Some(old) = self.retained.insert(topic.clone(), *msg_id) {
                    if old != *msg_id {
                        self.unretain(old);
                    }
                }
            }
            Record::RetainedCleared(RetainedCleared { topic }) => {
                if let Some(old) = self.retained.remove(topic) {
                    self.unretain(old);
                }
            }
            Record::SessionOffline(SessionOffline { client_id, expires_at_unix_ms }) => {
                self.session(kind, client_id)?.expires_at_unix_ms = *expires_at_unix_ms;
            }
            Record::Checkpoint(Checkpoint { .. }) => {
                if !self.is_empty() {
                    return Err(fail(kind, "checkpoint after other records".into()));
                }
            }
        }
        Ok(())
    }

    fn session(
        &mut self,
        kind: &'static str,
        client_id: &str,
    ) -> Result<&mut SessionState, ApplyError> {
        self.sessions
            .get_mut(client_id)
            .ok_or_else(|| fail(kind, format!("unknown session {client_id:?}")))
    }

    fn end_session(&mut self, client_id: &str) {
        if let Some(s) = self.sessions.remove(client_id) {
            for e in s.queue.values() {
                self.release(e.msg_id);
            }
        }
    }

    fn release(&mut self, msg_id: u64) {
        let msg = self.messages.get_mut(&msg_id).expect("a queued message is stored");
        assert!(msg.refs > 0, "refcount of msg {msg_id} underflows");
        msg.refs -= 1;
        if !msg.is_live() {
            self.messages.remove(&msg_id);
        }
    }

    fn unretain(&mut self, msg_id: u64) {
        let msg = self.messages.get_mut(&msg_id).expect("a retained message is stored");
        msg.retained = false;
        if !msg.is_live() {
            self.messages.remove(&msg_id);
        }
    }

    /// Drops stored messages that no queue and no retained topic refers to. Recovery calls it
    /// after the last record: such a message can no longer be referred to.
    pub fn prune(&mut self) {
        self.messages.retain(|_, m| m.is_live());
    }

    /// Records that rebuild this state (pruned) when applied to an empty one: live messages,
    /// then each session with its subscriptions, queue, in-flight and QoS 2 state, then
    /// retained topics. Yields at most one record per record that made the state.
    pub fn snapshot(&self) -> impl Iterator<Item = Record> + '_ {
        let messages = self
            .messages
            .values()
            .filter(|m| m.is_live())
            .map(|m| Record::MessageStored(m.message.clone()));
        let sessions =
            self.sessions.iter().flat_map(|(client_id, s)| session_records(client_id, s));
        let retained = self.retained.iter().map(|(topic, msg_id)| {
            Record::RetainedSet(RetainedSet { topic: topic.clone(), msg_id: *msg_id })
        });
        messages.chain(sessions).chain(retained)
    }

    /// How many records [`LogState::snapshot`] yields.
    pub fn snapshot_len(&self) -> u64 {
        let messages = self.messages.values().filter(|m| m.is_live()).count();
        let sessions: usize = self
            .sessions
            .values()
            .map(|s| {
                1 + usize::from(s.expires_at_unix_ms != 0)
                    + s.subscriptions.len()
                    + s.queue.len()
                    + s.queue.values().filter(|e| e.packet_id.is_some()).count()
                    + s.qos2_inbound.len()
                    + s.pubrel_pending.len()
                    + usize::from(s.will.is_some())
                    + usize::from(s.owner.is_some())
            })
            .sum();
        (messages + sessions + self.retained.len()) as u64
    }

    /// Checks the reference counts and indexes against the data (for tests).
    pub fn check_invariants(&self) {
        let mut refs: HashMap<u64, u32> = HashMap::new();
        for s in self.sessions.values() {
            assert_eq!(s.queue.len(), s.queue_index.len());
            for (pos, e) in &s.queue {
                assert_eq!(s.queue_index.get(&e.msg_id), Some(pos));
                *refs.entry(e.msg_id).or_default() += 1;
            }
        }
        for (id, m) in &self.messages {
            assert_eq!(m.refs, refs.remove(id).unwrap_or(0), "refs of msg {id}");
            assert_eq!(m.retained, self.retained.get(&m.message.topic) == Some(id));
        }
        assert!(refs.is_empty(), "queued messages that are not stored: {refs:?}");
        for id in self.retained.values() {
            assert!(self.messages.get(id).is_some_and(|m| m.retained));
        }
    }
}

fn session_records<'a>(
    client_id: &'a str,
    s: &'a SessionState,
) -> impl Iterator<Item = Record> + 'a {
    let c = move || client_id.to_string();
    let created = SessionCreated { client_id: c(), expiry_secs: s.expiry_secs, clean: s.clean };
    let subs = s.subscriptions.iter().map(move |(filter, sub)| {
        Record::SubscriptionAdded(SubscriptionAdded {
            client_id: c(),
            filter: filter.clone(),
            options: sub.options,
            sub_id: sub.sub_id,
        })
    });
    let queue = s.queue.values().flat_map(move |e| {
        let group = s.groups.get(&e.msg_id).cloned().unwrap_or_default();
        let queued =
            Record::MessageQueued(MessageQueued { client_id: c(), msg_id: e.msg_id, group });
        let delivered = e.packet_id.map(|packet_id| {
            Record::Delivered(Delivered { client_id: c(), msg_id: e.msg_id, packet_id })
        });
        std::iter::once(queued).chain(delivered)
    });
    let qos2 = s
        .qos2_inbound
        .iter()
        .map(move |&packet_id| Record::Qos2Received(Qos2Received { client_id: c(), packet_id }));
    let pubrel = s
        .pubrel_pending
        .iter()
        .map(move |&packet_id| Record::PubrelPending(PubrelPending { client_id: c(), packet_id }));
    let offline = (s.expires_at_unix_ms != 0).then(|| {
        let expires_at_unix_ms = s.expires_at_unix_ms;
        Record::SessionOffline(SessionOffline { client_id: c(), expires_at_unix_ms })
    });
    let will = s.will.clone().map(Record::WillSet);
    let owner =
        s.owner.clone().map(|user| Record::SessionOwner(SessionOwner { client_id: c(), user }));
    std::iter::once(Record::SessionCreated(created))
        .chain(owner)
        .chain(offline)
        .chain(subs)
        .chain(queue)
        .chain(qos2)
        .chain(pubrel)
        .chain(will)
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
