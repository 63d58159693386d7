//! The shard's budget for queued outgoing bytes, and the back-pressure it drives.
//!
//! Every connection's [`TxQueue`](crate::core::delivery::tx::TxQueue) reports what it holds to its
//! shard's [`TxBudget`]. Two marks make the shard stop taking PUBLISH packets from its
//! clients (the io layer stops reading a socket whose next packet is a PUBLISH, so TCP pushes
//! back on the publisher), with hysteresis:
//!
//! - the shard's queued bytes pass `shard_tx_bytes_max`; reading resumes below half of it;
//! - any connection's queue passes `connection_tx_bytes_pause` (reading resumes when every
//!   such queue is back under a quarter of it): a fan-out makes one publisher's message a
//!   copy on every subscriber, so one fast publisher fills many queues at once, and the
//!   subscribers' queues are what has to drain.
//!
//! A subscriber must not be able to hold everyone back. The shard's periodic scan marks a
//! connection *slow* when its queue stayed past the pause mark for a whole scan interval
//! (while paused publishers let everyone else drain), or when it had bytes queued at two
//! scans in a row and took none of them — in both cases only if its socket was found full
//! meanwhile (a queue the shard itself has not got round to writing, under CPU pressure, is
//! not the consumer's fault). A slow connection no longer counts towards either
//! mark; QoS 0 messages for it are dropped (and counted) while its queue is past the pause
//! mark or all slow connections together hold more than a quarter of the shard's budget.
//! It stops being slow once its queue is empty at a scan.
//!
//! Owned bytes (coalesced frames and headers) count as they are. A large payload shared by
//! several queues (`delivery/tx.rs`) counts once towards the shard (its memory is one allocation)
//! and a fixed 64 bytes towards each connection's marks, so a big message to many
//! subscribers neither pauses publishers nor is dropped as if each copy were its own.
//!
//! The hard bounds stay: QoS 0 for a connection whose queue holds more than
//! `connection_tx_bytes_max`, or while the shard holds twice its budget (messages from other
//! shards are not paused at once: they stop as soon as the other shard hears of the pause,
//! `MeshMsg::Pressure`), is dropped and counted. QoS 1/2 are never dropped here: they wait in
//! the session's queue, bounded by its own limits, and only the in-flight window's frames
//! are in the transmit queue.
//!
//! Shard-local: one per shard, shared by `Rc` with its connections' queues.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use bytes::Bytes;

use crate::core::limits::Limits;

/// The shard's transmit-byte budget and back-pressure state. Shard-local.
#[derive(Debug)]
pub struct TxBudget {
    shard_pause_bytes: u64,
    shard_resume_bytes: u64,
    shard_hard_bytes: u64,
    pub(crate) conn_pause_bytes: u64,
    pub(crate) conn_resume_bytes: u64,
    pub(crate) conn_hard_bytes: u64,
    slow_total_max_bytes: u64,
    /// Bytes queued on connections that are not slow.
    bytes: Cell<u64>,
    /// Bytes queued on slow connections.
    slow_bytes: Cell<u64>,
    /// Connections (not slow) whose queue passed the pause mark and is not yet back under
    /// the resume mark.
    over: Cell<u32>,
    /// Whether publishers are paused (hysteresis state).
    paused: Cell<bool>,
    /// Times `paused` went from false to true.
    pauses: Cell<u64>,
    /// Connections marked slow now.
    slow_conns: Cell<u64>,
    /// Large payloads queued on this shard's connections, shared between their queues:
    /// counted once in `bytes`. Keyed by the address just past the payload's last byte
    /// (unchanged when a queue has sent part of it); the value is how many queues hold it
    /// and the length counted. A B-tree, not a hash map: no hidden randomness in the core,
    /// and only payloads past `COALESCE_MAX_BYTES` are here.
    shared: RefCell<BTreeMap<usize, (u32, u64)>>,
}

