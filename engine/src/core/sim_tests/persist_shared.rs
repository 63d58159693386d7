//! Shared subscriptions with persistence: the chained durability round trip (owner → member
//! shard) under random slow fsyncs and crashes, with groups owned by different shards that
//! forward to each other (the case that would deadlock if answers waited for each other in
//! a cycle).

use std::collections::BTreeSet;

use shardmq_codec::Packet;

use super::*;
use crate::core::ids::ShardId;
use crate::core::shard::ShardCore;
use crate::core::sim::{ConnectOpts, Sim};

/// A group name `$share/{prefix}{i}/r/#` owned by `shard`.
fn group_owned_by(prefix: &str, shard: u16, n: u16) -> String {
    (0..)
        .map(|i| format!("$share/{prefix}{i}/r/#"))
        .find(|g| ShardCore::home_shard(g.as_bytes(), n) == ShardId(shard))
        .expect("a group on every shard")
}

fn persistent() -> ConnectOpts {
    ConnectOpts { clean_start: false, ..ConnectOpts::default() }
}

/// Every QoS 1 PUBLISH is acknowledged once the slow shards catch up (no cycle between the
/// owners' answers), and every acknowledged message reaches each group after crashes.
#[test]
fn acknowledged_messages_reach_every_group_across_slow_logs_and_crashes() {
    for (n, seed) in [3u16, 4].into_iter().flat_map(|n| (0..6u64).map(move |s| (n, s))) {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let last = n - 1;
        // Two groups owned by different shards, each with members on the other's shards.
        let groups = [group_owned_by("a", 1, n), group_owned_by("b", last, n)];
        let member_shards = [[0, usize::from(last)], [0, 1]];
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (g, shards) in groups.iter().zip(member_shards) {
            let ms: Vec<usize> = shards
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    let c = sim.client(&sim.id_on(&format!("m{}-{i}", members.len()), s), V3);
                    sim.connect_with(c, persistent());
                    sim.subscribe(c, &[(g.as_str(), Q1)]);
                    sim.drop_conn(c);
                    c
                })
                .collect();
            members.push(ms);
        }
        let pubs: Vec<usize> =
            (0..usize::from(n)).map(|s| sim.client(&sim.id_on("p", s), V3)).collect();
        pubs.iter().for_each(|&p| sim.connect(p));
        // Per publisher: payloads sent and not yet acknowledged, in order.
        let mut pending: Vec<Vec<String>> = vec![Vec::new(); pubs.len()];
        let mut acked: BTreeSet<String> = BTreeSet::new();
        let mut collect_acks = |sim: &mut Sim, pending: &mut Vec<Vec<String>>| {
            for (i, &p) in pubs.iter().enumerate() {
                let n_acks = sim.clients[p]
                    .take_packets()
                    .iter()
                    .filter(|x| matches!(x, Packet::PubAck(_)))
                    .count();
                acked.extend(pending[i].drain(..n_acks));
            }
        };
        let mut sent = 0;
        for _ in 0..60 {
            let shard = sim.rng.index(usize::from(n));
            match sim.rng.index(10) {
                0 => sim.hold_durability(shard),
                1 => sim.release_durability(shard),
                2 => {
                    sim.crash_and_recover();
                    // What was not acknowledged may or may not have survived.
                    pending.iter_mut().for_each(Vec::clear);
                    pubs.iter().for_each(|&p| sim.connect(p));
                }
                _ => {
                    let i = sim.rng.index(pubs.len());
                    sent += 1;
                    let payload = format!("m{sent}");
                    sim.publish(pubs[i], "r/x", &payload, Q1, false);
                    pending[i].push(payload);
                    sim.run();
                }
            }
            collect_acks(&mut sim, &mut pending);
        }
        for s in 0..usize::from(n) {
            sim.release_durability(s);
        }
        collect_acks(&mut sim, &mut pending);
        assert!(pending.iter().all(Vec::is_empty), "n {n} seed {seed}: every PUBLISH acked");
        assert!(!acked.is_empty());
        sim.crash_and_recover();
        for (g, ms) in members.iter().enumerate() {
            let mut got = BTreeSet::new();
            for &m in ms {
                assert!(sim.connect_with(m, persistent()).session_present);
                sim.run();
                got.extend(sim.clients[m].take_payloads());
            }
            let lost: Vec<_> = acked.difference(&got).collect();
            assert!(lost.is_empty(), "n {n} seed {seed}: group {g} lost {lost:?}");
        }
    }
}

/// A queued message remembers its shared group across a crash: when the member's session
/// then expires, the message goes to another member (5.0 §4.8.2) instead of being dropped.
#[test]
fn a_recovered_queued_message_goes_back_to_its_group() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let g = group_owned_by("q", 0, n);
        // Member a: 5.0, expires 10 s after going offline; member b: persistent 3.1.1.
        let a = sim.client(&sim.id_on("a", usize::from(n) - 1), V5);
        let properties = shardmq_codec::Properties {
            session_expiry_interval_secs: Some(10),
            ..Default::default()
        };
        sim.connect_with(a, ConnectOpts { clean_start: false, properties, ..Default::default() });
        sim.subscribe(a, &[(g.as_str(), Q1)]);
        let b = sim.client(&sim.id_on("b", 1), V3);
        sim.connect_with(b, persistent());
        sim.subscribe(b, &[(g.as_str(), Q1)]);
        sim.drop_conn(a);
        let p = sim.client(&sim.id_on("p", 0), V3);
        sim.connect(p);
        // Round-robin in join order: the first to a (queued, offline), the second to b.
        sim.publish(p, "r/1", "one", Q1, false);
        sim.publish(p, "r/2", "two", Q1, false);
        sim.run();
        assert_eq!(sim.clients[b].take_payloads(), ["two"]);

        sim.crash_and_recover();
        assert!(sim.connect_with(b, persistent()).session_present);
        sim.advance(std::time::Duration::from_secs(11));
        assert_eq!(sim.clients[b].take_payloads(), ["one"], "n {n} seed {seed}");
    }
}
