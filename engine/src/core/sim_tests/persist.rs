//! Persistence in the simulator: the records every shard produces are folded into a log
//! state (a record that does not fit panics), and `crash_and_recover` rebuilds every shard
//! from its log alone, as a restart after `kill -9` does.

use shardmq_codec::{
    Packet, PacketId, Properties, PubResp, QoS, ReasonCode, RetainHandling, Subscribe,
    SubscriptionOptions, Unsubscribe,
};

use super::*;
use crate::core::ids::ShardId;
use crate::core::limits::Limits;
use crate::core::shard::ShardCore;
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
                let i = sim.rng.index(subs.len());
                match sim.rng.index(7) {
                    0 => sim.drop_conn(subs[i]),
                    1 if sim.clients[subs[i]].closed => {
                        sim.clients[subs[i]].auto_ack = true;
                        sim.connect_with(subs[i], random_sub_opts(i));
                    }
                    2 => sim.clients[subs[i]].auto_ack = !sim.clients[subs[i]].auto_ack,
                    _ => {
                        sent += 1;
                        let qos = [Q1, Q2][sim.rng.index(2)];
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

/// SUBSCRIBE with `filter` at QoS 1 from client `c`, not run; returns its packet id.
fn send_subscribe(
    sim: &mut Sim,
    c: usize,
    filter: &str,
    properties: Option<Properties>,
) -> PacketId {
    let packet_id = sim.clients[c].next_packet_id();
    let opts = SubscriptionOptions { qos: Q1, ..SubscriptionOptions::default() };
    let filters = vec![(ByteStr::from(filter), opts)];
    let properties = properties.map(Box::new);
    sim.send(c, &Packet::Subscribe(Subscribe { packet_id, filters, properties }));
    packet_id
}

fn has_unsuback(packets: &[Packet]) -> bool {
    packets.iter().any(|p| matches!(p, Packet::UnsubAck(_)))
}

/// A persistent session's SUBACK (and UNSUBACK) leaves only once the subscription records
/// are durable: after SUBACK a crash cannot lose the subscription of a session the broker
/// then resumes with Session Present = 1 [MQTT-3.2.2-3]. A clean session's does not wait.
#[test]
fn suback_and_unsuback_of_a_persistent_session_wait_until_durable() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let home = usize::from(n) - 1;
        let s = sim.client(&sim.id_on("sub", home), V5);
        sim.connect_with(s, random_sub_opts(0));
        let clean = sim.client(&sim.id_on("clean", home), V5);
        sim.connect(clean);
        sim.hold_durability(home);
        assert_eq!(sim.subscribe(clean, &[("c/#", Q1)]), [ReasonCode::GRANTED_QOS_1]);

        let id = send_subscribe(&mut sim, s, "d/#", None);
        sim.run();
        assert!(sim.take_suback(s, id).is_none(), "the subscription is not durable yet");
        sim.release_durability(home);
        assert_eq!(sim.take_suback(s, id), Some(vec![ReasonCode::GRANTED_QOS_1]));

        sim.crash_and_recover();
        assert!(sim.connect_with(s, random_sub_opts(0)).session_present);
        let p = sim.client(&sim.id_on("pub", 0), V5);
        sim.connect(p);
        sim.publish(p, "d/1", "after-crash", Q1, false);
        sim.run();
        assert_eq!(sim.clients[s].take_payloads(), ["after-crash"], "the subscription survived");

        sim.hold_durability(home);
        let filters = vec![ByteStr::from("d/#")];
        let packet_id = sim.clients[s].next_packet_id();
        sim.send(s, &Packet::Unsubscribe(Unsubscribe { packet_id, filters, properties: None }));
        sim.run();
        assert!(!has_unsuback(&sim.clients[s].take_packets()), "the removal is not durable yet");
        sim.release_durability(home);
        assert!(has_unsuback(&sim.clients[s].take_packets()));
        sim.crash_and_recover();
        assert!(sim.connect_with(s, random_sub_opts(0)).session_present);
        sim.connect(p);
        sim.publish(p, "d/2", "unsubscribed", Q1, false);
        sim.run();
        assert!(sim.clients[s].take_payloads().is_empty(), "the removal survived");
    }
}

