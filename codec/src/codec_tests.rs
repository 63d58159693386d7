//! Helpers for the byte-literal tests beside each packet module, and the tests of the fixed
//! header and entry points.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::types::{ByteStr, PacketId};

/// A packet id for tests (panics on 0: a test bug).
pub(crate) fn pid(v: u16) -> PacketId {
    PacketId::new(v).expect("test packet ids are non-zero")
}

fn limits() -> Limits {
    Limits::default()
}

/// Decodes `wire` (exactly one packet) and returns it, checking every strict prefix is
/// `Ok(None)` without consuming anything.
fn decode_one(version: ProtocolVersion, wire: &[u8]) -> Result<Packet, DecodeError> {
    for cut in 0..wire.len() {
        let mut b = BytesMut::from(&wire[..cut]);
        match decode(&mut b, &limits(), version) {
            Ok(None) => assert_eq!(&b[..], &wire[..cut], "Ok(None) consumed bytes"),
            other => return other.map(|p| p.expect("decoded from a prefix")),
        }
    }
    let mut b = BytesMut::from(wire);
    b.extend_from_slice(&[0xC0, 0x00]);
    let p = decode(&mut b, &limits(), version)?.expect("a whole packet is buffered");
    assert_eq!(&b[..], &[0xC0, 0x00], "decode consumed the wrong number of bytes");
    Ok(p)
}

/// `wire` decodes to `expected` (not necessarily the canonical encoding).
#[track_caller]
pub(crate) fn assert_decodes(version: ProtocolVersion, wire: &[u8], expected: Packet) {
    assert_eq!(decode_one(version, wire), Ok(expected.clone()), "{version:?} {wire:02x?}");
    // And the canonical encoding decodes to it too.
    let mut out = BytesMut::new();
    encode(&expected, version, &mut out).unwrap();
    assert_eq!(decode_one(version, &out), Ok(expected));
}

/// `wire` decodes to `expected`, and `expected` encodes to `wire`.
#[track_caller]
pub(crate) fn assert_roundtrip(version: ProtocolVersion, wire: &[u8], expected: Packet) {
    assert_eq!(decode_one(version, wire), Ok(expected.clone()), "{version:?} {wire:02x?}");
    let mut out = BytesMut::from(&b"prefix"[..]);
    encode(&expected, version, &mut out).unwrap();
    assert_eq!(&out[6..], wire, "{version:?} encode({expected:?})");
    assert_eq!(encoded_len(&expected, version), wire.len());
}

/// `wire` fails to decode with exactly `err`.
#[track_caller]
pub(crate) fn assert_decode_err(version: ProtocolVersion, wire: &[u8], err: DecodeError) {
    assert_eq!(decode_one(version, wire), Err(err), "{version:?} {wire:02x?}");
}

#[test]
fn packet_is_small() {
    assert!(
        std::mem::size_of::<Packet>() <= 96,
        "size_of::<Packet>() = {}",
        std::mem::size_of::<Packet>()
    );
}

#[test]
fn pings() {
    for v in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        assert_roundtrip(v, &[0xC0, 0x00], Packet::PingReq);
        assert_roundtrip(v, &[0xD0, 0x00], Packet::PingResp);
        assert_decode_err(v, &[0xC0, 0x01, 0x00], DecodeError::TrailingBytes);
        assert_decode_err(
            v,
            &[0xD2, 0x00],
            DecodeError::InvalidFixedHeaderFlags { packet_type: 13, flags: 2 },
        );
    }
}

#[test]
fn reserved_packet_type_zero() {
    assert_decode_err(
        ProtocolVersion::V5,
        &[0x00, 0x00],
        DecodeError::ReservedPacketType { packet_type: 0 },
    );
}

#[test]
fn reserved_flags_are_checked_from_the_first_byte() {
    // SUBSCRIBE with flags 0: rejected before the length is even buffered.
    let mut b = BytesMut::from(&[0x80][..]);
    assert_eq!(
        decode(&mut b, &limits(), ProtocolVersion::V3_1_1),
        Err(DecodeError::InvalidFixedHeaderFlags { packet_type: 8, flags: 0 })
    );
}

