//! Per-connection transmit queue: encoded frames waiting for the connection's writer.
//!
//! The writer sends straight out of the queue: [`TxQueue::io_slices`] lends the queued bytes
//! as gather slices (almost always one: the coalescing buffer), [`TxQueue::consume`] drops
//! what the socket took. Nothing is moved or reference-counted per write, and the coalescing
//! buffer is reused from one write to the next.
//!
//! Each queue reports to its shard's [`TxBudget`] (back-pressure, `delivery/tx_budget.rs`): the
//! bytes it owns (coalesced frames and headers) count as they are, a large payload shared with
//! other queues counts once for the whole shard (however many subscribers queue it), and towards
//! the connection's own marks (its *weight*) as a fixed [`SHARED_CHUNK_WEIGHT`]: a big message
//! to many subscribers is one allocation, and must neither pause publishers nor be dropped as
//! if every copy were its own.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};

use crate::core::delivery::tx_budget::TxBudget;

/// Frames smaller than this are copied into the coalescing buffer; larger ones are queued as
/// shared chunks so a big payload is never copied per subscriber.
pub const COALESCE_MAX_BYTES: usize = 2048;

/// A coalescing buffer that grew past this is released once it has been written out, so a
/// burst does not pin memory on a connection that then goes idle.
pub const TAIL_KEEP_BYTES_MAX: usize = 16 * 1024;

/// The coalescing buffer is sealed into a chunk once it holds this much, so a deep queue is
/// a list of chunks: a partial write advances the front chunk, and appending never moves
/// what waits (a growing `BytesMut` that was partly written would be compacted, a copy of the
/// whole backlog, on its next reallocation).
pub const TAIL_SEAL_BYTES: usize = 64 * 1024;

/// What a shared payload counts towards its connection's marks.
pub const SHARED_CHUNK_WEIGHT: usize = 64;

/// [`TxQueue::flags`] bits.
mod flag {
    /// Counted in the budget's `over` (past the pause mark, not yet under the resume mark).
    pub const OVER: u8 = 1;
    /// A slow consumer (`delivery/tx_budget.rs`): its bytes count as slow, QoS 0 to it is dropped
    /// sooner.
    pub const SLOW: u8 = 2;
    /// The socket took bytes since the last scan.
    pub const CONSUMED: u8 = 4;
    /// Was `OVER` at the last scan and has not been under the resume mark since.
    pub const SUSPECT: u8 = 8;
    /// Held bytes at the last scan.
    pub const NONEMPTY_AT_SCAN: u8 = 16;
    /// The last write found the socket full (it refused bytes).
    pub const SOCKET_FULL: u8 = 32;
}

/// What a scan found out about a queue ([`TxQueue::scan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowChange {
    /// Nothing changed.
    None,
    /// The connection just became slow.
    BecameSlow,
    /// A slow connection caught up.
    Recovered,
}

/// A sealed part of the queue: bytes this queue owns (coalesced frames) or a payload shared
/// with other queues.
#[derive(Debug)]
struct Chunk {
    bytes: Bytes,
    shared: bool,
}

/// Encoded frames waiting to be written to one connection, in order: sealed `chunks` (large
/// shared payloads, and the coalesced bytes before them), then the coalescing `tail`. Small
/// frames are coalesced so the writer sends many frames per syscall.
///
/// Shard-local: owned by the connection's entry in its shard's core.
#[derive(Debug, Default)]
pub struct TxQueue {
    /// Allocated on first use (most connections only ever see small frames): 8 bytes per
    /// connection instead of an empty `VecDeque`'s 32.
    #[allow(clippy::box_collection)]
    chunks: Option<Box<VecDeque<Chunk>>>,
    tail: BytesMut,
    len_bytes: usize,
    /// The shard's budget this queue reports to (`None`: not metered, e.g. the io layer's
    /// bytes of a closing connection, and tests).
    budget: Option<Rc<TxBudget>>,
    /// Owned bytes plus [`SHARED_CHUNK_WEIGHT`] per shared chunk: what the connection's
    /// marks are checked against.
    weight: u32,
    /// [`flag`] bits.
    flags: u8,
}

