//! The shard's writer: one task that sends what the core queued on connections, straight
//! from each connection's [`TxQueue`], in the order the connections became non-empty.
//!
//! Why one task and not each connection's own: fan-out makes a thousand connections
//! non-empty at once, and the kernel's cost of a `send` on loopback TCP is several
//! microseconds whatever it carries (the profile in `perf/notes/2026-11-23-fanout.md`), so
//! what matters is how many frames each send carries. The writer walks the connections in
//! FIFO order, [`FLUSH_BATCH_CONNS`] at a time, and between batches lets the reactor poll for
//! io so publishers' sockets are read and their messages queued *behind* what is already
//! waiting. A connection therefore goes out once per pass over the busy connections, with
//! everything that arrived for it during the pass: under load one send carries many frames;
//! when idle a pass is one connection and nothing waits. It also spares a task wake-up and
//! poll per connection per write.
//!
//! A socket that does not take everything (its buffer is full) is handed to the
//! connection's own task ([`ConnSlot::blocked`]), which waits for writability through
//! glommio and writes until the queue is empty; until then the writer leaves that connection
//! alone, so bytes never go out of order. Closing connections are always written by their
//! own task.
//!
//! Shard-local: one [`FlushQueue`] per shard, in its [`ShardIo`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use glommio::timer::Timer;

use crate::core::delivery::tx::TxQueue;

use super::shard::{ConnSlot, ShardIo};
use super::signal::WakerSlot;
use super::transport::{ws, TransportState, WRAP_BATCH_BYTES};

/// Connections written before the writer lets the reactor poll for io again. Smaller means
/// publishers are read more often during a pass (more frames per send, more polls).
pub(crate) const FLUSH_BATCH_CONNS: usize = 8;

/// Connections the writer asks to read between batches, at most (the most recently busy
/// readers: publishers feeding the fan-out). A reader turned away makes the writer stop
/// reading directly for a while ([`FAIR_READS_FOR`]): with many readers, direct reads were
/// unfair even when all fitted (p2p 8 pairs QoS 2, 16 readers with the former cap of 16:
/// p99 8–36 ms, against 1.5–3.4 ms with every connection read at reactor polls).
const HOT_READERS_MAX: usize = 4;

/// A hot connection whose direct reads found nothing this many times in a row is no longer
/// asked (until it reads bytes again). A direct read that finds nothing costs a `recv`,
/// far less than a send.
pub(crate) const POKE_MISSES_MAX: u8 = 16;

/// Batches between full reactor polls while no connection is hot, or while more
/// connections read than [`HOT_READERS_MAX`].
const POLL_EVERY_BATCHES: u32 = 4;

/// After a connection last started reading while others were hot (it had not been read
/// directly, they had: the hot list was full, or it had cooled down), for this long nobody
/// is read directly: every connection is read when the reactor polls, at the same cadence.
/// Reading some connections between every batch and the rest only at reactor polls is
/// unfair where it matters: a QoS 1/2 subscriber's deliveries are paced by its
/// acknowledgements (at most `inflight_out_max` unacknowledged), so subscribers whose
/// PUBACK/PUBREC/PUBCOMP were read less often fell behind their publishers, whose PUBLISHes
/// the broker acknowledges at once, and their messages queued (p2p 10 pairs QoS 2, 20
/// readers for 16 places: p99 30–400 ms). Fan-out from one publisher keeps its direct reads.
const FAIR_READS_FOR: Duration = Duration::from_millis(10);

/// Longest the writer goes on between full reactor polls while it has work, hot
/// connections or not. Direct reads reach only the hot connections; everything else the
/// shard waits for arrives through the reactor: readers past [`HOT_READERS_MAX`] (a QoS 1/2
/// subscriber's PUBACK/PUBREC/PUBCOMP), sockets waiting for writability, fsync completions,
/// timers, other shards' wake-ups. glommio polls the reactor only when no task is runnable
/// or its preempt timer (100 ms) fires, so without this bound a busy writer held all of
/// them back for up to 100 ms at a time (p99 of ~400 ms in p2p 10 pairs QoS 2). A full
/// poll costs several `io_uring_enter` calls: a few µs per interval.
const REACTOR_POLL_INTERVAL: Duration = Duration::from_micros(500);

/// Gather slices per `sendmsg` (the coalesced bytes plus large shared payloads).
const IOV_MAX_SLICES: usize = 64;