#[test]
fn huge_declared_length_is_rejected_from_two_bytes() {
    let small = Limits { packet_size_max_bytes: 100 };
    // A one-byte remaining length of 127: 129 bytes > 100.
    let mut b = BytesMut::from(&[0x30, 0x7F][..]);
    assert_eq!(
        decode(&mut b, &small, ProtocolVersion::V5),
        Err(DecodeError::PacketTooLarge { size_bytes: 129 })
    );
    // A continued remaining length: at least 127 + 128 → at least 258 bytes.
    let mut b = BytesMut::from(&[0x30, 0xFF][..]);
    assert_eq!(
        decode(&mut b, &small, ProtocolVersion::V5),
        Err(DecodeError::PacketTooLarge { size_bytes: 258 })
    );
    // The protocol maximum against the default 1 MiB limit, from the fixed header alone.
    let mut b = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(
        decode(&mut b, &limits(), ProtocolVersion::V3_1_1),
        Err(DecodeError::PacketTooLarge { size_bytes: 268_435_460 })
    );
    let mut b = BytesMut::from(&[0x30, 0xFF, 0xFF][..]);
    assert_eq!(
        decode(&mut b, &Limits { packet_size_max_bytes: 20_000 }, ProtocolVersion::V3_1_1),
        Err(DecodeError::PacketTooLarge { size_bytes: 4 + 16_383 + 16_384 })
    );
    // Under the limit, an incomplete packet is Ok(None).
    let mut b = BytesMut::from(&[0x30, 0x0A, 0x00][..]);
    assert_eq!(decode(&mut b, &small, ProtocolVersion::V5), Ok(None));
    assert_eq!(b.len(), 3);
}

#[test]
fn remaining_length_encoding() {
    let v = ProtocolVersion::V3_1_1;
    let big = Limits { packet_size_max_bytes: 268_435_460 };
    let err = |wire: &[u8]| decode(&mut BytesMut::from(wire), &big, v);
    // Over four bytes.
    assert_eq!(err(&[0xE0, 0x80, 0x80, 0x80, 0x80]), Err(DecodeError::VarIntTooLong));
    assert_eq!(err(&[0xC0, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), Err(DecodeError::VarIntTooLong));
    // Overlong encodings of 0 and 1 [MQTT-1.5.5-1].
    assert_eq!(err(&[0xC0, 0x80, 0x00]), Err(DecodeError::VarIntNotMinimal));
    assert_eq!(err(&[0xC0, 0x81, 0x80, 0x00]), Err(DecodeError::VarIntNotMinimal));
    assert_decode_err(v, &[0xE0, 0x80, 0x00], DecodeError::VarIntNotMinimal);
}

#[test]
fn multi_byte_remaining_length() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: ByteStr::from("t"),
        packet_id: None,
        payload: Bytes::from(vec![7u8; 200]),
        properties: None,
    });
    let mut wire = vec![0x30, 0xCB, 0x01, 0x00, 0x01, b't'];
    wire.extend_from_slice(&[7u8; 200]);
    assert_roundtrip(ProtocolVersion::V3_1_1, &wire, p);
}

#[test]
fn publish_header_offsets() {
    let mut p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: ByteStr::from("a/b"),
        packet_id: None,
        payload: Bytes::from_static(b"hello"),
        properties: None,
    };
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut out = BytesMut::from(&b"xx"[..]);
        let at = encode_publish_header(&p, v, &mut out).unwrap();
        // Fixed header (2) + topic (2 + 3).
        assert_eq!(at, Some(7));
        assert_eq!(&out[2..][7..9], &[0, 0]);
        // Patch the id and append the payload: the same bytes as a full encode.
        let at = 2 + at.unwrap();
        out[at..at + 2].copy_from_slice(&9u16.to_be_bytes());
        out.extend_from_slice(&p.payload);
        let mut full = BytesMut::new();
        let mut q = p.clone();
        q.packet_id = Some(pid(9));
        encode(&Packet::Publish(q.clone()), v, &mut full).unwrap();
        assert_eq!(&out[2..], &full[..]);
        assert_eq!(encoded_len(&Packet::Publish(q), v), full.len());
    }
    p.qos = QoS::AtMostOnce;
    let mut out = BytesMut::new();
    assert_eq!(encode_publish_header(&p, ProtocolVersion::V5, &mut out), Ok(None));
    assert_eq!(&out[..], &[0x31, 0x0B, 0x00, 0x03, b'a', b'/', b'b', 0x00]);
}

