//! Wire primitives (§1.5): two- and four-byte integers, variable byte integers, UTF-8
//! strings, binary data and string pairs.
//!
//! Decoding goes through [`Reader`], a cursor over the frozen bytes of one packet: every
//! read checks the length first (no indexing, no panics on any input) and strings and binary
//! data are zero-copy slices of the packet. Encoding appends to a `BytesMut`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::types::ByteStr;

/// The largest value a variable byte integer can carry (§1.5.5).
pub const VARINT_MAX: u32 = 268_435_455;

/// A bounds-checked cursor over the bytes of one packet (or one property block).
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    /// A reader over `buf`.
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    /// Bytes not read yet.
    #[cfg(test)]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// True when every byte has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            Err(DecodeError::Truncated)
        } else {
            Ok(())
        }
    }

    /// The next byte, not consumed.
    pub(crate) fn peek_u8(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// One byte.
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    /// A big-endian two-byte integer (§1.5.2).
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    /// A big-endian four-byte integer (§1.5.3).
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    /// A variable byte integer (§1.5.5): at most four bytes, minimally encoded
    /// [MQTT-1.5.5-1].
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4u32 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(DecodeError::VarIntNotMinimal);
                }
                return Ok(value);
            }
        }
        Err(DecodeError::VarIntTooLong)
    }

    /// The next `n` bytes, zero-copy.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// A sub-reader over the next `n` bytes (e.g. a property block).
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        self.bytes(n).map(Reader::new)
    }

    /// Binary data (§1.5.6): a two-byte length and that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }

    /// A UTF-8 string (§1.5.4): well-formed [MQTT-1.5.4-1], without U+0000 [MQTT-1.5.4-2].
    pub(crate) fn string(&mut self) -> Result<ByteStr, DecodeError> {
        let b = self.binary()?;
        validate_utf8(&b)?;
        Ok(ByteStr::from_validated(b))
    }

    /// A UTF-8 string pair (§1.5.7) [MQTT-1.5.7-1].
    pub(crate) fn string_pair(&mut self) -> Result<(ByteStr, ByteStr), DecodeError> {
        let k = self.string()?;
        let v = self.string()?;
        Ok((k, v))
    }

    /// Every byte not read yet (e.g. a PUBLISH payload), zero-copy.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Checks every byte has been read: left-over bytes mean the remaining length does not
    /// match the contents.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

/// Checks the rules of an MQTT UTF-8 string: well-formed UTF-8 (Rust's validator rejects
/// surrogates and overlong forms) [MQTT-1.5.4-1] and no U+0000 [MQTT-1.5.4-2].
pub(crate) fn validate_utf8(b: &[u8]) -> Result<(), DecodeError> {
    if std::str::from_utf8(b).is_err() {
        return Err(DecodeError::InvalidUtf8);
    }
    if b.contains(&0) {
        return Err(DecodeError::Utf8Null);
    }
    Ok(())
}

/// Bytes needed to encode `v` as a variable byte integer (1 for values above the maximum
/// too: the encoder rejects those).
pub(crate) fn varint_len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `v` as a variable byte integer.
pub(crate) fn put_varint(out: &mut BytesMut, v: u32) -> Result<(), EncodeError> {
    if v > VARINT_MAX {
        return Err(EncodeError::VarIntOutOfRange);
    }
    let mut v = v;
    loop {
        let mut b = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if v == 0 {
            return Ok(());
        }
    }
}

/// Appends binary data (two-byte length + bytes).
pub(crate) fn put_binary(out: &mut BytesMut, b: &[u8]) -> Result<(), EncodeError> {
    let n = u16::try_from(b.len()).map_err(|_| EncodeError::FieldTooLong)?;
    out.put_u16(n);
    out.put_slice(b);
    Ok(())
}

/// Appends a UTF-8 string (two-byte length + bytes).
pub(crate) fn put_str(out: &mut BytesMut, s: &ByteStr) -> Result<(), EncodeError> {
    put_binary(out, s.as_bytes())
}

