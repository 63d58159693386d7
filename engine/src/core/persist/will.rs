//! Wills in the log (issue 10): a persistent session's will survives a crash. `WillSet` is
//! logged when a connection with a will attaches to a persistent session (CONNECT), and
//! `WillCleared` when the session no longer has one: it was published, discarded by a normal
//! DISCONNECT [MQTT-3.1.2-10], or the next connection came without one. A will waiting for
//! its Will Delay Interval stays logged until it is published or cancelled.
//!
//! After a restart a recovered session's will is a delayed will again: published when its
//! delay (counted from the restart; 0: at the first timer scan) or the session ends,
//! whichever comes first, unless the client resumes the session before that (5.0
//! §3.1.3.2.2). The connection the crash cut was not closed by a DISCONNECT, so its will is
//! due. Clean sessions are not in the log, nor their wills.
//!
//! Shard-local.

use std::time::{Duration, Instant};

use bytes::Bytes;
use shardmq_codec::{ByteStr, QoS, Will};

use crate::core::ids::SessionSlot;
use crate::core::persist::encode_properties;
use crate::core::sessions::session::{PendingWill, Session};
use crate::core::shard::ShardCore;
use crate::log::record::{WillCleared, WillSet};
use crate::log::Record;

impl ShardCore {
    /// Logs the will of the connection just attached to persistent session `slot` (or that
    /// it has none any more). Called by `persist_connect` after `SessionCreated`.
    pub(crate) fn persist_will(&mut self, slot: SessionSlot, clean: bool) {
        let Some(p) = self.persist.as_deref_mut() else { return };
        let s = self.sessions.get_mut(slot);
        let Some(plog) = s.plog.as_deref_mut() else { return };
        let was_logged = std::mem::replace(&mut plog.will_logged, s.will.is_some());
        let record = match s.will.as_deref() {
            Some(w) => Record::WillSet(will_record(&s.client_id, w)),
            // A clean `SessionCreated` dropped the old one already.
            None if was_logged && !clean => {
                Record::WillCleared(WillCleared { client_id: s.client_id.to_string() })
            }
            None => return,
        };
        p.emit(&mut self.sessions, record);
    }

    /// The will of `slot` was published or discarded: the log forgets it (if the session is
    /// still there and persistent).
    pub(crate) fn persist_will_cleared(&mut self, slot: SessionSlot) {
        let Some(p) = self.persist.as_deref_mut() else { return };
        let Some(s) = self.sessions.try_get_mut(slot) else { return };
        let Some(plog) = s.plog.as_deref_mut().filter(|l| l.will_logged) else { return };
        plog.will_logged = false;
        let record = Record::WillCleared(WillCleared { client_id: s.client_id.to_string() });
        p.emit(&mut self.sessions, record);
    }
}

/// The `WillSet` record of `w`.
fn will_record(client_id: &str, w: &Will) -> WillSet {
    WillSet {
        client_id: client_id.to_string(),
        topic: w.topic.to_string(),
        payload: w.payload.to_vec(),
        qos: w.qos as u8,
        retain: w.retain,
        properties: {
            // Stored as a PUBLISH's properties, which cannot carry the Will Delay Interval
            // (5.0 §3.1.3.2.2): that one is `delay_secs`.
            let mut props = w.properties.clone();
            props.will_delay_interval_secs = None;
            if props.is_empty() {
                Vec::new()
            } else {
                encode_properties(&props)
            }
        },
        delay_secs: w.properties.will_delay_interval_secs.unwrap_or(0),
    }
}

/// A recovered session's logged will becomes a delayed will, due `delay_secs` after `now`
/// (the restart).
pub(crate) fn restore_will(s: &mut Session, w: &WillSet, now: Instant) {
    let mut properties = crate::core::persist::restore::decode_properties(&w.properties)
        .map(|p| *p)
        .unwrap_or_default();
    properties.will_delay_interval_secs = (w.delay_secs > 0).then_some(w.delay_secs);
    let will = Will {
        topic: ByteStr::from(w.topic.as_str()),
        payload: Bytes::copy_from_slice(&w.payload),
        qos: QoS::from_u8(w.qos).unwrap_or(QoS::AtMostOnce),
        retain: w.retain,
        properties,
    };
    let publish_at = now + Duration::from_secs(w.delay_secs.into());
    s.set_pending_will(Some(PendingWill { will: Box::new(will), publish_at }));
    if let Some(plog) = s.plog.as_deref_mut() {
        plog.will_logged = true;
    }
}
