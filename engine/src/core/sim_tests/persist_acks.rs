//! Persistence in the simulator, the acknowledgements' side: what the broker sends only once
//! the records it depends on are durable, and answers that must survive a lost connection or
//! a full log.

use shardmq_codec::{Packet, PacketType, PubResp, ReasonCode};

use super::*;
use crate::core::ids::ShardId;
use crate::core::limits::{Limits, QueueFullPolicy};
use crate::core::shard::ShardCore;
use crate::core::sim::{ConnectOpts, Sim};

fn persistent() -> ConnectOpts {
    ConnectOpts { clean_start: false, ..ConnectOpts::default() }
}

/// A 5.0 session kept for a minute after its connection ends.
fn expiring() -> ConnectOpts {
    let properties = Properties { session_expiry_interval_secs: Some(60), ..Properties::default() };
    ConnectOpts { clean_start: false, properties, ..ConnectOpts::default() }
}

fn has_pubrel(packets: &[Packet]) -> bool {
    packets.iter().any(|p| matches!(p, Packet::PubRel(_)))
}

/// The broker's PUBREL to a persistent subscriber leaves only once `PubrelPending` is
/// durable: after PUBREL the subscriber may PUBCOMP and forget the id, and a crash that lost
/// the record would resend the PUBLISH, which the subscriber takes as new [MQTT-4.3.3-6].
#[test]
fn pubrel_to_a_persistent_subscriber_waits_until_durable() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let home = usize::from(n) - 1;
        let s = sim.client(&sim.id_on("sub", home), V3);
        sim.connect_with(s, persistent());
        sim.subscribe(s, &[("q2/#", Q2)]);
        sim.clients[s].auto_ack = false;
        let p = sim.client(&sim.id_on("pub", 0), V5);
        sim.connect(p);
        sim.publish(p, "q2/1", "once", Q2, false);
        sim.run();
        let got = sim.clients[s].take_messages();
        assert_eq!(got.len(), 1);
        let packet_id = got[0].packet_id.expect("QoS 2 has an id");

        sim.hold_durability(home);
        let rec = PubResp { packet_id, reason: ReasonCode::SUCCESS, properties: None };
        sim.send(s, &Packet::PubRec(rec));
        sim.run();
        assert!(!has_pubrel(&sim.clients[s].take_packets()), "PubrelPending is not durable");
        sim.release_durability(home);
        assert!(has_pubrel(&sim.clients[s].take_packets()), "n {n} seed {seed}");

        // Completed: after a crash nothing is resent.
        let comp = PubResp { packet_id, reason: ReasonCode::SUCCESS, properties: None };
        sim.send(s, &Packet::PubComp(comp));
        sim.run();
        sim.crash_and_recover();
        assert!(sim.connect_with(s, persistent()).session_present);
        sim.run();
        assert!(sim.clients[s].take_messages().is_empty(), "not delivered twice");
        assert!(!has_pubrel(&sim.clients[s].take_packets()));
    }
}

/// A QoS 2 PUBLISH whose batch failed while its publisher was away: the resend after
/// reconnecting gets the failure (0x97), not the duplicate's success, and is not routed
/// again [MQTT-4.3.3-9].
#[test]
fn a_pubrec_that_failed_while_the_client_was_away_fails_again_on_resend() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let home = usize::from(n) - 1;
        let s = sim.client(&sim.id_on("sub", 0), V3);
        sim.connect(s);
        sim.subscribe(s, &[("f/#", Q2)]);
        let p = sim.client(&sim.id_on("pub", home), V5);
        sim.connect_with(p, expiring());
        sim.hold_durability(home);
        let packet_id = sim.clients[p].next_packet_id();
        let mut publish = shardmq_codec::Publish {
            dup: false,
            qos: Q2,
            retain: false,
            topic: ByteStr::from("f/1"),
            packet_id: Some(packet_id),
            payload: Bytes::from_static(b"failed"),
            properties: None,
        };
        sim.send(p, &Packet::Publish(publish.clone()));
        sim.run();
        // On the publisher's shard nothing leaves before the record is durable (on another
        // shard a clean session gets it at once: `persist/gate.rs`).
        let early = sim.clients[s].take_payloads();
        assert_eq!(early.is_empty(), n == 1, "n {n}: sent before durable: {early:?}");
        sim.drop_conn(p);
        sim.fail_held(home);
        sim.run();
        assert!(sim.clients[s].take_payloads().is_empty(), "a refused message is not sent");

        assert!(sim.connect_with(p, expiring()).session_present);
        publish.dup = true;
        sim.send(p, &Packet::Publish(publish));
        // The log works again (only that batch failed, e.g. a record too large).
        sim.shards[home].set_log_full(false);
        sim.release_durability(home);
        assert!(sim.clients[s].take_payloads().is_empty(), "not routed again");
        let packets = sim.clients[p].take_packets();
        assert_eq!(
            ack_reasons(&packets, PacketType::PubRec),
            [ReasonCode::QUOTA_EXCEEDED],
            "n {n} seed {seed}"
        );
    }
}

