//! Persistence in the simulator: the records every shard produces are folded into a log
//! state (a record that does not fit panics), and `crash_and_recover` rebuilds every shard
//! from its log alone, as a restart after `kill -9` does.

use shardmq_codec::{Packet, Properties, PubResp, ReasonCode};

use super::*;
use crate::core::limits::Limits;
use crate::core::sim::{ConnectOpts, Sim};

fn persistent() -> ConnectOpts {
    ConnectOpts { clean_start: false, ..ConnectOpts::default() }
}

fn acks(packets: &[Packet]) -> usize {
    packets.iter().filter(|p| matches!(p, Packet::PubAck(_) | Packet::PubComp(_))).count()
}

#[test]
fn queued_messages_subscriptions_and_retained_survive_a_crash() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let last = usize::from(n) - 1;
        let s = sim.client(&sim.id_on("sub", last), V3);
        sim.connect_with(s, persistent());
        sim.subscribe(s, &[("p/#", Q2)]);
        sim.drop_conn(s);
        let p = sim.client(&sim.id_on("pub", 0), V5);
        sim.connect(p);
        for (i, qos) in [Q1, Q2, Q1, Q0, Q2].into_iter().enumerate() {
            sim.publish(p, &format!("p/{i}"), &format!("m{i}"), qos, false);
        }
        sim.publish(p, "r/kept", "retained", Q1, true);
        sim.run();
        assert_eq!(acks(&sim.clients[p].take_packets()), 5, "every QoS 1/2 PUBLISH completed");

        sim.crash_and_recover();
        let ack = sim.connect_with(s, persistent());
        assert!(ack.session_present, "the session survived");
        sim.run();
        // QoS 0 is not kept for an offline session; the others arrive, in order.
        assert_eq!(sim.clients[s].take_payloads(), ["m0", "m1", "m2", "m4"]);
        // The subscription survived on every shard's routing index.
        sim.connect(p);
        sim.publish(p, "p/late", "late", Q1, false);
        sim.run();
        assert_eq!(sim.clients[s].take_payloads(), ["late"]);
        // The retained message is back on every shard.
        for shard in 0..usize::from(n) {
            let r = sim.client(&sim.id_on("ret", shard), V3);
            sim.connect(r);
            sim.subscribe(r, &[("r/#", Q1)]);
            sim.run();
            assert_eq!(sim.clients[r].take_payloads(), ["retained"], "shard {shard}");
        }
    }
}

#[test]
fn inflight_messages_are_resent_and_qos2_state_survives_a_crash() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let s = sim.client(&sim.id_on("sub", 0), V3);
        sim.connect_with(s, persistent());
        sim.subscribe(s, &[("i/#", Q2)]);
        // The subscriber takes the messages but acknowledges nothing: they stay in flight.
        sim.clients[s].auto_ack = false;
        let p = sim.client(&sim.id_on("pub", usize::from(n) - 1), V3);
        sim.connect_with(p, persistent());
        sim.publish(p, "i/1", "one", Q1, false);
        sim.publish(p, "i/2", "two", Q2, false);
        sim.run();
        // A QoS 2 PUBLISH whose PUBREL the publisher never sends before the crash.
        sim.clients[p].auto_ack = false;
        sim.publish(p, "i/3", "three", Q2, false);
        sim.run();
        assert_eq!(sim.clients[s].take_payloads(), ["one", "two", "three"]);
        let pubrec = sim.clients[p].take_packets();
        let pid = pubrec
            .iter()
            .rev()
            .find_map(|x| match x {
                Packet::PubRec(r) => Some(r.packet_id),
                _ => None,
            })
            .expect("PUBREC for the third message");

        sim.crash_and_recover();
        sim.clients[s].auto_ack = true;
        assert!(sim.connect_with(s, persistent()).session_present);
        sim.run();
        let resent = sim.clients[s].take_messages();
        let payloads: Vec<&[u8]> = resent.iter().map(|m| &m.payload[..]).collect();
        assert_eq!(payloads, [&b"one"[..], b"two", b"three"], "resent in order");
        assert!(resent.iter().all(|m| m.dup), "with DUP [MQTT-4.4.0-1]");

        // The publisher resends the QoS 2 PUBLISH: acknowledged, not delivered again.
        assert!(sim.connect_with(p, persistent()).session_present);
        sim.clients[p].auto_ack = true;
        let again = shardmq_codec::Publish {
            dup: true,
            qos: Q2,
            retain: false,
            topic: ByteStr::from("i/3"),
            packet_id: Some(pid),
            payload: Bytes::from_static(b"three"),
            properties: None,
        };
        sim.send(p, &Packet::Publish(again));
        sim.run();
        assert!(sim.clients[s].take_payloads().is_empty(), "[MQTT-4.3.3-9]: no duplicate");
        let rel = PubResp { packet_id: pid, reason: ReasonCode::SUCCESS, properties: None };
        sim.send(p, &Packet::PubRel(rel));
        sim.run();
        let done = sim.clients[p].take_packets();
        assert!(done.iter().any(|x| matches!(x, Packet::PubComp(_))), "{done:?}");
        // Everything was acknowledged: the logs hold the sessions and nothing else.
        for log in sim.logs.as_ref().unwrap() {
            let mut state = log.clone();
            state.prune();
            assert!(state.messages().is_empty(), "no message is live any more");
            for session in state.sessions().values() {
                assert_eq!(session.queue().len(), 0);
                assert!(session.qos2_inbound.is_empty() && session.pubrel_pending.is_empty());
            }
        }
    }
}

