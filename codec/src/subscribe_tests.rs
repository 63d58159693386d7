//! Byte-literal tests of SUBSCRIBE.

use super::*;
use crate::codec::tests::{assert_decode_err, assert_roundtrip, frame, pid};
use crate::types::{ByteStr, Packet};
use crate::ProtocolVersion::{V3_1, V3_1_1, V5};

fn qos(q: QoS) -> SubscriptionOptions {
    SubscriptionOptions { qos: q, ..SubscriptionOptions::default() }
}

#[test]
fn v311() {
    #[rustfmt::skip]
    let wire = [
        0x82, 0x0C, 0x00, 0x01,
        0x00, 0x03, b'a', b'/', b'+', 0x01,
        0x00, 0x01, b'#', 0x02,
    ];
    let p = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![
            (ByteStr::from("a/+"), qos(QoS::AtLeastOnce)),
            (ByteStr::from("#"), qos(QoS::ExactlyOnce)),
        ],
        properties: None,
    });
    assert_roundtrip(V3_1_1, &wire, p.clone());
    assert_roundtrip(V3_1, &wire, p);
}

#[test]
fn v5_options_and_shared() {
    #[rustfmt::skip]
    let wire = [
        0x82, 0x16, 0x00, 0x02,
        0x02, 0x0B, 0x05, // subscription identifier 5
        0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', b'a',
        0x29, // retain handling 2, retain as published, QoS 1
        0x00, 0x01, b'x',
        0x06, // no local, QoS 2
    ];
    let p = Packet::Subscribe(Subscribe {
        packet_id: pid(2),
        filters: vec![
            (
                ByteStr::from("$share/g/a"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            ),
            (
                ByteStr::from("x"),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendAtSubscribe,
                },
            ),
        ],
        properties: Some(Box::new(Properties {
            subscription_identifiers: vec![5],
            ..Properties::default()
        })),
    });
    assert_roundtrip(V5, &wire, p);
}

#[test]
fn v3_encoding_writes_only_the_qos() {
    let p = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![(
            ByteStr::from("a"),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::SendIfNew,
            },
        )],
        properties: None,
    });
    let mut out = BytesMut::new();
    crate::encode(&p, V3_1_1, &mut out).unwrap();
    assert_eq!(&out[..], &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x01]);
}

/// A SUBSCRIBE with packet id 1, 5.0 properties `props` (if any) and one `filter` with
/// `options`.
fn sub(props: Option<&[u8]>, filter: &[u8], options: u8) -> Vec<u8> {
    let mut b = vec![0x00, 0x01];
    if let Some(props) = props {
        b.push(props.len() as u8);
        b.extend_from_slice(props);
    }
    b.extend_from_slice(&[0x00, filter.len() as u8]);
    b.extend_from_slice(filter);
    b.push(options);
    frame(0x82, &b)
}

#[test]
fn header_and_payload_invalid() {
    assert_decode_err(
        V3_1_1,
        &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
        DecodeError::InvalidFixedHeaderFlags { packet_type: 8, flags: 0 },
    );
    assert_decode_err(V3_1_1, &[0x82, 0x02, 0x00, 0x01], DecodeError::SubscribeNoFilters);
    assert_decode_err(V5, &[0x82, 0x03, 0x00, 0x01, 0x00], DecodeError::SubscribeNoFilters);
    assert_decode_err(
        V3_1_1,
        &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
        DecodeError::PacketIdZero,
    );
    // A filter without its options byte.
    assert_decode_err(V3_1_1, &[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], DecodeError::Truncated);
}

#[test]
fn options_invalid() {
    use DecodeError::*;
    // 3.1.1: bits 2-7 reserved [MQTT-3-8.3-4].
    for o in [0x04, 0x08, 0x10, 0x80] {
        assert_decode_err(V3_1_1, &sub(None, b"a", o), SubscriptionOptionsReserved);
    }
    assert_decode_err(V3_1_1, &sub(None, b"a", 0x03), SubscriptionQoSInvalid);
    // 5.0: bits 6-7 reserved [MQTT-3.8.3-5].
    assert_decode_err(V5, &sub(Some(&[]), b"a", 0x40), SubscriptionOptionsReserved);
    assert_decode_err(V5, &sub(Some(&[]), b"a", 0x80), SubscriptionOptionsReserved);
    assert_decode_err(V5, &sub(Some(&[]), b"a", 0x03), SubscriptionQoSInvalid);
    assert_decode_err(V5, &sub(Some(&[]), b"a", 0x30), RetainHandlingInvalid);
    assert_decode_err(V5, &sub(Some(&[]), b"$share/g/a", 0x04), NoLocalOnSharedSubscription);
}

#[test]
fn filters_invalid() {
    use DecodeError::*;
    for v in [V3_1_1, V5] {
        let props: Option<&[u8]> = if v.is_v5() { Some(&[]) } else { None };
        assert_decode_err(v, &sub(props, b"", 0), TopicFilterEmpty);
        assert_decode_err(v, &sub(props, b"a/#/b", 0), TopicFilterMultiLevelWildcard);
        assert_decode_err(v, &sub(props, b"a#", 0), TopicFilterMultiLevelWildcard);
        assert_decode_err(v, &sub(props, b"a+/b", 0), TopicFilterSingleLevelWildcard);
        assert_decode_err(v, &sub(props, b"a/\0", 0), Utf8Null);
    }
    let v5 = Some(&[][..]);
    assert_decode_err(V5, &sub(v5, b"$share//a", 0), SharedNameEmpty);
    assert_decode_err(V5, &sub(v5, b"$share/", 0), SharedNameEmpty);
    assert_decode_err(V5, &sub(v5, b"$share/g+/a", 0), SharedNameInvalid);
    assert_decode_err(V5, &sub(v5, b"$share/g", 0), SharedFilterMissing);
    assert_decode_err(V5, &sub(v5, b"$share/g/", 0), SharedFilterMissing);
    assert_eq!(SharedNameEmpty.reason_code(), crate::ReasonCode::TOPIC_FILTER_INVALID);
    // Before 5.0 `$share/...` is an ordinary filter.
    let p = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![(ByteStr::from("$share//a"), qos(QoS::AtMostOnce))],
        properties: None,
    });
    assert_roundtrip(V3_1_1, &sub(None, b"$share//a", 0), p);
}

#[test]
fn properties_invalid() {
    use DecodeError::*;
    assert_decode_err(V5, &sub(Some(&[0x0B, 0x00]), b"a", 0), SubscriptionIdentifierZero);
    assert_decode_err(
        V5,
        &sub(Some(&[0x0B, 0x01, 0x0B, 0x02]), b"a", 0),
        DuplicateProperty { id: 0x0B },
    );
    assert_decode_err(
        V5,
        &sub(Some(&[0x0B, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), b"a", 0),
        VarIntTooLong,
    );
    assert_decode_err(
        V5,
        &sub(Some(&[0x23, 0x00, 0x01]), b"a", 0),
        PropertyNotAllowed { id: 0x23 },
    );
}
