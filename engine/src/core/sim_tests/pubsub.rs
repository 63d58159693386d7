//! Pub/sub across shards: QoS flows, ordering, wildcards, retained, the SUBACK gate, fan-out.

use std::time::Duration;

use bytes::Bytes;
use shardmq_codec::{ByteStr, Packet, PacketId, ProtocolVersion, PubResp, Publish, ReasonCode};

use super::*;
use crate::core::limits::Limits;
use crate::core::sim::Sim;

#[test]
fn pubsub_across_shards_at_every_qos_exactly_once_in_order() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let ids: Vec<(String, ProtocolVersion)> = (0..usize::from(n))
            .flat_map(|s| [(sim.id_on("sub", s), V3), (sim.id_on(&format!("sub5-{s}"), s), V5)])
            .collect();
        let subs: Vec<usize> = ids.iter().map(|(id, v)| sim.client(id, *v)).collect();
        for &c in &subs {
            sim.connect(c);
            assert_eq!(sim.subscribe(c, &[("t/#", Q2)]), [ReasonCode::GRANTED_QOS_2]);
        }
        let pubs: Vec<usize> = (0..usize::from(n))
            .map(|s| {
                let id = sim.id_on("pub", s);
                sim.client(&id, if s % 2 == 0 { V5 } else { V3 })
            })
            .collect();
        for &p in &pubs {
            sim.connect(p);
        }
        // Interleave publishers; run the mesh only now and then so messages pile up.
        for i in 0..30 {
            for (k, &p) in pubs.iter().enumerate() {
                let qos = [Q0, Q1, Q2][(i + k) % 3];
                sim.publish(p, &format!("t/{k}"), &format!("{k}:{i}"), qos, false);
            }
            if sim.rng.index(3) == 0 {
                sim.run();
            }
        }
        sim.run();
        for &c in &subs {
            let msgs = sim.clients[c].take_messages();
            assert_eq!(msgs.len(), 30 * pubs.len(), "n={n} seed={seed} client {c}");
            for (k, _) in pubs.iter().enumerate() {
                let got: Vec<String> = msgs
                    .iter()
                    .filter(|m| *m.topic == format!("t/{k}"))
                    .map(|m| {
                        assert!(!m.retain && !m.dup);
                        String::from_utf8(m.payload.to_vec()).unwrap()
                    })
                    .collect();
                let want: Vec<String> = (0..30).map(|i| format!("{k}:{i}")).collect();
                assert_eq!(got, want, "n={n} seed={seed} publisher {k} order");
            }
            for (i, m) in msgs.iter().enumerate() {
                // The subscription grants 2: each message keeps its published QoS.
                let _ = i;
                assert_eq!(m.qos == Q0, m.packet_id.is_none());
            }
        }
        // Publishers got exactly one ack per QoS 1/2 message (PUBACK or PUBREC+PUBCOMP).
        for &p in &pubs {
            let packets = sim.clients[p].take_packets();
            let pubacks = packets.iter().filter(|x| matches!(x, Packet::PubAck(_))).count();
            let pubcomps = packets.iter().filter(|x| matches!(x, Packet::PubComp(_))).count();
            assert_eq!(pubacks, 10, "n={n} seed={seed}");
            assert_eq!(pubcomps, 10, "n={n} seed={seed}");
        }
    }
}

#[test]
fn qos_is_downgraded_to_the_subscription_maximum() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let s0 = sim.client(&sim.id_on("s0", 0), V3);
        let s1 = sim.client(&sim.id_on("s1", 1), V5);
        let p = sim.client(&sim.id_on("p", usize::from(n) - 1), V3);
        for c in [s0, s1, p] {
            sim.connect(c);
        }
        sim.subscribe(s0, &[("a", Q0)]);
        sim.subscribe(s1, &[("a", Q1)]);
        sim.publish(p, "a", "x", Q2, false);
        sim.run();
        let m0 = sim.clients[s0].take_messages();
        let m1 = sim.clients[s1].take_messages();
        assert_eq!((m0.len(), m0[0].qos), (1, Q0));
        assert_eq!((m1.len(), m1[0].qos), (1, Q1));
    }
}

#[test]
fn wildcards_and_the_dollar_rule() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let a = sim.client(&sim.id_on("a", 0), V3);
        let b = sim.client(&sim.id_on("b", 1), V3);
        let p = sim.client(&sim.id_on("p", usize::from(n) - 1), V3);
        for c in [a, b, p] {
            sim.connect(c);
        }
        sim.subscribe(a, &[("#", Q0)]);
        sim.subscribe(b, &[("+/x/+", Q0), ("$ctl/#", Q0)]);
        for t in ["q/x/1", "q/x", "$ctl/x/1", "q/y/1", "/x/"] {
            sim.publish(p, t, t, Q0, false);
        }
        sim.run();
        // `#` does not match `$ctl/...` [MQTT-4.7.2-1].
        assert_eq!(sim.clients[a].take_payloads(), ["q/x/1", "q/x", "q/y/1", "/x/"]);
        assert_eq!(sim.clients[b].take_payloads(), ["q/x/1", "$ctl/x/1", "/x/"]);
    }
}

