//! What the log knows about one persistent session's queue and in-flight window
//! ([`SessionLog`]), and the records that bring the log up to date with the session
//! ([`diff_session`]).
//!
//! The session's queue only changes through `Session`'s own methods (`enqueue`, `dequeue`,
//! `drop_expired`, `take_group_queued`), which keep [`SessionLog::queue`] in step with it. The
//! in-flight window is changed directly by the delivery code (push at the back, removal
//! anywhere, PUBREC → waiting for PUBCOMP); it is compared with [`SessionLog::inflight`] in
//! one ordered walk when the batch is cut. Both orders are the send order, so the walk is
//! linear in the window (≤ `inflight_out_max`).
//!
//! Shard-local: a `SessionLog` lives inside its session.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use shardmq_codec::{ByteStr, QoS};

use crate::core::mesh::Message;
use crate::core::persist::Persist;
use crate::core::sessions::session::{Awaiting, Inflight, Queued, Session};
use crate::log::record::{
    Acknowledged, Delivered, MessageQueued, PubrelCompleted, PubrelPending, SessionCreated,
    SessionOffline,
};
use crate::log::state::SubscriptionState;
use crate::log::Record;

/// A queued entry as the log knows it.
#[derive(Debug, Clone)]
pub(crate) enum QEntry {
    /// QoS 0: never logged.
    NotLogged,
    /// Queued since the last batch; logged when the batch is cut.
    /// `group`: the shared subscription it was delivered for (`Queued::group`).
    Pending { msg: Arc<Message>, qos: QoS, retain: bool, group: Option<ByteStr> },
    /// In the log as `msg_id` (the routed message at address `ptr`).
    Logged { msg_id: u64, ptr: usize },
}

impl QEntry {
    /// The entry for a message entering the queue.
    pub(crate) fn for_queued(q: &Queued) -> QEntry {
        if q.qos == QoS::AtMostOnce {
            return QEntry::NotLogged;
        }
        QEntry::Pending { msg: q.msg.clone(), qos: q.qos, retain: q.retain, group: q.group.clone() }
    }

    fn ptr(&self) -> Option<usize> {
        match self {
            QEntry::NotLogged => None,
            QEntry::Pending { msg, .. } => Some(Arc::as_ptr(msg) as usize),
            QEntry::Logged { ptr, .. } => Some(*ptr),
        }
    }
}

/// An in-flight message as the log knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoggedInflight {
    pub(crate) packet_id: u16,
    /// Address of the in-flight entry's message (identifies it together with the id).
    pub(crate) ptr: usize,
    pub(crate) msg_id: u64,
    /// PUBREC received: the message is acknowledged, `PubrelPending` logged.
    pub(crate) pubrel: bool,
}

/// What the log knows about a persistent session (a session whose expiry is above 0).
///
/// Shard-local: lives in its session ([`Session::plog`]).
#[derive(Debug, Default)]
pub(crate) struct SessionLog {
    /// Touched since the last batch (it is in the table's dirty list).
    pub(crate) dirty: bool,
    /// The expiry interval in the log.
    pub(crate) expiry_secs: u32,
    /// The offline session's expiry deadline the log has (`SessionOffline`).
    pub(crate) offline_logged: Option<Instant>,
    /// Subscriptions in the log: filter → options byte and identifier.
    pub(crate) subs: BTreeMap<String, SubscriptionState>,
    /// One entry per entry of the session's queue, in the same order.
    pub(crate) queue: VecDeque<QEntry>,
    /// `Pending` entries in `queue` (all of them after every `Logged` one).
    pub(crate) pending: usize,
    /// Entries taken from the front of the queue since the last batch (sent, or dropped).
    pub(crate) popped: Vec<QEntry>,
    /// Logged entries removed from the queue without being sent since the last batch.
    pub(crate) dropped: Vec<u64>,
    /// The in-flight window in the log, in send order.
    pub(crate) inflight: Vec<LoggedInflight>,
    /// Inbound QoS 2 ids whose PUBREC failed (0x97) while the client was away: still in
    /// `Session::qos2_in`, so a resend is not routed again, and answered with the failure.
    pub(crate) qos2_failed: Vec<shardmq_codec::PacketId>,
    /// The log has a will for the session (`persist/will.rs`).
    pub(crate) will_logged: bool,
}

