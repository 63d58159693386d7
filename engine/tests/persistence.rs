//! Persistence across restarts (issue 5, design §6): the in-process broker is stopped and
//! started again on the same data directory, and what the log must keep is checked —
//! persistent sessions with their subscriptions and queues, inbound QoS 2 state, retained
//! messages — and the disk cap (0x97 for 5.0 publishers, a disconnect for 3.1.1, QoS 0 goes
//! on, nothing acknowledged is lost).
//!
//! Data directories live under cargo's `CARGO_TARGET_TMPDIR`, not `/tmp` (which may be
//! tmpfs; the log would fall back to buffered IO there, which works but is not what we
//! want to test).

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::{addr, broker_with, id_on_shard, shutdown, within, Raw, V4};
use rumqttc::QoS as Q;
use shardmq_codec::{
    ByteStr, Packet, PacketId, ProtocolVersion, PubResp, Publish, QoS, ReasonCode,
};
use shardmq_engine::io::BrokerHandle;
use shardmq_engine::log::settings::PersistConfig;
use shardmq_engine::log::Durability;

/// A fresh data directory for one test.
fn data_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("persistence-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn persistent_broker(shards: u16, persist: &PersistConfig) -> BrokerHandle {
    broker_with(shards, |c| c.persist = persist.clone())
}

fn publish(topic: &str, qos: QoS, id: u16, payload: &[u8], retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: ByteStr::from(topic),
        packet_id: PacketId::new(id),
        payload: Bytes::copy_from_slice(payload),
        properties: None,
    })
}

fn resp(id: u16) -> PubResp {
    PubResp { packet_id: PacketId::new(id).unwrap(), reason: ReasonCode::SUCCESS, properties: None }
}

/// Sends a QoS 1 or 2 PUBLISH and completes its flow (PUBACK, or PUBREC/PUBREL/PUBCOMP).
async fn publish_acked(r: &mut Raw, topic: &str, qos: QoS, id: u16, payload: &[u8], retain: bool) {
    r.send(&publish(topic, qos, id, payload, retain)).await;
    match (qos, r.recv().await) {
        (QoS::AtLeastOnce, Some(Packet::PubAck(a))) if a.reason == ReasonCode::SUCCESS => {}
        (QoS::ExactlyOnce, Some(Packet::PubRec(a))) if a.reason == ReasonCode::SUCCESS => {
            r.send(&Packet::PubRel(resp(id))).await;
            match r.recv().await {
                Some(Packet::PubComp(_)) => {}
                other => panic!("{topic}: expected PUBCOMP, got {other:?}"),
            }
        }
        (_, other) => panic!("{topic}: expected an acknowledgement, got {other:?}"),
    }
}

/// A persistent 3.1.1 session (clean session 0).
fn persistent(o: &mut rumqttc::MqttOptions) {
    o.set_clean_session(false);
}

