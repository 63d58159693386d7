//! Shared subscriptions `$share/{name}/{filter}`: one member per message, round-robin across
//! shards, members leaving, mixing with ordinary subscriptions, no retained messages, the
//! SUBACK gate through the group's owner.

use shardmq_codec::{ByteStr, Packet, Subscribe, SubscriptionOptions};

use super::*;
use crate::core::ids::ShardId;
use crate::core::limits::Limits;
use crate::core::shard::ShardCore;
use crate::core::sim::{ConnectOpts, Sim};

/// Payloads `p0..p{count}` published by `p` on `topic` at `qos`, then run.
fn publish_numbered(sim: &mut Sim, p: usize, topic: &str, range: std::ops::Range<usize>) {
    for i in range {
        sim.publish(p, topic, &format!("p{i}"), Q1, false);
    }
    sim.run();
}

/// The payload numbers a client received, taken.
fn numbers(sim: &mut Sim, c: usize) -> Vec<usize> {
    sim.clients[c]
        .take_payloads()
        .into_iter()
        .map(|s| s.trim_start_matches('p').parse().expect("numbered payload"))
        .collect()
}

/// Members on shards 0, 1, 2, … (modulo the shard count), alternating 5.0 and 3.1.1, each
/// subscribed to `filter` in turn; and a publisher on the last shard.
fn group(sim: &mut Sim, n: u16, count: usize, filter: &str) -> (Vec<usize>, usize) {
    let members: Vec<usize> = (0..count)
        .map(|i| {
            let id = sim.id_on(&format!("m{i}"), i % usize::from(n));
            sim.client(&id, if i % 2 == 0 { V5 } else { V3 })
        })
        .collect();
    for &m in &members {
        sim.connect(m);
        assert_eq!(sim.subscribe(m, &[(filter, Q1)]), [ReasonCode::GRANTED_QOS_1]);
    }
    let p = sim.client(&sim.id_on("pub", usize::from(n) - 1), V5);
    sim.connect(p);
    (members, p)
}

#[test]
fn each_message_goes_to_exactly_one_member_round_robin() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let (members, p) = group(&mut sim, n, 3, "$share/g/t/#");
        publish_numbered(&mut sim, p, "t/x", 0..30);
        let mut all = Vec::new();
        for &m in &members {
            let got = numbers(&mut sim, m);
            // Round-robin over three members: exactly 10 each, in publish order.
            assert_eq!(got.len(), 10, "n={n} seed={seed} member {m}: {got:?}");
            assert!(got.windows(2).all(|w| w[0] < w[1]), "n={n} seed={seed} order {got:?}");
            all.extend(got);
        }
        all.sort_unstable();
        assert_eq!(all, (0..30).collect::<Vec<_>>(), "n={n} seed={seed}: once each");
        // One route to the owner, however many members: one mesh message per publish at most.
        let owner = usize::from(ShardCore::home_shard(b"$share/g/t/#", n).0);
        assert_eq!(sim.shards[owner].shared.member_count("$share/g/t/#"), 3);
        assert!(sim.shards.iter().all(|s| s.routes.count("t/#", ShardId(owner as u16)) == 1));
    }
}

#[test]
fn two_groups_each_get_every_message_once() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let (a, p) = group(&mut sim, n, 2, "$share/a/t");
        let b = sim.client(&sim.id_on("b", 0), V3);
        sim.connect(b);
        sim.subscribe(b, &[("$share/b/t", Q1)]);
        publish_numbered(&mut sim, p, "t", 0..8);
        let mut got_a = [numbers(&mut sim, a[0]), numbers(&mut sim, a[1])].concat();
        got_a.sort_unstable();
        assert_eq!(got_a, (0..8).collect::<Vec<_>>(), "n={n} seed={seed}");
        assert_eq!(numbers(&mut sim, b), (0..8).collect::<Vec<_>>(), "n={n} seed={seed}");
    }
}

