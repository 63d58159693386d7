//! Per-connection transmit queue: encoded frames waiting for the connection's writer.
//!
//! The writer sends straight out of the queue: [`TxQueue::io_slices`] lends the queued bytes
//! as gather slices (almost always one: the coalescing buffer), [`TxQueue::consume`] drops
//! what the socket took. Nothing is moved or reference-counted per write, and the coalescing
//! buffer is reused from one write to the next.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

/// Frames smaller than this are copied into the coalescing buffer; larger ones are queued as
/// shared chunks so a big payload is never copied per subscriber.
pub const COALESCE_MAX_BYTES: usize = 2048;

/// A coalescing buffer that grew past this is released once it has been written out, so a
/// burst does not pin memory on a connection that then goes idle.
pub const TAIL_KEEP_BYTES_MAX: usize = 16 * 1024;

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
    chunks: Option<Box<VecDeque<Bytes>>>,
    tail: BytesMut,
    len_bytes: usize,
}

impl TxQueue {
    /// Queues a whole encoded frame.
    pub fn push_frame(&mut self, frame: &Bytes) {
        self.len_bytes += frame.len();
        if frame.len() <= COALESCE_MAX_BYTES {
            self.tail.extend_from_slice(frame);
        } else {
            self.seal_tail();
            self.chunks().push_back(frame.clone());
        }
    }

    /// Copies `bytes` (a frame or the start of one) into the coalescing buffer, and returns the
    /// copy so the caller can patch it (e.g. a packet id into a cached PUBLISH).
    #[inline]
    pub fn push_copy(&mut self, bytes: &[u8]) -> &mut [u8] {
        self.len_bytes += bytes.len();
        let start = self.tail.len();
        self.tail.extend_from_slice(bytes);
        &mut self.tail[start..]
    }

    /// Queues a frame made of an encoded header and a shared payload: the header is copied,
    /// the payload is copied only if small.
    pub fn push_parts(&mut self, header: &[u8], payload: &Bytes) {
        self.len_bytes += header.len() + payload.len();
        self.tail.extend_from_slice(header);
        if payload.len() <= COALESCE_MAX_BYTES {
            self.tail.extend_from_slice(payload);
        } else {
            self.seal_tail();
            self.chunks().push_back(payload.clone());
        }
    }

    /// Gives direct access to the coalescing buffer to encode a frame in place.
    /// The caller must call [`TxQueue::note_appended`] with the number of bytes it wrote.
    pub fn tail_mut(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Accounts for bytes written through [`TxQueue::tail_mut`].
    pub fn note_appended(&mut self, n_bytes: usize) {
        self.len_bytes += n_bytes;
    }

    fn chunks(&mut self) -> &mut VecDeque<Bytes> {
        self.chunks.get_or_insert_with(Box::default)
    }

    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            let sealed = self.tail.split().freeze();
            self.chunks().push_back(sealed);
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
        let parts = chunks.map(|c| &c[..]).chain(std::iter::once(&self.tail[..]));
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
            Some(c) => c,
            None => &self.tail,
        }
    }

    /// Drops the first `n_bytes` queued bytes: the socket took them.
    pub fn consume(&mut self, mut n_bytes: usize) {
        assert!(n_bytes <= self.len_bytes, "consumed {n_bytes} of {} bytes", self.len_bytes);
        if n_bytes == self.len_bytes {
            // Everything went (the usual case): keep the coalescing buffer for the next
            // frames unless a burst grew it.
            if let Some(c) = self.chunks.as_mut() {
                c.clear();
            }
            self.len_bytes = 0;
            if self.tail.capacity() > TAIL_KEEP_BYTES_MAX {
                self.tail = BytesMut::new();
            } else {
                self.tail.clear();
            }
            return;
        }
        self.len_bytes -= n_bytes;
        while n_bytes > 0 {
            match self.chunks.as_mut().and_then(|c| c.front_mut()) {
                Some(front) if n_bytes >= front.len() => {
                    n_bytes -= front.len();
                    self.chunks().pop_front();
                }
                Some(front) => {
                    front.advance(n_bytes);
                    n_bytes = 0;
                }
                None => {
                    self.tail.advance(n_bytes);
                    n_bytes = 0;
                }
            }
        }
    }

    /// Moves everything queued on `other` behind what is queued here.
    pub fn append(&mut self, other: &mut TxQueue) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() && self.tail.capacity() == 0 {
            std::mem::swap(self, other);
            return;
        }
        self.seal_tail();
        other.seal_tail();
        if let Some(theirs) = other.chunks.as_mut() {
            self.chunks().append(theirs);
        }
        self.len_bytes += std::mem::take(&mut other.len_bytes);
    }

    /// Takes everything queued, in order, for one write batch.
    pub fn take_all(&mut self, out: &mut Vec<Bytes>) {
        self.seal_tail();
        if let Some(c) = self.chunks.as_mut() {
            out.extend(c.drain(..));
        }
        self.len_bytes = 0;
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
