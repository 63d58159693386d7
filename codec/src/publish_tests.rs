//! Byte-literal tests of PUBLISH.

use bytes::Bytes;

use super::*;
use crate::codec::tests::{assert_decode_err, assert_roundtrip, frame, pid};
use crate::types::{ByteStr, Packet};
use crate::ProtocolVersion::{V3_1, V3_1_1, V5};

fn publish(qos: QoS, topic: &str, packet_id: Option<u16>, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteStr::from(topic),
        packet_id: packet_id.map(pid),
        payload: Bytes::from_static(payload),
        properties: None,
    }
}

#[test]
fn v311_qos0() {
    let wire = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
    let p = publish(QoS::AtMostOnce, "a/b", None, b"hi");
    assert_roundtrip(V3_1_1, &wire, Packet::Publish(p.clone()));
    assert_roundtrip(V3_1, &wire, Packet::Publish(p));
}

#[test]
fn v311_qos1_dup_retain() {
    let wire = [0x3B, 0x08, 0x00, 0x01, b't', 0x00, 0x0A, b'x', b'y', b'z'];
    let p = Publish { dup: true, retain: true, ..publish(QoS::AtLeastOnce, "t", Some(10), b"xyz") };
    assert_roundtrip(V3_1_1, &wire, Packet::Publish(p));
}

#[test]
fn v311_qos2_empty_payload() {
    let wire = [0x34, 0x05, 0x00, 0x01, b't', 0x00, 0x02];
    assert_roundtrip(V3_1_1, &wire, Packet::Publish(publish(QoS::ExactlyOnce, "t", Some(2), b"")));
}

#[test]
fn payload_is_a_slice_of_the_input() {
    let mut buf = BytesMut::from(&[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'][..]);
    let Some(Packet::Publish(p)) = crate::decode(&mut buf, &Default::default(), V3_1_1).unwrap()
    else {
        panic!("not a PUBLISH")
    };
    // The topic and the payload share one allocation: the payload follows the topic.
    let topic_end = p.topic.as_bytes().as_ptr() as usize + p.topic.len();
    assert_eq!(p.payload.as_ptr() as usize, topic_end);
}

#[test]
fn v5_no_properties() {
    let wire = [0x30, 0x04, 0x00, 0x01, b't', 0x00];
    assert_roundtrip(V5, &wire, Packet::Publish(publish(QoS::AtMostOnce, "t", None, b"")));
}

#[test]
fn v5_every_publish_property() {
    #[rustfmt::skip]
    let wire = [
        0x32, 0x2A,
        0x00, 0x01, b't', 0x00, 0x01,
        0x22,
        0x01, 0x01, // payload format indicator
        0x02, 0x00, 0x00, 0x00, 0x3C, // message expiry interval
        0x03, 0x00, 0x01, b'c', // content type
        0x08, 0x00, 0x01, b'r', // response topic
        0x09, 0x00, 0x01, 0xAA, // correlation data
        0x0B, 0x01, // subscription identifier 1
        0x0B, 0x80, 0x01, // subscription identifier 128
        0x23, 0x00, 0x05, // topic alias
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
        b'o', b'k',
    ];
    let p = Publish {
        properties: Some(Box::new(Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval_secs: Some(60),
            content_type: Some(ByteStr::from("c")),
            response_topic: Some(ByteStr::from("r")),
            correlation_data: Some(Bytes::from_static(&[0xAA])),
            subscription_identifiers: vec![1, 128],
            topic_alias: Some(5),
            user_properties: vec![(ByteStr::from("k"), ByteStr::from("v"))],
            ..Properties::default()
        })),
        ..publish(QoS::AtLeastOnce, "t", Some(1), b"ok")
    };
    assert_roundtrip(V5, &wire, Packet::Publish(p));
}

#[test]
fn v5_empty_topic_with_alias() {
    let wire = [0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01, b'p'];
    let p = Publish {
        properties: Some(Box::new(Properties { topic_alias: Some(1), ..Properties::default() })),
        ..publish(QoS::AtMostOnce, "", None, b"p")
    };
    assert_roundtrip(V5, &wire, Packet::Publish(p));
}

#[test]
fn flags_invalid() {
    assert_decode_err(V3_1_1, &[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01], DecodeError::InvalidQoS);
    assert_decode_err(V5, &[0x37, 0x03, 0x00, 0x01, b't'], DecodeError::InvalidQoS);
    assert_decode_err(V3_1_1, &[0x38, 0x03, 0x00, 0x01, b't'], DecodeError::DupWithQoS0);
    assert_decode_err(V5, &[0x39, 0x04, 0x00, 0x01, b't', 0x00], DecodeError::DupWithQoS0);
}

#[test]
fn packet_id_invalid() {
    assert_decode_err(
        V3_1_1,
        &[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00],
        DecodeError::PacketIdZero,
    );
    assert_decode_err(
        V3_1_1,
        &[0x34, 0x05, 0x00, 0x01, b't', 0x00, 0x00],
        DecodeError::PacketIdZero,
    );
    // QoS 1 without room for a packet id.
    assert_decode_err(V3_1_1, &[0x32, 0x03, 0x00, 0x01, b't'], DecodeError::Truncated);
    assert_decode_err(V3_1_1, &[0x32, 0x04, 0x00, 0x01, b't', 0x01], DecodeError::Truncated);
}

#[test]
fn topic_invalid() {
    let t = |topic: &[u8]| {
        let mut b = vec![0x00, topic.len() as u8];
        b.extend_from_slice(topic);
        frame(0x30, &b)
    };
    assert_decode_err(V3_1_1, &t(b"a/+"), DecodeError::TopicNameWildcard);
    assert_decode_err(V3_1_1, &t(b"#"), DecodeError::TopicNameWildcard);
    assert_decode_err(V3_1_1, &t(b"a\0"), DecodeError::Utf8Null);
    assert_decode_err(V3_1_1, &t(b"\xED\xA0\x80"), DecodeError::InvalidUtf8);
    assert_decode_err(V3_1_1, &t(b""), DecodeError::TopicNameEmpty);
    assert_decode_err(V3_1_1, &[0x30, 0x03, 0x00, 0x05, b'a'], DecodeError::Truncated);
    // 5.0: empty without a Topic Alias.
    assert_decode_err(V5, &[0x30, 0x03, 0x00, 0x00, 0x00], DecodeError::TopicNameEmpty);
    assert_decode_err(
        V5,
        &[0x30, 0x06, 0x00, 0x00, 0x02, 0x01, 0x00, b'x'],
        DecodeError::TopicNameEmpty,
    );
    assert_eq!(DecodeError::TopicNameWildcard.reason_code(), crate::ReasonCode::TOPIC_NAME_INVALID);
}

/// A 5.0 QoS 0 PUBLISH to "t" with property block `props` and `payload`.
fn v5(props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0x00, 0x01, b't', props.len() as u8];
    b.extend_from_slice(props);
    b.extend_from_slice(payload);
    frame(0x30, &b)
}