/// Subscribes a persistent session and goes offline.
async fn subscribe_offline(a: std::net::SocketAddr, id: &str, filters: &[(&str, Q)]) {
    let mut c = V4::connect(a, id, persistent).await;
    for (f, q) in filters {
        c.subscribe(f, *q).await;
    }
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_subscriptions_queues_and_retained_survive_a_restart() {
    for durability in [Durability::Sync, Durability::Batch { interval_ms: 5 }, Durability::None] {
        let dir = data_dir(&format!("restart-{}", durability.to_string().replace(':', "")));
        restart_round_trip(PersistConfig { durability, ..PersistConfig::in_dir(dir) }).await;
    }
}

async fn restart_round_trip(persist: PersistConfig) {
    let b = persistent_broker(2, &persist);
    let a = addr(&b);
    // The subscriber and the publisher live on different shards: the publisher's PUBACK
    // waits for the subscriber's shard to make its copy durable.
    let sub = id_on_shard("restart-sub", 1, 2);
    let publisher = id_on_shard("restart-pub", 0, 2);
    subscribe_offline(a, &sub, &[("t/#", Q::AtLeastOnce), ("q2/#", Q::ExactlyOnce)]).await;
    let mut p = Raw::connect(a, &publisher, ProtocolVersion::V3_1_1).await;
    for i in 1..=5u16 {
        publish_acked(&mut p, &format!("t/{i}"), QoS::AtLeastOnce, i, b"one", false).await;
    }
    publish_acked(&mut p, "q2/a", QoS::ExactlyOnce, 6, b"two", false).await;
    publish_acked(&mut p, "r/x", QoS::AtLeastOnce, 7, b"kept", true).await;
    drop(p);
    shutdown(b).await;

    let b = persistent_broker(2, &persist);
    let a = addr(&b);
    let mut s = V4::connect(a, &sub, persistent).await;
    let got = s.publishes(6, "the queued messages after the restart").await;
    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, ["t/1", "t/2", "t/3", "t/4", "t/5", "q2/a"], "in order");
    assert_eq!(got[5].qos, Q::ExactlyOnce);
    // The subscription survived, routing from the other shard included.
    let mut p = Raw::connect(a, &publisher, ProtocolVersion::V3_1_1).await;
    publish_acked(&mut p, "t/after", QoS::AtLeastOnce, 1, b"new", false).await;
    assert_eq!(s.next_publish("a message published after the restart").await.topic, "t/after");
    // The retained message survived, on every shard's replica.
    for shard in 0..2 {
        let mut r = V4::connect(a, &id_on_shard("restart-ret", shard, 2), |_| {}).await;
        r.subscribe("r/#", Q::AtLeastOnce).await;
        let m = r.next_publish("the retained message").await;
        assert!(m.retain && m.topic == "r/x" && &m.payload[..] == b"kept", "{m:?}");
        r.disconnect().await;
    }
    s.disconnect().await;
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_qos2_state_survives_a_restart_so_a_resent_message_is_not_delivered_twice() {
    let persist = PersistConfig::in_dir(data_dir("qos2"));
    let b = persistent_broker(2, &persist);
    let a = addr(&b);
    let sub = id_on_shard("qos2-sub", 0, 2);
    let publisher = id_on_shard("qos2-pub", 1, 2);
    subscribe_offline(a, &sub, &[("d/#", Q::ExactlyOnce)]).await;
    // The publisher's session is persistent; it gets PUBREC and goes away before PUBREL.
    let mut p = Raw::open(a).await;
    p.send(&Raw::connect_packet(&publisher, ProtocolVersion::V3_1_1, false)).await;
    assert!(matches!(p.recv().await, Some(Packet::ConnAck(_))));
    p.send(&publish("d/once", QoS::ExactlyOnce, 7, b"x", false)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(r)) if r.reason == ReasonCode::SUCCESS));
    drop(p);
    shutdown(b).await;

    let b = persistent_broker(2, &persist);
    let a = addr(&b);
    let mut p = Raw::open(a).await;
    p.send(&Raw::connect_packet(&publisher, ProtocolVersion::V3_1_1, false)).await;
    match p.recv().await {
        Some(Packet::ConnAck(c)) => assert!(c.session_present, "the session survived"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // The client did not see PUBCOMP, so it resends the PUBLISH with DUP [MQTT-4.3.3-?]:
    // the broker knows packet 7 and must acknowledge it without delivering it again.
    let Packet::Publish(mut again) = publish("d/once", QoS::ExactlyOnce, 7, b"x", false) else {
        unreachable!()
    };
    again.dup = true;
    p.send(&Packet::Publish(again)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(r)) if r.reason == ReasonCode::SUCCESS));
    p.send(&Packet::PubRel(resp(7))).await;
    assert!(matches!(p.recv().await, Some(Packet::PubComp(r)) if r.reason == ReasonCode::SUCCESS));
    // A marker after it: everything routed before the marker arrived before it.
    publish_acked(&mut p, "d/marker", QoS::ExactlyOnce, 8, b"m", false).await;

    let mut s = V4::connect(a, &sub, persistent).await;
    let got = s.publishes(2, "the message and the marker").await;
    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, ["d/once", "d/marker"], "delivered exactly once");
    s.disconnect().await;
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_cap_refuses_qos1_with_0x97_or_a_disconnect_while_qos0_flows() {
    let persist = PersistConfig {
        data_max_bytes: 1 << 20,
        durability: Durability::Batch { interval_ms: 2 },
        ..PersistConfig::in_dir(data_dir("cap"))
    };
    let start = |persist: &PersistConfig| {
        broker_with(1, |c| {
            c.persist = persist.clone();
            c.limits.packet_size_max_bytes = 16 * 1024;
        })
    };
    let b = start(&persist);
    let a = addr(&b);
    // An offline persistent subscriber keeps every message live, so compaction cannot help.
    subscribe_offline(a, "cap-sub", &[("cap/#", Q::AtLeastOnce)]).await;
    let mut live = V4::connect(a, "cap-live", |_| {}).await;
    live.subscribe("live/#", Q::AtMostOnce).await;

    let mut p = Raw::connect(a, "cap-pub5", ProtocolVersion::V5).await;
    let payload = vec![7u8; 8 * 1024];
    let mut acked = 0u32;
    let refused = within("the cap to be reached", async {
        for i in 1..=1000u16 {
            p.send(&publish(&format!("cap/{i}"), QoS::AtLeastOnce, i, &payload, false)).await;
            match p.recv().await {
                Some(Packet::PubAck(r)) if r.reason == ReasonCode::SUCCESS => acked += 1,
                // 5.0 §3.4.2.1: 0x97 Quota exceeded.
                Some(Packet::PubAck(r)) if r.reason == ReasonCode::QUOTA_EXCEEDED => return i,
                other => panic!("message {i}: expected PUBACK, got {other:?}"),
            }
        }
        panic!("1000 messages of 8 KiB did not reach a 1 MiB cap")
    })
    .await;
    assert!(acked > 10, "the log took messages before the cap ({acked})");
    assert_eq!(u32::from(refused), acked + 1, "every message before the refused one was acked");

    // QoS 0 keeps flowing.
    p.send(&publish("live/x", QoS::AtMostOnce, 0, b"still", false)).await;
    assert_eq!(live.next_publish("a QoS 0 message past the cap").await.topic, "live/x");

    // 3.1.1 has no negative PUBACK: the publisher is disconnected without one.
    let mut p4 = Raw::connect(a, "cap-pub4", ProtocolVersion::V3_1_1).await;
    p4.send(&publish("cap/refused", QoS::AtLeastOnce, 1, b"no", false)).await;
    let seen = p4.until_closed().await;
    assert!(!seen.iter().any(|p| matches!(p, Packet::PubAck(_))), "no PUBACK: {seen:?}");
    drop(p);
    live.disconnect().await;
    shutdown(b).await;

    // Nothing acknowledged was lost.
    let b = start(&persist);
    let mut s = V4::connect(addr(&b), "cap-sub", persistent).await;
    let got = s.publishes(acked as usize, "every acknowledged message").await;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.topic, format!("cap/{}", i + 1));
    }
    s.disconnect().await;
    shutdown(b).await;
}

