//! The simulator's persistence: each shard's log as the live state its batches fold into,
//! slow or failed fsyncs on chosen shards, and crashes with recovery from the logs alone.
//! A child of `sim.rs` (it reaches the simulator's private state).

use std::collections::VecDeque;
use std::time::Duration;

use super::Sim;
use crate::core::ids::ShardId;
use crate::core::shard::ShardCore;

impl Sim {
    /// Turns persistence on: every shard's log batches are folded into its log state (which
    /// panics on a record that does not fit) and are durable at once.
    pub(crate) fn enable_persistence(&mut self) {
        let (wall_ms, now) = (self.wall_ms(), self.now);
        for core in &mut self.shards {
            core.enable_persistence();
            core.set_wall_clock(wall_ms, now);
        }
        self.logs = Some(vec![crate::log::state::LogState::default(); self.n()]);
    }

    /// The fake wall-clock time (Unix milliseconds) at `self.now`.
    fn wall_ms(&self) -> u64 {
        let started_at = self.shards[0].config().started_at;
        1_700_000_000_000 + self.now.saturating_duration_since(started_at).as_millis() as u64
    }

    /// From now on shard `s`'s batches are appended but not durable until
    /// [`Sim::release_durability`] (a slow fsync).
    pub(crate) fn hold_durability(&mut self, s: usize) {
        self.held[s].get_or_insert_with(Vec::new);
    }

    /// Shard `s`'s held batches become durable, and later ones are durable at once again.
    pub(crate) fn release_durability(&mut self, s: usize) {
        for batch in self.held[s].take().unwrap_or_default() {
            self.make_durable(s, batch);
        }
        self.run();
    }

    /// Shard `s`'s held batches could not be appended (a log error): they are reported
    /// failed, and later batches stay held.
    pub(crate) fn fail_held(&mut self, s: usize) {
        for batch in self.held[s].replace(Vec::new()).unwrap_or_default() {
            self.shards[s].handle_log_failed(batch.ticket);
            self.shards[s].handle_log_durable(batch.ticket, self.now);
        }
        self.run();
    }

    pub(super) fn make_durable(&mut self, s: usize, batch: crate::core::persist::LogBatch) {
        let logs = self.logs.as_mut().expect("persistence enabled");
        for r in batch.records {
            let kind = r.kind_name();
            if let Err(e) = logs[s].apply_owned(r) {
                panic!("shard {s}: a {kind} record does not fit the log: {e}");
            }
        }
        self.shards[s].handle_log_durable(batch.ticket, self.now);
    }

    /// A crash (`kill -9`) and a restart: every connection and ring message is lost, each
    /// shard is rebuilt from its log alone, and runs until the recovery settled.
    pub(crate) fn crash_and_recover(&mut self) {
        self.crash_and_recover_after(Duration::ZERO);
    }

    /// Like [`Sim::crash_and_recover`], with the broker down for `downtime` (the clock moves
    /// on, no timer fires).
    pub(crate) fn crash_and_recover_after(&mut self, downtime: Duration) {
        self.now += downtime;
        let wall_ms = self.wall_ms();
        let logs = self.logs.as_ref().expect("persistence enabled");
        let config = self.shards[0].config().clone();
        for (i, log) in logs.iter().enumerate() {
            log.check_invariants();
            let mut state = log.clone();
            state.prune();
            let mut core = ShardCore::new(ShardId(i as u16), config.clone());
            core.enable_persistence();
            core.set_wall_clock(wall_ms, self.now);
            core.restore_from_log(&state, self.now).expect("the log restores");
            self.shards[i] = core;
        }
        self.rings.iter_mut().for_each(VecDeque::clear);
        self.held.iter_mut().for_each(|h| *h = None);
        self.owners.clear();
        for cl in &mut self.clients {
            cl.conn = None;
            cl.closed = true;
            cl.rx.clear();
            cl.srv_rx.clear();
        }
        self.shards.iter_mut().for_each(ShardCore::persist_barrier);
        self.run();
        assert!(self.shards.iter().all(ShardCore::persist_settled), "recovery settles");
    }
}