#[test]
fn remaining_members_get_everything_after_a_member_leaves() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let (m, p) = group(&mut sim, n, 3, "$share/g/t");
        publish_numbered(&mut sim, p, "t", 0..6);
        for &c in &m {
            assert_eq!(numbers(&mut sim, c).len(), 2, "n={n} seed={seed}");
        }
        // UNSUBSCRIBE: the other two share what follows.
        sim.unsubscribe(m[2], &["$share/g/t"]);
        publish_numbered(&mut sim, p, "t", 6..16);
        let (g0, g1) = (numbers(&mut sim, m[0]), numbers(&mut sim, m[1]));
        assert_eq!((g0.len(), g1.len()), (5, 5), "n={n} seed={seed}: {g0:?} {g1:?}");
        assert!(numbers(&mut sim, m[2]).is_empty());
        let mut all = [g0, g1].concat();
        all.sort_unstable();
        assert_eq!(all, (6..16).collect::<Vec<_>>());
        // The session ends with its connection (clean, expiry 0): the last one gets all.
        sim.drop_conn(m[1]);
        sim.run();
        publish_numbered(&mut sim, p, "t", 16..26);
        assert_eq!(numbers(&mut sim, m[0]), (16..26).collect::<Vec<_>>(), "n={n} seed={seed}");
        // The last member gone, the group and its route are gone everywhere.
        sim.disconnect(m[0], ReasonCode::SUCCESS);
        assert!(sim.shards.iter().all(|s| s.shared.len() == 0 && s.routes.is_empty()));
    }
}

#[test]
fn a_leaving_members_unsent_messages_go_to_another_member() {
    for (n, seed) in configs() {
        let limits = Limits { inflight_out_max: 1, ..Limits::default() };
        let mut sim = Sim::with_limits(n, seed, limits);
        let (m, p) = group(&mut sim, n, 2, "$share/g/t");
        // Member 0 never acknowledges: it holds one message inflight, the rest queue.
        sim.clients[m[0]].auto_ack = false;
        publish_numbered(&mut sim, p, "t", 0..10);
        assert_eq!(numbers(&mut sim, m[0]), [0], "n={n} seed={seed}: window of one");
        assert_eq!(numbers(&mut sim, m[1]), [1, 3, 5, 7, 9], "n={n} seed={seed}");
        // Its session ends: the inflight (unacknowledged) and queued ones go to member 1.
        sim.drop_conn(m[0]);
        sim.run();
        let mut got = numbers(&mut sim, m[1]);
        got.sort_unstable();
        assert_eq!(got, [0, 2, 4, 6, 8], "n={n} seed={seed}");
        // A member that UNSUBSCRIBEs hands back what it has queued, not what is inflight.
        let c = sim.client(&sim.id_on("late", 0), V3);
        sim.connect(c);
        sim.subscribe(c, &[("$share/g/t", Q1)]);
        sim.clients[c].auto_ack = false;
        publish_numbered(&mut sim, p, "t", 10..16);
        let got_c = numbers(&mut sim, c);
        let mut got_1 = numbers(&mut sim, m[1]);
        assert_eq!(got_c.len(), 1, "n={n} seed={seed}: {got_c:?}");
        assert_eq!(got_1.len(), 3, "n={n} seed={seed}: {got_1:?}");
        sim.unsubscribe(c, &["$share/g/t"]);
        got_1.extend(numbers(&mut sim, m[1]));
        let mut all = [got_c, got_1].concat();
        all.sort_unstable();
        assert_eq!(all, (10..16).collect::<Vec<_>>(), "n={n} seed={seed}");
    }
}

#[test]
fn ordinary_and_shared_subscribers_on_one_filter() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let (m, p) = group(&mut sim, n, 2, "$share/g/t/+");
        let plain: Vec<usize> = (0..usize::from(n))
            .map(|s| {
                let id = sim.id_on("plain", s);
                sim.client(&id, V3)
            })
            .collect();
        for &c in &plain {
            sim.connect(c);
            sim.subscribe(c, &[("t/+", Q1)]);
        }
        publish_numbered(&mut sim, p, "t/a", 0..20);
        for &c in &plain {
            assert_eq!(numbers(&mut sim, c), (0..20).collect::<Vec<_>>(), "n={n} seed={seed}");
        }
        let (g0, g1) = (numbers(&mut sim, m[0]), numbers(&mut sim, m[1]));
        assert_eq!((g0.len(), g1.len()), (10, 10), "n={n} seed={seed}");
        let mut all = [g0, g1].concat();
        all.sort_unstable();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
    }
}

