//! Idle connections sleep without a task (`engine/src/io/idle.rs`) and wake for everything
//! that needs them: bytes from the client, a full socket, a close the broker decides
//! (takeover, shutdown), the client going away (its will). Each test first waits until the
//! broker reports every connection asleep (`$SYS/broker/clients/sleeping`, published every
//! second here), so what follows happens to sleeping connections. Also the other `$SYS`
//! counters the idle sweep exports (bytes read and written).

mod common;

use common::*;
use rumqttc::QoS;
use shardmq_codec::{Packet, ProtocolVersion};
use shardmq_engine::io::BrokerHandle;

const SLEEPING_TOPIC: &str = "$SYS/broker/clients/sleeping";

/// One shard, `$SYS` every second.
fn sys_broker(f: impl FnOnce(&mut shardmq_engine::config::Config)) -> BrokerHandle {
    broker_with(1, |c| {
        c.sys_interval_secs = 1;
        f(c);
    })
}

/// A raw client watching the sleeping-connection count (it never sends after SUBSCRIBE, so
/// it falls asleep too).
async fn watcher(a: std::net::SocketAddr) -> Raw {
    let mut w = Raw::connect(a, "idle-watch", ProtocolVersion::V3_1_1).await;
    w.send(&Raw::subscribe_packet(SLEEPING_TOPIC, shardmq_codec::QoS::AtMostOnce)).await;
    loop {
        match w.recv().await {
            Some(Packet::SubAck(_)) => return w,
            Some(Packet::Publish(_)) => {}
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

/// Waits until the broker reports `n` connections asleep.
async fn until_sleeping(w: &mut Raw, n: u64) {
    within(&format!("{n} connections asleep"), async {
        loop {
            match w.recv().await {
                Some(Packet::Publish(p)) if &*p.topic == SLEEPING_TOPIC => {
                    let count: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                    if count == n {
                        return;
                    }
                }
                Some(_) => {}
                None => panic!("the watcher was disconnected"),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_connections_wake_for_reads_wills_and_takeover() {
    let b = sys_broker(|_| {});
    let a = addr(&b);
    let mut sub = V4::connect(a, "idle-sub", |_| {}).await;
    sub.subscribe("idle/#", QoS::AtLeastOnce).await;
    let mut pubr = Raw::connect(a, "idle-pub", ProtocolVersion::V3_1_1).await;
    let mut w = watcher(a).await;
    until_sleeping(&mut w, 3).await;

    // The sleeping publisher is read; the sleeping subscriber is written to (by the
    // shard's writer) and its PUBACK read.
    pubr.send(&Raw::publish_packet(
        "idle/1",
        shardmq_codec::QoS::AtLeastOnce,
        Some(1),
        b"one".to_vec(),
    ))
    .await;
    assert!(matches!(pubr.recv().await, Some(Packet::PubAck(_))));
    let p = sub.next_publish("idle/1").await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("idle/1", &b"one"[..]));

    // A SUBSCRIBE from a sleeping client.
    until_sleeping(&mut w, 3).await;
    sub.subscribe("other/#", QoS::AtMostOnce).await;
    until_sleeping(&mut w, 3).await;
    pubr.send(&Raw::publish_packet(
        "other/x",
        shardmq_codec::QoS::AtMostOnce,
        None,
        b"two".to_vec(),
    ))
    .await;
    let p = sub.next_publish("other/x").await;
    assert_eq!(&p.payload[..], b"two");

    // A sleeping client that goes away without DISCONNECT: its will is published.
    let willer = V4::connect(a, "idle-will", |o| {
        o.set_last_will(rumqttc::LastWill::new("idle/will", "gone", QoS::AtLeastOnce, false));
    })
    .await;
    until_sleeping(&mut w, 4).await;
    willer.kill();
    let p = sub.next_publish("the will of a sleeping client").await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("idle/will", &b"gone"[..]));

    // Takeover of a sleeping connection: the old socket is closed, the new one served.
    until_sleeping(&mut w, 3).await;
    let mut again = V4::connect(a, "idle-sub", |o| {
        o.set_clean_session(false);
    })
    .await;
    within("the taken-over connection to close", async {
        loop {
            match sub.events.recv().await {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    again.subscribe("idle/#", QoS::AtLeastOnce).await;
    pubr.send(&Raw::publish_packet(
        "idle/2",
        shardmq_codec::QoS::AtLeastOnce,
        Some(2),
        b"three".to_vec(),
    ))
    .await;
    assert!(matches!(pubr.recv().await, Some(Packet::PubAck(_))));
    let p = again.next_publish("idle/2 after takeover").await;
    assert_eq!(&p.payload[..], b"three");
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_subscriber_whose_socket_fills_is_woken_to_write() {
    const MESSAGES: u32 = 400;
    const PAYLOAD_BYTES: usize = 16 * 1024;
    let b = sys_broker(|c| c.limits.packet_size_max_bytes = 64 * 1024);
    let a = addr(&b);
    // Subscribes, then reads nothing until everything was published (6.4 MiB: more than the
    // socket buffers hold, so the shard's writer finds the socket full).
    let mut slow = Raw::connect(a, "idle-slow", ProtocolVersion::V3_1_1).await;
    slow.send(&Raw::subscribe_packet("fill/#", shardmq_codec::QoS::AtLeastOnce)).await;
    assert!(matches!(slow.recv().await, Some(Packet::SubAck(_))));
    let mut pubr = Raw::connect(a, "idle-fill-pub", ProtocolVersion::V3_1_1).await;
    let mut w = watcher(a).await;
    until_sleeping(&mut w, 3).await;

    for seq in 0..MESSAGES {
        let mut payload = vec![0u8; PAYLOAD_BYTES];
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        pubr.send(&Raw::publish_packet("fill/t", shardmq_codec::QoS::AtMostOnce, None, payload))
            .await;
    }
    pubr.send(&Raw::publish_packet(
        "fill/end",
        shardmq_codec::QoS::AtLeastOnce,
        Some(1),
        b"end".to_vec(),
    ))
    .await;
    assert!(matches!(pubr.recv().await, Some(Packet::PubAck(_))));

    // Everything queued for it arrives, in order, ending with the (never dropped) marker.
    let mut last = None;
    let mut received = 0;
    loop {
        match slow.recv().await {
            Some(Packet::Publish(p)) if &*p.topic == "fill/end" => break,
            Some(Packet::Publish(p)) => {
                let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                assert!(last.is_none_or(|l| seq > l), "{seq} after {last:?}");
                last = Some(seq);
                received += 1;
            }
            Some(_) => {}
            None => panic!("the slow subscriber was disconnected"),
        }
    }
    assert!(received > 0, "no message of the flood arrived");
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reaches_sleeping_v5_clients() {
    let b = sys_broker(|_| {});
    let a = addr(&b);
    let mut v5 = Raw::connect(a, "idle-v5", ProtocolVersion::V5).await;
    let mut w = watcher(a).await;
    until_sleeping(&mut w, 2).await;
    let stop = tokio::spawn(shutdown(b));
    let seen = v5.until_closed().await;
    stop.await.unwrap();
    assert!(
        seen.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.reason.0 == 0x8B)),
        "no DISCONNECT 0x8B Server shutting down: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_reports_the_bytes_read_and_written() {
    const PAYLOAD_BYTES: usize = 10_000;
    let b = sys_broker(|_| {});
    let a = addr(&b);
    let mut w = Raw::connect(a, "bytes-watch", ProtocolVersion::V3_1_1).await;
    w.send(&Raw::subscribe_packet("$SYS/broker/load/bytes/+", shardmq_codec::QoS::AtMostOnce))
        .await;
    let mut pubr = Raw::connect(a, "bytes-pub", ProtocolVersion::V3_1_1).await;
    pubr.send(&Raw::publish_packet(
        "bytes/t",
        shardmq_codec::QoS::AtLeastOnce,
        Some(1),
        vec![7; PAYLOAD_BYTES],
    ))
    .await;
    assert!(matches!(pubr.recv().await, Some(Packet::PubAck(_))));
    // The watcher sees both counters pass the published payload (in and, since $SYS
    // messages go out too, out).
    let (mut received, mut sent) = (0u64, 0u64);
    within("byte counters past the payload", async {
        while received < PAYLOAD_BYTES as u64 || sent == 0 {
            match w.recv().await {
                Some(Packet::Publish(p)) => {
                    let v: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                    match &*p.topic {
                        "$SYS/broker/load/bytes/received" => received = v,
                        "$SYS/broker/load/bytes/sent" => sent = v,
                        _ => {}
                    }
                }
                Some(_) => {}
                None => panic!("the watcher was disconnected"),
            }
        }
    })
    .await;
    shutdown(b).await;
}