/// The soft cap holds for every record producer, not only the publisher's shard: a QoS 1
/// copy for a persistent session on a shard whose log is full is refused there, and the
/// publisher gets 0x97 (5.0 §3.4.2.1); QoS 0 still flows; once the log has room again
/// QoS 1 is accepted and kept.
#[test]
fn a_copy_for_a_persistent_session_on_a_full_shard_is_refused_with_0x97() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let full = usize::from(n) - 1;
        let s = sim.client(&sim.id_on("sub", full), V3);
        sim.connect_with(s, persistent());
        sim.subscribe(s, &[("c/#", Q1)]);
        sim.drop_conn(s);
        let live = sim.client(&sim.id_on("live", full), V3);
        sim.connect(live);
        sim.subscribe(live, &[("c/#", Q0)]);
        let p = sim.client(&sim.id_on("pub", 0), V5);
        sim.connect(p);

        sim.shards[full].set_log_full(true);
        sim.publish(p, "c/1", "refused", Q1, false);
        sim.publish(p, "c/2", "qos0", Q0, false);
        sim.run();
        assert_eq!(
            ack_reasons(&sim.clients[p].take_packets(), PacketType::PubAck),
            [ReasonCode::QUOTA_EXCEEDED]
        );
        // Decided before any copy was sent there: the clean subscriber on the full shard
        // does not get the refused message either (`delivery/refusal.rs`).
        assert_eq!(sim.clients[live].take_payloads(), ["qos0"]);

        sim.shards[full].set_log_full(false);
        sim.publish(p, "c/3", "kept", Q1, false);
        sim.run();
        assert_eq!(
            ack_reasons(&sim.clients[p].take_packets(), PacketType::PubAck),
            [ReasonCode::SUCCESS]
        );
        sim.crash_and_recover();
        assert!(sim.connect_with(s, persistent()).session_present);
        sim.run();
        assert_eq!(sim.clients[s].take_payloads(), ["kept"], "n {n} seed {seed}");
    }
}

/// A retained message is a record producer too: past the soft cap of the topic's owner a
/// new QoS 1 retained message is refused (0x97) and a QoS 0 one dropped; clearing one, which
/// frees space, is still accepted.
#[test]
fn a_retained_message_past_the_owners_soft_cap_is_refused() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let p = sim.client(&sim.id_on("pub", 0), V5);
        sim.connect(p);
        // A topic owned by another shard, and one retained message on it.
        let topic = (0..)
            .map(|i| format!("r/{i}"))
            .find(|t| sim.shards[0].retain_owner(t).0 != 0)
            .expect("a topic owned elsewhere");
        let owner = usize::from(sim.shards[0].retain_owner(&topic).0);
        sim.publish(p, &topic, "old", Q1, true);
        sim.run();
        sim.clients[p].take_packets();

        sim.shards[owner].set_log_full(true);
        sim.publish(p, &topic, "new1", Q1, true);
        sim.publish(p, &topic, "new0", Q0, true);
        sim.run();
        assert_eq!(
            ack_reasons(&sim.clients[p].take_packets(), PacketType::PubAck),
            [ReasonCode::QUOTA_EXCEEDED]
        );
        let r = sim.client(&sim.id_on("ret", owner), V3);
        sim.connect(r);
        sim.subscribe(r, &[(topic.as_str(), Q1)]);
        sim.run();
        assert_eq!(sim.clients[r].take_payloads(), ["old"], "n {n} seed {seed}");

        // An empty retained message clears it [MQTT-3.3.1-10], full or not.
        sim.publish(p, &topic, "", Q1, true);
        sim.run();
        assert_eq!(
            ack_reasons(&sim.clients[p].take_packets(), PacketType::PubAck),
            [ReasonCode::SUCCESS]
        );
        sim.crash_and_recover();
        let r2 = sim.client(&sim.id_on("ret2", owner), V3);
        sim.connect(r2);
        sim.subscribe(r2, &[(topic.as_str(), Q1)]);
        sim.run();
        assert!(sim.clients[r2].take_payloads().is_empty(), "the clear was kept");
    }
}

