//! The per-thread reactor: its state, the event loop and the end-of-run result.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use mio::{Events, Poll};
use shardmq_codec::{ProtocolVersion, QoS};

use super::conn::{Conn, RoleState, State};
use super::publisher::PubState;
use super::subscriber::SubState;
use super::{Control, LoadSpec, PartResult, Role, Schedule};
use crate::sys::monotonic_ns;
use crate::track::{histogram_to_pairs, new_histogram};
use crate::wire::{self, PublishTemplate};

/// Reading buffer per thread.
pub(super) const READ_BUF_BYTES: usize = 64 * 1024;
/// A publisher stops generating while this much is queued unwritten.
pub(super) const TX_BACKLOG_MAX_BYTES: usize = 256 * 1024;

/// Errors kept per thread.
pub(super) const ERRORS_KEPT: usize = 8;

/// Counters a thread accumulates and publishes to [`Control`] once per turn.
#[derive(Debug)]
pub(super) struct Stats {
    pub(super) hist: Histogram<u64>,
    pub(super) delivered: Vec<u64>,
    pub(super) touched: Vec<u32>,
    pub(super) received: u64,
    pub(super) received_new: u64,
    pub(super) sent: u64,
    pub(super) connected: u64,
    pub(super) failed: u64,
    pub(super) errors: Vec<String>,
    pub(super) setup_first_ns: u64,
    pub(super) setup_last_ns: u64,
    pub(super) first_receipt_ns: u64,
    pub(super) last_receipt_ns: u64,
    pub(super) window_write_offs: u64,
    pub(super) publish_lag_ns_max: u64,
    pub(super) closed_by_broker: u64,
}

impl Stats {
    pub(super) fn error(&mut self, msg: String) {
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(msg);
        }
    }
}

/// Immutable per-turn context.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ctx {
    pub(super) version: ProtocolVersion,
    pub(super) v5: bool,
    pub(super) qos: QoS,
    pub(super) ordered: bool,
    pub(super) schedule: Option<Schedule>,
    pub(super) now_ns: u64,
}

pub(super) struct Reactor<'a> {
    pub(super) spec: &'a LoadSpec,
    pub(super) ctl: &'a Control,
    pub(super) poll: Poll,
    pub(super) conns: Vec<Conn>,
    pub(super) publishers: Vec<usize>,
    /// Publishers in this part (every thread of this process).
    pub(super) part_publishers: usize,
    pub(super) deferred: Vec<usize>,
    pub(super) next_to_start: usize,
    pub(super) handshaking: usize,
    pub(super) settled: usize,
    pub(super) setup_reported: bool,
    pub(super) connected_total: u64,
    pub(super) failed_total: u64,
    pub(super) dirty: Vec<usize>,
    pub(super) st: Stats,
    pub(super) ctx: Ctx,
    /// The TLS client configuration of this thread's connections (TLS transports).
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
}

