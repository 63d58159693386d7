//! Full session queues and full logs: what is dropped for one session, what is refused to
//! the publisher, and that a refused message reaches nobody on the shard that refused it.

use shardmq_codec::{PacketType, ReasonCode};

use super::*;
use crate::core::delivery::drops::DropReason;
use crate::core::limits::{Limits, QueueFullPolicy};
use crate::core::sim::{ConnectOpts, Sim};

fn persistent() -> ConnectOpts {
    ConnectOpts { clean_start: false, ..ConnectOpts::default() }
}

fn limits(policy: QueueFullPolicy) -> Limits {
    Limits { session_queue_messages_max: 3, session_queue_full: policy, ..Limits::default() }
}

fn dropped(sim: &Sim) -> u64 {
    sim.shards.iter().map(|s| s.stats.messages_dropped).sum()
}

fn dropped_for(sim: &Sim, why: DropReason) -> u64 {
    sim.shards.iter().map(|s| s.stats.traffic.dropped_by_reason[why as usize]).sum()
}

/// One abandoned persistent session with a full queue must not stop everyone: with the
/// default policy every publisher is acknowledged, online subscribers get every message,
/// the abandoned session keeps the newest `session_queue_messages_max` (the oldest are
/// dropped, counted, and acknowledged in the log so a restart does not bring them back).
#[test]
fn an_abandoned_session_drops_its_oldest_and_nobody_else_notices() {
    for (n, seed) in configs() {
        for sub_shard in [0, usize::from(n) - 1] {
            let policy = Limits::default().session_queue_full;
            assert_eq!(policy, QueueFullPolicy::DropOldest, "the default");
            let mut sim = Sim::with_limits(n, seed, limits(policy));
            sim.enable_persistence();
            let a = sim.client(&sim.id_on("abandoned", sub_shard), V3);
            sim.connect_with(a, persistent());
            sim.subscribe(a, &[("#", Q1)]);
            sim.drop_conn(a);
            let live = sim.client(&sim.id_on("live", usize::from(n) - 1 - sub_shard), V3);
            sim.connect(live);
            sim.subscribe(live, &[("t/#", Q1)]);
            let p = sim.client(&sim.id_on("pub", 0), V5);
            sim.connect(p);
            let before = dropped(&sim);
            let sent: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
            for m in &sent {
                sim.publish(p, "t/x", m, Q1, false);
                sim.run();
            }
            let reasons = ack_reasons(&sim.clients[p].take_packets(), PacketType::PubAck);
            assert_eq!(reasons, [ReasonCode::SUCCESS; 6], "n {n} seed {seed} on {sub_shard}");
            assert_eq!(sim.clients[live].take_payloads(), sent);
            assert_eq!(dropped(&sim) - before, 3, "three dropped for the abandoned session");
            assert_eq!(dropped_for(&sim, DropReason::QueueFullOldest), 3, "counted by reason");

            // The drops are in the log: a restart brings back the newest three only.
            sim.crash_and_recover();
            assert!(sim.connect_with(a, persistent()).session_present);
            sim.run();
            assert_eq!(sim.clients[a].take_payloads(), ["m3", "m4", "m5"], "n {n} seed {seed}");
        }
    }
}

