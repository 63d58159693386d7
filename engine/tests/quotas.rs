//! Quotas (`core/policy/quota.rs`) with real clients against an in-process broker: a
//! connection's PUBLISH rate (5.0 DISCONNECT 0x96, 3.1.1 closed), the broker-wide connection
//! count (CONNACK 0x97 / return code 3) and new connections per address. Every quota is off
//! by default; each test turns one on.

mod common;

use common::{addr, broker_with, shutdown, Raw, V4, V5};
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as P5};
use rumqttc::v5::mqttbytes::QoS as Q5;
use shardmq_codec::{Packet, ProtocolVersion, QoS, ReasonCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_publish_rate_the_connection_is_closed() {
    // 1000 payload bytes a second: one 2000-byte message passes (into debt), the next does not.
    let b = broker_with(2, |c| c.auth.quotas.publish_bytes_per_sec = Some(1000));
    let a = addr(&b);
    let mut c = V5::connect(a, "rate-v5", |_| {}).await;
    for _ in 0..2 {
        c.client.publish("t/rate", Q5::AtMostOnce, false, vec![0u8; 2000]).await.unwrap();
    }
    loop {
        match c.next_incoming("DISCONNECT 0x96").await {
            Ok(P5::Disconnect(d)) => {
                assert_eq!(d.reason_code, DisconnectReasonCode::MessageRateTooHigh);
                break;
            }
            Ok(_) => continue,
            // rumqttc reports a server's DISCONNECT as the error that ends its event loop.
            Err(e) => {
                assert!(e.contains("ServerDisconnect { reason_code: MessageRateTooHigh"), "{e}");
                break;
            }
        }
    }
    c.kill();
    // 3.1.1: no DISCONNECT from a server; the connection is closed.
    let mut r = Raw::connect(a, "rate-v311", ProtocolVersion::V3_1_1).await;
    for _ in 0..2 {
        r.send(&Raw::publish_packet("t/rate", QoS::AtMostOnce, None, vec![0u8; 2000])).await;
    }
    assert!(r.until_closed().await.is_empty(), "closed, nothing sent");
    shutdown(b).await;

    // Messages a second: a burst of one second's worth, then refused.
    let b = broker_with(1, |c| c.auth.quotas.publish_messages_per_sec = Some(3));
    let mut r = Raw::connect(addr(&b), "rate-msgs", ProtocolVersion::V5).await;
    for _ in 0..4 {
        r.send(&Raw::publish_packet("t/m", QoS::AtMostOnce, None, b"x".to_vec())).await;
    }
    let seen = r.until_closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::MESSAGE_RATE_TOO_HIGH),
        "{seen:?}"
    );
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_counts_every_shard() {
    let b = broker_with(2, |c| c.auth.quotas.connections_max = Some(2));
    let a = addr(&b);
    // Client ids homed on both shards: the count is broker-wide.
    let ids: Vec<String> = (0..2).map(|s| common::id_on_shard("maxc", s, 2)).collect();
    let first = V5::connect(a, &ids[0], |_| {}).await;
    let _second = V4::connect(a, &ids[1], |_| {}).await;
    let mut r = Raw::open(a).await;
    r.version = ProtocolVersion::V5;
    r.send(&Raw::connect_packet("maxc-third", ProtocolVersion::V5, true)).await;
    match r.recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason, ReasonCode::QUOTA_EXCEEDED),
        other => panic!("expected CONNACK 0x97, got {other:?}"),
    }
    let mut r = Raw::open(a).await;
    r.version = ProtocolVersion::V3_1_1;
    r.send(&Raw::connect_packet("maxc-fourth", ProtocolVersion::V3_1_1, true)).await;
    match r.recv().await {
        // 3.1.1 return code 3, server unavailable (the codec's projection of 0x97), which
        // the codec reads back as 0x88 Server unavailable.
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason, ReasonCode::SERVER_UNAVAILABLE),
        other => panic!("expected CONNACK 3, got {other:?}"),
    }
    // A slot comes back when a client leaves: the next CONNECT (retried until the broker
    // has handled the close) is accepted.
    first.client.disconnect().await.unwrap();
    first.kill();
    let mut accepted = false;
    for _ in 0..200 {
        let mut r = Raw::open(a).await;
        r.version = ProtocolVersion::V5;
        r.send(&Raw::connect_packet("maxc-again", ProtocolVersion::V5, true)).await;
        if let Some(Packet::ConnAck(ack)) = r.recv().await {
            if ack.reason == ReasonCode::SUCCESS {
                accepted = true;
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    assert!(accepted, "a slot came back");
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_address_are_limited() {
    // One shard, so every connection meets the same per-shard count.
    let b = broker_with(1, |c| c.auth.quotas.connections_per_sec_per_address = Some(2));
    let a = addr(&b);
    let mut outcomes = Vec::new();
    for i in 0..4 {
        let mut r = Raw::open(a).await;
        r.version = ProtocolVersion::V5;
        r.send(&Raw::connect_packet(&format!("cps-{i}"), ProtocolVersion::V5, true)).await;
        outcomes.push(matches!(r.recv().await, Some(Packet::ConnAck(ack)) if ack.reason == ReasonCode::SUCCESS));
    }
    // Four connections within (much less than) a second: two accepted, then closed unread.
    assert_eq!(outcomes, [true, true, false, false]);
    shutdown(b).await;
}