impl TxQueue {
    /// A queue that reports what it holds to `budget`.
    pub fn metered(budget: Rc<TxBudget>) -> TxQueue {
        TxQueue {
            chunks: None,
            tail: BytesMut::new(),
            len_bytes: 0,
            budget: Some(budget),
            weight: 0,
            flags: 0,
        }
    }

    /// Queues a whole encoded frame.
    pub fn push_frame(&mut self, frame: &Bytes) {
        if frame.len() <= COALESCE_MAX_BYTES {
            self.seal_if_full();
            self.tail.extend_from_slice(frame);
            self.grew(frame.len());
        } else {
            self.push_shared(frame.clone());
        }
    }

    /// Copies `bytes` (a frame or the start of one) into the coalescing buffer, and returns the
    /// copy so the caller can patch it (e.g. a packet id into a cached PUBLISH).
    #[inline]
    pub fn push_copy(&mut self, bytes: &[u8]) -> &mut [u8] {
        self.seal_if_full();
        self.grew(bytes.len());
        let start = self.tail.len();
        self.tail.extend_from_slice(bytes);
        &mut self.tail[start..]
    }

    /// Queues a frame made of an encoded header and a shared payload: the header is copied,
    /// the payload is copied only if small.
    pub fn push_parts(&mut self, header: &[u8], payload: &Bytes) {
        self.seal_if_full();
        self.tail.extend_from_slice(header);
        self.grew(header.len());
        if payload.len() <= COALESCE_MAX_BYTES {
            self.tail.extend_from_slice(payload);
            self.grew(payload.len());
        } else {
            self.push_shared(payload.clone());
        }
    }

    /// Gives direct access to the coalescing buffer to encode a frame in place.
    /// The caller must call [`TxQueue::note_appended`] with the number of bytes it wrote.
    pub fn tail_mut(&mut self) -> &mut BytesMut {
        self.seal_if_full();
        &mut self.tail
    }

    /// Accounts for bytes written through [`TxQueue::tail_mut`].
    pub fn note_appended(&mut self, n_bytes: usize) {
        self.grew(n_bytes);
    }

    fn push_shared(&mut self, payload: Bytes) {
        self.seal_tail();
        let n = payload.len();
        if let Some(b) = self.budget.as_deref() {
            b.share_add(&payload);
        }
        self.chunks().push_back(Chunk { bytes: payload, shared: true });
        self.len_bytes += n;
        let w = self.shared_weight(n);
        self.weigh(w, true);
    }

    /// What a shared payload of `len` (remaining) bytes weighs on this connection: a fixed
    /// [`SHARED_CHUNK_WEIGHT`], or, on a slow connection, its length (so QoS 0 to a slow
    /// consumer holding big messages is dropped as soon as it holds the pause mark's worth).
    fn shared_weight(&self, len: usize) -> u64 {
        if self.has(flag::SLOW) {
            len as u64
        } else {
            SHARED_CHUNK_WEIGHT as u64
        }
    }

    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    fn set(&mut self, f: u8, on: bool) {
        if on {
            self.flags |= f;
        } else {
            self.flags &= !f;
        }
    }

    /// Accounts for `n` more owned bytes queued.
    fn grew(&mut self, n: usize) {
        self.len_bytes += n;
        if let Some(b) = self.budget.as_deref() {
            b.add(self.flags & flag::SLOW != 0, n as u64);
        }
        self.weigh(n as u64, true);
    }

    /// Accounts for `n` owned bytes gone (written, or moved to another queue).
    fn shrank_owned(&mut self, n: usize) {
        if let Some(b) = self.budget.as_deref() {
            b.sub(self.has(flag::SLOW), n as u64);
        }
        self.weigh(n as u64, false);
    }

