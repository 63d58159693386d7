//! Sessions: wills, keep alive, takeover, persistent sessions, expiry.

use std::time::Duration;

use shardmq_codec::{ByteStr, Packet, Properties, PubResp, ReasonCode};

use super::*;
use crate::core::sim::{ConnectOpts, Sim};

#[test]
fn will_is_published_on_abnormal_close_but_not_after_disconnect() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let w = sim.client(&sim.id_on("watch", 0), V3);
        sim.connect(w);
        sim.subscribe(w, &[("will/#", Q1)]);
        let a = sim.client(&sim.id_on("a", usize::from(n) - 1), V3);
        let opts =
            ConnectOpts { will: Some(will("will/a", "gone", false, None)), ..Default::default() };
        sim.connect_with(a, opts.clone());
        sim.drop_conn(a);
        sim.run();
        assert_eq!(sim.clients[w].take_payloads(), ["gone"]);

        sim.connect_with(a, opts.clone());
        sim.disconnect(a, ReasonCode::NORMAL_DISCONNECTION);
        assert!(sim.clients[a].closed);
        assert!(sim.clients[w].take_payloads().is_empty(), "[MQTT-3.1.2-10]");

        // A protocol violation (second CONNECT) publishes the will too.
        sim.connect_with(a, opts.clone());
        let again = ConnectOpts::default();
        let connect = shardmq_codec::Connect {
            protocol: V3,
            clean_start: again.clean_start,
            keep_alive_secs: 0,
            client_id: ByteStr::from(sim.clients[a].id.as_str()),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        sim.send(a, &Packet::Connect(Box::new(connect)));
        sim.run();
        assert!(sim.clients[a].closed, "[MQTT-3.1.0-2]");
        assert_eq!(sim.clients[w].take_payloads(), ["gone"]);
    }
}

#[test]
fn retained_will_and_v5_disconnect_with_will() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let a = sim.client(&sim.id_on("a", 0), V5);
        let opts = ConnectOpts { will: Some(will("w/a", "bye", true, None)), ..Default::default() };
        sim.connect_with(a, opts);
        sim.disconnect(a, ReasonCode::DISCONNECT_WITH_WILL_MESSAGE);
        let w = sim.client(&sim.id_on("w", usize::from(n) - 1), V3);
        sim.connect(w);
        sim.subscribe(w, &[("w/#", Q1)]);
        let msgs = sim.clients[w].take_messages();
        assert_eq!(msgs.len(), 1);
        assert!(msgs[0].retain);
    }
}

#[test]
fn will_delay_is_cancelled_by_reconnecting_and_fires_otherwise() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let w = sim.client(&sim.id_on("watch", 0), V5);
        sim.connect(w);
        sim.subscribe(w, &[("w", Q0)]);
        let a = sim.client(&sim.id_on("a", usize::from(n) - 1), V5);
        let opts = ConnectOpts {
            clean_start: false,
            will: Some(will("w", "late", false, Some(5))),
            properties: Properties {
                session_expiry_interval_secs: Some(60),
                ..Properties::default()
            },
            ..Default::default()
        };
        sim.connect_with(a, opts.clone());
        sim.drop_conn(a);
        sim.advance(Duration::from_secs(3));
        assert!(sim.clients[w].take_payloads().is_empty());
        let ack = sim.connect_with(a, opts.clone());
        assert!(ack.session_present);
        sim.advance(Duration::from_secs(10));
        assert!(sim.clients[w].take_payloads().is_empty(), "reconnected within the delay");
        sim.drop_conn(a);
        sim.advance(Duration::from_secs(4));
        assert!(sim.clients[w].take_payloads().is_empty());
        sim.advance(Duration::from_secs(2));
        assert_eq!(sim.clients[w].take_payloads(), ["late"]);
    }
}

#[test]
fn keep_alive_timeout_closes_and_publishes_the_will() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let w = sim.client(&sim.id_on("watch", 0), V3);
        sim.connect(w);
        sim.subscribe(w, &[("will/#", Q0)]);
        let a = sim.client(&sim.id_on("a", 1), V5);
        let b = sim.client(&sim.id_on("b", 1), V3);
        for (c, t) in [(a, "will/a"), (b, "will/b")] {
            let opts = ConnectOpts {
                keep_alive_secs: 10,
                will: Some(will(t, t, false, None)),
                ..Default::default()
            };
            sim.connect_with(c, opts);
        }
        // Pings keep `b` alive; `a` is silent.
        for _ in 0..3 {
            sim.advance(Duration::from_millis(4500));
            sim.send(b, &Packet::PingReq);
            sim.run();
        }
        assert!(!sim.clients[a].closed, "13.5 s < 1.5 × keep alive: not yet");
        sim.advance(Duration::from_secs(2));
        assert!(sim.clients[a].closed, "[MQTT-3.1.2-24]");
        assert_eq!(
            disconnect_reasons(&sim.clients[a].take_packets()),
            [ReasonCode::KEEP_ALIVE_TIMEOUT]
        );
        assert!(!sim.clients[b].closed);
        assert!(sim.clients[b].take_packets().iter().all(|p| matches!(p, Packet::PingResp)));
        assert_eq!(sim.clients[w].take_payloads(), ["will/a"]);
    }
}

