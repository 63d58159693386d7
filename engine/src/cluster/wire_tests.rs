use super::*;
use crate::cluster::wire_move::{MoveFrame, ReplyStatus};

use proptest::prelude::*;
use shardmq_codec::Properties;

fn publish(qos: QoS, retain: bool, props: bool) -> Publish {
    let properties = props.then(|| {
        Box::new(Properties {
            content_type: Some(ByteStr::from_static("text/plain")),
            message_expiry_interval_secs: Some(30),
            user_properties: vec![(ByteStr::from_static("k"), ByteStr::from_static("v"))],
            ..Properties::default()
        })
    });
    Publish {
        dup: false,
        qos,
        retain,
        topic: ByteStr::from_static("a/b"),
        packet_id: (qos != QoS::AtMostOnce).then(|| PacketId::new(1).unwrap()),
        payload: Bytes::from_static(b"hello"),
        properties,
    }
}

fn every_kind() -> Vec<Frame> {
    let stamp = Stamp { ms: 0x0102_0304_0506, counter: 7, node: 3 };
    vec![
        Frame::Hello {
            version: PROTOCOL_VERSION,
            node: NodeId(5),
            boot_id: u64::MAX - 1,
            shard_count: 4,
            clock_ms: 99,
        },
        Frame::Publish {
            origin_shard: 2,
            age_ms: 17,
            publish: publish(QoS::AtMostOnce, false, false),
        },
        Frame::Publish {
            origin_shard: 0,
            age_ms: 0,
            publish: publish(QoS::ExactlyOnce, true, true),
        },
        Frame::Route { seq: 9, added: true, filter: ByteStr::from_static("a/+/#") },
        Frame::Route { seq: 10, added: false, filter: ByteStr::from_static("") },
        Frame::RouteAck { seq: 10 },
        Frame::RoutesReset { seq: 11 },
        Frame::RoutesDone { seq: 11 },
        Frame::Resync,
        Frame::Register { stamp, client_id: ByteStr::from_static("c1"), shard: 1, token: 42 },
        Frame::Unregister { stamp, client_id: ByteStr::from_static("c1"), shard: 1, token: 42 },
        Frame::Kick {
            stamp,
            client_id: ByteStr::from_static("ü"),
            shard: 0,
            token: 1,
            by: NodeId(3),
        },
        Frame::PublishShared {
            origin_shard: 1,
            age_ms: 3,
            group: ByteStr::from_static("$share/g/a/#"),
            publish: publish(QoS::AtLeastOnce, false, true),
        },
        Frame::Move(MoveFrame::ClaimReq {
            shard: 2,
            token: 5,
            client_id: ByteStr::from_static("c"),
            discard: true,
        }),
        Frame::Move(MoveFrame::ClaimReply {
            shard: 2,
            token: 5,
            status: ReplyStatus::None,
            parts: 0,
            body: Bytes::new(),
        }),
        Frame::Move(MoveFrame::ClaimReply {
            shard: 2,
            token: 6,
            status: ReplyStatus::Session,
            parts: 3,
            body: Bytes::from_static(b"\x01\x02"),
        }),
        Frame::Move(MoveFrame::SessionPart {
            shard: 1,
            token: 6,
            index: 2,
            body: Bytes::from_static(b"\x03"),
        }),
        Frame::Move(MoveFrame::ClaimAbort { shard: 1, token: 7 }),
        Frame::Move(MoveFrame::Commit { shard: 1, token: 8 }),
        Frame::Move(MoveFrame::Handover {
            shard: 1,
            token: 8,
            moved: true,
            parts: 0,
            body: Bytes::from_static(b"x"),
        }),
        Frame::Move(MoveFrame::Handover {
            shard: 1,
            token: 9,
            moved: false,
            parts: 0,
            body: Bytes::new(),
        }),
        Frame::Move(MoveFrame::HandoverAck { shard: 1, token: 8 }),
        Frame::Move(MoveFrame::Offer { client_id: ByteStr::from_static("o") }),
    ]
}

#[test]
fn every_kind_round_trips_through_split_and_decode() {
    let mut buf = BytesMut::new();
    for f in every_kind() {
        buf.extend_from_slice(&f.encode().unwrap());
    }
    for f in every_kind() {
        let body = split_frame(&mut buf).unwrap().expect("whole frame buffered");
        assert_eq!(decode(&body).unwrap(), f);
    }
    assert!(buf.is_empty());
}

#[test]
fn byte_literals() {
    let f = Frame::RouteAck { seq: 0x0102 }.encode().unwrap();
    assert_eq!(&f[..], &[0, 0, 0, 9, 4, 0, 0, 0, 0, 0, 0, 1, 2]);
    let f =
        Frame::Route { seq: 1, added: true, filter: ByteStr::from_static("x") }.encode().unwrap();
    assert_eq!(&f[..], &[0, 0, 0, 13, 3, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, b'x']);
    assert_eq!(&Frame::Resync.encode().unwrap()[..], &[0, 0, 0, 1, 10]);
}