    /// A shared chunk (`len` bytes still queued) left the queue.
    fn released(&mut self, chunk: &Chunk) {
        if let Some(b) = self.budget.as_deref() {
            b.share_release(&chunk.bytes);
        }
        let w = self.shared_weight(chunk.bytes.len());
        self.weigh(w, false);
    }

    /// Moves the connection's weight and keeps its mark (`OVER`) in step.
    fn weigh(&mut self, n: u64, up: bool) {
        let w = u64::from(self.weight);
        let w = if up { w + n } else { w.saturating_sub(n) };
        self.weight = u32::try_from(w).unwrap_or(u32::MAX);
        let Some(b) = self.budget.as_deref() else { return };
        if up {
            if self.flags & (flag::SLOW | flag::OVER) == 0 && w > b.conn_pause_bytes {
                b.over_inc();
                self.flags |= flag::OVER;
            }
        } else if self.has(flag::OVER) && w <= b.conn_resume_bytes {
            b.over_dec();
            self.flags &= !(flag::OVER | flag::SUSPECT);
        }
    }

    /// True when a QoS 0 message for this connection is dropped instead of queued: the
    /// queue is past its hard bound, or the shard's budget says so (`delivery/tx_budget.rs`). A
    /// queue without a budget never drops.
    pub fn drops_qos0(&self) -> bool {
        match self.budget.as_deref() {
            Some(b) => b.drops_qos0(self.has(flag::SLOW), u64::from(self.weight)),
            None => false,
        }
    }

    /// The io layer's last write found the socket full (it took fewer bytes than offered),
    /// or not. Only a connection whose socket is full can be marked slow (a queue the shard
    /// has not got round to writing is the shard's delay, not the consumer's).
    pub fn note_socket_full(&mut self, full: bool) {
        self.set(flag::SOCKET_FULL, full);
    }

    /// Whether the connection is marked slow.
    pub fn is_slow(&self) -> bool {
        self.has(flag::SLOW)
    }

    /// The shard's periodic scan: marks the connection slow when its queue stayed past the
    /// pause mark since the last scan, or held bytes at both scans and the socket took none,
    /// and in both cases its socket was found full meanwhile; a slow connection recovers
    /// once its queue is empty.
    pub fn scan(&mut self) -> SlowChange {
        let Some(b) = self.budget.clone() else { return SlowChange::None };
        let consumed = self.has(flag::CONSUMED);
        let nonempty_before = self.has(flag::NONEMPTY_AT_SCAN);
        let socket_full = self.has(flag::SOCKET_FULL);
        self.set(flag::CONSUMED, false);
        self.set(flag::NONEMPTY_AT_SCAN, self.len_bytes > 0);
        if self.has(flag::SLOW) {
            if self.len_bytes > 0 {
                return SlowChange::None;
            }
            self.set(flag::SLOW, false);
            b.slow_conns_add(false);
            return SlowChange::Recovered;
        }
        let stalled = nonempty_before && self.len_bytes > 0 && !consumed;
        let stuck_over = self.has(flag::OVER) && self.has(flag::SUSPECT);
        if socket_full && (stalled || stuck_over) {
            if self.has(flag::OVER) {
                b.over_dec();
            }
            self.flags &= !(flag::OVER | flag::SUSPECT);
            let owned = self.owned_bytes() as u64;
            b.sub(false, owned);
            b.add(true, owned);
            self.set(flag::SLOW, true);
            // From now on shared payloads weigh their length (`shared_weight`).
            self.weight = u32::try_from(self.len_bytes).unwrap_or(u32::MAX);
            b.slow_conns_add(true);
            return SlowChange::BecameSlow;
        }
        let over = self.has(flag::OVER);
        self.set(flag::SUSPECT, over);
        SlowChange::None
    }

    /// Bytes this queue owns (everything but shared payloads).
    fn owned_bytes(&self) -> usize {
        let shared: usize = self
            .chunks
            .iter()
            .flat_map(|c| c.iter())
            .filter(|c| c.shared)
            .map(|c| c.bytes.len())
            .sum();
        self.len_bytes - shared
    }