/// Liveness at the cap: a shard that reached its soft cap still answers (0x97), QoS 0
/// flows, a subscriber draining its queue is served (its acknowledgements are records that
/// free space, taken up to the hard cap), and once compaction has folded them QoS 1 is
/// accepted again, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_cap_is_lifted_without_a_restart_once_a_subscriber_drains_its_queue() {
    let persist = PersistConfig {
        data_max_bytes: 1 << 20,
        durability: Durability::Batch { interval_ms: 2 },
        ..PersistConfig::in_dir(data_dir("cap-lifted"))
    };
    let b = broker_with(1, |c| {
        c.persist = persist.clone();
        c.limits.packet_size_max_bytes = 16 * 1024;
    });
    let a = addr(&b);
    subscribe_offline(a, "lift-sub", &[("cap/#", Q::AtLeastOnce)]).await;
    let mut live = V4::connect(a, "lift-live", |_| {}).await;
    live.subscribe("live/#", Q::AtMostOnce).await;
    let mut p = Raw::connect(a, "lift-pub", ProtocolVersion::V5).await;
    let payload = vec![7u8; 8 * 1024];
    let mut id = 0u16;
    let mut acked = 0usize;
    within("the cap to be reached", async {
        loop {
            id += 1;
            assert!(id < 1000, "1000 messages of 8 KiB did not reach a 1 MiB cap");
            p.send(&publish(&format!("cap/{id}"), QoS::AtLeastOnce, id, &payload, false)).await;
            match p.recv().await {
                Some(Packet::PubAck(r)) if r.reason == ReasonCode::SUCCESS => acked += 1,
                Some(Packet::PubAck(r)) if r.reason == ReasonCode::QUOTA_EXCEEDED => return,
                other => panic!("message {id}: expected PUBACK, got {other:?}"),
            }
        }
    })
    .await;
    // Still answered at the cap: another refusal, and QoS 0 flows.
    id += 1;
    p.send(&publish("cap/again", QoS::AtLeastOnce, id, b"no", false)).await;
    match p.recv().await {
        Some(Packet::PubAck(r)) => assert_eq!(r.reason, ReasonCode::QUOTA_EXCEEDED),
        other => panic!("expected PUBACK 0x97, got {other:?}"),
    }
    p.send(&publish("live/x", QoS::AtMostOnce, 0, b"still", false)).await;
    assert_eq!(live.next_publish("a QoS 0 message at the cap").await.topic, "live/x");

    // The subscriber drains its queue: every acknowledged message arrives.
    let mut s = V4::connect(a, "lift-sub", persistent).await;
    let got = s.publishes(acked, "every acknowledged message").await;
    assert_eq!(got.last().map(|m| m.topic.clone()), Some(format!("cap/{acked}")));

    // Its acknowledgements freed the space: QoS 1 is accepted again (compaction runs on a
    // timer, so the publisher retries while refused).
    within("QoS 1 to be accepted again", async {
        loop {
            id += 1;
            p.send(&publish("cap/after", QoS::AtLeastOnce, id, b"yes", false)).await;
            match p.recv().await {
                Some(Packet::PubAck(r)) if r.reason == ReasonCode::SUCCESS => return,
                Some(Packet::PubAck(r)) if r.reason == ReasonCode::QUOTA_EXCEEDED => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(s.next_publish("the message accepted after the cap").await.topic, "cap/after");
    s.disconnect().await;
    live.disconnect().await;
    shutdown(b).await;
}

/// A PUBLISH using a Topic Alias fills its packet with payload and is stored under the
/// resolved topic, up to the topic length limit: the log's record limit covers it, so the
/// message is acknowledged, kept, and the shard's log goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_packet_published_through_a_long_topic_alias_is_logged() {
    let persist = PersistConfig::in_dir(data_dir("alias"));
    let start = |persist: &PersistConfig| {
        broker_with(1, |c| {
            c.persist = persist.clone();
            c.limits.packet_size_max_bytes = 16 * 1024;
            c.limits.topic_length_max_bytes = 8000;
        })
    };
    let b = start(&persist);
    let a = addr(&b);
    subscribe_offline(a, "alias-sub", &[("t/#", Q::AtLeastOnce)]).await;
    let mut p = Raw::connect(a, "alias-pub", ProtocolVersion::V5).await;
    let long = format!("t/{}", "a".repeat(7990));
    let aliased = |id: u16, topic: &str, payload: Vec<u8>| {
        let properties = shardmq_codec::Properties { topic_alias: Some(1), ..Default::default() };
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: ByteStr::from(topic),
            packet_id: PacketId::new(id),
            payload: Bytes::from(payload),
            properties: Some(Box::new(properties)),
        })
    };
    p.send(&aliased(1, &long, b"sets the alias".to_vec())).await;
    p.send(&aliased(2, "", vec![9u8; 16 * 1024 - 64])).await;
    p.send(&publish("t/after", QoS::AtLeastOnce, 3, b"after", false)).await;
    for id in 1..=3 {
        match p.recv().await {
            Some(Packet::PubAck(r)) => {
                assert_eq!((r.packet_id.get(), r.reason), (id, ReasonCode::SUCCESS));
            }
            other => panic!("message {id}: expected PUBACK, got {other:?}"),
        }
    }
    drop(p);
    shutdown(b).await;

    let b = start(&persist);
    let mut s = V4::connect(addr(&b), "alias-sub", |o| {
        o.set_clean_session(false);
        o.set_max_packet_size(64 * 1024, 64 * 1024);
    })
    .await;
    let got = s.publishes(3, "every acknowledged message").await;
    let sizes: Vec<(usize, usize)> = got.iter().map(|m| (m.topic.len(), m.payload.len())).collect();
    assert_eq!(sizes, [(7992, 14), (7992, 16 * 1024 - 64), (7, 5)]);
    s.disconnect().await;
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_session_expiry_and_its_subscription_identifier_survive_a_restart() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let persist = PersistConfig::in_dir(data_dir("v5"));
    let b = persistent_broker(2, &persist);
    let a = addr(&b);
    let sub = id_on_shard("v5-sub", 0, 2);
    let expiry = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        let props = rumqttc::v5::mqttbytes::v5::ConnectProperties {
            session_expiry_interval: Some(3600),
            ..Default::default()
        };
        o.set_connect_properties(props);
    };
    let mut s = common::V5::connect(a, &sub, expiry).await;
    // With a Subscription Identifier, which deliveries after the restart still carry
    // [MQTT-3.3.4-3].
    let props = rumqttc::v5::mqttbytes::v5::SubscribeProperties {
        id: Some(42),
        user_properties: Vec::new(),
    };
    s.client.subscribe_with_properties("v5/#", Q5::AtLeastOnce, props).await.unwrap();
    within("SUBACK", async {
        while !matches!(s.next_incoming("SUBACK").await, Ok(P5::SubAck(_))) {}
    })
    .await;
    s.kill();
    let mut p = Raw::connect(a, &id_on_shard("v5-pub", 1, 2), ProtocolVersion::V5).await;
    publish_acked(&mut p, "v5/a", QoS::AtLeastOnce, 1, b"five", false).await;
    drop(p);
    shutdown(b).await;

    let b = persistent_broker(2, &persist);
    let mut s = common::V5::connect(addr(&b), &sub, expiry).await;
    let m = s.next_publish("the queued 5.0 message").await;
    assert_eq!(&m.topic[..], b"v5/a");
    let ids = m.properties.map(|p| p.subscription_identifiers).unwrap_or_default();
    assert_eq!(ids, [42], "the queued message carries the identifier");
    let mut p = Raw::connect(addr(&b), &id_on_shard("v5-pub", 1, 2), ProtocolVersion::V5).await;
    publish_acked(&mut p, "v5/b", QoS::AtLeastOnce, 2, b"live", false).await;
    let m = s.next_publish("a 5.0 message after the restart").await;
    assert_eq!(&m.topic[..], b"v5/b");
    let ids = m.properties.map(|p| p.subscription_identifiers).unwrap_or_default();
    assert_eq!(ids, [42], "the recovered subscription carries the identifier");
    s.kill();
    shutdown(b).await;
}

