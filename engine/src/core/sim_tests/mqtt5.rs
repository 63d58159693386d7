//! MQTT 5.0 features, part 1: topic aliases (both ways), message expiry, subscription
//! identifiers. Each runs with 2 and 4 shards and several seeds, publishers and subscribers
//! homed on different shards.

use std::time::Duration;

use shardmq_codec::{
    ByteStr, Packet, Properties, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};

use super::*;
use crate::core::limits::Limits;
use crate::core::sim::{ConnectOpts, Sim};

/// PUBLISH with properties from client `c` (not run).
pub(super) fn publish_props(
    sim: &mut Sim,
    c: usize,
    topic: &str,
    payload: &str,
    qos: QoS,
    retain: bool,
    properties: Properties,
) {
    sim.publish_props(c, topic, payload, qos, retain, properties);
}

/// SUBSCRIBE with options and an optional Subscription Identifier; runs; returns SUBACK codes.
pub(super) fn subscribe_opts(
    sim: &mut Sim,
    c: usize,
    filters: &[(&str, SubscriptionOptions)],
    sub_id: Option<u32>,
) -> Vec<ReasonCode> {
    let filters = filters.iter().map(|(f, o)| (ByteStr::from(*f), *o)).collect();
    let packet_id = sim.clients[c].next_packet_id();
    let properties = sub_id.map(|id| {
        Box::new(Properties { subscription_identifiers: vec![id], ..Properties::default() })
    });
    sim.send(c, &Packet::Subscribe(Subscribe { packet_id, filters, properties }));
    sim.run();
    sim.take_suback(c, packet_id).expect("SUBACK")
}

pub(super) fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions { qos, ..Default::default() }
}

/// Connects a 5.0 client with `properties` in CONNECT; asserts success.
pub(super) fn connect_v5(sim: &mut Sim, c: usize, properties: Properties) -> Box<Properties> {
    let ack = sim.connect_with(c, ConnectOpts { properties, ..Default::default() });
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    ack.properties.expect("5.0 CONNACK properties")
}

fn alias(p: &Publish) -> Option<u16> {
    p.properties.as_ref().and_then(|p| p.topic_alias)
}

fn expiry(p: &Publish) -> Option<u32> {
    p.properties.as_ref().and_then(|p| p.message_expiry_interval_secs)
}

fn sub_ids(p: &Publish) -> Vec<u32> {
    let mut ids =
        p.properties.as_ref().map(|p| p.subscription_identifiers.clone()).unwrap_or_default();
    ids.sort_unstable();
    ids
}

fn with_alias(alias: u16) -> Properties {
    Properties { topic_alias: Some(alias), ..Properties::default() }
}

#[test]
fn inbound_topic_aliases_resolve_and_bad_ones_disconnect() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let s = sim.client(&sim.id_on("s", 0), V3);
        sim.connect(s);
        sim.subscribe(s, &[("a/#", Q1)]);
        let p = sim.client(&sim.id_on("p", 1), V5);
        let ack = connect_v5(&mut sim, p, Properties::default());
        assert_eq!(ack.topic_alias_maximum, Some(Limits::default().topic_alias_max));
        publish_props(&mut sim, p, "a/1", "one", Q1, false, with_alias(3));
        publish_props(&mut sim, p, "", "two", Q1, false, with_alias(3));
        // Remapping an alias is allowed (5.0 §3.3.2.3.4).
        publish_props(&mut sim, p, "a/2", "three", Q0, false, with_alias(3));
        publish_props(&mut sim, p, "", "four", Q0, false, with_alias(3));
        sim.run();
        let got = sim.clients[s].take_messages();
        let topics: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["a/1", "a/1", "a/2", "a/2"]);
        assert!(got.iter().all(|m| alias(m).is_none()), "aliases are never forwarded");

        // Above our Topic Alias Maximum: 0x94 [MQTT-3.3.2-9].
        let big = Limits::default().topic_alias_max + 1;
        publish_props(&mut sim, p, "a/3", "x", Q0, false, with_alias(big));
        sim.run();
        assert!(sim.clients[p].closed);
        assert_eq!(
            disconnect_reasons(&sim.clients[p].take_packets()),
            [ReasonCode::TOPIC_ALIAS_INVALID]
        );
        // Aliases belong to one connection [MQTT-3.3.2-7]: after reconnecting, alias 3 is
        // unknown, and an empty topic with it is a Protocol Error.
        connect_v5(&mut sim, p, Properties::default());
        publish_props(&mut sim, p, "", "x", Q0, false, with_alias(3));
        sim.run();
        assert!(sim.clients[p].closed);
        assert_eq!(
            disconnect_reasons(&sim.clients[p].take_packets()),
            [ReasonCode::PROTOCOL_ERROR]
        );
        // Alias 0 is refused by the decoder: 0x94 [MQTT-3.3.2-8]. Our encoder will not
        // write it, so the bytes are spelled out: PUBLISH QoS 0 "a/1", Topic Alias 0, "x".
        connect_v5(&mut sim, p, Properties::default());
        sim.send_raw(p, &[0x30, 0x0A, 0x00, 0x03, b'a', b'/', b'1', 0x03, 0x23, 0x00, 0x00, b'x']);
        sim.run();
        assert_eq!(
            disconnect_reasons(&sim.clients[p].take_packets()),
            [ReasonCode::TOPIC_ALIAS_INVALID]
        );
        assert!(sim.clients[s].take_messages().is_empty());
    }
}

