//! Retained messages sent after a SUBACK [MQTT-3.3.1-9], paced by what the connection
//! drains rather than cut off at its bounds.
//!
//! A SUBSCRIBE whose filters match many retained messages takes a snapshot of them (one
//! reference each) into the session's replay list, and sends from it only while the
//! connection has room: nothing queued in the session, a free slot in the inflight window
//! for a QoS 1/2 copy, and less than half of `connection_tx_bytes_pause` waiting to be
//! written (and the shard's transmit budget would not drop a QoS 0 copy, `delivery/tx_budget.rs`).
//! The rest waits, and goes on when acknowledgements free the window (`pump_session`) or, while any
//! replay is pending, every [`REPLAY_POLL_INTERVAL`] (the writer drains the transmit queue
//! meanwhile). So a replay never fills the session queue (where a full queue would drop) nor the
//! transmit queue (where QoS 0 would drop), and every retained message is sent.
//!
//! The snapshot is what was retained at SUBSCRIBE; a message replaced or cleared meanwhile
//! is still sent as it was. A replay left when the connection ends waits for the session to
//! resume (a persistent session), in memory only: it is not logged.
//!
//! Shard-local: the list lives in its session's backlog.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shardmq_codec::QoS;

use crate::core::delivery::deliver::window;
use crate::core::delivery::drops::DropReason;
use crate::core::ids::SessionSlot;
use crate::core::mesh::Message;
use crate::core::shard::ShardCore;

/// How often pending replays look whether their connection drained.
pub(crate) const REPLAY_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// One retained message still to send to a session that subscribed.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    pub(crate) msg: Arc<Message>,
    /// The subscription's maximum QoS.
    pub(crate) qos: QoS,
    /// The subscription's identifier (5.0).
    pub(crate) sub_id: Option<u32>,
}

/// The online sessions with a pending replay, and when to look at them next. A session
/// that went offline leaves the list (its replay waits in the session) and comes back when
/// it resumes (`pump_session` → [`ShardCore::poll_replay`]). Shard-local.
#[derive(Debug, Default)]
pub(crate) struct Replays {
    slots: Vec<SessionSlot>,
    /// `None`: look at the next tick.
    next_at: Option<Instant>,
}

impl Replays {
    /// When pending replays are looked at next (`None`: none pending).
    pub(crate) fn deadline(&self, fallback: Instant) -> Option<Instant> {
        (!self.slots.is_empty()).then(|| self.next_at.unwrap_or(fallback))
    }
}

impl ShardCore {
    /// Sends `found` (retained messages matching a new subscription of `slot`) as fast as
    /// the connection takes them; the rest follows as it drains.
    pub(crate) fn start_replay(&mut self, slot: SessionSlot, found: Vec<Replay>, now: Instant) {
        if found.is_empty() {
            return;
        }
        // At most one full snapshot of the retained store waits per session: a client that
        // subscribes again and again without reading cannot grow it without bound.
        let cap = self.config.limits.retained_messages_max as usize;
        let replay = self.sessions.get_mut(slot).replay_mut();
        let room = cap.saturating_sub(replay.len());
        let dropped = found.len().saturating_sub(room);
        replay.extend(found.into_iter().take(room));
        if dropped > 0 {
            self.stats.dropped(DropReason::ReplayFull, dropped as u64);
            tracing::warn!(
                shard = %self.shard,
                client_id = %self.sessions.get(slot).client_id,
                dropped,
                "retained replay: the session already waits for a full store's worth; \
                 the rest of this SUBSCRIBE's retained messages are not sent"
            );
        }
        self.poll_replay(slot, self.uptime_ms(now));
        self.replays.next_at.get_or_insert(now + REPLAY_POLL_INTERVAL);
    }

    /// Continues `slot`'s replay and keeps it on the polling list while some is left and
    /// the session is online.
    pub(crate) fn poll_replay(&mut self, slot: SessionSlot, now_ms: u64) {
        if self.continue_replay(slot, now_ms) && !self.replays.slots.contains(&slot) {
            self.replays.slots.push(slot);
        }
    }

    /// Sends the next messages of `slot`'s replay while its connection has room. True if
    /// some are left and the session is online (an offline session is not polled).
    pub(crate) fn continue_replay(&mut self, slot: SessionSlot, now_ms: u64) -> bool {
        // Well under the mark where back-pressure or slow-consumer drops start.
        let tx_room_bytes = self.config.limits.connection_tx_bytes_pause / 2;
        loop {
            let limits = &self.config.limits;
            let Some(s) = self.sessions.try_get(slot) else { return false };
            let Some(next) = s.replay().front() else { return false };
            let Some(c) = s.conn.and_then(|conn| self.conns.get(conn)) else { return false };
            let qos = next.qos.min(next.msg.qos);
            let full_window = qos != QoS::AtMostOnce && s.inflight().len() >= window(limits, c);
            let tx_full = c.tx.len_bytes() as u64 >= tx_room_bytes || c.tx.drops_qos0();
            if !s.queue().is_empty() || full_window || tx_full {
                return true;
            }
            let r = self.sessions.get_mut(slot).replay_mut().pop_front().expect("front exists");
            self.deliver_retained(slot, &r.msg, r.qos, r.sub_id, now_ms);
        }
    }

    /// Continues every pending replay (the timer, every [`REPLAY_POLL_INTERVAL`]).
    pub(crate) fn continue_replays(&mut self, now: Instant) {
        if self.replays.deadline(now).is_none_or(|at| now < at) {
            return;
        }
        let now_ms = self.uptime_ms(now);
        let mut slots = std::mem::take(&mut self.replays.slots);
        slots.retain(|&slot| self.continue_replay(slot, now_ms));
        // Replays started meanwhile (none: `continue_replay` starts none) are kept too.
        slots.append(&mut self.replays.slots);
        self.replays.slots = slots;
        self.replays.next_at = Some(now + REPLAY_POLL_INTERVAL);
    }
}