#[test]
fn v5_properties_invalid() {
    assert_decode_err(V5, &v5(&[0x23, 0x00, 0x00], b""), DecodeError::TopicAliasZero);
    assert_decode_err(
        V5,
        &v5(&[0x23, 0x00, 0x01, 0x23, 0x00, 0x02], b""),
        DecodeError::DuplicateProperty { id: 0x23 },
    );
    assert_decode_err(V5, &v5(&[0x0B, 0x00], b""), DecodeError::SubscriptionIdentifierZero);
    assert_decode_err(V5, &v5(&[0x0B, 0x80, 0x00], b""), DecodeError::VarIntNotMinimal);
    assert_decode_err(V5, &v5(&[0x01, 0x02], b""), DecodeError::InvalidPropertyValue { id: 0x01 });
    assert_decode_err(V5, &v5(&[0x01, 0x01], b"\xFF"), DecodeError::PayloadFormatInvalid);
    assert_decode_err(
        V5,
        &v5(&[0x08, 0x00, 0x03, b'r', b'/', b'#'], b""),
        DecodeError::ResponseTopicInvalid,
    );
    assert_decode_err(V5, &v5(&[0x08, 0x00, 0x00], b""), DecodeError::ResponseTopicInvalid);
    assert_decode_err(
        V5,
        &v5(&[0x11, 0x00, 0x00, 0x00, 0x00], b""),
        DecodeError::PropertyNotAllowed { id: 0x11 },
    );
    assert_decode_err(
        V5,
        &v5(&[0x1F, 0x00, 0x00], b""),
        DecodeError::PropertyNotAllowed { id: 0x1F },
    );
    assert_decode_err(V5, &v5(&[0x00], b""), DecodeError::UnknownProperty { id: 0 });
    // A property runs past the end of the block.
    assert_decode_err(V5, &v5(&[0x02, 0x00, 0x00], b"\x00\x00"), DecodeError::Truncated);
    // A property length longer than the packet.
    assert_decode_err(V5, &[0x30, 0x05, 0x00, 0x01, b't', 0x09, 0x01], DecodeError::Truncated);
    // Non-minimal property length.
    assert_decode_err(
        V5,
        &[0x30, 0x05, 0x00, 0x01, b't', 0x80, 0x00],
        DecodeError::VarIntNotMinimal,
    );
}

#[test]
fn v3_does_not_read_properties() {
    // The byte after the topic of a 3.1.1 QoS 0 PUBLISH is payload.
    let wire = [0x30, 0x05, 0x00, 0x01, b't', 0x02, 0x01];
    assert_roundtrip(
        V3_1_1,
        &wire,
        Packet::Publish(publish(QoS::AtMostOnce, "t", None, &[0x02, 0x01])),
    );
}

#[test]
fn v3_encoding_drops_properties() {
    let p = Publish {
        properties: Some(Box::new(Properties {
            message_expiry_interval_secs: Some(1),
            ..Properties::default()
        })),
        ..publish(QoS::AtMostOnce, "t", None, b"x")
    };
    let mut out = BytesMut::new();
    crate::encode(&Packet::Publish(p), V3_1_1, &mut out).unwrap();
    assert_eq!(&out[..], &[0x30, 0x04, 0x00, 0x01, b't', b'x']);
}

#[test]
fn encode_rejects_properties_not_allowed() {
    let p = Publish {
        properties: Some(Box::new(Properties {
            receive_maximum: Some(1),
            ..Properties::default()
        })),
        ..publish(QoS::AtMostOnce, "t", None, b"x")
    };
    let mut out = BytesMut::new();
    assert_eq!(
        crate::encode(&Packet::Publish(p), V5, &mut out),
        Err(EncodeError::PropertyNotAllowed { id: 0x21 })
    );
    assert!(out.is_empty());
}
