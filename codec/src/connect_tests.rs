//! Byte-literal tests of CONNECT.

use bytes::Bytes;

use super::*;
use crate::codec::tests::{assert_decode_err, assert_roundtrip, frame};
use crate::types::{ByteStr, Packet};
use crate::ProtocolVersion::{V3_1, V3_1_1, V5};

fn connect(protocol: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive_secs: 60,
        client_id: ByteStr::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

#[test]
fn v311_minimal() {
    #[rustfmt::skip]
    let wire = [
        0x10, 0x0D,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C,
        0x00, 0x01, b'c',
    ];
    assert_roundtrip(V3_1_1, &wire, Packet::Connect(Box::new(connect(V3_1_1, "c"))));
    // CONNECT is decoded by its own level, whatever the connection's version.
    assert_roundtrip(V5, &wire, Packet::Connect(Box::new(connect(V3_1_1, "c"))));
}

#[test]
fn v311_will_username_password() {
    #[rustfmt::skip]
    let wire = [
        0x10, 0x1F,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04,
        0xEE, // user name, password, will retain, will QoS 1, will, clean session
        0x00, 0x3C,
        0x00, 0x03, b'c', b'i', b'd',
        0x00, 0x03, b'a', b'/', b'b',
        0x00, 0x02, b'h', b'i',
        0x00, 0x01, b'u',
        0x00, 0x02, 0x01, 0x02,
    ];
    let c = Connect {
        will: Some(Will {
            topic: ByteStr::from("a/b"),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some(ByteStr::from("u")),
        password: Some(Bytes::from_static(&[1, 2])),
        ..connect(V3_1_1, "cid")
    };
    assert_roundtrip(V3_1_1, &wire, Packet::Connect(Box::new(c)));
}

#[test]
fn v31() {
    #[rustfmt::skip]
    let wire = [
        0x10, 0x11,
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x0A,
        0x00, 0x03, b'c', b'3', b'1',
    ];
    let c = Connect { keep_alive_secs: 10, ..connect(V3_1, "c31") };
    assert_roundtrip(V3_1, &wire, Packet::Connect(Box::new(c)));
}

#[test]
fn v31_long_client_id_is_left_to_the_engine() {
    let id = "a-client-identifier-longer-than-23-bytes";
    let mut body = b"\x00\x06MQIsdp\x03\x02\x00\x0A".to_vec();
    body.extend_from_slice(&[0, id.len() as u8]);
    body.extend_from_slice(id.as_bytes());
    let c = Connect { keep_alive_secs: 10, ..connect(V3_1, id) };
    assert_roundtrip(V3_1, &frame(0x10, &body), Packet::Connect(Box::new(c)));
}

#[test]
fn v5_properties_and_will_properties() {
    #[rustfmt::skip]
    let wire = [
        0x10, 0x2E,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05,
        0x86, // user name, will, clean start
        0x00, 0x1E,
        0x0F,
        0x11, 0x00, 0x00, 0x00, 0x0A, // session expiry interval 10
        0x21, 0x00, 0x05, // receive maximum 5
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b', // user property
        0x00, 0x00, // empty client id
        0x07,
        0x01, 0x01, // payload format indicator: UTF-8
        0x18, 0x00, 0x00, 0x00, 0x05, // will delay interval 5
        0x00, 0x01, b't',
        0x00, 0x02, b'o', b'k',
        0x00, 0x01, b'u',
    ];
    let c = Connect {
        keep_alive_secs: 30,
        will: Some(Will {
            topic: ByteStr::from("t"),
            payload: Bytes::from_static(b"ok"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties {
                payload_format_indicator: Some(1),
                will_delay_interval_secs: Some(5),
                ..Properties::default()
            },
        }),
        username: Some(ByteStr::from("u")),
        properties: Properties {
            session_expiry_interval_secs: Some(10),
            receive_maximum: Some(5),
            user_properties: vec![(ByteStr::from("a"), ByteStr::from("b"))],
            ..Properties::default()
        },
        ..connect(V5, "")
    };
    assert_roundtrip(V5, &wire, Packet::Connect(Box::new(c)));
}

#[test]
fn v5_password_without_username_is_allowed() {
    #[rustfmt::skip]
    let wire = [
        0x10, 0x11,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x42, 0x00, 0x00, 0x00,
        0x00, 0x01, b'x',
        0x00, 0x01, b'p',
    ];
    let c = Connect {
        keep_alive_secs: 0,
        password: Some(Bytes::from_static(b"p")),
        ..connect(V5, "x")
    };
    assert_roundtrip(V5, &wire, Packet::Connect(Box::new(c.clone())));
    // Before 5.0 it cannot be expressed: encoding drops the password.
    let mut out = BytesMut::new();
    let c311 = Connect { protocol: V3_1_1, ..c };
    crate::encode(&Packet::Connect(Box::new(c311)), V3_1_1, &mut out).unwrap();
    assert_eq!(out[9], 0x02, "flags: clean session only");
}

/// A 3.1.1 CONNECT with `flags` and `payload` after the keep alive.
fn v311(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = b"\x00\x04MQTT\x04".to_vec();
    body.push(flags);
    body.extend_from_slice(&[0x00, 0x3C]);
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

/// A 5.0 CONNECT with `flags`, the property block `props` and `payload`.
fn v5(flags: u8, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = b"\x00\x04MQTT\x05".to_vec();
    body.push(flags);
    body.extend_from_slice(&[0x00, 0x3C]);
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

#[test]
fn flags_invalid() {
    let id = b"\x00\x01c";
    assert_decode_err(V3_1_1, &v311(0x03, id), DecodeError::ConnectReservedFlag);
    assert_decode_err(V3_1_1, &v311(0x08, id), DecodeError::WillQoSWithoutWill);
    assert_decode_err(V3_1_1, &v311(0x10, id), DecodeError::WillQoSWithoutWill);
    assert_decode_err(V3_1_1, &v311(0x20, id), DecodeError::WillRetainWithoutWill);
    assert_decode_err(
        V3_1_1,
        &v311(0x1C, b"\x00\x01c\x00\x01t\x00\x00"),
        DecodeError::WillQoSInvalid,
    );
    assert_decode_err(
        V3_1_1,
        &v311(0x42, b"\x00\x01c\x00\x01p"),
        DecodeError::PasswordWithoutUsername,
    );
    assert_decode_err(V5, &v5(0x01, &[], id), DecodeError::ConnectReservedFlag);
    assert_decode_err(V5, &v5(0x28, &[], id), DecodeError::WillQoSWithoutWill);
}

#[test]
fn protocol_name_and_level() {
    let body = |name: &[u8], level: u8| {
        let mut b = vec![0x00, name.len() as u8];
        b.extend_from_slice(name);
        b.extend_from_slice(&[level, 0x02, 0x00, 0x3C, 0x00, 0x01, b'c']);
        frame(0x10, &b)
    };
    assert_decode_err(V3_1_1, &body(b"MQTT", 3), DecodeError::ProtocolNameInvalid);
    assert_decode_err(V3_1_1, &body(b"MQIsdp", 4), DecodeError::ProtocolNameInvalid);
    assert_decode_err(V3_1_1, &body(b"MQIsdp", 5), DecodeError::ProtocolNameInvalid);
    assert_decode_err(V3_1_1, &body(b"HTTP", 4), DecodeError::ProtocolNameInvalid);
    assert_decode_err(V3_1_1, &body(b"mqtt", 4), DecodeError::ProtocolNameInvalid);
    assert_decode_err(
        V3_1_1,
        &body(b"MQTT", 6),
        DecodeError::UnsupportedProtocolLevel { level: 6 },
    );
    assert_decode_err(
        V3_1_1,
        &body(b"MQTT", 0x85),
        DecodeError::UnsupportedProtocolLevel { level: 0x85 },
    );
    // The bridge bit (Mosquitto's try_private) on 3.1 / 3.1.1 only.
    assert_decode_err(V3_1_1, &body(b"MQTT", 0x83), DecodeError::ProtocolNameInvalid);
    let bridged = body(b"MQTT", 0x84);
    assert!(crate::peek_connect_bridge(&bridged));
    assert_eq!(crate::peek_connect_version(&bridged), Some(V3_1_1));
    let mut buf = bytes::BytesMut::from(&bridged[..]);
    let limits = crate::Limits::default();
    match crate::decode(&mut buf, &limits, V3_1_1) {
        Ok(Some(crate::Packet::Connect(c))) => assert_eq!(c.protocol, V3_1_1),
        other => panic!("{other:?}"),
    }
    assert!(!crate::peek_connect_bridge(&body(b"MQTT", 4)));
    assert!(!crate::peek_connect_bridge(&body(b"MQTT", 5)));
    assert_eq!(
        DecodeError::UnsupportedProtocolLevel { level: 6 }.reason_code(),
        crate::ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );
}

#[test]
fn will_topic_invalid() {
    assert_decode_err(
        V3_1_1,
        &v311(0x06, b"\x00\x01c\x00\x03a/#\x00\x00"),
        DecodeError::TopicNameWildcard,
    );
    assert_decode_err(
        V3_1_1,
        &v311(0x06, b"\x00\x01c\x00\x00\x00\x00"),
        DecodeError::TopicNameEmpty,
    );
}

#[test]
fn strings_invalid() {
    assert_decode_err(V3_1_1, &v311(0x02, b"\x00\x02c\x00"), DecodeError::Utf8Null);
    assert_decode_err(V3_1_1, &v311(0x02, b"\x00\x03\xED\xA0\x80"), DecodeError::InvalidUtf8);
    assert_decode_err(V3_1_1, &v311(0x82, b"\x00\x01c\x00\x01\xFF"), DecodeError::InvalidUtf8);
    assert_decode_err(V3_1_1, &v311(0x02, b"\x00\x02c"), DecodeError::Truncated);
    assert_decode_err(V3_1_1, &v311(0x02, b"\x00\x01cX"), DecodeError::TrailingBytes);
    // User name flag without a user name.
    assert_decode_err(V3_1_1, &v311(0x82, b"\x00\x01c"), DecodeError::Truncated);
}

#[test]
fn v5_properties_invalid() {
    let id = b"\x00\x01c";
    // Topic Alias is a PUBLISH property.
    assert_decode_err(
        V5,
        &v5(0x02, &[0x23, 0x00, 0x01], id),
        DecodeError::PropertyNotAllowed { id: 0x23 },
    );
    assert_decode_err(
        V5,
        &v5(0x02, &[0x21, 0x00, 0x00], id),
        DecodeError::InvalidPropertyValue { id: 0x21 },
    );
    assert_decode_err(
        V5,
        &v5(0x02, &[0x27, 0x00, 0x00, 0x00, 0x00], id),
        DecodeError::InvalidPropertyValue { id: 0x27 },
    );
    assert_decode_err(
        V5,
        &v5(0x02, &[0x17, 0x02], id),
        DecodeError::InvalidPropertyValue { id: 0x17 },
    );
    assert_decode_err(
        V5,
        &v5(0x02, &[0x19, 0x01, 0x19, 0x01], id),
        DecodeError::DuplicateProperty { id: 0x19 },
    );
    assert_decode_err(V5, &v5(0x02, &[0x16, 0x00, 0x00], id), DecodeError::AuthDataWithoutMethod);
    // Session Expiry Interval is not a will property.
    assert_decode_err(
        V5,
        &v5(0x06, &[], b"\x00\x01c\x05\x11\x00\x00\x00\x01\x00\x01t\x00\x00"),
        DecodeError::PropertyNotAllowed { id: 0x11 },
    );
    // Will Delay Interval is not a CONNECT property.
    assert_decode_err(
        V5,
        &v5(0x02, &[0x18, 0x00, 0x00, 0x00, 0x01], id),
        DecodeError::PropertyNotAllowed { id: 0x18 },
    );
    // A will payload declared UTF-8 that is not.
    assert_decode_err(
        V5,
        &v5(0x06, &[], b"\x00\x01c\x02\x01\x01\x00\x01t\x00\x01\xFF"),
        DecodeError::PayloadFormatInvalid,
    );
}
