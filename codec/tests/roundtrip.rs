//! Property tests: `decode(encode(p)) == p` for every valid packet of 3.1, 3.1.1 and 5.0;
//! incremental decoding of a stream split anywhere; arbitrary bytes never panic; the PUBLISH
//! header encoder agrees with the full encoder.

mod common;

use std::collections::HashSet;

use bytes::{Bytes, BytesMut};
use common::strategies::{packet, publish_with, version};
use common::{big_limits, decode_chunks, encode_to_vec};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use shardmq_codec::*;

const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// `decode(encode(p)) == p`, consuming exactly the encoded bytes.
fn assert_roundtrip(p: &Packet, v: ProtocolVersion) -> Result<(), TestCaseError> {
    let wire = encode_to_vec(p, v);
    let mut buf = BytesMut::from(&wire[..]);
    // Trailing bytes of a following packet must stay in the buffer.
    buf.extend_from_slice(&[0xC0, 0x00]);
    let got = decode(&mut buf, &big_limits(), v);
    prop_assert_eq!(
        got.as_ref().ok().and_then(|o| o.as_ref()),
        Some(p),
        "wire = {:02x?}, decode = {:?}",
        wire,
        got
    );
    prop_assert_eq!(&buf[..], &[0xC0, 0x00][..], "decode consumed the wrong number of bytes");
    Ok(())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn roundtrip_v3_1(p in packet(V31)) {
        assert_roundtrip(&p, V31)?;
    }

    #[test]
    fn roundtrip_v3_1_1(p in packet(V311)) {
        assert_roundtrip(&p, V311)?;
    }

    #[test]
    fn roundtrip_v5(p in packet(V5)) {
        assert_roundtrip(&p, V5)?;
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Several packets concatenated and split in two at every position decode to the same
    /// packets, whatever the split.
    #[test]
    fn stream_split_at_every_position(
        (v, packets) in version().prop_flat_map(|v| (Just(v), vec(packet(v), 1..5)))
    ) {
        let wire: Vec<u8> = packets.iter().flat_map(|p| encode_to_vec(p, v)).collect();
        for split in 0..=wire.len() {
            let got = decode_chunks([&wire[..split], &wire[split..]], v);
            prop_assert_eq!(&got, &packets, "split at {}", split);
        }
    }
}

proptest! {
    #![proptest_config(config(500))]

    /// The same stream fed in random chunk sizes (including one byte at a time).
    #[test]
    fn stream_random_chunks(
        (v, packets) in version().prop_flat_map(|v| (Just(v), vec(packet(v), 1..8))),
        sizes in vec(prop_oneof![3 => 1usize..8, 1 => 8usize..300], 1..64),
    ) {
        let wire: Vec<u8> = packets.iter().flat_map(|p| encode_to_vec(p, v)).collect();
        let mut chunks = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < wire.len() {
            let n = sizes[i % sizes.len()].min(wire.len() - at);
            chunks.push(&wire[at..at + n]);
            at += n;
            i += 1;
        }
        prop_assert_eq!(decode_chunks(chunks, v), packets);
    }

    /// Arbitrary bytes never panic, `Ok(None)` never consumes, and whatever decodes
    /// re-encodes to the bytes consumed (or an equivalent 5.0 form).
    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..512)) {
        common::check::check(&data);
    }

    /// Arbitrary bytes behind a plausible first byte (every packet type and flag combination),
    /// so the body parsers see garbage more often than the fixed-header check does.
    #[test]
    fn arbitrary_bodies_never_panic(first in any::<u8>(), len in 0u8..128, body in vec(any::<u8>(), 0..160)) {
        let mut data = vec![first, len];
        data.extend_from_slice(&body);
        common::check::check(&data);
    }

    /// A valid packet with a few bytes overwritten never panics.
    #[test]
    fn mutated_packets_never_panic(
        (v, p) in version().prop_flat_map(|v| (Just(v), packet(v))),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut wire = encode_to_vec(&p, v);
        for (i, b) in edits {
            let i = i.index(wire.len());
            wire[i] = b;
        }
        common::check::check(&wire);
    }

    /// `encode_publish_header` + payload is byte-identical to `encode` of the same PUBLISH,
    /// and the returned offset (relative to where writing started) points at the packet id.
    #[test]
    fn publish_header_plus_payload_is_encode(
        (v, publish) in version().prop_flat_map(|v| (Just(v), publish_with(v, 2000))),
        prefix in vec(any::<u8>(), 0..8),
    ) {
        let full = encode_to_vec(&Packet::Publish(publish.clone()), v);
        let mut out = BytesMut::from(&prefix[..]);
        let offset = encode_publish_header(&publish, v, &mut out)
            .map_err(|e| TestCaseError::fail(format!("encode_publish_header: {e}")))?;
        prop_assert_eq!(&out[..prefix.len()], &prefix[..], "header encoder overwrote earlier bytes");
        let mut framed = out[prefix.len()..].to_vec();
        prop_assert_eq!(framed.len() + publish.payload.len(), full.len());
        framed.extend_from_slice(&publish.payload);
        prop_assert_eq!(&framed, &full);
        match (publish.packet_id, offset) {
            (None, None) => {}
            (Some(id), Some(at)) => {
                prop_assert_eq!(&framed[at..at + 2], &id.get().to_be_bytes()[..]);
            }
            (id, at) => prop_assert!(false, "packet id {:?} but offset {:?}", id, at),
        }
    }
}