/// Connections with bytes to write, in the order they got them, and connections that
/// recently read bytes (publishers, typically). Shard-local.
#[derive(Debug, Default)]
pub(crate) struct FlushQueue {
    fifo: RefCell<VecDeque<Rc<ConnSlot>>>,
    hot: RefCell<Vec<Rc<ConnSlot>>>,
    /// Times a connection started reading while others were hot, i.e. read directly while
    /// it was not (a running count; see [`FAIR_READS_FOR`]).
    unfair: Cell<u64>,
    waker: WakerSlot,
}

impl FlushQueue {
    /// Schedules `slot` for writing (once: a queued connection is not queued again).
    pub(crate) fn push(&self, slot: &Rc<ConnSlot>) {
        if !slot.flush.replace(true) {
            self.fifo.borrow_mut().push_back(slot.clone());
            self.waker.wake();
        }
    }

    /// Notes that `slot` read bytes: between batches the writer asks it to read again.
    pub(crate) fn mark_hot(&self, slot: &Rc<ConnSlot>) {
        if !slot.hot.replace(true) {
            let mut hot = self.hot.borrow_mut();
            // The list may still hold connections that cooled down (until the next poke),
            // this one among them.
            let mut listed = false;
            let mut others_hot = false;
            for s in hot.iter() {
                if Rc::ptr_eq(s, slot) {
                    listed = true;
                } else if s.hot.get() {
                    others_hot = true;
                }
            }
            if others_hot {
                self.unfair.set(self.unfair.get() + 1);
            }
            if !listed {
                if hot.len() < HOT_READERS_MAX {
                    hot.push(slot.clone());
                } else {
                    slot.hot.set(false);
                }
            }
        }
    }

    /// Asks every hot connection to read directly; returns how many were asked.
    fn poke_hot(&self) -> usize {
        let mut hot = self.hot.borrow_mut();
        // (A sleeping connection is never hot: `ConnSlot::fall_asleep`.)
        // (A parked connection holds a PUBLISH the shard does not take now.)
        hot.retain(|s| s.hot.get() && !s.gone.get() && !s.close.get() && !s.parked.get());
        for s in hot.iter() {
            s.poke.set(true);
            s.wake();
        }
        hot.len()
    }

    fn pop(&self) -> Option<Rc<ConnSlot>> {
        let slot = self.fifo.borrow_mut().pop_front()?;
        slot.flush.set(false);
        Some(slot)
    }
}

/// Bytes a closing connection must still write, taken from the core (which may forget the
/// connection's queue) and the shutdown DISCONNECT. Allocated only when used: an idle
/// connection holds one empty pointer. Shard-local: one per connection, in its [`ConnSlot`].
#[derive(Debug, Default)]
pub(crate) struct PendingTx(RefCell<Option<Box<TxQueue>>>);

impl PendingTx {
    /// Moves everything queued on `tx` here, behind what already waits.
    pub(crate) fn append(&self, tx: &mut TxQueue) {
        if !tx.is_empty() {
            self.0.borrow_mut().get_or_insert_with(Box::default).append(tx);
        }
    }

    /// Queues one more frame.
    pub(crate) fn push_frame(&self, frame: &bytes::Bytes) {
        self.0.borrow_mut().get_or_insert_with(Box::default).push_frame(frame);
    }

    fn is_empty(&self) -> bool {
        self.0.borrow().as_ref().is_none_or(|q| q.is_empty())
    }
}

/// How a write attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wrote {
    /// Everything queued went out.
    All,
    /// The socket's buffer is full; bytes remain.
    Blocked,
    /// The socket failed (the peer is gone).
    Failed,
}