impl SessionLog {
    /// The log view of a session that was not persistent so far: everything it holds is new.
    pub(crate) fn for_session(s: &Session) -> SessionLog {
        let queue: VecDeque<QEntry> = s.queue().iter().map(QEntry::for_queued).collect();
        let pending = queue.iter().filter(|e| matches!(e, QEntry::Pending { .. })).count();
        SessionLog { queue, pending, ..SessionLog::default() }
    }

    /// Msg ids this session holds references on in the log.
    pub(crate) fn logged_msg_ids(&self) -> impl Iterator<Item = u64> + '_ {
        let queued = self.queue.iter().chain(&self.popped).filter_map(|e| match e {
            QEntry::Logged { msg_id, .. } => Some(*msg_id),
            _ => None,
        });
        let inflight = self.inflight.iter().filter(|i| !i.pubrel).map(|i| i.msg_id);
        queued.chain(inflight).chain(self.dropped.iter().copied())
    }

    /// The queue lost its front entry.
    pub(crate) fn on_dequeue(&mut self) {
        let e = self.queue.pop_front().expect("queue and its log view agree");
        if matches!(e, QEntry::Pending { .. }) {
            self.pending -= 1;
        }
        self.popped.push(e);
    }

    /// The queue lost the entries at positions `removed` (increasing).
    pub(crate) fn on_removed(&mut self, removed: &[usize]) {
        let mut next = removed.iter().peekable();
        let mut i = 0;
        let (pending, dropped) = (&mut self.pending, &mut self.dropped);
        self.queue.retain(|e| {
            let remove = next.next_if_eq(&&i).is_some();
            i += 1;
            if remove {
                match e {
                    QEntry::NotLogged => {}
                    QEntry::Pending { .. } => *pending -= 1,
                    QEntry::Logged { msg_id, .. } => dropped.push(*msg_id),
                }
            }
            !remove
        });
    }
}