#[test]
fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let s = sim.client(&sim.id_on("s", 1), V3);
        let p = sim.client(&sim.id_on("p", 0), V3);
        sim.connect(s);
        sim.connect(p);
        sim.subscribe(s, &[("a/#", Q0), ("a/+", Q1), ("a/b", Q0), ("#", Q0)]);
        sim.publish(p, "a/b", "m", Q2, false);
        sim.run();
        let msgs = sim.clients[s].take_messages();
        assert_eq!(msgs.len(), 1, "one copy [MQTT-3.3.5-1]");
        assert_eq!(msgs[0].qos, Q1);
    }
}

#[test]
fn retained_set_replace_clear_and_wildcard_subscribe_on_another_shard() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let p = sim.client(&sim.id_on("p", 0), V3);
        sim.connect(p);
        sim.publish(p, "r/1", "one", Q1, true);
        sim.publish(p, "r/2", "two", Q0, true);
        sim.publish(p, "r/2", "two'", Q0, true);
        sim.publish(p, "r/3", "three", Q1, true);
        sim.publish(p, "r/3", "", Q1, true);
        sim.publish(p, "$r/4", "dollar", Q0, true);
        sim.run();
        for s in 0..usize::from(n) {
            let c = sim.client(&sim.id_on(&format!("s{s}"), s), V5);
            sim.connect(c);
            sim.subscribe(c, &[("r/+", Q1)]);
            let mut msgs = sim.clients[c].take_messages();
            msgs.sort_by(|x, y| x.topic.cmp(&y.topic));
            let got: Vec<(String, String, bool, QoS)> = msgs
                .iter()
                .map(|m| {
                    let payload = String::from_utf8(m.payload.to_vec()).unwrap();
                    (m.topic.to_string(), payload, m.retain, m.qos)
                })
                .collect();
            assert_eq!(
                got,
                [("r/1".into(), "one".into(), true, Q1), ("r/2".into(), "two'".into(), true, Q0)],
                "n={n} seed={seed} shard {s}"
            );
            // `#` does not see `$r/4`; `$r/#` does.
            sim.subscribe(c, &[("#", Q0)]);
            assert_eq!(sim.clients[c].take_messages().len(), 2);
            sim.subscribe(c, &[("$r/#", Q0)]);
            assert_eq!(sim.clients[c].take_payloads(), ["dollar"]);
            // A live message to an established subscription has RETAIN = 0 [MQTT-3.3.1-9],
            // and clearing is delivered too.
            sim.publish(p, "x/live", "live", Q0, true);
            sim.publish(p, "x/live", "", Q0, true);
            sim.run();
            let live = sim.clients[c].take_messages();
            assert_eq!(live.len(), 2);
            assert!(live.iter().all(|m| !m.retain));
        }
    }
}

#[test]
fn qos2_duplicate_publish_is_not_routed_twice() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let s = sim.client(&sim.id_on("s", 1), V3);
        let p = sim.client(&sim.id_on("p", 0), V5);
        sim.connect(s);
        sim.connect(p);
        sim.subscribe(s, &[("d", Q2)]);
        sim.clients[p].auto_ack = false;
        let mk = |dup| Publish {
            dup,
            qos: Q2,
            retain: false,
            topic: ByteStr::from("d"),
            packet_id: PacketId::new(7),
            payload: Bytes::from_static(b"once"),
            properties: None,
        };
        sim.send(p, &Packet::Publish(mk(false)));
        sim.run();
        sim.send(p, &Packet::Publish(mk(true)));
        sim.run();
        let pubrecs = sim.clients[p]
            .take_packets()
            .into_iter()
            .filter(|x| matches!(x, Packet::PubRec(_)))
            .count();
        assert_eq!(pubrecs, 2);
        let id = PacketId::new(7).unwrap();
        sim.send(
            p,
            &Packet::PubRel(PubResp {
                packet_id: id,
                reason: ReasonCode::SUCCESS,
                properties: None,
            }),
        );
        sim.run();
        assert!(
            matches!(&sim.clients[p].take_packets()[..], [Packet::PubComp(c)] if c.reason == ReasonCode::SUCCESS)
        );
        assert_eq!(sim.clients[s].take_payloads(), ["once"]);
        // After PUBREL the id is free: the same id is a new message.
        sim.send(p, &Packet::Publish(mk(false)));
        sim.run();
        assert_eq!(sim.clients[s].take_payloads(), ["once"]);
    }
}