/// The shard's writer task. Runs until the shard's executor stops.
pub(crate) async fn flush_task(shard: Rc<ShardIo>) {
    let q = &shard.flush;
    let mut batches = 0u32;
    // When the reactor last polled for certain (a timer fired). Waiting for work is no
    // proof: other tasks may have kept the executor busy meanwhile.
    let mut polled_at = Instant::now();
    let mut unfair_seen = 0u64;
    let mut fair_until: Option<Instant> = None;
    loop {
        std::future::poll_fn(|cx| {
            if q.fifo.borrow().is_empty() {
                q.waker.set(cx.waker());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        for _ in 0..FLUSH_BATCH_CONNS {
            let Some(slot) = q.pop() else { break };
            flush_one(&shard, &slot);
        }
        // What went out may let paused publishers resume (`core/delivery/tx_budget.rs`).
        shard.relieve();
        if !q.fifo.borrow().is_empty() {
            // Read what publishers sent meanwhile, so it is queued before the rest of the
            // pass goes out. Connections that just read bytes are asked to read again
            // directly (a `recv` each; their tasks run before this one resumes). If there
            // are none, or more readers than the hot list holds (`FAIR_READS_FOR`): every
            // few batches, and in any case whenever the reactor has not polled for
            // `REACTOR_POLL_INTERVAL`, the reactor polls for io (a timer fires only once it
            // has), which costs several io_uring calls.
            batches += 1;
            let now = Instant::now();
            let unfair = q.unfair.get();
            if unfair != unfair_seen {
                unfair_seen = unfair;
                fair_until = Some(now + FAIR_READS_FOR);
            }
            let fair = fair_until.is_some_and(|t| now < t);
            let hot = if fair { 0 } else { q.poke_hot() };
            if now - polled_at >= REACTOR_POLL_INTERVAL
                || (hot == 0 && batches.is_multiple_of(POLL_EVERY_BATCHES))
            {
                Timer::new(Duration::from_micros(1)).await;
                polled_at = Instant::now();
            } else if hot > 0 {
                futures_lite::future::yield_now().await;
            }
        }
    }
}

/// Writes one connection's queue, or hands it to the connection's task.
fn flush_one(shard: &ShardIo, slot: &Rc<ConnSlot>) {
    if slot.gone.get() {
        return;
    }
    if slot.close.get() || slot.blocked.get() {
        // Its own task writes (and knows to look again).
        shard.wake(slot);
        return;
    }
    match write_out(shard, slot) {
        Wrote::All => {}
        Wrote::Blocked | Wrote::Failed => {
            // The connection's task waits for writability (or finds the socket gone).
            slot.blocked.set(true);
            shard.wake(slot);
        }
    }
}

/// Writes what `slot` holds for a closing connection, then the core's queue for it, with
/// non-blocking sends, until everything is written or the socket is full.
pub(crate) fn write_out(shard: &ShardIo, slot: &ConnSlot) -> Wrote {
    if let Some(t) = slot.transport.as_deref() {
        return write_wrapped(shard, slot, &mut t.borrow_mut());
    }
    if let Some(pending) = slot.pending.0.borrow_mut().as_mut() {
        let w = send_queue(slot.fd(), pending, &shard.bytes_out);
        if w != Wrote::All {
            return w;
        }
    }
    let mut core = shard.core.borrow_mut();
    match core.tx(slot.conn) {
        Some(tx) => send_queue(slot.fd(), tx, &shard.bytes_out),
        None => Wrote::All,
    }
}

/// [`write_out`] for a connection with a transport (TLS, WebSocket): what the transport
/// owes the socket goes first; then queued MQTT frames (pending bytes first) go out in
/// batches of up to `WRAP_BATCH_BYTES`, each one WebSocket frame and/or TLS records of up to
/// 16 KiB ([`send_batch`]), until everything is written or the socket is full.
fn write_wrapped(shard: &ShardIo, slot: &ConnSlot, t: &mut TransportState) -> Wrote {
    loop {
        while !t.out_is_empty() {
            match sendv(slot.fd(), &[IoSlice::new(t.out())]) {
                Ok(sent) => {
                    let full = sent < t.out().len();
                    t.consume(sent);
                    shard.bytes_out.set(shard.bytes_out.get() + sent as u64);
                    if full {
                        note_socket_full(shard, slot, true);
                        return Wrote::Blocked;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    note_socket_full(shard, slot, true);
                    return Wrote::Blocked;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Wrote::Failed,
            }
        }
        {
            let mut pending = slot.pending.0.borrow_mut();
            if let Some(q) = pending.as_mut().filter(|q| !q.is_empty()) {
                match send_batch(shard, slot.fd(), t, q) {
                    None => continue,
                    Some(w) => return w,
                }
            }
        }
        let mut core = shard.core.borrow_mut();
        match core.tx(slot.conn) {
            Some(tx) if !tx.is_empty() => {
                if let Some(w) = send_batch(shard, slot.fd(), t, tx) {
                    return w;
                }
            }
            _ => return Wrote::All,
        }
    }
}

/// One batch of `q`'s frames through the transport. TLS (and WebSocket before or around
/// it): wrapped into [`TransportState::out`], which the caller sends. Plain WebSocket: sent
/// here straight from the queue behind the batch's frame header, one `sendmsg`, nothing
/// copied unless the socket takes only part of the frame. `None`: go on.
fn send_batch(
    shard: &ShardIo,
    fd: RawFd,
    t: &mut TransportState,
    q: &mut TxQueue,
) -> Option<Wrote> {
    if !t.ws_direct() {
        let mut iov = [IoSlice::new(&[]); IOV_MAX_SLICES];
        let n = q.io_slices(&mut iov);
        let taken = t.wrap(&iov[..n]);
        q.consume(taken);
        q.note_socket_full(false);
        return None;
    }
    let (result, total) = {
        let mut parts = [IoSlice::new(&[]); IOV_MAX_SLICES - 1];
        let n = q.io_slices(&mut parts);
        // At most one batch per frame: what a partial send copies is bounded by it.
        let mut total = 0;
        let mut used = 1;
        let mut slices = [&[][..]; IOV_MAX_SLICES - 1];
        for (p, slice) in parts[..n].iter().zip(slices.iter_mut()) {
            let take = p.len().min(WRAP_BATCH_BYTES - total);
            if take == 0 {
                break;
            }
            *slice = &p[..take];
            total += take;
            used += 1;
        }
        let (header, header_len) = ws::data_header(total);
        let mut iov = [IoSlice::new(&[]); IOV_MAX_SLICES];
        iov[0] = IoSlice::new(&header[..header_len]);
        for (dst, src) in iov[1..used].iter_mut().zip(&slices) {
            *dst = IoSlice::new(src);
        }
        let frame = &iov[..used];
        // A full socket leaves the unsent rest of the frame (all of it if nothing went) in
        // `out`: a `Blocked` connection's task waits for writability by writing `out`
        // (`conn.rs`, `poll_write_all`), and raw queue bytes must never follow a header
        // that promised more.
        let sent = match sendv(fd, frame) {
            Ok(sent) => sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return None,
            Err(_) => return Some(Wrote::Failed),
        };
        shard.bytes_out.set(shard.bytes_out.get() + sent as u64);
        let result = if sent < header_len + total {
            t.keep_unsent(frame, sent);
            Some(Wrote::Blocked)
        } else {
            None
        };
        (result, total)
    };
    // Sent, or the rest of the frame is in `out`: either way it left the queue.
    q.consume(total);
    q.note_socket_full(result.is_some());
    result
}

/// Tells the core's queue of `slot` whether its socket was found full (slow consumers,
/// `core/delivery/tx_budget.rs`).
fn note_socket_full(shard: &ShardIo, slot: &ConnSlot, full: bool) {
    if let Some(tx) = shard.core.borrow_mut().tx(slot.conn) {
        tx.note_socket_full(full);
    }
}

/// Calls `f` with the queue `write_out` would write from next (pending bytes first).
pub(crate) fn with_front_queue<R>(
    shard: &ShardIo,
    slot: &ConnSlot,
    f: impl FnOnce(&mut TxQueue) -> R,
) -> R {
    if !slot.pending.is_empty() {
        return f(slot.pending.0.borrow_mut().as_mut().expect("not empty"));
    }
    let mut core = shard.core.borrow_mut();
    match core.tx(slot.conn) {
        Some(tx) => f(tx),
        None => f(&mut TxQueue::default()),
    }
}

/// Sends from `q` until it is empty or the socket is full.
fn send_queue(fd: RawFd, q: &mut TxQueue, sent_total: &Cell<u64>) -> Wrote {
    while !q.is_empty() {
        let (result, offered) = {
            let mut iov = [IoSlice::new(&[]); IOV_MAX_SLICES];
            let n = q.io_slices(&mut iov);
            let offered: usize = iov[..n].iter().map(|s| s.len()).sum();
            (sendv(fd, &iov[..n]), offered)
        };
        match result {
            Ok(sent) => {
                q.consume(sent);
                sent_total.set(sent_total.get() + sent as u64);
                q.note_socket_full(sent < offered);
                if sent < offered {
                    return Wrote::Blocked;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                q.note_socket_full(true);
                return Wrote::Blocked;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Wrote::Failed,
        }
    }
    Wrote::All
}

/// One non-blocking gather send (`send` for one slice, `sendmsg` for several); never
/// raises SIGPIPE.
fn sendv(fd: RawFd, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    let r = if let [one] = iov {
        // SAFETY: `one` is a valid readable slice for the duration of the call; `fd` is a
        // socket owned by a live connection task (the caller checked `ConnSlot::gone`).
        unsafe { libc::send(fd, one.as_ptr().cast(), one.len(), flags) }
    } else {
        // SAFETY: an all-zero msghdr is valid (no address, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // `IoSlice` is guaranteed ABI-compatible with `iovec` on Unix.
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        // SAFETY: `msg` points at `iov.len()` valid iovecs that outlive the call; `fd` as
        // above.
        unsafe { libc::sendmsg(fd, &msg, flags) }
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}