    fn chunks(&mut self) -> &mut VecDeque<Chunk> {
        self.chunks.get_or_insert_with(Box::default)
    }

    fn seal_if_full(&mut self) {
        if self.tail.len() >= TAIL_SEAL_BYTES {
            self.seal_tail();
        }
    }

    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            let sealed = self.tail.split().freeze();
            self.chunks().push_back(Chunk { bytes: sealed, shared: false });
        }
    }

    /// Bytes waiting.
    pub fn len_bytes(&self) -> usize {
        self.len_bytes
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len_bytes == 0
    }

    /// Fills `out` with the queued bytes in order, as many slices as fit; returns how many.
    /// Small frames are coalesced, so this is one slice unless large payloads are queued.
    pub fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let chunks = self.chunks.iter().flat_map(|c| c.iter());
        let parts = chunks.map(|c| &c.bytes[..]).chain(std::iter::once(&self.tail[..]));
        for part in parts.filter(|p| !p.is_empty()) {
            if n == out.len() {
                break;
            }
            out[n] = IoSlice::new(part);
            n += 1;
        }
        n
    }

    /// The first queued bytes (empty when nothing waits).
    pub fn front(&self) -> &[u8] {
        match self.chunks.as_ref().and_then(|c| c.front()) {
            Some(c) => &c.bytes,
            None => &self.tail,
        }
    }

    /// Drops the first `n_bytes` queued bytes: the socket took them.
    pub fn consume(&mut self, mut n_bytes: usize) {
        assert!(n_bytes <= self.len_bytes, "consumed {n_bytes} of {} bytes", self.len_bytes);
        if n_bytes == 0 {
            return;
        }
        self.flags |= flag::CONSUMED;
        self.len_bytes -= n_bytes;
        let mut owned = 0;
        let mut slow_shared = 0;
        while n_bytes > 0 {
            let front = self.chunks.as_mut().and_then(|c| c.front_mut());
            match front {
                Some(front) if n_bytes >= front.bytes.len() => {
                    let chunk = self.chunks().pop_front().expect("a front chunk");
                    n_bytes -= chunk.bytes.len();
                    if chunk.shared {
                        self.released(&chunk);
                    } else {
                        owned += chunk.bytes.len();
                    }
                }
                Some(front) => {
                    front.bytes.advance(n_bytes);
                    if !front.shared {
                        owned += n_bytes;
                    } else if self.flags & flag::SLOW != 0 {
                        // A slow connection's shared payloads weigh what is left of them.
                        slow_shared += n_bytes;
                    }
                    n_bytes = 0;
                }
                None => {
                    owned += n_bytes;
                    if n_bytes == self.tail.len() {
                        // Everything went (the usual case): keep the coalescing buffer for
                        // the next frames unless a burst grew it.
                        if self.tail.capacity() > TAIL_KEEP_BYTES_MAX {
                            self.tail = BytesMut::new();
                        } else {
                            self.tail.clear();
                        }
                    } else {
                        self.tail.advance(n_bytes);
                    }
                    n_bytes = 0;
                }
            }
        }
        self.shrank_owned(owned);
        self.weigh(slow_shared as u64, false);
    }

    /// Removes everything queued, accounting for it, and returns the chunks in order.
    fn take_chunks(&mut self) -> VecDeque<Chunk> {
        self.seal_tail();
        let chunks = self.chunks.as_mut().map(|c| std::mem::take(&mut **c)).unwrap_or_default();
        let mut owned = 0;
        for c in &chunks {
            if c.shared {
                self.released(c);
            } else {
                owned += c.bytes.len();
            }
        }
        self.len_bytes = 0;
        self.shrank_owned(owned);
        chunks
    }

    /// Moves everything queued on `other` behind what is queued here.
    pub fn append(&mut self, other: &mut TxQueue) {
        if other.is_empty() {
            return;
        }
        self.seal_tail();
        for c in other.take_chunks() {
            if c.shared {
                self.push_shared(c.bytes);
            } else {
                let n = c.bytes.len();
                self.chunks().push_back(c);
                self.grew(n);
            }
        }
    }

    /// Takes everything queued, in order, for one write batch.
    pub fn take_all(&mut self, out: &mut Vec<Bytes>) {
        out.extend(self.take_chunks().into_iter().map(|c| c.bytes));
    }
}

