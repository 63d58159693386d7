//! The io layer's edges: malformed input, the connect timeout, handoff with pipelined
//! packets, several listeners, graceful shutdown, and 1,000 subscribers.

mod common;

use common::*;
use rumqttc::QoS;
use shardmq_codec::{ByteStr, Packet, ProtocolVersion, Publish};

fn mqtt(addr: &str) -> shardmq_engine::config::ListenerConfig {
    shardmq_engine::config::ListenerConfig::mqtt(addr.parse().unwrap())
}

fn publish_packet(topic: &str, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: shardmq_codec::QoS::AtMostOnce,
        retain: false,
        topic: ByteStr::from(topic),
        packet_id: None,
        payload: bytes::Bytes::from_static(payload),
        properties: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bytes_close_only_that_connection() {
    let b = broker(2);
    let a = addr(&b);
    let mut sub = V4::connect(a, &id_on_shard("mal-sub", 0, 2), |_| {}).await;
    sub.subscribe("mal/t", QoS::AtLeastOnce).await;

    let garbage: [&[u8]; 5] = [
        // Reserved packet type 0 as the very first byte.
        &[0x00, 0x00],
        // CONNECT with a non-minimal / overlong remaining length.
        &[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        // A PUBLISH before CONNECT.
        &[0x30, 0x05, 0x00, 0x01, b'a', b'x', b'y'],
        // Not MQTT at all.
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        // CONNECT with a bad protocol name.
        &[0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'X', b'X', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00],
    ];
    for g in garbage {
        let mut raw = Raw::open(a).await;
        raw.send_bytes(g).await;
        raw.until_closed().await;
    }
    // Malformed after a good CONNECT, on both shards.
    for shard in [0u16, 1] {
        let mut raw =
            Raw::connect(a, &id_on_shard("mal-conn", shard, 2), ProtocolVersion::V3_1_1).await;
        raw.send_bytes(&[0xF0, 0x00]).await; // AUTH is not a 3.1.1 packet.
        raw.until_closed().await;
        let mut raw =
            Raw::connect(a, &id_on_shard("mal-conn5", shard, 2), ProtocolVersion::V5).await;
        raw.send_bytes(&[0x60, 0x02, 0x00, 0x01]).await; // PUBREL with bad flags (must be 0x62).
        raw.until_closed().await;
    }

    // Everyone else is unaffected.
    let publisher = V4::connect(a, &id_on_shard("mal-pub", 1, 2), |_| {}).await;
    publisher.client.publish("mal/t", QoS::AtLeastOnce, false, "still here").await.unwrap();
    let p = sub.next_publish("a publish after the malformed clients").await;
    assert_eq!(&p.payload[..], b"still here");
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_without_connect_is_closed_after_the_timeout() {
    let b = broker_with(2, |c| c.limits.connect_timeout_secs = 1);
    let a = addr(&b);
    // A client that does connect in time, on each shard, before the others are opened: it
    // must stay connected past the timeout. Its (cancelled) deadline is earlier than those
    // of the connections opened next, so their closing is the marker that the timeout has
    // passed for it too.
    let mut ok = Vec::new();
    for shard in [0u16, 1] {
        ok.push(Raw::connect(a, &id_on_shard("in-time", shard, 2), ProtocolVersion::V3_1_1).await);
    }
    // Silent ones (several, so that the kernel spreads them over both shards' listeners).
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(Raw::open(a).await);
    }
    // Half a CONNECT.
    let mut half = Raw::open(a).await;
    let connect = half.encode(&Raw::connect_packet("half", ProtocolVersion::V3_1_1, true));
    half.send_bytes(&connect[..connect.len() / 2]).await;
    for s in &mut silent {
        assert!(s.until_closed().await.is_empty());
    }
    assert!(half.until_closed().await.is_empty());
    for c in &mut ok {
        c.send(&Packet::PingReq).await;
        assert_eq!(c.recv().await, Some(Packet::PingResp), "connected in time: still served");
    }
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_packets_survive_the_handoff() {
    let b = broker(2);
    let a = addr(&b);
    // Many connections, so that both "accepted on the home shard" and "handed off" happen.
    for i in 0..16 {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let id = format!("pipe-{i}-{}", version.level());
            let topic = format!("pipe/{id}");
            let mut raw = Raw::open(a).await;
            raw.version = version;
            let mut bytes = raw.encode(&Raw::connect_packet(&id, version, true)).to_vec();
            bytes.extend_from_slice(
                &raw.encode(&Raw::subscribe_packet(&topic, shardmq_codec::QoS::AtMostOnce)),
            );
            raw.send_bytes(&bytes).await;
            // The publish goes in a separate write after SUBACK (a publish pipelined before
            // SUBACK may legitimately race the subscription's propagation).
            match raw.recv().await {
                Some(Packet::ConnAck(c)) => assert_eq!(c.reason.0, 0),
                other => panic!("{id}: expected CONNACK, got {other:?}"),
            }
            match raw.recv().await {
                Some(Packet::SubAck(s)) => assert_eq!(s.reasons.len(), 1),
                other => panic!("{id}: expected SUBACK, got {other:?}"),
            }
            raw.send(&publish_packet(&topic, b"echo")).await;
            match raw.recv().await {
                Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"echo"),
                other => panic!("{id}: expected its own PUBLISH, got {other:?}"),
            }
        }
    }
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_accepts_and_shards_share_one_port() {
    let b = broker_with(2, |c| {
        c.listen = vec![mqtt("127.0.0.1:0"), mqtt("127.0.0.1:0")];
    });
    let addrs = b.local_addrs().to_vec();
    assert_eq!(addrs.len(), 1, "duplicate addresses collapse to one listener");
    let b2 = broker_with(2, |c| {
        c.listen = vec![mqtt("127.0.0.1:0"), mqtt("[::1]:0")];
    });
    for (i, a) in b2.local_addrs().iter().enumerate() {
        assert_ne!(a.port(), 0);
        // Many connections: they land on both shards through the one shared port.
        for j in 0..8 {
            let mut c = Raw::connect(*a, &format!("l{i}-{j}"), ProtocolVersion::V3_1_1).await;
            c.send(&Packet::PingReq).await;
            assert_eq!(c.recv().await, Some(Packet::PingResp));
        }
    }
    shutdown(b).await;
    shutdown(b2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_v5_clients_disconnect_0x8b_and_closes_everyone() {
    let b = broker(2);
    let a = addr(&b);
    let mut v5 = Vec::new();
    let mut v4 = Vec::new();
    for shard in [0u16, 1] {
        v5.push(Raw::connect(a, &id_on_shard("sd5", shard, 2), ProtocolVersion::V5).await);
        v4.push(Raw::connect(a, &id_on_shard("sd4", shard, 2), ProtocolVersion::V3_1_1).await);
    }
    shutdown(b).await;
    for mut c in v5 {
        let seen = c.until_closed().await;
        match seen.as_slice() {
            [Packet::Disconnect(d)] => assert_eq!(d.reason.0, 0x8B),
            other => panic!("expected one DISCONNECT 0x8B, got {other:?}"),
        }
    }
    for mut c in v4 {
        assert!(c.until_closed().await.is_empty());
    }
    // The port is free again.
    assert!(std::net::TcpStream::connect(a).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_each_get_every_message_once_in_order() {
    const SUBSCRIBERS: usize = 1000;
    const MESSAGES: u8 = 20;
    let b = broker(2);
    let a = addr(&b);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(SUBSCRIBERS);
    let mut tasks = Vec::new();
    for i in 0..SUBSCRIBERS {
        let ready_tx = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::open(a).await;
            let mut bytes = raw
                .encode(&Raw::connect_packet(&format!("fan-{i}"), ProtocolVersion::V3_1_1, true))
                .to_vec();
            bytes.extend_from_slice(
                &raw.encode(&Raw::subscribe_packet("fan/t", shardmq_codec::QoS::AtMostOnce)),
            );
            raw.send_bytes(&bytes).await;
            assert!(matches!(raw.recv().await, Some(Packet::ConnAck(_))), "fan-{i}: CONNACK");
            assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))), "fan-{i}: SUBACK");
            ready_tx.send(()).await.unwrap();
            let mut got = Vec::with_capacity(MESSAGES as usize);
            while got.len() < MESSAGES as usize {
                match raw.recv().await {
                    Some(Packet::Publish(p)) => got.push(p.payload[0]),
                    Some(_) => {}
                    None => panic!("fan-{i}: closed after {} messages", got.len()),
                }
            }
            assert_eq!(
                got,
                (0..MESSAGES).collect::<Vec<u8>>(),
                "fan-{i}: every message once, in order"
            );
            raw
        }));
    }
    drop(ready_tx);
    within("1000 subscriptions", async {
        for _ in 0..SUBSCRIBERS {
            ready_rx.recv().await.expect("a subscriber failed");
        }
    })
    .await;
    let publisher = V4::connect(a, "fan-pub", |_| {}).await;
    for i in 0..MESSAGES {
        publisher.client.publish("fan/t", QoS::AtMostOnce, false, vec![i]).await.unwrap();
    }
    let mut subs = Vec::new();
    for t in tasks {
        subs.push(within("every subscriber's messages", t).await.expect("subscriber task"));
    }
    // No extra message arrives: the next one is the marker published after the others.
    publisher.client.publish("fan/t", QoS::AtMostOnce, false, "end").await.unwrap();
    for (i, s) in subs.iter_mut().enumerate() {
        match s.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(&p.payload[..], b"end", "fan-{i}: extra message")
            }
            other => panic!("fan-{i}: expected the marker, got {other:?}"),
        }
    }
    drop(subs);
    shutdown(b).await;
}