/// Under `session_queue_full = "refuse"`, a persistent session whose queue is full cannot
/// keep a QoS 1 copy: the publisher gets 0x97 instead of an acknowledgement for a message
/// that one of its matching sessions will never get — whether that session lives on the
/// publisher's shard or on another.
#[test]
fn a_full_persistent_queue_fails_the_publish_back_to_the_publisher() {
    for (n, seed) in configs() {
        for sub_shard in [0, usize::from(n) - 1] {
            let limits = Limits {
                session_queue_messages_max: 2,
                session_queue_full: QueueFullPolicy::Refuse,
                ..Limits::default()
            };
            let mut sim = Sim::with_limits(n, seed, limits);
            sim.enable_persistence();
            let s = sim.client(&sim.id_on("sub", sub_shard), V3);
            sim.connect_with(s, persistent());
            sim.subscribe(s, &[("q/#", Q1)]);
            sim.drop_conn(s);
            let p = sim.client(&sim.id_on("pub", 0), V5);
            sim.connect(p);
            for i in 0..3 {
                sim.publish(p, &format!("q/{i}"), &format!("m{i}"), Q1, false);
                sim.run();
            }
            let reasons = ack_reasons(&sim.clients[p].take_packets(), PacketType::PubAck);
            let expected = [ReasonCode::SUCCESS, ReasonCode::SUCCESS, ReasonCode::QUOTA_EXCEEDED];
            assert_eq!(reasons, expected, "n {n} seed {seed} sub on {sub_shard}");
        }
    }
}

/// A refusal (0x97) logs nothing, so it waits for no batch — a batch may be stalled at the
/// cap — only behind earlier answers on its own connection, which keep their order
/// [MQTT-4.6.0-2].
#[test]
fn a_refusal_waits_only_behind_its_own_connections_answers() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        // Something to log on the publishers' shard: a refusal needs one.
        let s = sim.client(&sim.id_on("sub", 0), V3);
        sim.connect_with(s, persistent());
        sim.subscribe(s, &[("x/#", Q1)]);
        sim.drop_conn(s);
        let p1 = sim.client(&sim.id_on("p1", 0), V5);
        let p2 = sim.client(&sim.id_on("p2", 0), V5);
        sim.connect(p1);
        sim.connect(p2);
        sim.hold_durability(0);
        sim.publish(p1, "x/1", "waits", Q1, false);
        sim.run();
        sim.shards[0].set_log_full(true);
        sim.publish(p2, "x/2", "refused", Q1, false);
        sim.publish(p1, "x/3", "refused-behind", Q1, false);
        sim.run();
        assert_eq!(
            ack_reasons(&sim.clients[p2].take_packets(), PacketType::PubAck),
            [ReasonCode::QUOTA_EXCEEDED]
        );
        assert!(
            ack_reasons(&sim.clients[p1].take_packets(), PacketType::PubAck).is_empty(),
            "n {n} seed {seed}"
        );
        sim.release_durability(0);
        let expected = [ReasonCode::SUCCESS, ReasonCode::QUOTA_EXCEEDED];
        assert_eq!(ack_reasons(&sim.clients[p1].take_packets(), PacketType::PubAck), expected);
    }
}

