//! Protocol rules and bad input: CONNECT rules, malformed packets, limits.

use std::time::Duration;

use shardmq_codec::{ByteStr, Packet, Properties, ReasonCode};

use super::*;
use crate::core::limits::Limits;
use crate::core::sim::{ConnectOpts, Sim};

#[test]
fn malformed_input_closes_only_that_connection() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let s = sim.client(&sim.id_on("s", 0), V3);
        let bad = sim.client(&sim.id_on("bad", 0), V5);
        let bad3 = sim.client(&sim.id_on("bad3", 1), V3);
        for c in [s, bad, bad3] {
            sim.connect(c);
        }
        sim.subscribe(s, &[("m", Q0)]);
        // A PUBLISH with QoS 3 [MQTT-3.3.1-4].
        sim.send_raw(bad, &[0x36, 0x03, 0x00, 0x01, b'm']);
        sim.send_raw(bad3, &[0xF0, 0x00]); // AUTH does not exist in 3.1.1
        sim.run();
        assert!(sim.clients[bad].closed && sim.clients[bad3].closed);
        assert_eq!(
            disconnect_reasons(&sim.clients[bad].take_packets()),
            [ReasonCode::MALFORMED_PACKET]
        );
        assert!(sim.clients[bad3].take_packets().is_empty(), "3.1.1: no server DISCONNECT");
        assert!(!sim.clients[s].closed);
        let p = sim.client(&sim.id_on("p", 1), V3);
        sim.connect(p);
        sim.publish(p, "m", "still here", Q0, false);
        sim.run();
        assert_eq!(sim.clients[s].take_payloads(), ["still here"]);
    }
}