impl<'a> Reactor<'a> {
    pub(super) fn new(
        spec: &'a LoadSpec,
        ctl: &'a Control,
        mine: Vec<usize>,
    ) -> Result<Reactor<'a>> {
        let version = wire::protocol_version(spec.mqtt_version)?;
        let qos = wire::qos(spec.qos)?;
        let mut conns = Vec::with_capacity(mine.len());
        let mut publishers = Vec::new();
        let mut deferred = Vec::new();
        for (i, &s) in mine.iter().enumerate() {
            let role = match &spec.conns[s].role {
                Role::Publisher { id, topic, retain, topic_per_message } => {
                    publishers.push(i);
                    let template =
                        PublishTemplate::new(topic, qos, *retain, spec.payload_bytes, version)?;
                    RoleState::Pub(Box::new(PubState {
                        id: *id,
                        template,
                        topic: topic.clone(),
                        retain: *retain,
                        topic_per_message: *topic_per_message,
                        next_seq: 0,
                        next_packet_id: 1,
                        inflight: 0,
                        inflight_max: spec.inflight_max.max(1),
                        stopped: false,
                        ping_outstanding: false,
                        done: false,
                        written_off: 0,
                        blocked_since_ns: 0,
                        blocked_delivered: 0,
                    }))
                }
                Role::Subscriber { group, filter, deferred: d } => {
                    if *d {
                        deferred.push(i);
                    }
                    RoleState::Sub(SubState {
                        group: *group,
                        filter: filter.clone(),
                        deferred: *d,
                        subscribed: false,
                        pairs: Vec::new(),
                        index: HashMap::new(),
                        last: 0,
                    })
                }
                Role::Idle => RoleState::Idle,
            };
            conns.push(Conn {
                spec: s,
                stream: None,
                state: State::NotStarted,
                rx: Vec::new(),
                tx: Vec::new(),
                tx_pos: 0,
                dirty: false,
                last_tx_ns: 0,
                role,
                link: None,
            });
        }
        let tls = match spec.transport.kind.tls() {
            true => Some(crate::transport::client_config(&spec.transport.ca_pem)?),
            false => None,
        };
        Ok(Reactor {
            tls,
            spec,
            ctl,
            poll: Poll::new().context("creating the poller")?,
            conns,
            publishers,
            part_publishers: spec
                .conns
                .iter()
                .filter(|c| matches!(c.role, Role::Publisher { .. }))
                .count(),
            deferred,
            next_to_start: 0,
            handshaking: 0,
            settled: 0,
            setup_reported: false,
            connected_total: 0,
            failed_total: 0,
            dirty: Vec::new(),
            st: Stats {
                hist: new_histogram(),
                delivered: vec![0; spec.publishers_total as usize],
                touched: Vec::new(),
                received: 0,
                received_new: 0,
                sent: 0,
                connected: 0,
                failed: 0,
                errors: Vec::new(),
                setup_first_ns: 0,
                setup_last_ns: 0,
                first_receipt_ns: 0,
                last_receipt_ns: 0,
                window_write_offs: 0,
                publish_lag_ns_max: 0,
                closed_by_broker: 0,
            },
            ctx: Ctx {
                version,
                v5: version.is_v5(),
                qos,
                ordered: spec.ordered,
                schedule: None,
                now_ns: monotonic_ns(),
            },
        })
    }

    pub(super) fn run(&mut self) -> Result<PartResult> {
        let mut events = Events::with_capacity(1024);
        let mut rbuf = vec![0u8; READ_BUF_BYTES];
        let keep_alive_ns = u64::from(self.spec.keep_alive_secs.max(2)) * 1_000_000_000 / 2;
        let mut next_ping_check_ns = monotonic_ns() + keep_alive_ns;
        loop {
            self.ctx.now_ns = monotonic_ns();
            if self.ctl.abort.load(Relaxed) {
                break;
            }
            if self.ctx.schedule.is_none() {
                self.ctx.schedule = self.ctl.schedule.get().copied();
            }
            self.start_connections();
            let busy = self.publish();
            self.subscribe_deferred()?;
            self.flush_dirty();
            self.publish_counters();
            if !self.setup_reported && self.settled == self.conns.len() {
                self.setup_reported = true;
                self.ctl.setup_threads_done.fetch_add(1, Relaxed);
            }
            if self.finished() {
                break;
            }
            if self.ctx.now_ns >= next_ping_check_ns {
                self.keep_alive(keep_alive_ns);
                next_ping_check_ns = self.ctx.now_ns + keep_alive_ns / 4;
            }
            let timeout = self.poll_timeout(busy);
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("epoll_wait"),
            }
            for ev in events.iter() {
                let i = ev.token().0;
                self.ctx.now_ns = monotonic_ns();
                if self.conns[i].state == State::Connecting {
                    self.on_connect_event(i);
                    continue;
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(i, &mut rbuf);
                }
                if ev.is_writable() && self.conns[i].state != State::Closed {
                    self.mark_dirty(i);
                }
            }
        }
        self.close_all();
        self.publish_counters();
        Ok(self.result())
    }

    pub(super) fn poll_timeout(&self, busy: bool) -> Duration {
        if busy {
            return Duration::ZERO;
        }
        let Some(s) = self.ctx.schedule else {
            return Duration::from_millis(5);
        };
        let now = self.ctx.now_ns;
        if now < s.start_ns {
            return Duration::from_nanos((s.start_ns - now).min(5_000_000));
        }
        if now < s.measure_end_ns && !self.publishers.is_empty() {
            if self.spec.rate_per_publisher > 0.0 {
                // Wake for the next due message, at most 1 ms away.
                let period_ns = (1e9 / self.spec.rate_per_publisher) as u64;
                return Duration::from_nanos(period_ns.clamp(50_000, 1_000_000));
            }
            return Duration::from_millis(1);
        }
        Duration::from_millis(2)
    }

    /// Publishes this turn's counter deltas to the control block.
    pub(super) fn publish_counters(&mut self) {
        let st = &mut self.st;
        if st.sent > 0 {
            self.ctl.sent.fetch_add(std::mem::take(&mut st.sent), Relaxed);
        }
        if st.received > 0 {
            self.ctl.received.fetch_add(std::mem::take(&mut st.received), Relaxed);
            self.ctl.received_new.fetch_add(std::mem::take(&mut st.received_new), Relaxed);
            self.ctl.last_progress_ns.fetch_max(self.ctx.now_ns, Relaxed);
        }
        for id in st.touched.drain(..) {
            let d = std::mem::take(&mut st.delivered[id as usize]);
            self.ctl.delivered_by_publisher[id as usize].fetch_add(d, Relaxed);
        }
        if st.connected > 0 {
            self.ctl.connected.fetch_add(std::mem::take(&mut st.connected), Relaxed);
        }
        if st.failed > 0 {
            self.ctl.failed.fetch_add(std::mem::take(&mut st.failed), Relaxed);
        }
    }

    pub(super) fn finished(&self) -> bool {
        let Some(s) = self.ctx.schedule else { return false };
        let now = self.ctx.now_ns;
        if now >= s.drain_end_ns {
            return true;
        }
        if self.spec.publishers_total == 0 {
            // Idle connections (the connection scenario) are held for the whole window.
            return now >= s.measure_end_ns;
        }
        let last = self.ctl.last_progress_ns.load(Relaxed);
        let quiet = now.saturating_sub(last) > self.spec.quiet_ms * 1_000_000;
        if self.part_publishers == 0 {
            // Subscribers only (a worker process): the publishers stop at the window's end;
            // what they sent just before it has `quiet_ms` to arrive.
            let grace_ns = self.spec.quiet_ms * 1_000_000;
            return now >= s.measure_end_ns + grace_ns && quiet && self.deferred.is_empty();
        }
        if self.ctl.publishers_done.load(SeqCst) < u64::from(self.spec.publishers_total) {
            return false;
        }
        let expected = self.ctl.sent_final.load(Relaxed) * self.spec.groups_per_publisher;
        if self.ctl.received_new.load(Relaxed) >= expected && self.deferred.is_empty() {
            return true;
        }
        // Something is missing: wait until nothing has arrived for `quiet_ms`.
        self.deferred.is_empty() && quiet
    }

    pub(super) fn close_all(&mut self) {
        for i in 0..self.conns.len() {
            if self.conns[i].state == State::Ready {
                self.queue(i, &wire::DISCONNECT);
                let _ = self.flush(i);
            }
            if let Some(mut s) = self.conns[i].stream.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
    }

    pub(super) fn result(&mut self) -> PartResult {
        let mut sent_by_publisher = Vec::new();
        let mut pairs = Vec::new();
        for c in &mut self.conns {
            match &mut c.role {
                RoleState::Pub(p) => sent_by_publisher.push((p.id, p.next_seq)),
                RoleState::Sub(s) => pairs.append(&mut s.pairs),
                RoleState::Idle => {}
            }
        }
        let st = &self.st;
        PartResult {
            connected: self.connected_total,
            // Connections still in the handshake when the run ended count as failed.
            failed: self.failed_total + (self.conns.len() - self.settled) as u64,
            errors: st.errors.clone(),
            setup_first_ns: st.setup_first_ns,
            setup_last_ns: st.setup_last_ns,
            sent_by_publisher,
            pairs,
            latency_ns: histogram_to_pairs(&st.hist),
            first_receipt_ns: st.first_receipt_ns,
            last_receipt_ns: st.last_receipt_ns,
            window_write_offs: st.window_write_offs,
            publish_lag_ns_max: st.publish_lag_ns_max,
            closed_by_broker: st.closed_by_broker,
            cpu_us_window: 0,
            threads: 1,
        }
    }
}
