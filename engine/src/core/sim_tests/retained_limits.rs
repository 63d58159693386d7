//! Retained messages at the limits: a store that cannot take a message says so (5.0: 0x97,
//! counted), and the replay after SUBSCRIBE is paced by the connection rather than cut off
//! at its transmit bound (QoS 0) or its queue limit (QoS 1).

use std::collections::BTreeSet;
use std::time::Duration;

use shardmq_codec::{PacketType, ReasonCode};

use super::*;
use crate::core::limits::Limits;
use crate::core::sim::Sim;

/// Small bounds: 2 KiB packets, 4 KiB of transmit queue (paused at 2 KiB), 3 queued
/// messages, a window of 2.
fn small() -> Limits {
    Limits {
        packet_size_max_bytes: 2048,
        connection_tx_bytes_max: 4096,
        connection_tx_bytes_pause: 2048,
        session_queue_messages_max: 3,
        session_queue_bytes_max: 4096,
        inflight_out_max: 2,
        ..Limits::default()
    }
}

fn dropped(sim: &Sim) -> u64 {
    sim.shards.iter().map(|s| s.stats.messages_dropped).sum()
}

/// Past `retained_bytes_max`, a 5.0 QoS 1 retained PUBLISH gets 0x97 and reaches nobody; a
/// 3.1.1 one (no negative PUBACK) and a QoS 0 one are delivered but not retained. Every
/// drop is counted.
#[test]
fn a_full_retained_store_refuses_5_0_publishers_and_counts_every_drop() {
    for (n, seed) in configs() {
        let limits = Limits { retained_bytes_max: 4096, ..small() };
        let mut sim = Sim::with_limits(n, seed, limits);
        let s = sim.client(&sim.id_on("sub", usize::from(n) - 1), V3);
        sim.connect(s);
        sim.subscribe(s, &[("r/#", Q1)]);
        let p5 = sim.client(&sim.id_on("p5", 0), V5);
        sim.connect(p5);
        let p3 = sim.client(&sim.id_on("p3", 0), V3);
        sim.connect(p3);
        let big = "x".repeat(1500);
        for i in 0..2 {
            sim.publish(p5, &format!("r/{i}"), &big, Q1, true);
            sim.run();
        }
        let before = dropped(&sim);
        sim.publish(p5, "r/5", &big, Q1, true);
        sim.run();
        sim.publish(p3, "r/3", &big, Q1, true);
        sim.run();
        sim.publish(p5, "r/0q", &big, Q0, true);
        sim.run();
        let reasons = ack_reasons(&sim.clients[p5].take_packets(), PacketType::PubAck);
        let expected = [ReasonCode::SUCCESS, ReasonCode::SUCCESS, ReasonCode::QUOTA_EXCEEDED];
        assert_eq!(reasons, expected, "n {n} seed {seed}");
        let got: Vec<String> =
            sim.clients[s].take_messages().iter().map(|m| m.topic.to_string()).collect();
        assert_eq!(got, ["r/0", "r/1", "r/3", "r/0q"], "the refused one reached nobody");
        assert_eq!(dropped(&sim) - before, 3, "one refused, two retained copies dropped");

        let late = sim.client(&sim.id_on("late", 0), V3);
        sim.connect(late);
        sim.subscribe(late, &[("r/#", Q1)]);
        let kept: BTreeSet<String> =
            sim.clients[late].take_messages().iter().map(|m| m.topic.to_string()).collect();
        assert_eq!(kept, BTreeSet::from(["r/0".into(), "r/1".into()]));
    }
}

fn retain_many(sim: &mut Sim, count: usize) -> BTreeSet<String> {
    let p = sim.client(&sim.id_on("pub", 0), V3);
    sim.connect(p);
    let payload = "y".repeat(1000);
    for i in 0..count {
        sim.publish(p, &format!("many/{i}"), &payload, Q1, true);
        sim.run();
    }
    (0..count).map(|i| format!("many/{i}")).collect()
}

fn topics(sim: &mut Sim, c: usize) -> Vec<String> {
    sim.clients[c].take_messages().iter().map(|m| m.topic.to_string()).collect()
}

/// 50 retained messages of 1 KB to a QoS 0 subscription whose transmit bound is 4 KiB: the
/// replay sends what fits, and the rest as the connection drains, every one of them.
#[test]
fn a_qos0_replay_is_paced_by_the_transmit_queue_not_truncated() {
    for (n, seed) in configs() {
        let mut sim = Sim::with_limits(n, seed, small());
        let all = retain_many(&mut sim, 50);
        let s = sim.client(&sim.id_on("sub", usize::from(n) - 1), V3);
        sim.connect(s);
        sim.subscribe(s, &[("many/#", Q0)]);
        let mut got = topics(&mut sim, s);
        assert!(got.len() < 50, "more than the transmit bound at once: {}", got.len());
        sim.advance(Duration::from_secs(1));
        got.extend(topics(&mut sim, s));
        assert_eq!(got.len(), 50, "n {n} seed {seed}: every one, once");
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), all);
    }
}

/// The same at QoS 1 with a queue of 3 and a window of 2: paced by acknowledgements.
#[test]
fn a_qos1_replay_is_paced_by_the_window_not_cut_at_the_queue_limit() {
    for (n, seed) in configs() {
        let mut sim = Sim::with_limits(n, seed, small());
        let all = retain_many(&mut sim, 50);
        let s = sim.client(&sim.id_on("sub", usize::from(n) - 1), V5);
        sim.connect(s);
        sim.subscribe(s, &[("many/#", Q1)]);
        let got = topics(&mut sim, s);
        assert_eq!(got.len(), 50, "n {n} seed {seed}: every one, once");
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), all);
        assert!(sim.clients[s].take_messages().is_empty());
    }
}
