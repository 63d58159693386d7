//! MQTT 5.0 features, part 2: flow control (Receive Maximum both ways), Maximum Packet Size
//! both ways, property pass-through, subscription options, CONNECT/CONNACK/DISCONNECT rules.

use bytes::Bytes;
use shardmq_codec::{
    ByteStr, Disconnect, Packet, Properties, PubResp, QoS, ReasonCode, RetainHandling,
    SubscriptionOptions,
};

use super::mqtt5::{connect_v5, opts, publish_props, subscribe_opts};
use super::*;
use crate::core::limits::Limits;
use crate::core::sim::{ConnectOpts, Sim};

fn dropped(sim: &Sim) -> u64 {
    sim.shards.iter().map(|c| c.stats.messages_dropped).sum()
}

fn puback(sim: &mut Sim, c: usize, p: &shardmq_codec::Publish) {
    let packet_id = p.packet_id.expect("QoS > 0");
    let r = PubResp { packet_id, reason: ReasonCode::SUCCESS, properties: None };
    sim.send(c, &Packet::PubAck(r));
    sim.run();
}

#[test]
fn never_more_unacked_than_the_clients_receive_maximum() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let s = sim.client(&sim.id_on("s", 0), V5);
        connect_v5(&mut sim, s, Properties { receive_maximum: Some(2), ..Default::default() });
        sim.clients[s].auto_ack = false;
        sim.subscribe(s, &[("f", Q1)]);
        let p = sim.client(&sim.id_on("p", 1), V3);
        sim.connect(p);
        for i in 0..5 {
            sim.publish(p, "f", &i.to_string(), Q1, false);
        }
        sim.run();
        let mut got = sim.clients[s].take_messages();
        assert_eq!(got.len(), 2, "[MQTT-3.3.4-9]: the client's Receive Maximum");
        for expected in ["2", "3", "4"] {
            let first = got.remove(0);
            puback(&mut sim, s, &first);
            let more = sim.clients[s].take_messages();
            assert_eq!(more.len(), 1, "one acknowledgement, one more message");
            assert_eq!(&more[0].payload[..], expected.as_bytes());
            got.extend(more);
        }
    }
}

#[test]
fn a_client_exceeding_our_receive_maximum_is_disconnected_with_0x93() {
    let limits = Limits { inflight_in_max: 2, ..Limits::default() };
    let mut sim = Sim::with_limits(2, 0, limits);
    let c = sim.client("q2", V5);
    let ack = connect_v5(&mut sim, c, Properties::default());
    assert_eq!(ack.receive_maximum, Some(2));
    sim.clients[c].auto_ack = false; // never sends PUBREL
                                     // QoS 1 is acknowledged at once and never counts; QoS 2 waits for PUBREL.
    for _ in 0..5 {
        sim.publish(c, "t", "q1", Q1, false);
    }
    sim.publish(c, "t", "a", Q2, false);
    sim.publish(c, "t", "b", Q2, false);
    sim.run();
    assert!(!sim.clients[c].closed);
    sim.publish(c, "t", "c", Q2, false);
    sim.run();
    assert!(sim.clients[c].closed);
    let reasons = disconnect_reasons(&sim.clients[c].take_packets());
    assert_eq!(reasons, [ReasonCode::RECEIVE_MAXIMUM_EXCEEDED]);
}

#[test]
fn maximum_packet_size_both_ways() {
    for (n, seed) in configs() {
        let limits = Limits {
            packet_size_max_bytes: 2048,
            topic_length_max_bytes: 256,
            ..Limits::default()
        };
        let mut sim = Sim::with_limits(n, seed, limits);
        let small = sim.client(&sim.id_on("small", 0), V5);
        let ack = connect_v5(
            &mut sim,
            small,
            Properties { maximum_packet_size: Some(64), ..Default::default() },
        );
        assert_eq!(ack.maximum_packet_size, Some(2048));
        // The alias path applies the same rule.
        let aliased = sim.client(&sim.id_on("aliased", 1), V5);
        connect_v5(
            &mut sim,
            aliased,
            Properties {
                maximum_packet_size: Some(64),
                topic_alias_maximum: Some(4),
                ..Default::default()
            },
        );
        for c in [small, aliased] {
            sim.subscribe(c, &[("m", Q1)]);
        }
        let p = sim.client(&sim.id_on("p", 1), V5);
        connect_v5(&mut sim, p, Properties::default());
        let before = dropped(&sim);
        sim.publish(p, "m", &"x".repeat(100), Q1, false);
        sim.publish(p, "m", "fits", Q1, false);
        sim.run();
        for c in [small, aliased] {
            let got = sim.clients[c].take_messages();
            assert_eq!(got.len(), 1, "[MQTT-3.1.2-25]: the large message is not sent");
            assert_eq!(&got[0].payload[..], b"fits");
        }
        assert_eq!(dropped(&sim) - before, 2, "each skipped delivery is counted");
        // Above the broker's maximum: the decoder refuses it, DISCONNECT 0x95.
        sim.publish(p, "m", &"y".repeat(3000), Q0, false);
        sim.run();
        assert!(sim.clients[p].closed);
        let reasons = disconnect_reasons(&sim.clients[p].take_packets());
        assert_eq!(reasons, [ReasonCode::PACKET_TOO_LARGE]);
    }
}