/// Appends to `p`'s batch the records that make the log match session `s`, and updates
/// `s`'s [`SessionLog`].
pub(crate) fn diff_session(p: &mut Persist, s: &mut Session) {
    let Some(log) = s.plog.as_deref_mut() else { return };
    log.dirty = false;
    let client_id: &str = &s.client_id;
    let c = || client_id.to_string();
    if log.expiry_secs != s.expiry_secs {
        // A DISCONNECT changed the interval (5.0 §3.14.2.2.2).
        log.expiry_secs = s.expiry_secs;
        let rec = SessionCreated { client_id: c(), expiry_secs: s.expiry_secs, clean: false };
        p.push(Record::SessionCreated(rec));
        log.offline_logged = None;
    }
    if s.conn.is_none() && s.expires_at != log.offline_logged {
        // Offline: the deadline in wall-clock time, so a restart does not extend it.
        log.offline_logged = s.expires_at;
        if let Some(expires_at_unix_ms) = s.expires_at.and_then(|t| p.wall_ms_at(t)) {
            p.push(Record::SessionOffline(SessionOffline { client_id: c(), expires_at_unix_ms }));
        }
    }
    // New queue entries, in queue order (they are the last `pending` non-QoS-0 entries).
    if log.pending > 0 {
        let mut first = log.queue.len();
        let mut seen = 0;
        while seen < log.pending {
            first -= 1;
            if matches!(log.queue[first], QEntry::Pending { .. }) {
                seen += 1;
            }
        }
        for e in log.queue.range_mut(first..) {
            if let QEntry::Pending { msg, qos, retain, group } = e {
                let ptr = Arc::as_ptr(msg) as usize;
                let msg_id = queue_new(p, client_id, msg, *qos, *retain, group.as_deref());
                *e = QEntry::Logged { msg_id, ptr };
            }
        }
        log.pending = 0;
    }
    for msg_id in log.dropped.drain(..) {
        p.push(Record::Acknowledged(Acknowledged { client_id: c(), msg_id }));
        p.unref(msg_id);
    }
    // The in-flight window: one ordered walk over the log's view and the session's.
    let old = std::mem::take(&mut log.inflight);
    let mut popped = std::mem::take(&mut log.popped);
    let mut next = Vec::with_capacity(s.inflight().len());
    let mut j = 0;
    for e in s.inflight() {
        let ptr = Arc::as_ptr(&e.msg) as usize;
        let pid = e.packet_id.get();
        while j < old.len() && !(old[j].packet_id == pid && old[j].ptr == ptr) {
            gone(p, client_id, old[j]);
            j += 1;
        }
        let mut entry = if j < old.len() {
            j += 1;
            old[j - 1]
        } else {
            let msg_id = new_inflight(p, client_id, e, &mut popped, ptr);
            p.push(Record::Delivered(Delivered { client_id: c(), msg_id, packet_id: pid }));
            LoggedInflight { packet_id: pid, ptr, msg_id, pubrel: false }
        };
        if e.state == Awaiting::PubComp && !entry.pubrel {
            // PUBREC received: the message is done; only the PUBREL/PUBCOMP remains.
            let batch = [
                Record::Acknowledged(Acknowledged { client_id: c(), msg_id: entry.msg_id }),
                Record::PubrelPending(PubrelPending { client_id: c(), packet_id: pid }),
            ];
            batch.into_iter().for_each(|r| p.push(r));
            p.unref(entry.msg_id);
            entry.pubrel = true;
        }
        next.push(entry);
    }
    for &o in &old[j..] {
        gone(p, client_id, o);
    }
    // Entries taken from the queue but not sent (expired, too large): dropped.
    for e in popped {
        if let QEntry::Logged { msg_id, .. } = e {
            p.push(Record::Acknowledged(Acknowledged { client_id: c(), msg_id }));
            p.unref(msg_id);
        }
    }
    let log = s.plog.as_deref_mut().expect("checked above");
    log.inflight = next;
}

/// The msg id of an in-flight entry the log does not know yet: taken from the queue (its
/// entry is in `popped`), or sent directly by the fan-out (stored now).
fn new_inflight(
    p: &mut Persist,
    client_id: &str,
    e: &Inflight,
    popped: &mut Vec<QEntry>,
    ptr: usize,
) -> u64 {
    if let Some(i) = popped.iter().position(|q| q.ptr() == Some(ptr)) {
        match popped.remove(i) {
            QEntry::Logged { msg_id, .. } => return msg_id,
            QEntry::Pending { msg, qos, retain, group } => {
                return queue_new(p, client_id, &msg, qos, retain, group.as_deref())
            }
            QEntry::NotLogged => {}
        }
    }
    queue_new(p, client_id, &e.msg, e.qos, e.retain, e.group.as_deref())
}

/// Logs a new queue entry of `msg` for the session, delivered for the shared subscription
/// `group` if any. Ordinary, non-retained deliveries share one stored copy per message.
fn queue_new(
    p: &mut Persist,
    client_id: &str,
    msg: &Arc<Message>,
    qos: QoS,
    retain: bool,
    group: Option<&str>,
) -> u64 {
    let shared = group.is_none() && !retain;
    let msg_id = p.msg_ref(msg, qos, retain, shared);
    let group = group.unwrap_or_default().to_string();
    let client_id = client_id.to_string();
    p.push(Record::MessageQueued(MessageQueued { client_id, msg_id, group }));
    msg_id
}

