//! The main loop's receive side: a peer's message for a shard keeps its share of the
//! inbound budget until that shard reports it handled, and waits in `deferred` while the
//! shard's subscribers hold publishers back (`ClusterCounters::shards_paused`).

use std::time::Instant;

use bytes::Bytes;

use super::MainLoop;
use crate::cluster::wire;

/// Peers' messages handed to one shard and not yet reported handled, at most. Each fans out
/// to that node's subscribers, so what a shard is handed before it can show its pause must be
/// small: a shard that falls behind gets no more until it catches up (the rest waits in the
/// inbound budget, and past it the links stop reading).
const HANDED_MAX: usize = 1024;

impl MainLoop {
    /// Whether shard `s`'s subscribers hold publishers back (its bit of
    /// `ClusterCounters::shards_paused`).
    pub(super) fn shard_paused(&self, s: usize) -> bool {
        s < 64
            && self.counters.shards_paused.load(std::sync::atomic::Ordering::Acquire) & (1 << s)
                != 0
    }

    /// Whether a peer's message for shard `s` must wait: the shard is paused, or it has
    /// [`HANDED_MAX`] messages not yet handled.
    pub(super) fn must_wait(&self, s: usize) -> bool {
        self.shard_paused(s) || self.inbound[s].len() >= HANDED_MAX
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

    /// Hands over the messages kept back for shards that may take more, in order.
    pub(super) fn hand_deferred(&mut self, now: Instant) {
        for s in 0..self.deferred.len() {
            while !self.deferred[s].is_empty() && !self.must_wait(s) {
                let (conn, frame, decoded) = self.deferred[s].pop_front().expect("not empty");
                self.hand(conn, frame, decoded, Some(s), now);
            }
        }
    }
}
