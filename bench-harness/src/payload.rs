//! The payload header every benchmark message starts with.
//!
//! Layout (little endian), 20 bytes, followed by zero padding up to `--payload-bytes`:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | sequence number, from 0, per publisher |
//! | 8 | 4 | publisher id |
//! | 12 | 8 | send timestamp, ns of `CLOCK_MONOTONIC` |

/// Size of the header; the smallest payload the harness sends.
pub const HEADER_BYTES: usize = 20;

/// The decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Sequence number, from 0, per publisher.
    pub seq: u64,
    /// The publisher's id, unique in a run.
    pub publisher: u32,
    /// When the message was written to the socket, ns of `CLOCK_MONOTONIC`.
    pub sent_ns: u64,
}

impl Header {
    /// Writes the header into the first [`HEADER_BYTES`] of `buf`.
    pub fn write(&self, buf: &mut [u8]) {
        buf[0..8].copy_from_slice(&self.seq.to_le_bytes());
        buf[8..12].copy_from_slice(&self.publisher.to_le_bytes());
        buf[12..20].copy_from_slice(&self.sent_ns.to_le_bytes());
    }

    /// Reads a header; `None` if the payload is too short to carry one.
    pub fn read(buf: &[u8]) -> Option<Header> {
        if buf.len() < HEADER_BYTES {
            return None;
        }
        Some(Header {
            seq: u64::from_le_bytes(buf[0..8].try_into().ok()?),
            publisher: u32::from_le_bytes(buf[8..12].try_into().ok()?),
            sent_ns: u64::from_le_bytes(buf[12..20].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Header { seq: 0x0102_0304_0506_0708, publisher: 77, sent_ns: 123_456_789 };
        let mut buf = [0u8; 64];
        h.write(&mut buf);
        assert_eq!(Header::read(&buf), Some(h));
        assert_eq!(Header::read(&buf[..19]), None);
        assert_eq!(&buf[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
    }
}
