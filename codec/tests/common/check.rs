//! The decode-never-panics / re-encode-reproduces-the-bytes check, shared by the cargo-fuzz
//! target (`codec/fuzz/fuzz_targets/decode.rs` includes this file by path) and the plain
//! cargo tests (`codec/tests/fuzz_corpus.rs`). It depends on nothing but the codec and
//! `bytes`, so it builds in both places.

use bytes::BytesMut;
use shardmq_codec::{decode, encode, Limits, Packet, ProtocolVersion};

/// Every protocol version, in the order the check tries them.
pub const VERSIONS: [ProtocolVersion; 3] =
    [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5];

/// The limits the check decodes with: small enough that a fuzzer's length prefixes hit the
/// limit, large enough for every recorded fixture.
pub fn limits() -> Limits {
    Limits { packet_size_max_bytes: 64 * 1024 }
}

/// What the check saw, for reports (nothing here is a failure: failures panic).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Packets decoded.
    pub packets: usize,
    /// Packets whose re-encoding is byte-identical to the bytes consumed.
    pub exact: usize,
    /// Packets whose re-encoding differs only in the fixed header's remaining length
    /// (a non-minimal variable byte integer, accepted by the decoder).
    pub non_minimal_length: usize,
    /// 5.0 packets whose re-encoding is an equivalent form (short-form ack, property order).
    pub equivalent: usize,
    /// Inputs that ended in a decode error.
    pub errors: usize,
    /// Inputs that ended in `Ok(None)` (need more bytes).
    pub incomplete: usize,
}

impl Stats {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: Stats) {
        self.packets += other.packets;
        self.exact += other.exact;
        self.non_minimal_length += other.non_minimal_length;
        self.equivalent += other.equivalent;
        self.errors += other.errors;
        self.incomplete += other.incomplete;
    }
}

/// Runs [`check_version`] for every version.
pub fn check(data: &[u8]) -> Stats {
    let mut stats = Stats::default();
    for v in VERSIONS {
        stats.add(check_version(data, v));
    }
    stats
}

/// Splits `packet` into (first byte, remaining-length bytes count, body).
fn split_fixed_header(packet: &[u8]) -> Option<(u8, usize, &[u8])> {
    let first = *packet.first()?;
    let mut i = 1;
    loop {
        let b = *packet.get(i)?;
        i += 1;
        if b & 0x80 == 0 || i > 4 {
            break;
        }
    }
    Some((first, i - 1, &packet[i..]))
}

/// The version a decoded packet is encoded with: CONNECT carries its own.
pub fn encode_version(p: &Packet, conn_version: ProtocolVersion) -> ProtocolVersion {
    match p {
        Packet::Connect(c) => c.protocol,
        _ => conn_version,
    }
}

/// Decodes `data` as a stream of packets of `version` until it errors or needs more bytes.
///
/// Panics (the fuzzer's "crash") when:
/// - `decode` panics;
/// - `Ok(None)` changed the buffer, or `Ok(Some(_))` consumed nothing / not from the front;
/// - a strict prefix of a decoded packet does not decode to `Ok(None)`;
/// - a decoded packet fails to encode;
/// - the re-encoding differs from the bytes consumed, except for the equivalent encodings
///   the protocol allows (a non-minimal remaining length; in 5.0 short-form acks and property
///   order), and then `decode(encode(p)) != p`.
pub fn check_version(data: &[u8], version: ProtocolVersion) -> Stats {
    let limits = limits();
    let mut stats = Stats::default();
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        match decode(&mut buf, &limits, version) {
            Ok(None) => {
                assert_eq!(buf, before, "{version:?}: Ok(None) changed the buffer");
                stats.incomplete += 1;
                return stats;
            }
            Err(_) => {
                stats.errors += 1;
                return stats;
            }
            Ok(Some(p)) => {
                stats.packets += 1;
                let consumed = before.len() - buf.len();
                assert!(consumed >= 2, "{version:?}: a packet is at least 2 bytes");
                assert_eq!(
                    &before[consumed..],
                    &buf[..],
                    "{version:?}: decode consumed bytes other than the packet's"
                );
                let wire = &before[..consumed];
                check_prefixes(wire, version, &limits);
                let ev = encode_version(&p, version);
                let mut out = BytesMut::new();
                if let Err(e) = encode(&p, ev, &mut out) {
                    panic!("{version:?}: decoded packet does not encode ({e}): {p:?}");
                }
                if out[..] == *wire {
                    stats.exact += 1;
                    continue;
                }
                // Equivalent encodings. Whatever the difference, decoding ours must give the
                // same packet back.
                let mut again = out.clone();
                let q = decode(&mut again, &limits_for(&out), ev);
                assert!(
                    matches!(&q, Ok(Some(q)) if *q == p) && again.is_empty(),
                    "{version:?}: decode(encode(p)) != p\n p    = {p:?}\n wire = {wire:02x?}\n ours = {:02x?}\n back = {q:?}",
                    &out[..]
                );
                let (w0, wlen, wbody) = split_fixed_header(wire).unwrap();
                let (o0, olen, obody) = split_fixed_header(&out).unwrap();
                if w0 == o0 && wbody == obody && wlen > olen {
                    stats.non_minimal_length += 1;
                    continue;
                }
                assert!(
                    ev.is_v5(),
                    "{version:?}: a 3.1/3.1.1 packet has one encoding, but re-encoding differs\n p    = {p:?}\n wire = {wire:02x?}\n ours = {:02x?}",
                    &out[..]
                );
                // Short forms only ever drop bytes; a reordering keeps the length. The one
                // exception: a DISCONNECT with a reason code and no properties, which we always
                // encode with an empty property length (one byte more than the short form).
                let disconnect_short_form =
                    matches!(&p, Packet::Disconnect(_)) && out.len() == wire.len() + 1;
                assert!(
                    out.len() <= wire.len() || disconnect_short_form,
                    "{version:?}: our re-encoding is longer than the wire form\n p    = {p:?}\n wire = {wire:02x?}\n ours = {:02x?}",
                    &out[..]
                );
                stats.equivalent += 1;
            }
        }
    }
}

/// Limits large enough for a packet we encoded ourselves.
fn limits_for(out: &[u8]) -> Limits {
    Limits { packet_size_max_bytes: (out.len() as u32).max(limits().packet_size_max_bytes) }
}

/// Every strict prefix of a whole packet is "need more bytes" and consumes nothing. Long
/// packets are checked at a few cut points only, to keep the fuzzer fast.
fn check_prefixes(wire: &[u8], version: ProtocolVersion, limits: &Limits) {
    let n = wire.len();
    let cuts: Vec<usize> =
        if n <= 64 { (0..n).collect() } else { vec![0, 1, 2, 3, 4, 5, n / 2, n - 2, n - 1] };
    for cut in cuts {
        let mut b = BytesMut::from(&wire[..cut]);
        let r = decode(&mut b, limits, version);
        assert!(
            matches!(r, Ok(None)) && b.len() == cut,
            "{version:?}: prefix of {cut}/{n} bytes of a valid packet gave {r:?} (buffer {} bytes)\n wire = {wire:02x?}",
            b.len()
        );
    }
}
