//! Publishers: generating PUBLISHes at a fixed rate, within an end-to-end window (max rate) or
//! unthrottled (flood: only the socket and, at QoS 1/2, the protocol's inflight limit hold
//! them back; the unwritten bytes queued here stay under [`TX_BACKLOG_MAX_BYTES`]).

use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use shardmq_codec::QoS;

use super::conn::{RoleState, State};
use super::reactor::{Reactor, TX_BACKLOG_MAX_BYTES};
use crate::payload::Header;
use crate::wire::{self, PublishTemplate};

/// PUBLISHes generated per publisher per reactor turn.
pub(super) const BURST_MAX: u64 = 512;
/// A max-rate window that has not moved for this long is written off.
pub(super) const WINDOW_STALL_NS: u64 = 1_000_000_000;

#[derive(Debug)]
pub(super) struct PubState {
    pub(super) id: u32,
    pub(super) template: PublishTemplate,
    pub(super) topic: String,
    pub(super) retain: bool,
    pub(super) topic_per_message: bool,
    pub(super) next_seq: u64,
    pub(super) next_packet_id: u16,
    pub(super) inflight: u32,
    /// `--inflight`, lowered to the broker's Receive Maximum (5.0 CONNACK).
    pub(super) inflight_max: u32,
    pub(super) stopped: bool,
    pub(super) ping_outstanding: bool,
    pub(super) done: bool,
    pub(super) written_off: u64,
    pub(super) blocked_since_ns: u64,
    pub(super) blocked_delivered: u64,
}

impl PubState {
    fn take_packet_id(&mut self) -> u16 {
        let id = self.next_packet_id;
        self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
        id
    }
}

impl Reactor<'_> {
    /// Generates due PUBLISHes; returns whether a publisher could send more right away.
    pub(super) fn publish(&mut self) -> bool {
        let Some(s) = self.ctx.schedule else { return false };
        let now = self.ctx.now_ns;
        if now < s.start_ns {
            return false;
        }
        let rate = self.spec.rate_per_publisher;
        let cap = self.spec.messages_per_publisher;
        let mut busy = false;
        for k in 0..self.publishers.len() {
            let i = self.publishers[k];
            let c = &mut self.conns[i];
            if c.state != State::Ready {
                continue;
            }
            let RoleState::Pub(p) = &mut c.role else { continue };
            if p.done {
                continue;
            }
            if !p.stopped && (now >= s.measure_end_ns || p.next_seq >= cap) {
                p.stopped = true;
                if self.ctx.qos == QoS::AtMostOnce {
                    // QoS 0 has no acknowledgement: a PINGRESP after the last PUBLISH says
                    // the broker has read them all.
                    c.tx.extend_from_slice(&wire::PINGREQ);
                    p.ping_outstanding = true;
                }
            }
            if p.stopped {
                if p.inflight == 0 && !p.ping_outstanding {
                    p.done = true;
                    self.ctl.sent_final.fetch_add(p.next_seq, Relaxed);
                    self.ctl.last_progress_ns.fetch_max(now, Relaxed);
                    self.ctl.publishers_done.fetch_add(1, SeqCst);
                }
                if !c.dirty && c.tx.len() > c.tx_pos {
                    c.dirty = true;
                    self.dirty.push(i);
                }
                continue;
            }
            let mut n = BURST_MAX.min(cap - p.next_seq);
            if rate > 0.0 {
                let due = (((now - s.start_ns) as f64 * rate / 1e9) as u64 + 1).min(cap);
                n = n.min(due.saturating_sub(p.next_seq));
            }
            if c.tx.len() - c.tx_pos > TX_BACKLOG_MAX_BYTES {
                n = 0;
            }
            if self.ctx.qos != QoS::AtMostOnce {
                n = n.min(u64::from(p.inflight_max.saturating_sub(p.inflight)));
            }
            if rate <= 0.0 && !self.spec.flood && n > 0 {
                let delivered = self.ctl.delivered_by_publisher[p.id as usize].load(Relaxed);
                let groups = self.spec.groups_per_publisher.max(1);
                let outstanding = p.next_seq.saturating_sub(p.written_off + delivered / groups);
                let room = self.spec.window_messages.saturating_sub(outstanding);
                if room == 0 {
                    if p.blocked_since_ns == 0 || delivered != p.blocked_delivered {
                        p.blocked_since_ns = now;
                        p.blocked_delivered = delivered;
                    } else if now - p.blocked_since_ns > WINDOW_STALL_NS {
                        // Nothing arrived for a while: those messages are presumed lost
                        // (counted as loss at the end); let the publisher go on.
                        p.written_off += outstanding;
                        p.blocked_since_ns = 0;
                        self.st.window_write_offs += 1;
                    }
                } else {
                    p.blocked_since_ns = 0;
                }
                n = n.min(room);
            }
            if n == 0 {
                continue;
            }
            for _ in 0..n {
                let seq = p.next_seq;
                if rate > 0.0 && now >= s.measure_start_ns {
                    let scheduled = s.start_ns + (seq as f64 * 1e9 / rate) as u64;
                    if scheduled >= s.measure_start_ns {
                        self.st.publish_lag_ns_max =
                            self.st.publish_lag_ns_max.max(now.saturating_sub(scheduled));
                    }
                }
                let packet_id = (self.ctx.qos != QoS::AtMostOnce).then(|| p.take_packet_id());
                let header = Header { seq, publisher: p.id, sent_ns: now };
                if p.topic_per_message {
                    let topic = format!("{}/{seq}", p.topic);
                    match PublishTemplate::new(
                        &topic,
                        self.ctx.qos,
                        p.retain,
                        self.spec.payload_bytes,
                        self.ctx.version,
                    ) {
                        Ok(t) => t.append(&mut c.tx, packet_id, &header),
                        Err(e) => {
                            self.st.error(format!("{e:#}"));
                            self.ctl.abort.store(true, Relaxed);
                            return false;
                        }
                    }
                } else {
                    p.template.append(&mut c.tx, packet_id, &header);
                }
                p.next_seq += 1;
                p.inflight += (packet_id.is_some()) as u32;
            }
            self.st.sent += n;
            busy |= n == BURST_MAX;
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(i);
            }
        }
        busy
    }

    pub(super) fn on_pub_done(&mut self, i: usize) {
        if let RoleState::Pub(p) = &mut self.conns[i].role {
            p.inflight = p.inflight.saturating_sub(1);
        }
    }
}