#[test]
fn suback_waits_for_every_peers_delta_ack() {
    for seed in 0..4 {
        let mut sim = Sim::new(4, seed);
        let s = sim.client(&sim.id_on("s", 0), V3);
        sim.connect(s);
        let p = sim.client(&sim.id_on("p", 3), V3);
        sim.connect(p);
        sim.paused.insert((3, 0)); // shard 3's acks to shard 0 are held
        let id = sim.clients[s].next_packet_id();
        let filters = vec![(
            ByteStr::from("g/#"),
            shardmq_codec::SubscriptionOptions { qos: Q1, ..Default::default() },
        )];
        sim.send(
            s,
            &Packet::Subscribe(shardmq_codec::Subscribe {
                packet_id: id,
                filters,
                properties: None,
            }),
        );
        sim.run();
        assert!(sim.take_suback(s, id).is_none(), "shard 3 has not acked yet");
        assert_eq!(sim.ring_len(3, 0), 1);
        sim.paused.clear();
        sim.run();
        assert_eq!(sim.take_suback(s, id), Some(vec![ReasonCode::GRANTED_QOS_1]));
        // A publish made after SUBACK, on any shard, reaches the subscription.
        sim.publish(p, "g/1", "after", Q1, false);
        sim.run();
        assert_eq!(sim.clients[s].take_payloads(), ["after"]);
        // A second subscriber on shard 0 to the same filter while a delta is in flight for
        // another filter waits too (the gate covers every earlier delta).
        let s2 = sim.client(&sim.id_on("s2", 0), V3);
        sim.connect(s2);
        sim.paused.insert((2, 0));
        let id1 = sim.clients[s].next_packet_id();
        let f = |t: &str| vec![(ByteStr::from(t), shardmq_codec::SubscriptionOptions::default())];
        sim.send(
            s,
            &Packet::Subscribe(shardmq_codec::Subscribe {
                packet_id: id1,
                filters: f("h"),
                properties: None,
            }),
        );
        let id2 = sim.clients[s2].next_packet_id();
        sim.send(
            s2,
            &Packet::Subscribe(shardmq_codec::Subscribe {
                packet_id: id2,
                filters: f("h"),
                properties: None,
            }),
        );
        sim.run();
        assert!(sim.take_suback(s2, id2).is_none());
        sim.paused.clear();
        sim.run();
        assert!(sim.take_suback(s, id1).is_some());
        assert!(sim.take_suback(s2, id2).is_some());
    }
}

#[test]
fn a_thousand_subscribers_each_receive_every_message_once_in_order() {
    for (n, seed) in [(2u16, 1u64), (4, 2)] {
        let mut sim = Sim::new(n, seed);
        let subs: Vec<usize> = (0..1000)
            .map(|i| {
                let v = if i % 3 == 0 { V5 } else { V3 };
                sim.client(&format!("fan-{i}"), v)
            })
            .collect();
        for &c in &subs {
            sim.connect(c);
            let qos = [Q0, Q1, Q2][c % 3];
            sim.subscribe(c, &[("fan/out", qos)]);
        }
        let p = sim.client("fan-publisher", V3);
        sim.connect(p);
        sim.mesh_publishes = 0;
        for i in 0..20 {
            sim.publish(p, "fan/out", &i.to_string(), [Q0, Q1, Q2][i % 3], false);
        }
        sim.run();
        let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        for &c in &subs {
            assert_eq!(sim.clients[c].take_payloads(), want, "client {c}");
        }
        // One mesh message per remote shard, not per subscriber.
        assert_eq!(sim.mesh_publishes, 20 * (usize::from(n) - 1));
    }
}

#[test]
fn outbound_window_queues_in_order_and_acks_release_it() {
    let limits = Limits { inflight_out_max: 2, ..Limits::default() };
    for seed in 0..4 {
        let mut sim = Sim::with_limits(2, seed, limits.clone());
        let s = sim.client(&sim.id_on("s", 1), V3);
        let p = sim.client(&sim.id_on("p", 0), V3);
        sim.connect(s);
        sim.connect(p);
        sim.subscribe(s, &[("w", Q1)]);
        sim.clients[s].auto_ack = false;
        for i in 0..5 {
            sim.publish(p, "w", &i.to_string(), if i == 2 { Q0 } else { Q1 }, false);
        }
        sim.run();
        let first = sim.clients[s].take_messages();
        // A window of 2 QoS 1 messages; QoS 0 needs no slot and nothing is queued before it.
        assert_eq!(first.len(), 3);
        assert_eq!(&first[2].payload[..], b"2");
        let ack = |m: &Publish| {
            Packet::PubAck(PubResp {
                packet_id: m.packet_id.unwrap(),
                reason: ReasonCode::SUCCESS,
                properties: None,
            })
        };
        sim.send(s, &ack(&first[0]));
        sim.run();
        let next = sim.clients[s].take_payloads();
        assert_eq!(next, ["3"]);
        sim.clients[s].auto_ack = true;
        sim.send(s, &ack(&first[1]));
        sim.run();
        assert_eq!(sim.clients[s].take_payloads(), ["4"]);
    }
}