impl TxBudget {
    /// A budget with the marks of `limits`.
    pub fn new(limits: &Limits) -> TxBudget {
        let conn_pause = limits.connection_tx_bytes_pause;
        TxBudget {
            shard_pause_bytes: limits.shard_tx_bytes_max,
            shard_resume_bytes: limits.shard_tx_bytes_max / 2,
            shard_hard_bytes: limits.shard_tx_bytes_max.saturating_mul(2),
            conn_pause_bytes: conn_pause,
            conn_resume_bytes: conn_pause / 4,
            conn_hard_bytes: limits.connection_tx_bytes_max,
            slow_total_max_bytes: limits.shard_tx_bytes_max / 4,
            bytes: Cell::new(0),
            slow_bytes: Cell::new(0),
            over: Cell::new(0),
            paused: Cell::new(false),
            pauses: Cell::new(0),
            slow_conns: Cell::new(0),
            shared: RefCell::new(BTreeMap::new()),
        }
    }

    /// Bytes queued on connections that are not slow.
    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    /// Bytes queued on slow connections.
    pub fn slow_bytes(&self) -> u64 {
        self.slow_bytes.get()
    }

    /// Connections past the pause mark.
    pub fn over(&self) -> u32 {
        self.over.get()
    }

    /// True while this shard's publishers must wait. Updates the hysteresis state, so it
    /// flips only at the marks.
    pub fn paused(&self) -> bool {
        let bytes = self.bytes.get();
        let over = self.over.get();
        let paused = if self.paused.get() {
            !(bytes <= self.shard_resume_bytes && over == 0)
        } else {
            bytes > self.shard_pause_bytes || over > 0
        };
        if paused && !self.paused.get() {
            self.pauses.set(self.pauses.get() + 1);
        }
        self.paused.set(paused);
        paused
    }

    /// Times the shard paused its publishers since start.
    pub fn pauses(&self) -> u64 {
        self.pauses.get()
    }

    pub(crate) fn add(&self, slow: bool, n: u64) {
        let c = if slow { &self.slow_bytes } else { &self.bytes };
        c.set(c.get() + n);
    }

    pub(crate) fn sub(&self, slow: bool, n: u64) {
        let c = if slow { &self.slow_bytes } else { &self.bytes };
        debug_assert!(c.get() >= n, "budget underflow: {} - {n}", c.get());
        c.set(c.get().saturating_sub(n));
    }

    /// A queue holds `payload` (shared with whoever else queued it): the first holder
    /// counts its length.
    pub(crate) fn share_add(&self, payload: &Bytes) {
        let key = payload.as_ptr() as usize + payload.len();
        let mut shared = self.shared.borrow_mut();
        let e = shared.entry(key).or_insert((0, payload.len() as u64));
        if e.0 == 0 {
            self.add(false, e.1);
        }
        e.0 += 1;
    }

    /// A queue let go of `payload` (or what is left of it): the last holder gives its
    /// length back.
    pub(crate) fn share_release(&self, payload: &Bytes) {
        let key = payload.as_ptr() as usize + payload.len();
        let mut shared = self.shared.borrow_mut();
        let Some(e) = shared.get_mut(&key) else {
            debug_assert!(false, "release of a payload never added");
            return;
        };
        e.0 -= 1;
        if e.0 == 0 {
            let n = e.1;
            shared.remove(&key);
            self.sub(false, n);
        }
    }

    /// Connections marked slow now.
    pub fn slow_conns(&self) -> u64 {
        self.slow_conns.get()
    }

    pub(crate) fn slow_conns_add(&self, up: bool) {
        let n = self.slow_conns.get();
        self.slow_conns.set(if up { n + 1 } else { n.saturating_sub(1) });
    }

    pub(crate) fn over_inc(&self) {
        self.over.set(self.over.get() + 1);
    }

    pub(crate) fn over_dec(&self) {
        debug_assert!(self.over.get() > 0);
        self.over.set(self.over.get().saturating_sub(1));
    }

