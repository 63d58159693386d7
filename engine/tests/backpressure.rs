//! Back-pressure (`core/delivery/tx_budget.rs`): a publisher that writes as fast as TCP takes, into
//! a subscriber that reads more slowly than that but keeps reading, and one that stopped
//! reading. The reading one must get every message, in order (the broker holds the
//! publisher's socket instead of dropping), and the stopped one must not hold anyone back:
//! it is marked slow, its QoS 0 messages are dropped and counted.

mod common;

use std::time::Duration;

use common::*;
use shardmq_codec::{Packet, ProtocolVersion, QoS};

const MESSAGES: u32 = 30_000;
const PAYLOAD_BYTES: usize = 1024;

fn seq_of(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload[..4].try_into().unwrap())
}

/// Waits for the retained `$SYS` `topic` to carry a number for which `ok` holds.
async fn wait_sys(a: std::net::SocketAddr, id: &str, topic: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let mut sys = Raw::connect(a, id, ProtocolVersion::V3_1_1).await;
    sys.send(&Raw::subscribe_packet(topic, QoS::AtMostOnce)).await;
    loop {
        match sys.recv().await {
            Some(Packet::Publish(p)) => {
                let v: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                if ok(v) {
                    return v;
                }
            }
            Some(Packet::SubAck(_)) => {}
            other => panic!("{topic}: unexpected {other:?}"),
        }
    }
}