/// A subscription the log could not take is not acknowledged: the connection is closed
/// (5.0: DISCONNECT 0x97 Quota exceeded), as for a PUBLISH the log refused.
#[test]
fn a_suback_whose_records_failed_closes_the_connection() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let home = usize::from(n) - 1;
        let s = sim.client(&sim.id_on("sub", home), V5);
        sim.connect_with(s, random_sub_opts(0));
        sim.hold_durability(home);
        let id = send_subscribe(&mut sim, s, "f/#", None);
        sim.run();
        sim.fail_held(home);
        assert!(sim.take_suback(s, id).is_none(), "no SUBACK for what the log lost");
        let packets = sim.clients[s].take_packets();
        assert_eq!(disconnect_reasons(&packets), [ReasonCode::QUOTA_EXCEEDED]);
        assert!(sim.clients[s].closed);
    }
}

/// Every subscription option and the Subscription Identifier survive a crash: deliveries
/// after the restart carry the identifier [MQTT-3.3.4-3], No Local still holds
/// [MQTT-3.8.3-3], Retain As Published still keeps RETAIN [MQTT-3.3.1-13], and Retain
/// Handling and the maximum QoS are those the client asked for.
#[test]
fn subscription_identifiers_and_options_survive_a_crash() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let s = sim.client(&sim.id_on("sid", usize::from(n) - 1), V5);
        sim.connect_with(s, random_sub_opts(0));
        let opts = |qos, no_local, retain_as_published, retain_handling| SubscriptionOptions {
            qos,
            no_local,
            retain_as_published,
            retain_handling,
        };
        let subscribe = |sim: &mut Sim, filter: &str, o: SubscriptionOptions, id: u32| {
            let packet_id = sim.clients[s].next_packet_id();
            let filters = vec![(ByteStr::from(filter), o)];
            let properties =
                Properties { subscription_identifiers: vec![id], ..Properties::default() };
            let properties = Some(Box::new(properties));
            sim.send(s, &Packet::Subscribe(Subscribe { packet_id, filters, properties }));
            sim.run();
            assert!(sim.take_suback(s, packet_id).is_some());
        };
        subscribe(&mut sim, "id/#", opts(Q2, false, false, RetainHandling::DoNotSend), 7);
        subscribe(&mut sim, "own/#", opts(Q1, true, false, RetainHandling::SendIfNew), 9);
        subscribe(&mut sim, "rap/#", opts(Q0, false, true, RetainHandling::DoNotSend), 11);
        sim.drop_conn(s);
        // Queued while offline: its identifier is rebuilt from the recovered subscription.
        let p = sim.client(&sim.id_on("pub", 0), V5);
        sim.connect(p);
        sim.publish(p, "id/0", "queued", Q1, false);
        sim.run();

        sim.crash_and_recover();
        let state = &sim.logs.as_ref().unwrap()[usize::from(n) - 1];
        assert_eq!(state.sessions().values().next().unwrap().subscriptions.len(), 3);
        assert!(sim.connect_with(s, random_sub_opts(0)).session_present);
        sim.connect(p);
        sim.publish(p, "id/1", "with-id", Q2, false);
        sim.publish(p, "rap/1", "retained", Q1, true);
        sim.run();
        // Our own message on the No Local subscription is not sent back.
        sim.publish(s, "own/1", "own", Q1, false);
        sim.run();
        let got = sim.clients[s].take_messages();
        let summary: Vec<(String, QoS, bool, Vec<u32>)> = got
            .iter()
            .map(|m| {
                let ids = m.properties.as_ref().map(|p| p.subscription_identifiers.clone());
                (
                    String::from_utf8(m.payload.to_vec()).unwrap(),
                    m.qos,
                    m.retain,
                    ids.unwrap_or_default(),
                )
            })
            .collect();
        let expected = [
            ("queued".to_owned(), Q1, false, vec![7]),
            ("with-id".to_owned(), Q2, false, vec![7]),
            ("retained".to_owned(), Q0, true, vec![11]),
        ];
        assert_eq!(summary, expected);
        // The session holds the options it was given, identifier included.
        let recovered = &sim.shards[usize::from(n) - 1];
        let slot = recovered.sessions.find(&ByteStr::from(sim.clients[s].id.as_str())).unwrap();
        let subs = &recovered.sessions.get(slot).subs;
        let own = subs.iter().find(|(f, _)| &**f == "own/#").unwrap().1;
        assert_eq!(own.opts, opts(Q1, true, false, RetainHandling::SendIfNew));
        assert_eq!(own.id, Some(9));
    }
}