#[test]
fn split_waits_for_the_whole_frame_and_checks_the_length_first() {
    let whole = Frame::RouteAck { seq: 1 }.encode().unwrap();
    let mut buf = BytesMut::new();
    for b in &whole[..whole.len() - 1] {
        buf.extend_from_slice(&[*b]);
        assert_eq!(split_frame(&mut buf), Ok(None));
    }
    buf.extend_from_slice(&whole[whole.len() - 1..]);
    assert!(split_frame(&mut buf).unwrap().is_some());

    // A declared length past the limit is refused from the prefix alone.
    let mut big = BytesMut::from(&((FRAME_SIZE_MAX_BYTES as u32 + 1).to_be_bytes())[..]);
    assert_eq!(
        split_frame(&mut big),
        Err(WireError::TooLarge { size_bytes: FRAME_SIZE_MAX_BYTES as u64 + 1 })
    );
    let mut zero = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert_eq!(split_frame(&mut zero), Err(WireError::Empty));
}

#[test]
fn malformed_frames_are_errors() {
    assert_eq!(decode(&[]), Err(WireError::Empty));
    assert_eq!(decode(&[99]), Err(WireError::UnknownKind(99)));
    assert_eq!(decode(&[4, 0, 0]), Err(WireError::Truncated("seq")));
    assert_eq!(decode(&[4, 0, 0, 0, 0, 0, 0, 0, 1, 0]), Err(WireError::Trailing("route control")));
    assert_eq!(decode(&[10, 0]), Err(WireError::Trailing("Resync")));
    // Route with added = 2.
    assert_eq!(
        decode(&[3, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0]),
        Err(WireError::Invalid("route added"))
    );
    // Route filter that is not UTF-8, and one with U+0000.
    assert_eq!(
        decode(&[3, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0xff]),
        Err(WireError::Invalid("route filter"))
    );
    assert_eq!(
        decode(&[3, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0]),
        Err(WireError::Invalid("route filter"))
    );
    // A string longer than the frame.
    assert_eq!(
        decode(&[3, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 9, b'a']),
        Err(WireError::Truncated("route filter"))
    );
}

#[test]
fn malformed_publish_frames_are_errors() {
    let good = Frame::Publish {
        origin_shard: 1,
        age_ms: 2,
        publish: publish(QoS::AtLeastOnce, false, true),
    }
    .encode()
    .unwrap();
    let body = &good[LENGTH_PREFIX_BYTES..];
    // Cut short inside the packet.
    assert!(decode(&body[..body.len() - 1]).is_err());
    // A byte after the packet.
    let mut longer = body.to_vec();
    longer.push(0);
    assert!(decode(&longer).is_err());
    // A packet that is not a PUBLISH (a PINGREQ).
    let mut ping = body[..7].to_vec();
    ping.extend_from_slice(&[0xC0, 0]);
    assert_eq!(decode(&ping), Err(WireError::Invalid("not a PUBLISH packet")));
    // A PUBLISH with a wildcard in its topic [MQTT-3.3.2-2].
    let mut wild = body.to_vec();
    let topic_at = 7 + 2 + 2; // kind, shard, age; fixed header; topic length
    wild[topic_at] = b'+';
    assert!(matches!(decode(&wild), Err(WireError::Publish(_))));
}

#[test]
fn a_publish_frame_becomes_a_remote_message_of_the_same_age() {
    let msg = Message {
        topic: ByteStr::from_static("t/1"),
        payload: Bytes::from_static(b"payload"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: publish(QoS::AtMostOnce, false, true).properties,
        origin: Origin { shard: ShardId(3), session: 5 },
        received_at_ms: 1000,
    };
    let frame = encode_publish(&msg, ShardId(3), 250).unwrap();
    let Frame::Publish { origin_shard, age_ms, publish } =
        decode(&frame[LENGTH_PREFIX_BYTES..]).unwrap()
    else {
        panic!("not a Publish frame");
    };
    assert_eq!((origin_shard, age_ms), (3, 250));
    let got = publish_message(publish, age_ms, 10_000);
    assert_eq!(got.origin, Origin::REMOTE);
    assert_eq!(got.received_at_ms, 9_750);
    assert_eq!(
        (&got.topic, &got.payload, got.qos, got.retain, &got.properties),
        (&msg.topic, &msg.payload, msg.qos, msg.retain, &msg.properties)
    );
    // An age older than the receiver's uptime saturates at 0.
    assert_eq!(publish_message(publish_for_age(), 500, 100).received_at_ms, 0);
}

fn publish_for_age() -> Publish {
    publish(QoS::AtMostOnce, false, false)
}

#[test]
fn a_message_past_the_frame_limit_is_not_encoded() {
    let msg = Message {
        topic: ByteStr::from_static("t"),
        payload: Bytes::from(vec![0u8; FRAME_SIZE_MAX_BYTES]),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: None,
        origin: Origin { shard: ShardId(0), session: 0 },
        received_at_ms: 0,
    };
    assert!(encode_publish(&msg, ShardId(0), 0).is_none());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes never panic the decoder or the splitter.
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode(&data);
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(f)) = split_frame(&mut buf) {
            let _ = decode(&f);
        }
    }

    /// A valid frame with one byte changed never panics either, and a frame that decodes
    /// re-encodes to the same bytes.
    #[test]
    fn mutated_frames_never_panic(i in 0usize..16, at in any::<usize>(), byte in any::<u8>()) {
        let good = every_kind()[i].encode().unwrap();
        let mut body = good[LENGTH_PREFIX_BYTES..].to_vec();
        let at = at % body.len();
        body[at] = byte;
        if let Ok(f) = decode(&body) {
            if let Some(again) = f.encode() {
                prop_assert_eq!(&again[LENGTH_PREFIX_BYTES..], &body[..]);
            }
        }
    }
}
