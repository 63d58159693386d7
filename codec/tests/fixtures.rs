//! Fixtures recorded from real clients (mosquitto_pub, mosquitto_sub, paho-mqtt; see
//! `tests/fixtures/README.md`): every file decodes fully, at the version its CONNECT asks
//! for, and every packet re-encodes byte-exactly, except for the packets listed in
//! [`NON_CANONICAL`], where the client used an equally valid but different encoding; those
//! are compared semantically (`decode(encode(p)) == p`). Spot checks pin decoded fields to
//! what the client was told to send, which a symmetric encode/decode bug would not reveal.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use common::{big_limits, decode_chunks, encode_to_vec};
use shardmq_codec::*;

/// Packets a real client encodes differently from our (canonical) encoder, by
/// (fixture name, packet index in the file, why). Kept exact: an entry that no longer differs
/// fails the test, so the list documents the real clients' behaviour.
///
/// Our encoder writes properties in ascending identifier order (as paho does); mosquitto
/// 2.0.11 writes them in the order its `-D` options were given, which 5.0 allows (§2.2.2.2
/// imposes no order).
const NON_CANONICAL: &[(&str, usize, &str)] = &[
    (
        "mosquitto_pub-v5-qos1-retain",
        1,
        "PUBLISH properties in -D order: User Property (0x26) x2 before Message Expiry (0x02)",
    ),
    (
        "mosquitto_pub-v5-qos2-will-props",
        0,
        "CONNECT properties: User Property (0x26) before Receive Maximum (0x21)",
    ),
    (
        "mosquitto_pub-v5-qos2-will-props",
        1,
        "PUBLISH properties in -D order: Payload Format Indicator (0x01) after 0x03/0x08/0x09",
    ),
    (
        "mosquitto_sub-v5-unsubscribe",
        3,
        "DISCONNECT 0x04 in the one-byte form; we always write the property length (rumqttc needs it)",
    ),
];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every `*.bin` fixture, sorted by name.
fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(fixtures_dir())
        .expect("tests/fixtures exists")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|n| n.strip_suffix(".bin").map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn load(name: &str) -> Vec<u8> {
    fs::read(fixtures_dir().join(format!("{name}.bin"))).unwrap()
}

/// The version of the session: CONNECT is decoded by its own protocol level whatever the
/// version passed.
fn session_version(bytes: &[u8]) -> ProtocolVersion {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, &big_limits(), ProtocolVersion::V3_1_1) {
        Ok(Some(Packet::Connect(c))) => c.protocol,
        other => panic!("a session starts with CONNECT, got {other:?}"),
    }
}

/// Decodes the whole file; returns each packet with the bytes it came from.
fn decode_file(name: &str) -> (ProtocolVersion, Vec<(Packet, Vec<u8>)>) {
    let bytes = load(name);
    let version = session_version(&bytes);
    let mut buf = BytesMut::from(&bytes[..]);
    let mut out = Vec::new();
    while !buf.is_empty() {
        let before = buf.len();
        let p = match decode(&mut buf, &big_limits(), version) {
            Ok(Some(p)) => p,
            other => {
                panic!("{name}: packet {} at byte {}: {other:?}", out.len(), bytes.len() - before)
            }
        };
        let start = bytes.len() - before;
        let end = bytes.len() - buf.len();
        out.push((p, bytes[start..end].to_vec()));
    }
    (version, out)
}

#[test]
fn fixtures_are_present_and_documented() {
    let names = fixture_names();
    assert!(names.len() >= 16, "fixtures missing: {names:?}");
    let readme = fs::read_to_string(fixtures_dir().join("README.md")).unwrap();
    for n in &names {
        assert!(
            readme.contains(&format!("{n}.bin")),
            "{n}.bin is not described in tests/fixtures/README.md"
        );
    }
}