    /// Whether a QoS 0 copy for a queue of `weight` (owned bytes, and a fixed amount per
    /// shared payload) is dropped (see the module doc).
    pub(crate) fn drops_qos0(&self, slow: bool, weight: u64) -> bool {
        if slow {
            weight >= self.conn_pause_bytes || self.slow_bytes.get() > self.slow_total_max_bytes
        } else {
            weight > self.conn_hard_bytes || self.bytes.get() > self.shard_hard_bytes
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use bytes::Bytes;

    use super::*;
    use crate::core::delivery::tx::{SlowChange, TxQueue};

    /// Marks small enough to reach with a few frames: pause a connection at 1000 bytes
    /// (resume at 250), hard bound 4000, shard pause at 8000 (resume at 4000).
    fn budget() -> Rc<TxBudget> {
        budget_with_shard_bytes(8000)
    }

    /// The same connection marks with another shard budget.
    fn budget_with_shard_bytes(shard_tx_bytes_max: u64) -> Rc<TxBudget> {
        let limits = Limits {
            connection_tx_bytes_pause: 1000,
            connection_tx_bytes_max: 4000,
            shard_tx_bytes_max,
            ..Limits::default()
        };
        Rc::new(TxBudget::new(&limits))
    }

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn queues_report_what_they_hold_until_written_or_dropped() {
        let b = budget();
        let mut a = TxQueue::metered(b.clone());
        let mut c = TxQueue::metered(b.clone());
        a.push_frame(&frame(100));
        c.push_copy(&[1; 50]);
        c.push_parts(b"hdr", &frame(3000));
        assert_eq!(b.bytes(), 100 + 50 + 3 + 3000);
        a.consume(40);
        assert_eq!(b.bytes(), 60 + 3053);
        let mut moved = TxQueue::default();
        moved.append(&mut a);
        assert_eq!(b.bytes(), 3053, "bytes moved to an unmetered queue leave the budget");
        drop(c);
        assert_eq!(b.bytes(), 0, "a dropped queue gives its bytes back");
        assert_eq!(b.over(), 0);
    }

    #[test]
    fn one_full_connection_pauses_publishers_until_it_is_under_a_quarter() {
        let b = budget();
        let mut q = TxQueue::metered(b.clone());
        q.push_frame(&frame(900));
        assert!(!b.paused());
        q.push_frame(&frame(200));
        assert!(b.paused(), "past the connection's pause mark");
        assert_eq!(b.pauses(), 1);
        q.consume(800);
        assert!(b.paused(), "300 bytes left: not yet under the resume mark (250)");
        q.consume(100);
        assert!(!b.paused());
        assert_eq!(b.over(), 0);
    }

    #[test]
    fn the_shard_total_pauses_with_hysteresis() {
        let b = budget();
        let mut qs: Vec<TxQueue> = (0..10).map(|_| TxQueue::metered(b.clone())).collect();
        for q in &mut qs {
            q.push_frame(&frame(900)); // under every connection's pause mark
        }
        assert!(b.paused(), "9000 bytes > 8000");
        for q in &mut qs[..5] {
            q.consume(900);
        }
        assert!(b.paused(), "4500 bytes: not under half the budget yet");
        qs[5].consume(900);
        assert!(!b.paused(), "3600 bytes");
        qs[6].push_frame(&frame(10));
        assert!(!b.paused(), "resumed: pauses again only past the budget");
    }

    #[test]
    fn a_connection_stuck_past_the_pause_mark_becomes_slow_and_stops_holding_others() {
        let b = budget();
        let mut stuck = TxQueue::metered(b.clone());
        let mut fast = TxQueue::metered(b.clone());
        stuck.push_frame(&frame(1200));
        assert!(b.paused());
        // The fast one drains between scans; the stuck one takes a little but stays past
        // the mark.
        stuck.consume(100);
        assert_eq!(stuck.scan(), SlowChange::None, "first scan: only suspect");
        fast.push_frame(&frame(500));
        fast.consume(500);
        stuck.consume(50);
        assert_eq!(fast.scan(), SlowChange::None);
        assert_eq!(
            stuck.scan(),
            SlowChange::None,
            "past the mark, but its socket was never full: the shard's delay, not its own"
        );
        stuck.note_socket_full(true);
        assert_eq!(stuck.scan(), SlowChange::BecameSlow, "past the mark, and its socket full");
        assert!(stuck.is_slow());
        assert_eq!(b.slow_conns(), 1);
        assert!(!b.paused(), "a slow connection no longer pauses publishers");
        assert_eq!(b.bytes(), 0);
        assert_eq!(b.slow_bytes(), 1050);
        assert!(stuck.drops_qos0(), "QoS 0 to a slow connection past the pause mark drops");
        assert!(!fast.drops_qos0());
        stuck.consume(1050);
        assert!(!stuck.drops_qos0(), "under the mark a slow connection gets QoS 0 again");
        assert_eq!(stuck.scan(), SlowChange::Recovered, "empty at a scan: caught up");
        assert_eq!(b.slow_conns(), 0);
        assert_eq!(b.slow_bytes(), 0);
    }

    #[test]
    fn a_connection_that_takes_nothing_for_an_interval_becomes_slow() {
        let b = budget();
        let mut q = TxQueue::metered(b.clone());
        q.push_frame(&frame(10));
        assert_eq!(q.scan(), SlowChange::None);
        q.push_frame(&frame(10));
        assert_eq!(q.scan(), SlowChange::None, "never offered to its socket: not its fault");
        q.note_socket_full(true);
        assert_eq!(q.scan(), SlowChange::BecameSlow, "bytes at two scans, none taken");
        let mut live = TxQueue::metered(b.clone());
        live.push_frame(&frame(10));
        assert_eq!(live.scan(), SlowChange::None);
        live.consume(5);
        live.note_socket_full(true);
        live.push_frame(&frame(10));
        assert_eq!(live.scan(), SlowChange::None, "it took bytes: not stalled");
        drop(q);
        assert_eq!(b.slow_conns(), 0, "a closed slow connection is no longer counted");
    }

    #[test]
    fn hard_bounds_drop_qos0() {
        let b = budget();
        let mut q = TxQueue::metered(b.clone());
        q.push_copy(&[0; 4000]);
        assert!(!q.drops_qos0(), "at the bound");
        q.push_frame(&frame(1));
        assert!(q.drops_qos0(), "past the connection's hard bound");
        let mut others: Vec<TxQueue> = (0..4).map(|_| TxQueue::metered(b.clone())).collect();
        for o in &mut others {
            o.push_copy(&[0; 3000]);
        }
        let empty = TxQueue::metered(b.clone());
        assert!(empty.drops_qos0(), "the shard holds more than twice its budget");
        assert!(!TxQueue::default().drops_qos0(), "an unmetered queue never drops");
    }

    #[test]
    fn a_large_payload_queued_for_many_counts_once() {
        let b = budget_with_shard_bytes(1 << 20);
        let payload = frame(100_000);
        let mut qs: Vec<TxQueue> = (0..50).map(|_| TxQueue::metered(b.clone())).collect();
        for q in &mut qs {
            q.push_parts(b"hd", &payload);
        }
        assert_eq!(b.bytes(), 100_000 + 50 * 2, "one payload, fifty headers");
        assert!(!b.paused(), "a shared payload weighs little on each connection");
        assert!(qs.iter().all(|q| !q.drops_qos0()));
        assert_eq!(qs[0].len_bytes(), 100_002);
        qs[0].consume(50_000);
        assert_eq!(b.bytes(), 100_000 + 49 * 2, "still held by the others");
        for q in &mut qs[1..] {
            let n = q.len_bytes();
            q.consume(n);
        }
        assert_eq!(b.bytes(), 100_000, "the first queue still holds part of it");
        drop(qs);
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn a_slow_connection_holding_large_payloads_is_dropped_for() {
        let b = budget_with_shard_bytes(1 << 20);
        let mut q = TxQueue::metered(b.clone());
        let big = frame(100_000);
        q.push_parts(b"hd", &big);
        assert!(!q.drops_qos0(), "a shared payload weighs little on a connection that keeps up");
        q.note_socket_full(true);
        assert_eq!(q.scan(), SlowChange::None);
        q.note_socket_full(true);
        assert_eq!(q.scan(), SlowChange::BecameSlow, "bytes at two scans, none taken");
        assert!(q.drops_qos0(), "slow: the payload weighs its length, past the pause mark");
        q.consume(99_500);
        assert!(!q.drops_qos0(), "what is left of it is under the mark");
        let n = q.len_bytes();
        q.consume(n);
        assert_eq!(q.scan(), SlowChange::Recovered);
        q.push_parts(b"hd", &big);
        assert!(!q.drops_qos0(), "caught up: back to the fixed weight");
        drop(q);
        assert_eq!((b.bytes(), b.slow_bytes()), (0, 0));
    }

    #[test]
    fn deep_queues_are_chunked_so_partial_writes_do_not_move_the_backlog() {
        let b = budget();
        let mut q = TxQueue::metered(b);
        for _ in 0..3000 {
            q.push_copy(&[7; 70]);
        }
        let mut iov = [std::io::IoSlice::new(&[]); 8];
        let n = q.io_slices(&mut iov);
        assert!(n >= 3, "210,000 bytes are several sealed chunks, not one buffer: {n}");
        assert!(iov[0].len() <= crate::core::delivery::tx::TAIL_SEAL_BYTES + 70);
    }
}