async fn flood_reaches_a_reading_subscriber_whole(shards: u16) {
    let b = broker_with(shards, |c| {
        c.sys_interval_secs = 1;
        c.limits.packet_size_max_bytes = 64 * 1024;
        c.limits.connection_tx_bytes_pause = 64 * 1024;
        c.limits.shard_tx_bytes_max = 8 * 1024 * 1024;
    });
    let a = addr(&b);
    // With two shards the subscribers live on the shard the publisher does not: the pause
    // must cross the mesh (`MeshMsg::Pressure`).
    let sub_shard = shards - 1;
    let stalled_id = id_on_shard("stalled", sub_shard, shards);
    let reader_id = id_on_shard("reader", sub_shard, shards);
    let pub_id = id_on_shard("flooder", 0, shards);

    let mut stalled = Raw::connect(a, &stalled_id, ProtocolVersion::V3_1_1).await;
    // QoS 1: the end marker (QoS 1) reaches it at QoS 1, never dropped; the flood is QoS 0.
    stalled.send(&Raw::subscribe_packet("flood/#", QoS::AtLeastOnce)).await;
    assert!(matches!(stalled.recv().await, Some(Packet::SubAck(_))));
    // From here on `stalled` reads nothing until the end.

    let mut reader = Raw::connect(a, &reader_id, ProtocolVersion::V3_1_1).await;
    reader.send(&Raw::subscribe_packet("flood/#", QoS::AtLeastOnce)).await;
    assert!(matches!(reader.recv().await, Some(Packet::SubAck(_))));

    // The reader keeps reading, but slower than the publisher writes: it pauses a little
    // every 64 messages (pacing, not a timing assertion).
    let reading = tokio::spawn(async move {
        let mut next = 0u32;
        loop {
            match reader.recv().await {
                Some(Packet::Publish(p)) if &*p.topic == "flood/end" => break,
                Some(Packet::Publish(p)) => {
                    let seq = seq_of(&p.payload);
                    assert_eq!(seq, next, "the reading subscriber lost or reordered messages");
                    next += 1;
                    if next.is_multiple_of(64) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                other => panic!("reader: unexpected {other:?}"),
            }
        }
        next
    });

    let mut publisher = Raw::connect(a, &pub_id, ProtocolVersion::V3_1_1).await;
    let mut frames = Vec::with_capacity(MESSAGES as usize * (PAYLOAD_BYTES + 16));
    for seq in 0..MESSAGES {
        let mut payload = vec![0u8; PAYLOAD_BYTES];
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        let p = Raw::publish_packet("flood/t", QoS::AtMostOnce, None, payload);
        frames.extend_from_slice(&publisher.encode(&p));
    }
    // One write of everything: as fast as TCP takes it.
    publisher.send_bytes(&frames).await;
    publisher
        .send(&Raw::publish_packet("flood/end", QoS::AtLeastOnce, Some(1), b"end".to_vec()))
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));

    let got = within("the reading subscriber's messages", reading).await.unwrap();
    assert_eq!(got, MESSAGES, "the reading subscriber got every message");

    // The stopped subscriber was marked slow and its QoS 0 messages were dropped, counted.
    wait_sys(a, "sys-slow", "$SYS/broker/clients/slow", |v| v >= 1).await;
    wait_sys(a, "sys-dropped", "$SYS/broker/messages/dropped", |v| v > 0).await;
    wait_sys(a, "sys-pauses", "$SYS/broker/publish/pauses", |v| v > 0).await;

    // It still gets what its bounded queue held, in order, ending with the marker.
    let mut received = 0u32;
    let mut last = None;
    loop {
        match stalled.recv().await {
            Some(Packet::Publish(p)) if &*p.topic == "flood/end" => break,
            Some(Packet::Publish(p)) => {
                let seq = seq_of(&p.payload);
                assert!(last.is_none_or(|l| seq > l), "stalled: {seq} after {last:?}");
                last = Some(seq);
                received += 1;
            }
            other => panic!("stalled subscriber: unexpected {other:?}"),
        }
    }
    assert!(received < MESSAGES, "the stalled subscriber's queue was not bounded");
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_one_shard() {
    flood_reaches_a_reading_subscriber_whole(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_across_shards() {
    flood_reaches_a_reading_subscriber_whole(2).await;
}

/// Before CONNECT a connection may send at most `connect_packet_size_max_bytes`: a first
/// packet declaring more is refused from its fixed header, without buffering its body (the
/// connect timeout is long here, so only the size limit can close the connection in time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_first_packet_is_refused_before_it_is_buffered() {
    let b = broker_with(1, |c| {
        c.limits.connect_timeout_secs = 600;
        c.limits.connect_packet_size_max_bytes = 16 * 1024;
    });
    let a = addr(&b);
    let mut c = Raw::open(a).await;
    // CONNECT, remaining length 100,000 (varint a0 8d 06), and only the start of a body.
    c.send_bytes(&[0x10, 0xa0, 0x8d, 0x06, 0x00, 0x04, b'M', b'Q', b'T', b'T', 4, 2]).await;
    let seen = c.until_closed().await;
    assert!(
        seen.iter().all(|p| matches!(p, Packet::ConnAck(_))),
        "at most a CONNACK before the close: {seen:?}"
    );
    // A CONNECT within the limit still works, and after CONNECT packets up to the full
    // maximum are accepted.
    let mut ok = Raw::connect(a, "small-connect", ProtocolVersion::V3_1_1).await;
    ok.send(&Raw::subscribe_packet("big/t", QoS::AtMostOnce)).await;
    assert!(matches!(ok.recv().await, Some(Packet::SubAck(_))));
    let big = vec![7u8; 100_000];
    ok.send(&Raw::publish_packet("big/t", QoS::AtMostOnce, None, big.clone())).await;
    match ok.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(p.payload.len(), big.len()),
        other => panic!("expected the 100,000-byte message back, got {other:?}"),
    }
    shutdown(b).await;
}

/// A large payload to many subscribers is one allocation shared by their queues: it counts
/// once against the shard's budget, so every subscriber gets it (counted per copy, twenty
/// 4 MiB copies would be past twice this shard's 16 MiB budget and QoS 0 would be dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_reaches_every_subscriber() {
    const SUBSCRIBERS: usize = 20;
    let b = broker_with(1, |c| {
        c.limits.shard_tx_bytes_max = 16 * 1024 * 1024;
    });
    let a = addr(&b);
    let mut subs = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut s = Raw::connect(a, &format!("big-sub-{i}"), ProtocolVersion::V3_1_1).await;
        s.send(&Raw::subscribe_packet("big/#", QoS::AtMostOnce)).await;
        assert!(matches!(s.recv().await, Some(Packet::SubAck(_))));
        subs.push(s);
    }
    let payload: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut publisher = Raw::connect(a, "big-pub", ProtocolVersion::V3_1_1).await;
    publisher.send(&Raw::publish_packet("big/t", QoS::AtMostOnce, None, payload.clone())).await;
    for (i, s) in subs.iter_mut().enumerate() {
        match s.recv().await {
            Some(Packet::Publish(p)) => assert!(p.payload == payload, "subscriber {i}: payload"),
            other => panic!("subscriber {i}: expected the message, got {other:?}"),
        }
    }
    shutdown(b).await;
}