#[test]
fn connect_rules() {
    let mut sim = Sim::new(2, 0);
    // The first packet must be CONNECT [MQTT-3.1.0-1].
    let a = sim.client("x", V3);
    sim.open(a);
    sim.send(a, &Packet::PingReq);
    sim.run();
    assert!(sim.clients[a].closed && sim.clients[a].take_packets().is_empty());
    // Empty client id with Clean Session 0 in 3.1.1: 0x02 [MQTT-3.1.3-8].
    let e = sim.client("", V3);
    let ack = sim.connect_with(e, ConnectOpts { clean_start: false, ..Default::default() });
    assert_eq!(ack.reason.to_v3_connack(), 2);
    assert!(sim.clients[e].closed);
    // Empty with clean session: accepted; 5.0 gets an assigned id homed on its shard.
    let e3 = sim.client("", V3);
    assert_eq!(sim.connect_with(e3, ConnectOpts::default()).reason, ReasonCode::SUCCESS);
    let e5 = sim.client("", V5);
    let ack = sim.connect_with(e5, ConnectOpts::default());
    let assigned = ack.properties.as_ref().and_then(|p| p.assigned_client_identifier.clone());
    let assigned = assigned.expect("Assigned Client Identifier");
    assert_eq!(sim.home(&assigned), sim.clients[e5].shard);
    let props = ack.properties.unwrap();
    assert_eq!(props.shared_subscription_available, Some(1));
    assert_eq!(props.receive_maximum, Some(Limits::default().inflight_in_max));
    // Too long a client id: 0x85.
    let long = "l".repeat(300);
    let l = sim.client(&long, V5);
    assert_eq!(
        sim.connect_with(l, ConnectOpts::default()).reason,
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID
    );
    // Keep alive above the maximum: 5.0 gets Server Keep Alive.
    let k = sim.client("k", V5);
    let ack = sim.connect_with(k, ConnectOpts { keep_alive_secs: u16::MAX, ..Default::default() });
    assert_eq!(
        ack.properties.unwrap().server_keep_alive_secs,
        Some(Limits::default().keep_alive_max_secs)
    );
    // A second CONNECT: 5.0 DISCONNECT 0x82 [MQTT-3.1.0-2].
    let connect = shardmq_codec::Connect {
        protocol: V5,
        clean_start: true,
        keep_alive_secs: 0,
        client_id: ByteStr::from("k"),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    sim.send(k, &Packet::Connect(Box::new(connect)));
    sim.run();
    assert!(sim.clients[k].closed);
    assert_eq!(disconnect_reasons(&sim.clients[k].take_packets()), [ReasonCode::PROTOCOL_ERROR]);
}

#[test]
fn unsupported_protocol_level_is_answered_in_3_1_1_form() {
    let mut sim = Sim::new(2, 0);
    // The answer is in 3.1.1 form whatever the level, so the client decodes as 3.1.1.
    let c = sim.client("lvl", V3);
    sim.open(c);
    // CONNECT "MQTT" level 6.
    let bytes =
        [0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 6, 0x02, 0x00, 0x00, 0x00, 0x01, b'a'];
    sim.send_raw(c, &bytes);
    sim.run();
    assert!(sim.clients[c].closed);
    let packets = sim.clients[c].take_packets();
    // Level 6: `20 02 00 01`, return code 1 (unacceptable protocol version).
    match &packets[..] {
        [Packet::ConnAck(a)] => assert_eq!(a.reason, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
        other => panic!("{other:?}"),
    }
    let c4 = sim.client("lvl4", V3);
    sim.open(c4);
    let bytes =
        [0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 2, 0x02, 0x00, 0x00, 0x00, 0x01, b'a'];
    sim.send_raw(c4, &bytes);
    sim.run();
    match &sim.clients[c4].take_packets()[..] {
        [Packet::ConnAck(a)] => assert_eq!(a.reason.to_v3_connack(), 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn limits_answer_with_their_reason_codes() {
    let limits = Limits {
        topic_levels_max: 3,
        subscriptions_per_session_max: 2,
        inflight_in_max: 2,
        retained_messages_max: 1,
        ..Limits::default()
    };
    let mut sim = Sim::with_limits(2, 0, limits);
    let s5 = sim.client(&sim.id_on("s5", 0), V5);
    let s3 = sim.client(&sim.id_on("s3", 1), V3);
    sim.connect(s5);
    sim.connect(s3);
    // A shared filter counts its `$share/{name}/` levels against the limit.
    let f = [("a/b/c/d", Q0), ("$share/g/a/b", Q1), ("a", Q1), ("b", Q2), ("c", Q0), ("a", Q2)];
    assert_eq!(
        sim.subscribe(s5, &f),
        [
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::GRANTED_QOS_2,
            ReasonCode::QUOTA_EXCEEDED,
            ReasonCode::GRANTED_QOS_2, // a replacement needs no quota [MQTT-3.8.4-3]
        ]
    );
    let r = sim.subscribe(s3, &f);
    assert_eq!(r[..3], [ReasonCode(0x80), ReasonCode(0x80), ReasonCode::GRANTED_QOS_1]);
    // Retained store limit: the second topic is refused (and counted).
    sim.publish(s3, "r1", "1", Q0, true);
    sim.publish(s3, "r2", "2", Q0, true);
    sim.run();
    assert!(sim.shards.iter().all(|sh| sh.retained.len() == 1));
    // Too many levels in a PUBLISH topic: 5.0 DISCONNECT 0x90.
    sim.publish(s5, "a/b/c/d", "x", Q0, false);
    sim.run();
    assert!(sim.clients[s5].closed);
    assert_eq!(
        disconnect_reasons(&sim.clients[s5].take_packets()),
        [ReasonCode::TOPIC_NAME_INVALID]
    );
    // More unacknowledged incoming QoS 2 than Receive Maximum: 0x93.
    let q = sim.client(&sim.id_on("q", 0), V5);
    sim.connect(q);
    sim.clients[q].auto_ack = false;
    for _ in 0..3 {
        sim.publish(q, "x", "x", Q2, false);
    }
    sim.run();
    assert!(sim.clients[q].closed);
    let packets = sim.clients[q].take_packets();
    assert_eq!(disconnect_reasons(&packets), [ReasonCode::RECEIVE_MAXIMUM_EXCEEDED]);
}

#[test]
fn connect_timeout_and_connection_limit() {
    let limits = Limits { connections_per_shard_max: 2, ..Limits::default() };
    let mut sim = Sim::with_limits(2, 0, limits);
    let a = sim.client(&sim.id_on("a", 0), V3);
    sim.open(a);
    sim.advance(Duration::from_secs(11));
    assert!(sim.clients[a].closed, "no CONNECT within connect_timeout_secs");
    // The closed entry lingers briefly, then frees its slot.
    sim.advance(Duration::from_secs(2));
    let b = sim.client(&sim.id_on("b", 0), V3);
    let c = sim.client(&sim.id_on("c", 0), V3);
    sim.connect(b);
    sim.connect(c);
    assert!(sim.shards[0].open_connection(crate::core::ConnInfo::default(), sim.now).is_none());
}