/// How random subscriber `i` connects: 0 is a 5.0 session with an expiry interval, the
/// others 3.1.1 sessions with clean session 0.
fn random_sub_opts(i: usize) -> ConnectOpts {
    if i > 0 {
        return persistent();
    }
    let properties =
        Properties { session_expiry_interval_secs: Some(600), ..Properties::default() };
    ConnectOpts { clean_start: false, properties, ..ConnectOpts::default() }
}

/// Random disconnects, reconnects, unacknowledging subscribers, publishes and crashes, with
/// a small send window so messages wait both in flight and in queues: every record fits the
/// log state, and every message the broker acknowledged to the publisher reaches each
/// persistent subscriber, QoS 2 at most once (a resend after a crash carries DUP).
#[test]
fn random_workloads_with_crashes_keep_the_log_consistent_and_lose_nothing_acknowledged() {
    for seed in 0..12u64 {
        let n = if seed % 2 == 0 { 2 } else { 3 };
        let limits = Limits { inflight_out_max: 3, ..Limits::default() };
        let mut sim = Sim::with_limits(n, seed, limits);
        sim.enable_persistence();
        let subs: Vec<usize> = (0..3)
            .map(|i| {
                let c = sim.client(&format!("rs-{seed}-{i}"), if i == 0 { V5 } else { V3 });
                sim.connect_with(c, random_sub_opts(i));
                sim.subscribe(c, &[("w/#", if i == 2 { Q1 } else { Q2 })]);
                c
            })
            .collect();
        let p = sim.client(&format!("rp-{seed}"), V3);
        sim.connect(p);
        let mut sent = 0u32;
        // Per subscriber: every payload received, and those received without DUP.
        let mut received: Vec<Vec<String>> = vec![Vec::new(); subs.len()];
        let mut first: Vec<Vec<String>> = vec![Vec::new(); subs.len()];
        let mut collect = |sim: &mut Sim| {
            for (i, &c) in subs.iter().enumerate() {
                for m in sim.clients[c].take_messages() {
                    let payload = String::from_utf8(m.payload.to_vec()).unwrap();
                    if !m.dup {
                        first[i].push(payload.clone());
                    }
                    received[i].push(payload);
                }
            }
        };
        for round in 0..6 {
            let sent_before = sent;
            for _ in 0..25 {
                let i = sim.rng.below(subs.len());
                match sim.rng.below(7) {
                    0 => sim.drop_conn(subs[i]),
                    1 if sim.clients[subs[i]].closed => {
                        sim.clients[subs[i]].auto_ack = true;
                        sim.connect_with(subs[i], random_sub_opts(i));
                    }
                    2 => sim.clients[subs[i]].auto_ack = !sim.clients[subs[i]].auto_ack,
                    _ => {
                        sent += 1;
                        let qos = [Q1, Q2][sim.rng.below(2)];
                        sim.publish(p, &format!("w/{round}"), &format!("m{sent}"), qos, false);
                    }
                }
                sim.run();
                collect(&mut sim);
            }
            let acked = acks(&sim.clients[p].take_packets());
            assert_eq!(acked as u32, sent - sent_before, "seed {seed}: every PUBLISH completed");
            sim.crash_and_recover();
            sim.connect(p);
        }
        for (i, &c) in subs.iter().enumerate() {
            sim.clients[c].auto_ack = true;
            sim.connect_with(c, random_sub_opts(i));
            sim.run();
        }
        collect(&mut sim);
        for i in 0..subs.len() {
            let mut unique = received[i].clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len() as u32, sent, "seed {seed}: subscriber {i} got every message");
            if i < 2 {
                let mut once = first[i].clone();
                once.sort();
                once.dedup();
                assert_eq!(once.len(), first[i].len(), "seed {seed}: QoS 2 at most once");
            }
        }
        // Everything was delivered and acknowledged: the logs agree nothing is left.
        for log in sim.logs.as_ref().unwrap() {
            let mut state = log.clone();
            state.prune();
            assert!(state.messages().is_empty(), "seed {seed}: no message is live");
            assert!(state.sessions().values().all(|s| s.queue().len() == 0));
        }
    }
}

#[test]
fn a_recovered_session_expires_its_interval_after_the_restart() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let c = sim.client(&sim.id_on("exp", usize::from(n) - 1), V5);
        let properties =
            Properties { session_expiry_interval_secs: Some(60), ..Properties::default() };
        let opts = ConnectOpts { clean_start: false, properties, ..ConnectOpts::default() };
        sim.connect_with(c, opts.clone());
        sim.subscribe(c, &[("e/#", Q1)]);
        sim.drop_conn(c);
        sim.crash_and_recover();
        sim.advance(std::time::Duration::from_secs(59));
        assert!(sim.connect_with(c, opts.clone()).session_present, "not expired yet");
        sim.drop_conn(c);
        sim.crash_and_recover();
        sim.advance(std::time::Duration::from_secs(61));
        let logs = sim.logs.as_ref().unwrap();
        assert!(logs.iter().all(|l| l.sessions().is_empty()), "the expiry was logged");
        assert!(!sim.connect_with(c, opts).session_present, "expired after the restart");
    }
}
