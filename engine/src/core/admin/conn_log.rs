//! Connection events in the log: connects and disconnects at `info` (client id, address,
//! protocol, reason), and warnings about misbehaving clients, rate-limited per shard so a
//! flood of bad clients cannot fill a disk.

use std::time::{Duration, Instant};

use shardmq_codec::ReasonCode;

use crate::core::admin::DisconnectReason;
use crate::core::ids::ConnId;
use crate::core::sessions::conn::Phase;
use crate::core::shard::ShardCore;

/// Warnings about misbehaving clients a shard writes per [`WARN_WINDOW`]; the rest are
/// counted and summed up in one line when the next window opens.
pub const WARNINGS_PER_WINDOW_MAX: u32 = 10;
/// The window of [`WARNINGS_PER_WINDOW_MAX`].
pub const WARN_WINDOW: Duration = Duration::from_secs(10);

/// A per-window budget of log lines. Shard-local.
#[derive(Debug, Default)]
pub(crate) struct LogBudget {
    window_start: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl LogBudget {
    /// Whether a line may be written now. When a new window opens with lines suppressed in
    /// the last one, returns their count too (to be reported once).
    pub(crate) fn take(&mut self, now: Instant) -> (bool, u64) {
        let mut reported = 0;
        if self.window_start.is_none_or(|s| now >= s + WARN_WINDOW) {
            self.window_start = Some(now);
            self.written = 0;
            reported = std::mem::take(&mut self.suppressed);
        }
        if self.written < WARNINGS_PER_WINDOW_MAX {
            self.written += 1;
            (true, reported)
        } else {
            self.suppressed += 1;
            (false, reported)
        }
    }
}

/// Reason codes that say the client broke the protocol (rather than timed out or was
/// asked to leave).
fn misbehaved(reason: ReasonCode) -> bool {
    matches!(reason.0, 0x81 | 0x82 | 0x93 | 0x94 | 0x95 | 0x9A | 0x9B | 0x9E)
}

impl ShardCore {
    /// Logs a connected client's departure (`info`), and warns (rate-limited) when it broke
    /// the protocol. Call before the session is detached.
    pub(crate) fn log_disconnect(&mut self, conn: ConnId, why: DisconnectReason, now: Instant) {
        let Some(c) = self.conns.get(conn) else { return };
        let Phase::Connected(slot) = c.phase else { return };
        let client_id = &self.sessions.get(slot).client_id;
        let remote = c.info.remote.map(|a| a.to_string()).unwrap_or_default();
        let reason = why.label();
        tracing::info!(shard = %self.shard, %client_id, %remote, %reason, "client disconnected");
        let DisconnectReason::Server(code) = why else { return };
        if !misbehaved(ReasonCode(code)) {
            return;
        }
        let client_id = client_id.to_string();
        let (write, suppressed) = self.warn_budget.take(now);
        if suppressed > 0 {
            tracing::warn!(shard = %self.shard, suppressed, "more misbehaving clients were disconnected (not logged)");
        }
        if write {
            tracing::warn!(shard = %self.shard, %client_id, %remote, %reason, "client broke the protocol: disconnected");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_writes_its_budget_then_counts_and_reports_once() {
        let mut b = LogBudget::default();
        let t0 = Instant::now();
        for _ in 0..WARNINGS_PER_WINDOW_MAX {
            assert_eq!(b.take(t0), (true, 0));
        }
        assert_eq!(b.take(t0), (false, 0));
        assert_eq!(b.take(t0 + Duration::from_secs(1)), (false, 0));
        assert_eq!(b.take(t0 + WARN_WINDOW), (true, 2));
        assert_eq!(b.take(t0 + WARN_WINDOW), (true, 0));
    }
}