#[test]
fn every_fixture_reencodes_byte_exactly() {
    let mut failures = Vec::new();
    let mut used_exceptions = Vec::new();
    for name in fixture_names() {
        let (version, packets) = decode_file(&name);
        for (i, (p, wire)) in packets.iter().enumerate() {
            let ours = encode_to_vec(p, version);
            let exception = NON_CANONICAL.iter().find(|(n, idx, _)| *n == name && *idx == i);
            match (ours == *wire, exception) {
                (true, None) => {}
                (true, Some(_)) => failures.push(format!(
                    "{name}[{i}]: listed in NON_CANONICAL but re-encodes exactly: remove the entry"
                )),
                (false, Some(e)) => {
                    used_exceptions.push(e);
                    let mut buf = BytesMut::from(&ours[..]);
                    let back = decode(&mut buf, &big_limits(), version);
                    if back.as_ref().ok().and_then(|o| o.as_ref()) != Some(p) || !buf.is_empty() {
                        failures.push(format!(
                            "{name}[{i}]: decode(encode(p)) != p: {back:?}\n  p = {p:?}"
                        ));
                    }
                }
                (false, None) => failures.push(format!(
                    "{name}[{i}] ({version:?}) re-encodes differently\n  p    = {p:?}\n  wire = {wire:02x?}\n  ours = {ours:02x?}"
                )),
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert_eq!(
        used_exceptions.len(),
        NON_CANONICAL.len(),
        "NON_CANONICAL names a packet that does not exist"
    );
}

/// Each file fed one byte at a time decodes to the same packets as in one go.
#[test]
fn every_fixture_decodes_byte_by_byte() {
    for name in fixture_names() {
        let (version, packets) = decode_file(&name);
        let bytes = load(&name);
        let got = decode_chunks(bytes.chunks(1), version);
        let want: Vec<Packet> = packets.into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, want, "{name}");
    }
}

/// Each fixture also passes the fuzz target's check (at all three versions).
#[test]
fn every_fixture_passes_the_fuzz_check() {
    for name in fixture_names() {
        let stats = common::check::check(&load(&name));
        assert!(stats.packets > 0, "{name}: {stats:?}");
    }
}

// ---- Spot checks: decoded fields are what the client was told to send. ----

fn packets(name: &str) -> (ProtocolVersion, Vec<Packet>) {
    let (v, ps) = decode_file(name);
    (v, ps.into_iter().map(|(p, _)| p).collect())
}

fn s(x: &str) -> ByteStr {
    ByteStr::from(x)
}

fn up(pairs: &[(&str, &str)]) -> Vec<(ByteStr, ByteStr)> {
    pairs.iter().map(|(k, v)| (s(k), s(v))).collect()
}

fn types(ps: &[Packet]) -> Vec<PacketType> {
    ps.iter().map(Packet::packet_type).collect()
}

#[test]
fn mosquitto_pub_v31() {
    let (v, ps) = packets("mosquitto_pub-v31-qos1");
    assert_eq!(v, ProtocolVersion::V3_1);
    let Packet::Connect(c) = &ps[0] else { panic!() };
    assert_eq!(c.client_id, s("fixture-pub"));
    let Packet::Publish(p) = &ps[1] else { panic!() };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::AtLeastOnce, false, false));
    assert_eq!(p.topic, s("fixture/v31"));
    assert_eq!(p.payload, Bytes::from_static(b"hello-3.1"));
    assert!(p.packet_id.is_some());
}