#[test]
fn outbound_topic_aliases_up_to_the_clients_maximum() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let a = sim.client(&sim.id_on("alias", 0), V5);
        connect_v5(&mut sim, a, Properties { topic_alias_maximum: Some(2), ..Default::default() });
        let plain = sim.client(&sim.id_on("plain", 1), V5);
        connect_v5(&mut sim, plain, Properties::default());
        for c in [a, plain] {
            sim.subscribe(c, &[("t/#", Q1)]);
        }
        let p = sim.client(&sim.id_on("p", 1), V3);
        sim.connect(p);
        for (i, topic) in ["t/1", "t/1", "t/2", "t/3", "t/2", "t/3"].into_iter().enumerate() {
            let qos = if i % 2 == 0 { Q0 } else { Q1 };
            sim.publish(p, topic, &i.to_string(), qos, false);
        }
        sim.run();
        let got = sim.clients[a].take_messages();
        let seen: Vec<(&str, Option<u16>)> =
            got.iter().map(|m| (m.topic.as_str(), alias(m))).collect();
        assert_eq!(
            seen,
            [
                ("t/1", Some(1)),
                ("", Some(1)),
                ("t/2", Some(2)),
                ("t/3", None), // table full: sent in full [MQTT-3.3.2-11]
                ("", Some(2)),
                ("t/3", None),
            ]
        );
        let payloads: Vec<&[u8]> = got.iter().map(|m| &m.payload[..]).collect();
        assert_eq!(payloads, [b"0", b"1", b"2", b"3", b"4", b"5"]);
        // A client that did not ask for aliases gets none (and the fast path).
        let got = sim.clients[plain].take_messages();
        assert!(got.iter().all(|m| alias(m).is_none() && !m.topic.is_empty()));
        assert_eq!(got.len(), 6);
        // A new connection starts a new table.
        sim.drop_conn(a);
        connect_v5(&mut sim, a, Properties { topic_alias_maximum: Some(2), ..Default::default() });
        sim.subscribe(a, &[("t/#", Q0)]);
        sim.publish(p, "t/2", "again", Q0, false);
        sim.run();
        let got = sim.clients[a].take_messages();
        assert_eq!((got[0].topic.as_str(), alias(&got[0])), ("t/2", Some(1)));
    }
}

#[test]
fn queued_messages_expire_and_forwarded_ones_carry_the_remaining_interval() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let s = sim.client(&sim.id_on("s", 0), V5);
        let persistent =
            Properties { session_expiry_interval_secs: Some(600), ..Properties::default() };
        connect_v5(&mut sim, s, persistent.clone());
        sim.subscribe(s, &[("e/#", Q1)]);
        sim.drop_conn(s);
        let p = sim.client(&sim.id_on("p", 1), V5);
        connect_v5(&mut sim, p, Properties::default());
        let ttl =
            |secs| Properties { message_expiry_interval_secs: Some(secs), ..Default::default() };
        publish_props(&mut sim, p, "e/short", "short", Q1, false, ttl(5));
        publish_props(&mut sim, p, "e/long", "long", Q1, false, ttl(100));
        publish_props(&mut sim, p, "e/none", "none", Q1, false, Properties::default());
        // Retained with a short interval: gone for later subscribers once expired.
        publish_props(&mut sim, p, "r/short", "rs", Q0, true, ttl(5));
        publish_props(&mut sim, p, "r/long", "rl", Q0, true, ttl(100));
        sim.run();
        let dropped_before: u64 = sim.shards.iter().map(|c| c.stats.messages_dropped).sum();
        sim.advance(Duration::from_secs(10));
        let dropped: u64 = sim.shards.iter().map(|c| c.stats.messages_dropped).sum();
        assert_eq!(dropped - dropped_before, 1, "the offline queue shed the expired message");
        let ack = sim.connect_with(
            s,
            ConnectOpts { clean_start: false, properties: persistent, ..Default::default() },
        );
        assert!(ack.session_present);
        sim.run();
        let got = sim.clients[s].take_messages();
        let seen: Vec<(&str, Option<u32>)> =
            got.iter().map(|m| (m.topic.as_str(), expiry(m))).collect();
        // [MQTT-3.3.2-6]: 100 s minus the 10 s it waited.
        assert_eq!(seen, [("e/long", Some(90)), ("e/none", None)]);

        let r = sim.client(&sim.id_on("r", 1), V5);
        connect_v5(&mut sim, r, Properties::default());
        sim.subscribe(r, &[("r/#", Q0)]);
        let got = sim.clients[r].take_messages();
        let seen: Vec<(&str, Option<u32>)> =
            got.iter().map(|m| (m.topic.as_str(), expiry(m))).collect();
        assert_eq!(seen, [("r/long", Some(90))]);
    }
}