/// An in-flight entry left the window: acknowledged (PUBACK, or PUBREC with an error) or,
/// after PUBREC, completed (PUBCOMP).
fn gone(p: &mut Persist, client_id: &str, o: LoggedInflight) {
    let client_id = client_id.to_string();
    if o.pubrel {
        p.push(Record::PubrelCompleted(PubrelCompleted { client_id, packet_id: o.packet_id }));
    } else {
        p.push(Record::Acknowledged(Acknowledged { client_id, msg_id: o.msg_id }));
        p.unref(o.msg_id);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use shardmq_codec::{ByteStr, Properties};

    use super::*;
    use crate::core::ids::ShardId;
    use crate::core::mesh::Origin;
    use crate::log::state::LogState;

    fn msg(topic: &str, expiry_secs: Option<u32>) -> Arc<Message> {
        let properties = expiry_secs.map(|s| {
            Box::new(Properties { message_expiry_interval_secs: Some(s), ..Properties::default() })
        });
        Arc::new(Message {
            topic: ByteStr::from(topic),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties,
            origin: Origin { shard: ShardId(0), session: 0 },
            received_at_ms: 0,
        })
    }

    fn queued(m: &Arc<Message>, qos: QoS) -> Queued {
        Queued { msg: m.clone(), qos, retain: false, sub_ids: Box::default(), group: None, seq: 0 }
    }

    /// Cuts a batch the way `drain_log` does and folds it into `log`.
    fn cut(p: &mut Persist, s: &mut Session, log: &mut LogState) -> Vec<&'static str> {
        diff_session(p, s);
        let records = p.take_batch();
        let kinds = records.iter().map(Record::kind_name).collect();
        for r in records {
            log.apply_owned(r).expect("the record fits the log");
        }
        log.check_invariants();
        kinds
    }

    #[test]
    fn queue_changes_become_records_in_queue_order() {
        let mut p = Persist::new(1, Instant::now());
        let mut log = LogState::default();
        let created = SessionCreated { client_id: "c".into(), expiry_secs: 60, clean: true };
        log.apply_owned(Record::SessionCreated(created)).unwrap();
        let mut s = Session::new("c");
        s.expiry_secs = 60;
        s.plog = Some(Box::new(SessionLog { expiry_secs: 60, ..SessionLog::default() }));
        let (a, b, c, d) = (msg("a", Some(1)), msg("b", None), msg("c", Some(1)), msg("d", None));
        for (m, q) in [(&a, QoS::AtLeastOnce), (&b, QoS::AtMostOnce), (&c, QoS::ExactlyOnce)] {
            assert!(s.enqueue(queued(m, q), 100, 1 << 20));
        }
        assert_eq!(
            cut(&mut p, &mut s, &mut log),
            ["MessageStored", "MessageQueued", "MessageStored", "MessageQueued"],
            "QoS 0 is not logged"
        );
        assert!(s.enqueue(queued(&d, QoS::AtLeastOnce), 100, 1 << 20));
        // `a` and `c` expire while queued; `d` (pending) stays.
        assert_eq!(s.drop_expired(5_000), 2);
        assert_eq!(
            cut(&mut p, &mut s, &mut log),
            ["MessageStored", "MessageQueued", "Acknowledged", "Acknowledged"]
        );
        let queue: Vec<u64> = log.sessions()["c"].queue().map(|e| e.msg_id).collect();
        assert_eq!(queue.len(), 1, "only d is left in the log: {queue:?}");
        // `b` (QoS 0) and `d` leave the queue; `d` goes in flight with packet id 1.
        s.dequeue();
        let q = s.dequeue().unwrap();
        s.inflight_mut().push_back(Inflight {
            packet_id: shardmq_codec::PacketId::new(1).unwrap(),
            msg: q.msg,
            qos: q.qos,
            retain: false,
            sub_ids: Box::default(),
            state: Awaiting::PubAck,
            group: None,
        });
        assert_eq!(cut(&mut p, &mut s, &mut log), ["Delivered"]);
        s.inflight_mut().clear();
        assert_eq!(cut(&mut p, &mut s, &mut log), ["Acknowledged"], "PUBACK");
        assert!(log.messages().is_empty() && p.stored_count() == 0, "nothing is live");
    }
}