#[test]
fn qos0_to_a_stalled_connection_is_dropped_and_counted() {
    let limits = Limits {
        packet_size_max_bytes: 4096,
        connection_tx_bytes_max: 4096,
        connection_tx_bytes_pause: 4096,
        ..Limits::default()
    };
    let mut sim = Sim::with_limits(2, 0, limits);
    let s = sim.client(&sim.id_on("s", 1), V3);
    let p = sim.client(&sim.id_on("p", 0), V3);
    sim.connect(s);
    sim.connect(p);
    sim.subscribe(s, &[("z", Q0)]);
    sim.clients[s].stalled = true;
    let payload = "x".repeat(1000);
    for _ in 0..10 {
        sim.publish(p, "z", &payload, Q0, false);
    }
    sim.run();
    sim.advance(Duration::from_secs(1));
    let dropped: u64 = sim
        .stats
        .shards
        .iter()
        .map(|s| s.messages_dropped.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(dropped, 5, "4096 bytes hold 5 frames; the rest are dropped");
}

#[test]
fn sys_topics_are_published_retained_and_clients_cannot_publish_them() {
    let mut sim = Sim::new(2, 0);
    let s = sim.client(&sim.id_on("s", 1), V3);
    sim.connect(s);
    sim.subscribe(s, &[("$SYS/#", Q0)]);
    sim.publish(s, "$SYS/broker/version", "forged", Q0, false);
    sim.run();
    assert!(sim.clients[s].take_messages().is_empty());
    sim.advance(Duration::from_secs(11));
    let msgs = sim.clients[s].take_messages();
    let topics: Vec<String> = msgs.iter().map(|m| m.topic.to_string()).collect();
    assert!(topics.contains(&"$SYS/broker/clients/connected".to_string()), "{topics:?}");
    let connected = msgs.iter().find(|m| &*m.topic == "$SYS/broker/clients/connected").unwrap();
    assert_eq!(&connected.payload[..], b"1");
    // Retained: a later subscriber gets them at once.
    let late = sim.client(&sim.id_on("late", 0), V3);
    sim.connect(late);
    sim.subscribe(late, &[("$SYS/broker/version", Q0)]);
    let v = sim.clients[late].take_messages();
    assert_eq!(v.len(), 1);
    assert!(v[0].retain && v[0].payload.starts_with(b"shardmq "));
}

#[test]
fn unsubscribe_stops_delivery_and_removes_routes() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let s = sim.client(&sim.id_on("s", 1), V5);
        let p = sim.client(&sim.id_on("p", 0), V3);
        sim.connect(s);
        sim.connect(p);
        sim.subscribe(s, &[("u/+", Q1), ("u/x", Q0)]);
        sim.unsubscribe(s, &["u/+", "nope"]);
        let unsuback = sim.clients[s].take_packets();
        match &unsuback[..] {
            [Packet::UnsubAck(u)] => {
                assert_eq!(u.reasons, [ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED])
            }
            other => panic!("{other:?}"),
        }
        sim.publish(p, "u/x", "1", Q1, false);
        sim.publish(p, "u/y", "2", Q1, false);
        sim.run();
        let msgs = sim.clients[s].take_messages();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].qos, Q0, "only u/x (QoS 0) remains");
        sim.unsubscribe(s, &["u/x"]);
        let routes: usize = sim.shards.iter().map(|sh| sh.routes.len()).sum();
        assert_eq!(routes, 0);
    }
}

/// The core has no hidden randomness (`core/hash.rs`): two runs with one seed replay retained
/// messages, whose order follows the retained store's hash tables, in the same order.
#[test]
fn one_seed_one_trace_retained_replay_order_included() {
    let trace = |seed: u64| {
        let mut sim = Sim::new(2, seed);
        let id = sim.id_on("pub", 0);
        let p = sim.client(&id, V3);
        sim.connect(p);
        for i in 0..32 {
            sim.publish(p, &format!("r/{i}/x"), &i.to_string(), Q0, true);
        }
        sim.run();
        let id = sim.id_on("sub", 1);
        let s = sim.client(&id, V3);
        sim.connect(s);
        sim.subscribe(s, &[("r/#", Q0)]);
        sim.run();
        sim.clients[s].take_payloads()
    };
    for seed in 0..4 {
        let first = trace(seed);
        assert_eq!(first.len(), 32);
        assert_eq!(first, trace(seed), "seed {seed}");
    }
}