/// The strategies reach every packet type of each version (so "every packet type" above is
/// not an accident of the weights).
#[test]
fn strategies_cover_every_packet_type() {
    for v in [V31, V311, V5] {
        let mut runner = TestRunner::deterministic();
        let strategy = packet(v);
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            seen.insert(strategy.new_tree(&mut runner).unwrap().current().packet_type());
        }
        let expected = if v.is_v5() { 15 } else { 14 };
        assert_eq!(seen.len(), expected, "{v:?}: {seen:?}");
    }
}

/// Remaining lengths at the variable byte integer boundaries (1, 2, 3 and 4 bytes).
#[test]
fn remaining_length_boundaries() {
    for v in [V311, V5] {
        for remaining in [0usize, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            // Topic "t" (2 + 1 bytes) + (5.0) an empty property length (1 byte).
            let overhead = 3 + usize::from(v.is_v5());
            let Some(payload_len) = remaining.checked_sub(overhead) else {
                continue;
            };
            let p = Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: ByteStr::from("t"),
                packet_id: None,
                payload: Bytes::from(vec![0xA5; payload_len]),
                properties: None,
            });
            let wire = encode_to_vec(&p, v);
            let vbi_len = match remaining {
                0..=127 => 1,
                128..=16_383 => 2,
                16_384..=2_097_151 => 3,
                _ => 4,
            };
            assert_eq!(wire.len(), 1 + vbi_len + remaining, "{v:?} remaining {remaining}");
            let got = decode_chunks([&wire[..]], v);
            assert_eq!(got, vec![p]);
        }
    }
}

/// The declared size is checked against the limit from the fixed header alone, before the
/// body is buffered [design §2].
#[test]
fn declared_size_over_limit_is_rejected_before_buffering() {
    let limits = Limits { packet_size_max_bytes: 1024 };
    for v in [V31, V311, V5] {
        // PUBLISH QoS 0 declaring 1,000,000 remaining bytes; only the fixed header is here.
        let mut buf = BytesMut::from(&[0x30, 0xC0, 0x84, 0x3D][..]);
        let r = decode(&mut buf, &limits, v);
        assert!(matches!(r, Err(DecodeError::PacketTooLarge { .. })), "{v:?}: {r:?}");
        // Exactly at the limit: 1 + 2 + 1021 = 1024 bytes is accepted.
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: ByteStr::from("t"),
            packet_id: None,
            payload: Bytes::from(vec![1; 1021 - 3 - usize::from(v.is_v5())]),
            properties: None,
        });
        let wire = encode_to_vec(&p, v);
        assert_eq!(wire.len(), 1024);
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(decode(&mut buf, &limits, v), Ok(Some(p.clone())), "{v:?}");
        // One byte over is rejected.
        let mut bigger = p;
        if let Packet::Publish(p) = &mut bigger {
            p.payload = Bytes::from(vec![1; p.payload.len() + 1]);
        }
        let wire = encode_to_vec(&bigger, v);
        let mut buf = BytesMut::from(&wire[..]);
        assert!(
            matches!(
                decode(&mut buf, &limits, v),
                Err(DecodeError::PacketTooLarge { size_bytes: 1025 })
            ),
            "{v:?}"
        );
    }
}