#[test]
fn retained_messages_are_not_sent_on_shared_subscriptions() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let p = sim.client(&sim.id_on("pub", 0), V5);
        sim.connect(p);
        sim.publish(p, "r/1", "kept", Q1, true);
        sim.run();
        let m = sim.client(&sim.id_on("m", usize::from(n) - 1), V5);
        let plain = sim.client(&sim.id_on("plain", usize::from(n) - 1), V5);
        sim.connect(m);
        sim.connect(plain);
        sim.subscribe(m, &[("$share/g/r/#", Q1)]);
        sim.subscribe(plain, &[("r/#", Q1)]);
        assert!(sim.clients[m].take_messages().is_empty(), "n={n} seed={seed}");
        assert_eq!(sim.clients[plain].take_payloads(), ["kept"]);
        // A new retained publication reaches the member as an ordinary message (RETAIN 0
        // without Retain As Published [MQTT-3.3.1-9]).
        sim.publish(p, "r/1", "new", Q1, true);
        sim.run();
        let got = sim.clients[m].take_messages();
        assert_eq!(got.len(), 1);
        assert!(!got[0].retain);
    }
}

#[test]
fn suback_waits_until_every_shard_routes_to_the_owner() {
    for seed in 0..4 {
        let n = 4u16;
        let mut sim = Sim::new(n, seed);
        // The member on shard 0, the owner on another shard, a publisher on a third.
        let name = (0..)
            .map(|i| format!("$share/g{i}/t"))
            .find(|f| ShardCore::home_shard(f.as_bytes(), n).0 == 1)
            .expect("found");
        let m = sim.client(&sim.id_on("m", 0), V5);
        let p = sim.client(&sim.id_on("p", 2), V3);
        sim.connect(m);
        sim.connect(p);
        // Hold the owner's routing delta to the publisher's shard.
        sim.paused.insert((1, 2));
        let packet_id = sim.clients[m].next_packet_id();
        let filters = vec![(
            ByteStr::from(name.as_str()),
            SubscriptionOptions { qos: Q1, ..Default::default() },
        )];
        sim.send(m, &Packet::Subscribe(Subscribe { packet_id, filters, properties: None }));
        sim.run();
        assert_eq!(sim.take_suback(m, packet_id), None, "seed={seed}: SUBACK before the route");
        sim.paused.clear();
        sim.run();
        assert_eq!(sim.take_suback(m, packet_id), Some(vec![ReasonCode::GRANTED_QOS_1]));
        sim.publish(p, "t", "after", Q1, false);
        sim.run();
        assert_eq!(sim.clients[m].take_payloads(), ["after"], "seed={seed}");
    }
}

#[test]
fn persistent_member_keeps_its_place_across_reconnects() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let persistent = ConnectOpts {
            clean_start: false,
            properties: shardmq_codec::Properties {
                session_expiry_interval_secs: Some(60),
                ..Default::default()
            },
            ..Default::default()
        };
        let m0 = sim.client(&sim.id_on("durable", 0), V5);
        sim.connect_with(m0, persistent.clone());
        sim.subscribe(m0, &[("$share/g/t", Q1)]);
        let (m, p) = group(&mut sim, n, 1, "$share/g/t");
        // Offline, member 0 is still a member: its share is queued and sent when it returns.
        sim.drop_conn(m0);
        sim.run();
        publish_numbered(&mut sim, p, "t", 0..4);
        assert_eq!(numbers(&mut sim, m[0]), [1, 3], "n={n} seed={seed}");
        let ack = sim.connect_with(m0, persistent);
        assert!(ack.session_present);
        assert_eq!(numbers(&mut sim, m0), [0, 2], "n={n} seed={seed}");
        // A clean start ends the session: it leaves the group.
        sim.drop_conn(m0);
        sim.connect(m0);
        publish_numbered(&mut sim, p, "t", 4..8);
        assert!(numbers(&mut sim, m0).is_empty());
        assert_eq!(numbers(&mut sim, m[0]), [4, 5, 6, 7], "n={n} seed={seed}");
    }
}