#[test]
fn online_backlog_expires_behind_a_full_window() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let s = sim.client(&sim.id_on("s", 1), V5);
        connect_v5(&mut sim, s, Properties { receive_maximum: Some(1), ..Default::default() });
        sim.clients[s].auto_ack = false;
        sim.subscribe(s, &[("b", Q1)]);
        let p = sim.client(&sim.id_on("p", 0), V5);
        connect_v5(&mut sim, p, Properties::default());
        let ttl =
            |secs| Properties { message_expiry_interval_secs: Some(secs), ..Default::default() };
        publish_props(&mut sim, p, "b", "first", Q1, false, ttl(2));
        publish_props(&mut sim, p, "b", "expires", Q1, false, ttl(2));
        publish_props(&mut sim, p, "b", "stays", Q1, false, ttl(60));
        sim.run();
        let got = sim.clients[s].take_messages();
        assert_eq!(got.len(), 1, "Receive Maximum 1");
        sim.advance(Duration::from_secs(3));
        let id = got[0].packet_id.expect("QoS 1");
        sim.send(
            s,
            &Packet::PubAck(shardmq_codec::PubResp {
                packet_id: id,
                reason: ReasonCode::SUCCESS,
                properties: None,
            }),
        );
        sim.run();
        let got = sim.clients[s].take_messages();
        let seen: Vec<(&[u8], Option<u32>)> =
            got.iter().map(|m| (&m.payload[..], expiry(m))).collect();
        assert_eq!(seen, [(&b"stays"[..], Some(57))]);
        let home = sim.home(&sim.clients[s].id);
        assert!(sim.shards[home].stats.messages_dropped >= 1);
    }
}

#[test]
fn subscription_identifiers_are_carried_for_every_matching_subscription() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let s = sim.client(&sim.id_on("s", 0), V5);
        let ack = connect_v5(&mut sim, s, Properties::default());
        assert_eq!(ack.subscription_identifier_available, Some(1));
        let p = sim.client(&sim.id_on("p", 1), V5);
        connect_v5(&mut sim, p, Properties::default());
        publish_props(&mut sim, p, "x/y", "retained", Q1, true, Properties::default());
        sim.run();
        // The retained message sent on subscribe carries that subscription's identifier.
        subscribe_opts(&mut sim, s, &[("x/+", opts(Q1))], Some(7));
        let got = sim.clients[s].take_messages();
        assert_eq!(got.len(), 1);
        assert_eq!(sub_ids(&got[0]), [7]);
        subscribe_opts(&mut sim, s, &[("x/y", opts(Q0))], Some(268_435_455));
        subscribe_opts(&mut sim, s, &[("#", opts(Q0))], None);
        sim.clients[s].take_messages();
        sim.publish(p, "x/y", "both", Q1, false);
        sim.publish(p, "x/z", "one", Q1, false);
        sim.publish(p, "other", "none", Q0, false);
        sim.run();
        let got = sim.clients[s].take_messages();
        let seen: Vec<(&str, Vec<u32>, QoS)> =
            got.iter().map(|m| (m.topic.as_str(), sub_ids(m), m.qos)).collect();
        // [MQTT-3.3.4-3]/[MQTT-3.3.4-4]: one copy, every identifier, highest QoS.
        assert_eq!(
            seen,
            [("x/y", vec![7, 268_435_455], Q1), ("x/z", vec![7], Q1), ("other", vec![], Q0)]
        );
        // Replacing a subscription without an identifier removes it.
        subscribe_opts(&mut sim, s, &[("x/+", opts(Q1))], None);
        sim.clients[s].take_messages();
        sim.publish(p, "x/z", "gone", Q1, false);
        sim.run();
        let got = sim.clients[s].take_messages();
        assert!(sub_ids(&got[0]).is_empty());
    }
}

#[test]
fn subscription_identifiers_survive_the_offline_queue_and_resend() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let s = sim.client(&sim.id_on("s", 1), V5);
        let persistent =
            Properties { session_expiry_interval_secs: Some(600), ..Properties::default() };
        connect_v5(&mut sim, s, persistent.clone());
        subscribe_opts(&mut sim, s, &[("q", opts(Q1))], Some(42));
        sim.clients[s].auto_ack = false;
        let p = sim.client(&sim.id_on("p", 0), V3);
        sim.connect(p);
        sim.publish(p, "q", "inflight", Q1, false);
        sim.run();
        assert_eq!(sim.clients[s].take_messages().len(), 1);
        sim.drop_conn(s);
        sim.publish(p, "q", "queued", Q1, false);
        sim.run();
        sim.clients[s].auto_ack = true;
        let ack = sim.connect_with(
            s,
            ConnectOpts { clean_start: false, properties: persistent, ..Default::default() },
        );
        assert!(ack.session_present);
        sim.run();
        let got = sim.clients[s].take_messages();
        let seen: Vec<(&[u8], bool, Vec<u32>)> =
            got.iter().map(|m| (&m.payload[..], m.dup, sub_ids(m))).collect();
        assert_eq!(seen, [(&b"inflight"[..], true, vec![42]), (&b"queued"[..], false, vec![42])]);
    }
}