#[test]
fn mosquitto_pub_v311_qos2_will_login() {
    let (v, ps) = packets("mosquitto_pub-v311-qos2-will-login");
    assert_eq!(v, ProtocolVersion::V3_1_1);
    assert_eq!(
        types(&ps),
        [PacketType::Connect, PacketType::Publish, PacketType::PubRel, PacketType::Disconnect]
    );
    let Packet::Connect(c) = &ps[0] else { panic!() };
    assert!(c.clean_start);
    assert_eq!(c.keep_alive_secs, 15);
    assert_eq!(c.client_id, s("fixture-pub"));
    assert_eq!(c.username, Some(s("fixture-user")));
    assert_eq!(c.password, Some(Bytes::from_static(b"fixture-pass")));
    assert_eq!(
        c.will,
        Some(Will {
            topic: s("fixture/will"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        })
    );
    assert!(c.properties.is_empty());
    let Packet::Publish(p) = &ps[1] else { panic!() };
    assert_eq!((p.qos, p.retain), (QoS::ExactlyOnce, false));
    assert_eq!(p.payload, Bytes::from_static(b"exactly-once"));
    assert_eq!(p.properties, None);
    let Packet::PubRel(r) = &ps[2] else { panic!() };
    assert_eq!(Some(r.packet_id), p.packet_id);
    assert_eq!(r.reason, ReasonCode::SUCCESS);
}

#[test]
fn mosquitto_pub_v311_empty_retained() {
    let (_, ps) = packets("mosquitto_pub-v311-empty-payload");
    let Packet::Publish(p) = &ps[1] else { panic!() };
    assert!(p.retain);
    assert!(p.payload.is_empty());
    assert_eq!(p.topic, s("fixture/empty"));
}

#[test]
fn mosquitto_pub_v5_user_properties_in_order() {
    let (v, ps) = packets("mosquitto_pub-v5-qos1-retain");
    assert_eq!(v, ProtocolVersion::V5);
    let Packet::Connect(c) = &ps[0] else { panic!() };
    assert_eq!(c.properties.session_expiry_interval_secs, Some(30));
    let Packet::Publish(p) = &ps[1] else { panic!() };
    assert!(p.retain);
    let props = p.properties.as_deref().expect("PUBLISH properties");
    assert_eq!(props.user_properties, up(&[("k", "v"), ("k2", "v2")]));
    assert_eq!(props.message_expiry_interval_secs, Some(60));

    let (_, ps) = packets("mosquitto_pub-v5-qos0-userprop");
    let Packet::Publish(p) = &ps[1] else { panic!() };
    assert_eq!(p.properties.as_deref().map(|p| p.user_properties.clone()), Some(up(&[("k", "v")])));
}

#[test]
fn mosquitto_pub_v5_will_and_publish_properties() {
    let (_, ps) = packets("mosquitto_pub-v5-qos2-will-props");
    let Packet::Connect(c) = &ps[0] else { panic!() };
    assert_eq!(c.properties.user_properties, up(&[("ck", "cv")]));
    assert_eq!(c.properties.receive_maximum, Some(10));
    assert_eq!(c.properties.maximum_packet_size, Some(100_000));
    let w = c.will.as_ref().expect("will");
    assert_eq!(w.qos, QoS::ExactlyOnce);
    assert_eq!(w.properties.content_type, Some(s("text/plain")));
    assert_eq!(w.properties.will_delay_interval_secs, Some(10));
    assert_eq!(w.properties.user_properties, up(&[("wk", "wv")]));
    let Packet::Publish(p) = &ps[1] else { panic!() };
    let props = p.properties.as_deref().expect("PUBLISH properties");
    assert_eq!(props.content_type, Some(s("text/plain")));
    assert_eq!(props.response_topic, Some(s("fixture/resp")));
    assert_eq!(props.correlation_data, Some(Bytes::from_static(b"abc")));
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(props.topic_alias, Some(3));
    assert_eq!(p.topic, s("fixture/q2"));
}

#[test]
fn mosquitto_pub_v5_disconnect_properties() {
    let (_, ps) = packets("mosquitto_pub-v5-disconnect-props");
    let Packet::Disconnect(d) = ps.last().unwrap() else { panic!() };
    assert_eq!(d.reason, ReasonCode::NORMAL_DISCONNECTION);
    let props = d.properties.as_deref().expect("DISCONNECT properties");
    assert_eq!(props.session_expiry_interval_secs, Some(0));
    assert_eq!(props.user_properties, up(&[("dk", "dv")]));
}

#[test]
fn mosquitto_sub_v311_wildcards() {
    let (_, ps) = packets("mosquitto_sub-v311-wildcards");
    let Packet::Subscribe(sub) = &ps[1] else { panic!() };
    let filters: Vec<_> = sub.filters.iter().map(|(f, o)| (f.as_str(), o.qos)).collect();
    assert_eq!(
        filters,
        [
            ("fixture/+/temp", QoS::AtLeastOnce),
            ("fixture/#", QoS::AtLeastOnce),
            ("+/+", QoS::AtLeastOnce)
        ]
    );
    assert_eq!(sub.properties, None);

    let (_, ps) = packets("mosquitto_sub-v311-unsubscribe");
    let unsubs: Vec<Vec<&str>> = ps
        .iter()
        .filter_map(|p| match p {
            Packet::Unsubscribe(u) => Some(u.filters.iter().map(|f| f.as_str()).collect()),
            _ => None,
        })
        .collect();
    assert_eq!(unsubs, [vec!["fixture/old/+"], vec!["old/#"]]);
}

#[test]
fn mosquitto_sub_v5_shared_and_properties() {
    let (_, ps) = packets("mosquitto_sub-v5-wildcards-props");
    let Packet::Connect(c) = &ps[0] else { panic!() };
    assert!(!c.clean_start);
    assert_eq!(c.properties.session_expiry_interval_secs, Some(300));
    let Packet::Subscribe(sub) = &ps[1] else { panic!() };
    let filters: Vec<_> = sub.filters.iter().map(|(f, o)| (f.as_str(), o.qos)).collect();
    assert_eq!(
        filters,
        [
            ("fixture/+/temp", QoS::ExactlyOnce),
            ("$share/group/fixture/#", QoS::ExactlyOnce),
            ("#", QoS::ExactlyOnce)
        ]
    );
    let props = sub.properties.as_deref().expect("SUBSCRIBE properties");
    assert_eq!(props.subscription_identifiers, [7]);
    assert_eq!(props.user_properties, up(&[("sk", "sv")]));

    let (_, ps) = packets("mosquitto_sub-v5-unsubscribe");
    let Packet::Unsubscribe(u) = &ps[2] else { panic!() };
    assert_eq!(u.filters, [s("fixture/old/+")]);
    assert_eq!(
        u.properties.as_deref().map(|p| p.user_properties.clone()),
        Some(up(&[("uk", "uv")]))
    );
    // mosquitto_sub ends a -W timeout with "Disconnect with Will Message", in the 1-byte
    // form (reason code, no property length).
    let Packet::Disconnect(d) = &ps[3] else { panic!() };
    assert_eq!(d.reason, ReasonCode::DISCONNECT_WITH_WILL_MESSAGE);
    assert_eq!(d.properties, None);
}

#[test]
fn paho_all_versions() {
    for (name, version) in [
        ("paho-v31", ProtocolVersion::V3_1),
        ("paho-v311", ProtocolVersion::V3_1_1),
        ("paho-v5", ProtocolVersion::V5),
    ] {
        let (v, ps) = packets(name);
        assert_eq!(v, version, "{name}");
        assert_eq!(
            types(&ps),
            [
                PacketType::Connect,
                PacketType::Subscribe,
                PacketType::Publish,
                PacketType::Publish,
                PacketType::Publish,
                PacketType::PubRel,
                PacketType::Unsubscribe,
                PacketType::Disconnect
            ],
            "{name}"
        );
        let Packet::Connect(c) = &ps[0] else { panic!() };
        assert_eq!(c.keep_alive_secs, 30);
        assert_eq!(c.username, Some(s("fixture-user")));
        assert_eq!(c.password, Some(Bytes::from_static(b"fixture-pass")));
        let w = c.will.as_ref().expect("will");
        assert_eq!((w.topic.as_str(), w.qos, w.retain), ("fixture/will", QoS::AtLeastOnce, true));
        for (i, qos) in
            [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate()
        {
            let Packet::Publish(p) = &ps[2 + i] else { panic!() };
            assert_eq!(p.qos, qos, "{name}");
            assert_eq!(p.retain, qos == QoS::AtLeastOnce, "{name}");
            assert_eq!(p.topic, s(&format!("fixture/qos{}", qos as u8)), "{name}");
        }
    }
}

#[test]
fn paho_v5_properties_and_subscription_options() {
    let (_, ps) = packets("paho-v5");
    let Packet::Connect(c) = &ps[0] else { panic!() };
    assert!(c.clean_start);
    let cp = &c.properties;
    assert_eq!(cp.session_expiry_interval_secs, Some(120));
    assert_eq!(cp.receive_maximum, Some(20));
    assert_eq!(cp.maximum_packet_size, Some(65536));
    assert_eq!(cp.topic_alias_maximum, Some(8));
    assert_eq!(cp.request_problem_information, Some(1));
    assert_eq!(cp.user_properties, up(&[("client", "paho"), ("k", "v")]));
    let wp = &c.will.as_ref().unwrap().properties;
    assert_eq!(wp.will_delay_interval_secs, Some(5));
    assert_eq!(wp.content_type, Some(s("text/plain")));

    let Packet::Subscribe(sub) = &ps[1] else { panic!() };
    assert_eq!(
        sub.filters,
        [
            (
                s("fixture/+/temp"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendAtSubscribe,
                }
            ),
            (
                s("fixture/#"),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendIfNew,
                }
            ),
            (s("$share/group/fixture/shared"), SubscriptionOptions::default()),
        ]
    );
    assert_eq!(sub.properties.as_deref().unwrap().subscription_identifiers, [42]);

    let Packet::Publish(p) = &ps[3] else { panic!() };
    let pp = p.properties.as_deref().expect("PUBLISH properties");
    assert_eq!(pp.payload_format_indicator, Some(1));
    assert_eq!(pp.message_expiry_interval_secs, Some(60));
    assert_eq!(pp.content_type, Some(s("application/json")));
    assert_eq!(pp.response_topic, Some(s("fixture/reply")));
    assert_eq!(pp.correlation_data, Some(Bytes::from_static(&[1, 2, 3])));
    assert_eq!(pp.user_properties, up(&[("qos", "1")]));
    assert_eq!(p.payload, Bytes::from_static(br#"{"qos":1}"#));
}
