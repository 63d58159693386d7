//! Helpers shared by the integration tests. Each test binary uses a subset.
#![allow(dead_code)]

pub mod check;
pub mod properties;
pub mod strategies;

use bytes::BytesMut;
use shardmq_codec::{decode, encode, Limits, Packet, ProtocolVersion};

/// Limits large enough for anything the tests generate.
pub fn big_limits() -> Limits {
    Limits { packet_size_max_bytes: 268_435_460 }
}

/// Encodes `p` for `version` into a fresh buffer, panicking on error.
pub fn encode_to_vec(p: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(p, version, &mut out).unwrap_or_else(|e| panic!("encode failed ({e}): {p:?}"));
    out.to_vec()
}

/// Feeds `chunks` one by one into an incremental decoder, decoding every whole packet as soon
/// as it is buffered. Asserts that `Ok(None)` never consumes bytes and that every byte ends up
/// in a packet.
pub fn decode_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    version: ProtocolVersion,
) -> Vec<Packet> {
    let limits = big_limits();
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone();
            match decode(&mut buf, &limits, version) {
                Ok(Some(p)) => packets.push(p),
                Ok(None) => {
                    assert_eq!(buf, before, "Ok(None) consumed bytes");
                    break;
                }
                Err(e) => panic!("decode error {e:?} ({e}) on {:02x?}", &before[..]),
            }
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    packets
}