/// `drop_newest` keeps what was queued first (Mosquitto's behaviour); nobody is refused.
#[test]
fn drop_newest_keeps_the_oldest() {
    for (n, seed) in configs() {
        let mut sim = Sim::with_limits(n, seed, limits(QueueFullPolicy::DropNewest));
        sim.enable_persistence();
        let a = sim.client(&sim.id_on("abandoned", usize::from(n) - 1), V3);
        sim.connect_with(a, persistent());
        sim.subscribe(a, &[("#", Q1)]);
        sim.drop_conn(a);
        let p = sim.client(&sim.id_on("pub", 0), V5);
        sim.connect(p);
        for i in 0..5 {
            sim.publish(p, "t/x", &format!("m{i}"), Q1, false);
            sim.run();
        }
        let reasons = ack_reasons(&sim.clients[p].take_packets(), PacketType::PubAck);
        assert_eq!(reasons, [ReasonCode::SUCCESS; 5]);
        assert_eq!(dropped_for(&sim, DropReason::QueueFullNewest), 2);
        assert_eq!(dropped(&sim), 2, "and for no other reason");
        sim.crash_and_recover();
        assert!(sim.connect_with(a, persistent()).session_present);
        sim.run();
        assert_eq!(sim.clients[a].take_payloads(), ["m0", "m1", "m2"], "n {n} seed {seed}");
    }
}

/// Under `refuse`, a message refused because a session's queue is full reaches nobody on
/// the refusing shard, and when that is the publisher's shard, nobody at all: refusal is
/// decided before any copy is sent.
#[test]
fn a_refused_message_is_never_delivered_on_the_refusing_shard() {
    for (n, seed) in configs() {
        for sub_shard in [0, usize::from(n) - 1] {
            let mut sim = Sim::with_limits(n, seed, limits(QueueFullPolicy::Refuse));
            sim.enable_persistence();
            let a = sim.client(&sim.id_on("abandoned", sub_shard), V3);
            sim.connect_with(a, persistent());
            sim.subscribe(a, &[("#", Q1)]);
            sim.drop_conn(a);
            // Clean subscribers on the abandoned session's shard and on every shard.
            let near = sim.client(&sim.id_on("near", sub_shard), V3);
            sim.connect(near);
            sim.subscribe(near, &[("t/#", Q1)]);
            let p = sim.client(&sim.id_on("pub", 0), V5);
            sim.connect(p);
            for i in 0..4 {
                sim.publish(p, "t/x", &format!("m{i}"), Q1, false);
                sim.run();
            }
            let reasons = ack_reasons(&sim.clients[p].take_packets(), PacketType::PubAck);
            let mut expected = [ReasonCode::SUCCESS; 4];
            expected[3] = ReasonCode::QUOTA_EXCEEDED;
            assert_eq!(reasons, expected, "n {n} seed {seed} on {sub_shard}");
            assert_eq!(sim.clients[near].take_payloads(), ["m0", "m1", "m2"], "not m3");
        }
    }
}

/// A full log refuses only what needs logging (issue: "a full shard refuses more than it
/// must"): QoS 1 to a topic nobody subscribes to, or only clean sessions do, is accepted
/// and delivered; to a topic with a persistent subscriber on the full shard it is refused,
/// and then not delivered to the clean subscribers there either.
#[test]
fn a_full_log_refuses_only_messages_it_would_have_to_log() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let keep = sim.client(&sim.id_on("keep", 0), V3);
        sim.connect_with(keep, persistent());
        sim.subscribe(keep, &[("kept/#", Q1)]);
        sim.drop_conn(keep);
        let clean = sim.client(&sim.id_on("clean", 0), V3);
        sim.connect(clean);
        sim.subscribe(clean, &[("clean/#", Q1), ("kept/#", Q1)]);
        let p = sim.client(&sim.id_on("pub", 0), V5);
        sim.connect(p);

        sim.shards[0].set_log_full(true);
        sim.publish(p, "nobody/1", "a", Q1, false);
        sim.publish(p, "clean/1", "b", Q1, false);
        sim.publish(p, "kept/1", "c", Q1, false);
        sim.run();
        let reasons = ack_reasons(&sim.clients[p].take_packets(), PacketType::PubAck);
        let expected = [ReasonCode::SUCCESS, ReasonCode::SUCCESS, ReasonCode::QUOTA_EXCEEDED];
        assert_eq!(reasons, expected, "n {n} seed {seed}");
        assert_eq!(sim.clients[clean].take_payloads(), ["b"], "the refused one reached nobody");
    }
}
