//! Subscribers: SUBSCRIBE (immediate or deferred) and recording received PUBLISHes.

use std::collections::HashMap;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use anyhow::{anyhow, Result};

use super::conn::{RoleState, State};
use super::reactor::Reactor;
use crate::payload::Header;
use crate::track::Pair;
use crate::wire::{self, kind};

#[derive(Debug)]
pub(super) struct SubState {
    pub(super) group: u32,
    pub(super) filter: String,
    pub(super) deferred: bool,
    pub(super) subscribed: bool,
    pub(super) pairs: Vec<Pair>,
    pub(super) index: HashMap<u32, usize>,
    pub(super) last: usize,
}

impl Reactor<'_> {
    pub(super) fn send_subscribe(&mut self, i: usize, filter: &str) -> Result<(), String> {
        let bytes = wire::subscribe(1, filter, self.ctx.qos, self.ctx.version)
            .map_err(|e| format!("{e:#}"))?;
        self.queue(i, &bytes);
        if let RoleState::Sub(s) = &mut self.conns[i].role {
            s.subscribed = true;
        }
        Ok(())
    }

    pub(super) fn subscribe_deferred(&mut self) -> Result<()> {
        if self.deferred.is_empty()
            || self.ctx.schedule.is_none()
            || self.ctl.publishers_done.load(SeqCst) < u64::from(self.spec.publishers_total)
        {
            return Ok(());
        }
        let now = self.ctx.now_ns;
        for i in std::mem::take(&mut self.deferred) {
            let filter = match &self.conns[i].role {
                RoleState::Sub(s) if !s.subscribed && self.conns[i].state == State::Ready => {
                    s.filter.clone()
                }
                _ => continue,
            };
            self.send_subscribe(i, &filter).map_err(|e| anyhow!(e))?;
            let _ = self.ctl.deferred_subscribe_ns.compare_exchange(0, now, Relaxed, Relaxed);
            self.ctl.last_progress_ns.fetch_max(now, Relaxed);
        }
        Ok(())
    }

    pub(super) fn on_publish(&mut self, i: usize, byte0: u8, body: &[u8]) -> Result<(), String> {
        let view = wire::parse_publish(byte0, body, self.ctx.v5).map_err(|e| e.to_string())?;
        match (view.qos, view.packet_id) {
            (1, Some(id)) => self.queue(i, &wire::ack(kind::PUBACK, id)),
            (2, Some(id)) => self.queue(i, &wire::ack(kind::PUBREC, id)),
            _ => {}
        }
        let Some(h) = Header::read(view.payload) else {
            return Err(format!("PUBLISH payload of {} bytes has no header", view.payload.len()));
        };
        let now = self.ctx.now_ns;
        let (in_window, latency_sample) = match self.ctx.schedule {
            Some(s) => (
                now >= s.measure_start_ns && now < s.measure_end_ns,
                h.sent_ns >= s.measure_start_ns && h.sent_ns < s.measure_end_ns,
            ),
            None => (false, false),
        };
        let RoleState::Sub(sub) = &mut self.conns[i].role else {
            return Err("PUBLISH received on a connection that did not subscribe".into());
        };
        let idx = if sub.pairs.get(sub.last).is_some_and(|p| p.publisher == h.publisher) {
            sub.last
        } else {
            let next = sub.pairs.len();
            let group = sub.group;
            let idx = *sub.index.entry(h.publisher).or_insert(next);
            if idx == next {
                sub.pairs.push(Pair::new(h.publisher, group));
            }
            sub.last = idx;
            idx
        };
        let pair = &mut sub.pairs[idx];
        let before = pair.seen.len();
        pair.record(h.seq, in_window, self.ctx.ordered);
        self.st.received_new += (pair.seen.len() > before) as u64;
        self.st.received += 1;
        if let Some(d) = self.st.delivered.get_mut(h.publisher as usize) {
            if *d == 0 {
                self.st.touched.push(h.publisher);
            }
            *d += 1;
        }
        if latency_sample {
            let _ = self.st.hist.record(now.saturating_sub(h.sent_ns).max(1));
        }
        if self.st.first_receipt_ns == 0 {
            self.st.first_receipt_ns = now;
        }
        self.st.last_receipt_ns = now;
        Ok(())
    }
}