impl Drop for TxQueue {
    fn drop(&mut self) {
        if let Some(b) = self.budget.clone() {
            self.take_chunks();
            if self.has(flag::SLOW) {
                b.slow_conns_add(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(q: &TxQueue) -> Vec<u8> {
        let mut iov = [IoSlice::new(&[]); 8];
        let n = q.io_slices(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn small_frames_coalesce_and_big_ones_are_shared() {
        let mut q = TxQueue::default();
        q.push_frame(&Bytes::from_static(b"ab"));
        q.push_frame(&Bytes::from_static(b"cd"));
        let big = Bytes::from(vec![7u8; COALESCE_MAX_BYTES + 1]);
        q.push_frame(&big);
        q.push_parts(b"h", &Bytes::from_static(b"p"));
        assert_eq!(q.len_bytes(), 4 + big.len() + 2);
        let mut iov = [IoSlice::new(&[]); 8];
        assert_eq!(q.io_slices(&mut iov), 3);
        assert_eq!(iov[1].as_ptr(), big.as_ptr(), "big payload is shared, not copied");
        let mut out = Vec::new();
        q.take_all(&mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(&out[0][..], b"abcd");
        assert_eq!(out[1].as_ptr(), big.as_ptr(), "big payload is shared, not copied");
        assert_eq!(&out[2][..], b"hp");
        assert!(q.is_empty());
    }

    #[test]
    fn partial_writes_consume_in_order_across_chunks() {
        let mut q = TxQueue::default();
        q.push_frame(&Bytes::from_static(b"ab"));
        let big = Bytes::from(vec![7u8; COALESCE_MAX_BYTES + 1]);
        q.push_frame(&big);
        q.push_frame(&Bytes::from_static(b"cd"));
        let mut expected = written(&q);
        assert_eq!(expected.len(), q.len_bytes());
        for step in [1, 2, 100, COALESCE_MAX_BYTES - 102, 1] {
            q.consume(step);
            expected.drain(..step);
            assert_eq!(written(&q), expected);
            assert_eq!(q.len_bytes(), expected.len());
            assert_eq!(q.front(), &expected[..q.front().len()]);
        }
        q.consume(q.len_bytes());
        assert!(q.is_empty());
        assert!(q.front().is_empty());
        q.push_frame(&Bytes::from_static(b"ef"));
        assert_eq!(written(&q), b"ef", "the coalescing buffer is reused after a drain");
    }

    #[test]
    fn a_grown_buffer_is_released_once_written() {
        let mut q = TxQueue::default();
        q.push_frame(&Bytes::from(vec![1u8; 1000]));
        for _ in 0..(TAIL_KEEP_BYTES_MAX / 1000 + 1) {
            q.push_frame(&Bytes::from(vec![1u8; 1000]));
        }
        q.consume(q.len_bytes());
        assert_eq!(q.tail.capacity(), 0);
    }

    #[test]
    fn append_keeps_order() {
        let mut a = TxQueue::default();
        a.push_frame(&Bytes::from_static(b"ab"));
        let mut b = TxQueue::default();
        b.push_frame(&Bytes::from_static(b"cd"));
        a.append(&mut b);
        assert!(b.is_empty());
        assert_eq!(written(&a), b"abcd");
        let mut empty = TxQueue::default();
        empty.append(&mut a);
        assert_eq!(written(&empty), b"abcd");
        assert!(a.is_empty());
    }
}