#[test]
fn takeover_closes_the_old_connection_with_0x8e() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let w = sim.client(&sim.id_on("watch", 0), V3);
        sim.connect(w);
        sim.subscribe(w, &[("will", Q0)]);
        let id = sim.id_on("dup", usize::from(n) - 1);
        let old = sim.client(&id, V5);
        let new = sim.client(&id, V5);
        let opts = ConnectOpts {
            clean_start: false,
            will: Some(will("will", "old", false, None)),
            properties: Properties {
                session_expiry_interval_secs: Some(100),
                ..Properties::default()
            },
            ..Default::default()
        };
        sim.connect_with(old, opts.clone());
        sim.subscribe(old, &[("x", Q1)]);
        let ack = sim.connect_with(new, ConnectOpts { will: None, ..opts });
        assert!(ack.session_present);
        assert!(sim.clients[old].closed, "[MQTT-3.1.4-3]");
        assert_eq!(
            disconnect_reasons(&sim.clients[old].take_packets()),
            [ReasonCode::SESSION_TAKEN_OVER]
        );
        assert_eq!(sim.clients[w].take_payloads(), ["old"], "the old connection's will");
        // The subscription moved with the session.
        sim.publish(w, "x", "hello", Q1, false);
        sim.run();
        assert_eq!(sim.clients[new].take_payloads(), ["hello"]);
        assert!(sim.clients[old].take_messages().is_empty());
    }
}

#[test]
fn persistent_session_queues_offline_and_resends_with_dup() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        for version in [V3, V5] {
            let id = sim.id_on(&format!("sub-{version:?}"), usize::from(n) - 1);
            let s = sim.client(&id, version);
            let p = sim.client(&sim.id_on("pub", 0), V3);
            let opts = ConnectOpts {
                clean_start: false,
                properties: if version == V5 {
                    Properties { session_expiry_interval_secs: Some(600), ..Properties::default() }
                } else {
                    Properties::default()
                },
                ..Default::default()
            };
            let ack = sim.connect_with(s, ConnectOpts::default());
            assert!(!ack.session_present);
            sim.disconnect(s, ReasonCode::NORMAL_DISCONNECTION);
            let ack = sim.connect_with(s, opts.clone());
            assert!(!ack.session_present, "clean start discarded everything");
            sim.connect(p);
            sim.subscribe(s, &[("q/#", Q2)]);
            sim.clients[s].auto_ack = false;
            sim.publish(p, "q/1", "a", Q1, false);
            sim.publish(p, "q/2", "b", Q2, false);
            sim.publish(p, "q/2", "c", Q2, false);
            sim.run();
            let first = sim.clients[s].take_messages();
            assert_eq!(first.len(), 3);
            // Acknowledge "c" up to PUBREC: the broker then owes PUBREL, not PUBLISH.
            let c_id = first[2].packet_id.unwrap();
            sim.send(
                s,
                &Packet::PubRec(PubResp {
                    packet_id: c_id,
                    reason: ReasonCode::SUCCESS,
                    properties: None,
                }),
            );
            sim.run();
            assert!(
                matches!(&sim.clients[s].take_packets()[..], [Packet::PubRel(r)] if r.packet_id == c_id)
            );
            sim.drop_conn(s);
            sim.publish(p, "q/3", "d", Q1, false);
            sim.publish(p, "q/3", "e", Q0, false); // QoS 0 is not queued offline.
            sim.publish(p, "q/4", "f", Q2, false);
            sim.run();
            sim.clients[s].auto_ack = true;
            let ack = sim.connect_with(s, opts.clone());
            assert!(ack.session_present, "[MQTT-3.2.2-3]");
            let again = sim.clients[s].take_messages();
            let got: Vec<(String, bool)> = again
                .iter()
                .map(|m| (String::from_utf8(m.payload.to_vec()).unwrap(), m.dup))
                .collect();
            assert_eq!(
                got,
                [("a".into(), true), ("b".into(), true), ("d".into(), false), ("f".into(), false)],
                "n={n} seed={seed} {version:?}"
            );
            assert_eq!(again[0].packet_id, first[0].packet_id, "same packet id on resend");
            let packets = sim.clients[s].take_packets();
            assert!(packets.iter().any(|x| matches!(x, Packet::PubRel(r) if r.packet_id == c_id)));
            // Everything acknowledged: a later reconnect resends nothing.
            sim.drop_conn(s);
            let ack = sim.connect_with(s, opts.clone());
            assert!(ack.session_present);
            assert!(sim.clients[s].take_messages().is_empty());
            sim.disconnect(s, ReasonCode::NORMAL_DISCONNECTION);
            sim.disconnect(p, ReasonCode::NORMAL_DISCONNECTION);
        }
    }
}

#[test]
fn session_expiry_removes_the_session_and_its_subscriptions() {
    for (n, seed) in configs() {
        let mut sim = Sim::new(n, seed);
        let id = sim.id_on("s", 1);
        let s = sim.client(&id, V5);
        let p = sim.client(&sim.id_on("p", 0), V3);
        sim.connect(p);
        let opts = ConnectOpts {
            clean_start: false,
            properties: Properties {
                session_expiry_interval_secs: Some(10),
                ..Properties::default()
            },
            ..Default::default()
        };
        sim.connect_with(s, opts.clone());
        sim.subscribe(s, &[("e", Q1)]);
        sim.drop_conn(s);
        sim.advance(Duration::from_secs(11));
        let routes: usize = sim.shards.iter().map(|sh| sh.routes.len()).sum();
        assert_eq!(routes, 0, "routing deltas removed the filter everywhere");
        let ack = sim.connect_with(s, opts);
        assert!(!ack.session_present);
        sim.publish(p, "e", "x", Q1, false);
        sim.run();
        assert!(sim.clients[s].take_messages().is_empty());
    }
}