/// Encoded length of a string or binary field.
pub(crate) fn field_len(b: &[u8]) -> usize {
    2 + b.len()
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// SWAR: whether any byte of `w` is `b`.
#[inline(always)]
fn has_byte(w: u64, b: u8) -> bool {
    let x = w ^ (LO * u64::from(b));
    x.wrapping_sub(LO) & !x & HI != 0
}

/// One pass over a topic name: no U+0000, no wildcard, well-formed UTF-8 (validated by
/// `from_utf8` only when a non-ASCII byte is present).
pub(crate) fn validate_topic_name(b: &[u8]) -> Result<(), DecodeError> {
    let mut chunks = b.chunks_exact(8);
    let mut high = 0u64;
    let mut nul = false;
    let mut wild = false;
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        high |= w;
        nul |= has_byte(w, 0);
        wild |= has_byte(w, b'+') | has_byte(w, b'#');
    }
    for &c in chunks.remainder() {
        high |= u64::from(c);
        nul |= c == 0;
        wild |= c == b'+' || c == b'#';
    }
    if high & HI != 0 && std::str::from_utf8(b).is_err() {
        return Err(DecodeError::InvalidUtf8);
    }
    if nul {
        return Err(DecodeError::Utf8Null);
    }
    if wild {
        return Err(DecodeError::TopicNameWildcard);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(b: &'static [u8]) -> Reader {
        Reader::new(Bytes::from_static(b))
    }

    #[test]
    fn varint_boundaries_roundtrip() {
        for (v, wire) in [
            (0u32, &[0x00][..]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (VARINT_MAX, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut out = BytesMut::new();
            put_varint(&mut out, v).unwrap();
            assert_eq!(&out[..], wire, "{v}");
            assert_eq!(varint_len(v), wire.len());
            let mut r = Reader::new(Bytes::copy_from_slice(wire));
            assert_eq!(r.varint(), Ok(v));
            assert!(r.is_empty());
        }
        assert_eq!(
            put_varint(&mut BytesMut::new(), VARINT_MAX + 1),
            Err(EncodeError::VarIntOutOfRange)
        );
    }

    #[test]
    fn varint_overlong_is_malformed() {
        assert_eq!(reader(&[0x80, 0x00]).varint(), Err(DecodeError::VarIntNotMinimal));
        assert_eq!(reader(&[0xFF, 0x80, 0x00]).varint(), Err(DecodeError::VarIntNotMinimal));
        assert_eq!(
            reader(&[0x80, 0x80, 0x80, 0x80, 0x01]).varint(),
            Err(DecodeError::VarIntTooLong)
        );
        assert_eq!(reader(&[0x80]).varint(), Err(DecodeError::Truncated));
    }

    #[test]
    fn integers_and_truncation() {
        let mut r = reader(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09]);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(0x0203));
        assert_eq!(r.u32(), Ok(0x0405_0607));
        assert_eq!(r.u32(), Err(DecodeError::Truncated));
        assert_eq!(r.remaining(), 2);
        assert_eq!(r.u16(), Ok(0x0809));
        assert_eq!(r.u8(), Err(DecodeError::Truncated));
    }

    #[test]
    fn strings() {
        let mut r = reader(b"\x00\x03abc\x00\x00");
        assert_eq!(r.string().unwrap().as_str(), "abc");
        assert_eq!(r.string().unwrap().as_str(), "");
        r.finish().unwrap();
        // Declared length longer than the data.
        assert_eq!(reader(b"\x00\x05abc").string(), Err(DecodeError::Truncated));
        assert_eq!(reader(b"\x00").string(), Err(DecodeError::Truncated));
    }

    #[test]
    fn string_with_nul_is_rejected() {
        assert_eq!(reader(b"\x00\x03a\x00b").string(), Err(DecodeError::Utf8Null));
    }

    #[test]
    fn string_with_surrogate_is_rejected() {
        // CESU-8 / WTF-8 encoding of U+D800 [MQTT-1.5.4-1].
        assert_eq!(reader(&[0x00, 0x03, 0xED, 0xA0, 0x80]).string(), Err(DecodeError::InvalidUtf8));
        // Overlong encoding of '/' and a lone continuation byte.
        assert_eq!(reader(&[0x00, 0x02, 0xC0, 0xAF]).string(), Err(DecodeError::InvalidUtf8));
        assert_eq!(reader(&[0x00, 0x01, 0x80]).string(), Err(DecodeError::InvalidUtf8));
    }

    #[test]
    fn string_pair_and_binary() {
        let mut r = reader(b"\x00\x01k\x00\x01v\x00\x02\xff\x00");
        let (k, v) = r.string_pair().unwrap();
        assert_eq!((k.as_str(), v.as_str()), ("k", "v"));
        assert_eq!(&r.binary().unwrap()[..], &[0xFF, 0x00]);
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(reader(b"x").finish(), Err(DecodeError::TrailingBytes));
    }

    #[test]
    fn put_field_too_long() {
        let long = vec![b'a'; 65_536];
        assert_eq!(put_binary(&mut BytesMut::new(), &long), Err(EncodeError::FieldTooLong));
        let mut out = BytesMut::new();
        put_binary(&mut out, &long[..65_535]).unwrap();
        assert_eq!(out.len(), field_len(&long[..65_535]));
    }
}
