//! Tests of `deliver.rs`: collapsing overlapping filters, the QoS 0 fast path and what it
//! counts.

use shardmq_codec::{Properties, Publish};

use super::*;
use crate::core::delivery::tx::COALESCE_MAX_BYTES;
use crate::core::sim::{ConnectOpts, Sim};

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;
const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;

fn one(sim: &mut Sim, c: usize) -> Publish {
    let mut got = sim.clients[c].take_messages();
    assert_eq!(got.len(), 1, "client {c}: one copy [MQTT-3.3.5-1]");
    got.remove(0)
}

#[test]
fn overlapping_filters_collapse_per_session_only() {
    // 31 sessions, each subscribed to a different non-empty subset of five filters that
    // all match "t/x", at mixed QoS, so the trie's visit interleaves them: each gets
    // one copy [MQTT-3.3.5-1] at its highest QoS [MQTT-3.3.4-2].
    let filters = ["#", "t/#", "t/+", "t/x", "+/x"];
    let subs: Vec<Vec<(&str, QoS)>> = (1..32usize)
        .map(|set| {
            let qos = |j: usize| if (set * 7 + j).is_multiple_of(3) { Q1 } else { Q0 };
            (0..5).filter(|j| set & (1 << j) != 0).map(|j| (filters[j], qos(j))).collect()
        })
        .collect();
    for seed in 0..4 {
        let mut sim = Sim::new(1, seed);
        let clients: Vec<usize> = (0..subs.len())
            .map(|i| {
                let c = sim.client(&format!("s{i}"), V3);
                sim.connect(c);
                sim.subscribe(c, &subs[i]);
                c
            })
            .collect();
        let p = sim.client("p", V3);
        sim.connect(p);
        sim.publish(p, "t/x", "m", Q1, false);
        sim.run();
        for (i, &c) in clients.iter().enumerate() {
            let highest = subs[i].iter().map(|(_, q)| *q).max().expect("non-empty");
            assert_eq!(one(&mut sim, c).qos, highest, "session {i}");
        }
    }
}

#[test]
fn qos0_fast_path_keeps_the_packet_size_rule_and_large_payloads() {
    let mut sim = Sim::new(1, 0);
    let small = sim.client("small", V5);
    let properties = Properties { maximum_packet_size: Some(64), ..Default::default() };
    sim.connect_with(small, ConnectOpts { properties, ..Default::default() });
    let plain = sim.client("plain", V3);
    sim.connect(plain);
    for c in [small, plain] {
        sim.subscribe(c, &[("m", Q0)]);
    }
    let p = sim.client("p", V3);
    sim.connect(p);
    let large = "x".repeat(COALESCE_MAX_BYTES + 1);
    let dropped = |sim: &Sim| sim.shards[0].stats.messages_dropped;
    let before = dropped(&sim);
    sim.publish(p, "m", &"y".repeat(100), Q0, false);
    sim.publish(p, "m", &large, Q0, false);
    sim.publish(p, "m", "fits", Q0, false);
    sim.run();
    // Larger than the client's maximum: not sent [MQTT-3.1.2-24], counted as dropped.
    assert_eq!(&one(&mut sim, small).payload[..], b"fits");
    assert_eq!(dropped(&sim) - before, 2);
    let t = &sim.shards[0].stats.traffic;
    assert_eq!(t.dropped_by_reason[DropReason::TooLarge as usize], 2, "{t:?}");
    assert_eq!(t.sent_messages_by_qos, [4, 0, 0], "three to plain, one to small");
    // Whole packets: 3.1.1 fixed header, topic "m", payload; 5.0 adds a property length.
    let v3_len = |payload: usize| {
        let remaining = 3 + payload;
        1 + [128, 16_384, 2_097_152].iter().filter(|&&b| remaining >= b).count() + 1 + remaining
    };
    let expected = v3_len(100) + v3_len(large.len()) + v3_len(4) + (v3_len(4) + 1);
    assert_eq!(t.sent_bytes_by_qos, [expected as u64, 0, 0]);
    let got = sim.clients[plain].take_messages();
    let sizes: Vec<usize> = got.iter().map(|m| m.payload.len()).collect();
    assert_eq!(sizes, [100, large.len(), 4], "in order, the large payload whole");
}