#[test]
fn encode_errors_leave_out_unchanged() {
    let mut out = BytesMut::from(&b"keep"[..]);
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: ByteStr::from("t"),
        packet_id: None,
        payload: Bytes::new(),
        properties: None,
    };
    assert_eq!(
        encode(&Packet::Publish(p.clone()), ProtocolVersion::V5, &mut out),
        Err(EncodeError::MissingPacketId)
    );
    let long = Packet::Unsubscribe(crate::types::Unsubscribe {
        packet_id: pid(1),
        filters: vec![ByteStr::from("a"), ByteStr::from("b".repeat(70_000))],
        properties: None,
    });
    assert_eq!(encode(&long, ProtocolVersion::V5, &mut out), Err(EncodeError::FieldTooLong));
    let empty = Publish { topic: ByteStr::default(), packet_id: Some(pid(1)), ..p };
    assert_eq!(
        encode(&Packet::Publish(empty), ProtocolVersion::V3_1_1, &mut out),
        Err(EncodeError::EmptyTopic)
    );
    assert_eq!(&out[..], b"keep");
}

/// A packet with first byte `first` and `body`, with the remaining length computed (for
/// negative tests where the body is the point).
pub(crate) fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[first]);
    crate::primitives::put_varint(&mut out, u32::try_from(body.len()).unwrap()).unwrap();
    out.extend_from_slice(body);
    out.to_vec()
}

#[test]
fn errors_are_small_and_name_the_spec() {
    assert!(std::mem::size_of::<DecodeError>() <= 8);
    let samples = [
        DecodeError::PacketTooLarge { size_bytes: 1 },
        DecodeError::InvalidFixedHeaderFlags { packet_type: 8, flags: 0 },
        DecodeError::VarIntNotMinimal,
        DecodeError::Truncated,
        DecodeError::TopicNameWildcard,
        DecodeError::InvalidReasonCode { packet: PacketType::PubAck, code: 0x92 },
        DecodeError::UnsupportedProtocolLevel { level: 9 },
    ];
    for e in samples {
        let msg = e.to_string();
        assert!(msg.starts_with("[MQTT-") || msg.starts_with("[§"), "{msg}");
    }
    assert_eq!(DecodeError::Truncated.reason_code(), crate::ReasonCode::MALFORMED_PACKET);
    assert_eq!(DecodeError::DupWithQoS0.reason_code(), crate::ReasonCode::PROTOCOL_ERROR);
    assert_eq!(
        DecodeError::PacketTooLarge { size_bytes: 1 }.reason_code(),
        crate::ReasonCode::PACKET_TOO_LARGE
    );
    assert_eq!(DecodeError::TopicAliasZero.reason_code(), crate::ReasonCode::TOPIC_ALIAS_INVALID);
}

#[test]
fn size_limit_boundary() {
    // PINGREQ is 2 bytes: a limit of 2 accepts it, 1 rejects it.
    let two = Limits { packet_size_max_bytes: 2 };
    let mut b = BytesMut::from(&[0xC0, 0x00][..]);
    assert_eq!(decode(&mut b, &two, ProtocolVersion::V5), Ok(Some(Packet::PingReq)));
    let one = Limits { packet_size_max_bytes: 1 };
    let mut b = BytesMut::from(&[0xC0, 0x00][..]);
    assert_eq!(
        decode(&mut b, &one, ProtocolVersion::V5),
        Err(DecodeError::PacketTooLarge { size_bytes: 2 })
    );
}

#[test]
fn several_packets_in_one_buffer() {
    let mut b = BytesMut::from(&[0xC0, 0x00, 0xD0, 0x00, 0xE0][..]);
    let v = ProtocolVersion::V3_1_1;
    assert_eq!(decode(&mut b, &limits(), v), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut b, &limits(), v), Ok(Some(Packet::PingResp)));
    assert_eq!(decode(&mut b, &limits(), v), Ok(None));
    assert_eq!(&b[..], &[0xE0]);
    b.extend_from_slice(&[0x00]);
    assert!(matches!(decode(&mut b, &limits(), v), Ok(Some(Packet::Disconnect(_)))));
    assert!(b.is_empty());
    assert_eq!(decode(&mut b, &limits(), v), Ok(None));
}

#[test]
fn peek_connect_version_of_a_partial_connect() {
    let v5 = [0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02];
    for cut in 0..9 {
        assert_eq!(peek_connect_version(&v5[..cut]), None, "{cut}");
    }
    assert_eq!(peek_connect_version(&v5[..9]), Some(ProtocolVersion::V5));
    let v31 = [0x10, 0x80, 0x01, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03];
    assert_eq!(peek_connect_version(&v31), Some(ProtocolVersion::V3_1));
    assert_eq!(
        peek_connect_version(&[0x10, 0x0A, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04]),
        Some(ProtocolVersion::V3_1_1)
    );
    assert_eq!(peek_connect_version(&[0x10, 0x0A, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x03]), None);
    assert_eq!(peek_connect_version(&[0x30, 0x0A, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04]), None);
    assert_eq!(peek_connect_version(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), None);
}