#[test]
fn publish_properties_pass_through_unchanged_and_in_order() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let fast = sim.client(&sim.id_on("fast", 0), V5);
        connect_v5(&mut sim, fast, Properties::default());
        let custom = sim.client(&sim.id_on("custom", 1), V5);
        connect_v5(
            &mut sim,
            custom,
            Properties { topic_alias_maximum: Some(1), ..Default::default() },
        );
        sim.subscribe(fast, &[("pt/#", Q1)]);
        subscribe_opts(&mut sim, custom, &[("pt/#", opts(Q2))], Some(5));
        let v3 = sim.client(&sim.id_on("v3", 1), V3);
        sim.connect(v3);
        sim.subscribe(v3, &[("pt/#", Q1)]);
        let user = |k: &str, v: &str| (ByteStr::from(k), ByteStr::from(v));
        let props = Properties {
            payload_format_indicator: Some(1),
            content_type: Some(ByteStr::from("text/plain")),
            response_topic: Some(ByteStr::from("pt/reply")),
            correlation_data: Some(Bytes::from_static(&[0, 1, 2, 255])),
            user_properties: vec![user("k", "2"), user("a", "1"), user("k", "1")],
            ..Properties::default()
        };
        let p = sim.client(&sim.id_on("p", 1), V5);
        connect_v5(&mut sim, p, Properties::default());
        publish_props(&mut sim, p, "pt/x", "body", Q1, false, props.clone());
        sim.run();
        let got = sim.clients[fast].take_messages();
        assert_eq!(got[0].properties.as_deref(), Some(&props));
        let got = sim.clients[custom].take_messages();
        let expected =
            Properties { topic_alias: Some(1), subscription_identifiers: vec![5], ..props.clone() };
        assert_eq!(got[0].properties.as_deref(), Some(&expected));
        assert_eq!(got[0].qos, Q1);
        let got = sim.clients[v3].take_messages();
        assert_eq!((got[0].topic.as_str(), &got[0].payload[..]), ("pt/x", &b"body"[..]));
    }
}

#[test]
fn no_local_retain_as_published_and_retain_handling() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let a = sim.client(&sim.id_on("a", 0), V5);
        connect_v5(&mut sim, a, Properties::default());
        let b = sim.client(&sim.id_on("b", 1), V5);
        connect_v5(&mut sim, b, Properties::default());
        // No Local [MQTT-3.8.3-3]: a does not get its own messages, b does.
        let no_local = SubscriptionOptions { no_local: true, ..opts(Q1) };
        subscribe_opts(&mut sim, a, &[("nl", no_local)], None);
        subscribe_opts(&mut sim, b, &[("nl", no_local)], None);
        sim.publish(a, "nl", "from a", Q1, false);
        sim.run();
        assert!(sim.clients[a].take_messages().is_empty());
        assert_eq!(sim.clients[b].take_payloads(), ["from a"]);

        // Retain As Published [MQTT-3.3.1-12]/[MQTT-3.3.1-13].
        let rap = SubscriptionOptions { retain_as_published: true, ..opts(Q0) };
        subscribe_opts(&mut sim, a, &[("rap", rap)], None);
        subscribe_opts(&mut sim, b, &[("rap", opts(Q0))], None);
        sim.publish(b, "rap", "r", Q0, true);
        sim.run();
        assert!(sim.clients[a].take_messages()[0].retain);
        assert!(!sim.clients[b].take_messages()[0].retain);

        // Retain Handling [MQTT-3.3.1-9]/[MQTT-3.3.1-10]/[MQTT-3.3.1-11]: 0 sends at every
        // subscribe, 1 only when the subscription is new, 2 never.
        let handling = |h| SubscriptionOptions { retain_handling: h, ..opts(Q0) };
        let c = sim.client(&sim.id_on("c", 1), V5);
        connect_v5(&mut sim, c, Properties::default());
        for (h, first, again) in [
            (RetainHandling::SendAtSubscribe, 1, 1),
            (RetainHandling::SendIfNew, 1, 0),
            (RetainHandling::DoNotSend, 0, 0),
        ] {
            sim.unsubscribe(c, &["rap"]);
            subscribe_opts(&mut sim, c, &[("rap", handling(h))], None);
            assert_eq!(sim.clients[c].take_messages().len(), first, "{h:?} new");
            subscribe_opts(&mut sim, c, &[("rap", handling(h))], None);
            assert_eq!(sim.clients[c].take_messages().len(), again, "{h:?} existing");
        }
    }
}