/// The same for a PUBREL resent when the subscriber reconnects before `PubrelPending` is
/// durable: it waits too.
#[test]
fn a_pubrel_resent_on_resume_waits_until_durable() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let home = usize::from(n) - 1;
        let s = sim.client(&sim.id_on("sub", home), V3);
        sim.connect_with(s, persistent());
        sim.subscribe(s, &[("q2/#", Q2)]);
        sim.clients[s].auto_ack = false;
        let p = sim.client(&sim.id_on("pub", 0), V5);
        sim.connect(p);
        sim.publish(p, "q2/1", "once", Q2, false);
        sim.run();
        let packet_id = sim.clients[s].take_messages()[0].packet_id.expect("QoS 2 has an id");

        sim.hold_durability(home);
        let rec = PubResp { packet_id, reason: ReasonCode::SUCCESS, properties: None };
        sim.send(s, &Packet::PubRec(rec));
        sim.run();
        sim.drop_conn(s);
        assert!(sim.connect_with(s, persistent()).session_present);
        sim.run();
        assert!(!has_pubrel(&sim.clients[s].take_packets()), "PubrelPending is not durable");
        sim.release_durability(home);
        assert!(has_pubrel(&sim.clients[s].take_packets()), "n {n} seed {seed}");
    }
}

/// A will's copy refused by a full shard is not mistaken for the refusal of the next
/// PUBLISH routed there (nobody waits for a will, but its refusal is answered anyway).
#[test]
fn a_refused_will_copy_does_not_fail_a_later_publish() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let full = usize::from(n) - 1;
        let s = sim.client(&sim.id_on("sub", full), V3);
        sim.connect_with(s, persistent());
        sim.subscribe(s, &[("w/#", Q1)]);
        sim.drop_conn(s);
        let dying = sim.client(&sim.id_on("dying", 0), V3);
        let opts = ConnectOpts { will: Some(will("w/will", "gone", false, None)), ..persistent() };
        sim.connect_with(dying, opts);
        let p = sim.client(&sim.id_on("pub", 0), V5);
        sim.connect(p);

        sim.shards[full].set_log_full(true);
        sim.drop_conn(dying);
        sim.run();
        sim.shards[full].set_log_full(false);
        sim.publish(p, "w/1", "kept", Q1, false);
        sim.run();
        let reasons = ack_reasons(&sim.clients[p].take_packets(), PacketType::PubAck);
        assert_eq!(reasons, [ReasonCode::SUCCESS], "n {n} seed {seed}");
    }
}

/// A shared subscription's member on a full shard (the second hop, owner → member) refuses
/// its copy too: the owner's chained answer fails and the publisher gets 0x97.
#[test]
fn a_shared_member_on_a_full_shard_fails_the_publish() {
    for n in [3u16, 4] {
        for seed in 0..4u64 {
            let mut sim = Sim::new(n, seed);
            sim.enable_persistence();
            let member_shard = usize::from(n) - 1;
            let group = (0..)
                .map(|i| format!("$share/g{i}/s/#"))
                .find(|g| ShardCore::home_shard(g.as_bytes(), n) == ShardId(1))
                .expect("a group owned by shard 1");
            let m = sim.client(&sim.id_on("member", member_shard), V3);
            sim.connect_with(m, persistent());
            sim.subscribe(m, &[(group.as_str(), Q1)]);
            sim.drop_conn(m);
            let p = sim.client(&sim.id_on("pub", 0), V5);
            sim.connect(p);

            sim.shards[member_shard].set_log_full(true);
            sim.publish(p, "s/1", "refused", Q1, false);
            sim.run();
            let reasons = ack_reasons(&sim.clients[p].take_packets(), PacketType::PubAck);
            assert_eq!(reasons, [ReasonCode::QUOTA_EXCEEDED], "n {n} seed {seed}");
            sim.shards[member_shard].set_log_full(false);
            sim.publish(p, "s/2", "kept", Q1, false);
            sim.run();
            assert_eq!(
                ack_reasons(&sim.clients[p].take_packets(), PacketType::PubAck),
                [ReasonCode::SUCCESS]
            );
        }
    }
}
