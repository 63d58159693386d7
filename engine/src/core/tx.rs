//! Per-connection transmit queue: encoded frames waiting for the connection's writer.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Frames smaller than this are copied into the coalescing buffer; larger ones are queued as
/// shared chunks so a big payload is never copied per subscriber.
pub const COALESCE_MAX_BYTES: usize = 2048;

/// Encoded frames waiting to be written to one connection. Small frames are coalesced into
/// one buffer so the writer sends many frames per syscall.
///
/// Shard-local: owned by the connection's entry in its shard's core.
#[derive(Debug, Default)]
pub struct TxQueue {
    chunks: VecDeque<Bytes>,
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
            self.chunks.push_back(frame.clone());
        }
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
            self.chunks.push_back(payload.clone());
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

    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            self.chunks.push_back(self.tail.split().freeze());
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

    /// Takes everything queued, in order, for one write batch.
    pub fn take_all(&mut self, out: &mut Vec<Bytes>) {
        self.seal_tail();
        out.extend(self.chunks.drain(..));
        self.len_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_frames_coalesce_and_big_ones_are_shared() {
        let mut q = TxQueue::default();
        q.push_frame(&Bytes::from_static(b"ab"));
        q.push_frame(&Bytes::from_static(b"cd"));
        let big = Bytes::from(vec![7u8; COALESCE_MAX_BYTES + 1]);
        q.push_frame(&big);
        q.push_parts(b"h", &Bytes::from_static(b"p"));
        assert_eq!(q.len_bytes(), 4 + big.len() + 2);
        let mut out = Vec::new();
        q.take_all(&mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(&out[0][..], b"abcd");
        assert_eq!(out[1].as_ptr(), big.as_ptr(), "big payload is shared, not copied");
        assert_eq!(&out[2][..], b"hp");
        assert!(q.is_empty());
    }
}