#[test]
fn a_data_dir_written_with_another_shard_count_is_refused() {
    let persist = PersistConfig::in_dir(data_dir("shards"));
    persistent_broker(2, &persist).shutdown();
    let mut config = shardmq_engine::config::Config::local(1);
    config.persist = persist;
    let e = shardmq_engine::io::Broker::start(&config).unwrap_err();
    assert!(e.to_string().contains("2 shards"), "{e}");
}

/// Bytes of segment files in `dir/shard-0`.
fn shard0_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("shard-0"))
        .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_disk_use_proportional_to_live_state() {
    let dir = data_dir("compaction");
    let persist = PersistConfig { segment_size_bytes: 1 << 20, ..PersistConfig::in_dir(&dir) };
    let b = broker_with(1, |c| {
        c.persist = persist.clone();
        c.limits.packet_size_max_bytes = 64 * 1024;
    });
    let a = addr(&b);
    // A persistent subscriber that is online and acknowledges everything: every message is
    // stored, delivered and acknowledged, so nearly every record is dead soon after.
    let mut s = V4::connect(a, "compact-sub", persistent).await;
    s.subscribe("c/#", Q::AtLeastOnce).await;
    let p = V4::connect(a, "compact-pub", |_| {}).await;
    const N: usize = 4000;
    let payload = vec![1u8; 2048];
    let publisher = p.client.clone();
    tokio::spawn(async move {
        for i in 0..N {
            publisher
                .publish(format!("c/{i}"), Q::AtLeastOnce, false, payload.clone())
                .await
                .unwrap();
        }
    });
    let _ = s.publishes(N, "every message").await;
    let written = (N * 2048) as u64;
    // Compaction runs on a timer: wait for it (generously), never for a fixed time.
    within("compaction to shrink the log", async {
        while shard0_bytes(&dir) > written / 2 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    // Acknowledged and dead, so after a restart nothing is redelivered, and the session is kept.
    s.disconnect().await;
    p.disconnect().await;
    shutdown(b).await;
    let b = broker_with(1, |c| {
        c.persist = persist.clone();
        c.limits.packet_size_max_bytes = 64 * 1024;
    });
    let mut s = V4::connect(addr(&b), "compact-sub", persistent).await;
    let mut p = Raw::connect(addr(&b), "compact-pub2", ProtocolVersion::V3_1_1).await;
    publish_acked(&mut p, "c/after", QoS::AtLeastOnce, 1, b"x", false).await;
    assert_eq!(s.next_publish("the first message after the restart").await.topic, "c/after");
    s.disconnect().await;
    shutdown(b).await;
}
