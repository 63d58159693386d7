//! The main loop's receive side: a peer's message for a shard keeps its share of the
//! inbound budget until that shard reports it handled, and waits in `deferred` while the
//! shard's subscribers hold publishers back (`ClusterCounters::shards_paused`).

use std::time::Instant;

use bytes::Bytes;

use super::MainLoop;
use crate::cluster::wire;

impl MainLoop {
    /// Whether shard `s`'s subscribers hold publishers back (its bit of
    /// `ClusterCounters::shards_paused`).
    pub(super) fn shard_paused(&self, s: usize) -> bool {
        s < 64
            && self.counters.shards_paused.load(std::sync::atomic::Ordering::Acquire) & (1 << s)
                != 0
    }

    /// Gives a peer's frame to the machine. A message for a shard keeps its share of the
    /// inbound budget until that shard says it handled it (`ClusterOut::Handled`):
    /// receive-side back-pressure. Every other frame is done with here.
    pub(super) fn hand(
        &mut self,
        conn: u64,
        frame: Bytes,
        decoded: Option<wire::Frame>,
        shard: Option<usize>,
        now: Instant,
    ) {
        let handed = self.frame(conn, &frame, decoded, now);
        match shard.filter(|_| handed) {
            Some(s) => self.inbound[s].push_back(frame.len()),
            None => self.net.budget.release(frame.len()),
        }
    }

    /// Hands over the messages kept back for shards that are no longer paused, in order.
    pub(super) fn hand_deferred(&mut self, now: Instant) {
        for s in 0..self.deferred.len() {
            while !self.deferred[s].is_empty() && !self.shard_paused(s) {
                let (conn, frame, decoded) = self.deferred[s].pop_front().expect("not empty");
                self.hand(conn, frame, decoded, Some(s), now);
            }
        }
    }
}