/// A shared group whose owner is neither the publisher's shard nor the member's: the
/// publisher's PUBACK waits until the member's shard (the second hop, owner → member) has
/// logged its copy, so an acknowledged message survives a crash there too.
#[test]
fn shared_subscription_second_hop_is_durable_before_puback() {
    for n in [3u16, 4] {
        for seed in 0..4u64 {
            let mut sim = Sim::new(n, seed);
            sim.enable_persistence();
            let member_shard = usize::from(n) - 1;
            // A group owned by shard 1; the publisher is on shard 0, the member on the last.
            let group = (0..)
                .map(|i| format!("$share/g{i}/s/#"))
                .find(|g| ShardCore::home_shard(g.as_bytes(), n) == ShardId(1))
                .expect("a group owned by shard 1");
            let m = sim.client(&sim.id_on("member", member_shard), V3);
            sim.connect_with(m, persistent());
            sim.subscribe(m, &[(group.as_str(), Q1)]);
            sim.drop_conn(m);
            let p = sim.client(&sim.id_on("pub", 0), V3);
            sim.connect(p);

            sim.hold_durability(member_shard);
            sim.publish(p, "s/1", "second-hop", Q1, false);
            sim.run();
            assert_eq!(acks(&sim.clients[p].take_packets()), 0, "the member's copy is not durable");
            sim.release_durability(member_shard);
            assert_eq!(acks(&sim.clients[p].take_packets()), 1);

            sim.crash_and_recover();
            assert!(sim.connect_with(m, persistent()).session_present);
            sim.run();
            assert_eq!(sim.clients[m].take_payloads(), ["second-hop"], "n {n} seed {seed}");
        }
    }
}

/// The time the broker was down counts: an offline session expires at the deadline it had
/// before the crash (Session Expiry Interval, 5.0 §3.1.2.11.2), and a stored message's
/// Message Expiry Interval loses its age, downtime included: it is dropped once used up
/// [MQTT-3.3.2-5] and forwarded with what is left [MQTT-3.3.2-6].
#[test]
fn downtime_counts_against_session_and_message_expiry() {
    use std::time::Duration;
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        sim.enable_persistence();
        let expiring = |secs| {
            let properties =
                Properties { session_expiry_interval_secs: Some(secs), ..Properties::default() };
            ConnectOpts { clean_start: false, properties, ..ConnectOpts::default() }
        };
        // A session with 60 s left, offline 30 s before a crash and down 40 s: gone.
        let short = sim.client(&sim.id_on("short", usize::from(n) - 1), V5);
        sim.connect_with(short, expiring(60));
        sim.subscribe(short, &[("x/#", Q1)]);
        sim.drop_conn(short);
        // A session with an hour, holding messages with 50 s and 100 s to live.
        let long = sim.client(&sim.id_on("long", 0), V5);
        sim.connect_with(long, expiring(3600));
        sim.subscribe(long, &[("m/#", Q1)]);
        sim.drop_conn(long);
        let p = sim.client(&sim.id_on("pub", 0), V5);
        sim.connect(p);
        for (payload, secs) in [("fifty", 50), ("hundred", 100)] {
            let props =
                Properties { message_expiry_interval_secs: Some(secs), ..Properties::default() };
            sim.publish_props(p, "m/1", payload, Q1, false, props);
        }
        sim.run();
        sim.advance(Duration::from_secs(30));

        sim.crash_and_recover_after(Duration::from_secs(40));
        sim.advance(Duration::from_secs(1));
        assert!(!sim.connect_with(short, expiring(60)).session_present, "expired while down");
        assert!(sim.connect_with(long, expiring(3600)).session_present);
        sim.run();
        let got = sim.clients[long].take_messages();
        let left: Vec<(String, Option<u32>)> = got
            .iter()
            .map(|m| {
                let secs = m.properties.as_ref().and_then(|p| p.message_expiry_interval_secs);
                (String::from_utf8(m.payload.to_vec()).unwrap(), secs)
            })
            .collect();
        // 100 s - 30 s offline - 40 s down - 1 s after the restart.
        assert_eq!(left, [("hundred".to_owned(), Some(29))], "n {n} seed {seed}");
    }
}