#[test]
fn connack_flags_and_response_information() {
    let mut sim = Sim::new(2, 0);
    let c = sim.client("flags", V5);
    let ack = connect_v5(
        &mut sim,
        c,
        Properties { request_response_information: Some(1), ..Default::default() },
    );
    assert_eq!(ack.response_information.as_deref(), Some("response/flags"));
    assert_eq!(ack.subscription_identifier_available, Some(1));
    assert_eq!(ack.topic_alias_maximum, Some(Limits::default().topic_alias_max));
    // Maximum QoS, Retain Available, Wildcard Subscription Available: absent = supported.
    assert_eq!((ack.maximum_qos, ack.retain_available), (None, None));
    assert_eq!(ack.wildcard_subscription_available, None);
    let d = sim.client("plain", V5);
    let ack = connect_v5(&mut sim, d, Properties::default());
    assert_eq!(ack.response_information, None, "only when requested");
}

#[test]
fn disconnect_cannot_set_an_expiry_after_connecting_with_zero() {
    let mut sim = Sim::new(2, 0);
    let c = sim.client("zero", V5);
    connect_v5(&mut sim, c, Properties::default());
    let props = Properties { session_expiry_interval_secs: Some(60), ..Default::default() };
    let d = Disconnect { reason: ReasonCode::SUCCESS, properties: Some(Box::new(props.clone())) };
    sim.send(c, &Packet::Disconnect(d.clone()));
    sim.run();
    assert!(sim.clients[c].closed);
    // [MQTT-3.14.2-2]: a Protocol Error, answered with DISCONNECT 0x82.
    let reasons = disconnect_reasons(&sim.clients[c].take_packets());
    assert_eq!(reasons, [ReasonCode::PROTOCOL_ERROR]);

    // Non-zero at CONNECT: DISCONNECT may change it (here to 0, ending the session).
    let k = sim.client("keep", V5);
    let ack = sim.connect_with(k, ConnectOpts { properties: props, ..Default::default() });
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    let zero = Properties { session_expiry_interval_secs: Some(0), ..Default::default() };
    let d = Disconnect { reason: ReasonCode::SUCCESS, properties: Some(Box::new(zero)) };
    sim.send(k, &Packet::Disconnect(d));
    sim.run();
    let home = sim.home("keep");
    assert_eq!(sim.shards[home].sessions.find(&ByteStr::from("keep")), None);
    assert!(sim.clients[k].take_packets().is_empty(), "a normal close: no DISCONNECT back");
}

#[test]
fn qos_downgrade_applies_on_the_custom_path() {
    let mut sim = Sim::new(2, 1);
    let s = sim.client("down", V5);
    connect_v5(&mut sim, s, Properties { topic_alias_maximum: Some(1), ..Default::default() });
    subscribe_opts(&mut sim, s, &[("d", opts(Q0))], Some(1));
    let p = sim.client("pub", V5);
    connect_v5(&mut sim, p, Properties::default());
    sim.publish(p, "d", "x", QoS::ExactlyOnce, false);
    sim.run();
    let got = sim.clients[s].take_messages();
    assert_eq!((got[0].qos, got[0].packet_id), (Q0, None));
}
