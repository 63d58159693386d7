//! A subscriber that stops reading: the shard's writer (`io/flush.rs`) hands its full socket to
//! the connection's task, its queue stays bounded by `connection_tx_bytes_max` (QoS 0 is
//! dropped past it), and everybody else keeps being served.

mod common;

use common::*;
use rumqttc::QoS;
use shardmq_codec::{Packet, ProtocolVersion};

const FLOOD_MESSAGES: u32 = 2000;
const PAYLOAD_BYTES: usize = 16 * 1024;

fn seq_of(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload[..4].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_is_bounded_and_others_are_served() {
    let b = broker_with(1, |c| {
        c.limits.packet_size_max_bytes = 64 * 1024;
        c.limits.connection_tx_bytes_max = 256 * 1024;
    });
    let a = addr(&b);

    // The slow subscriber: subscribes, then reads nothing until the end.
    let mut slow = Raw::connect(a, "slow-sub", ProtocolVersion::V3_1_1).await;
    slow.send(&Raw::subscribe_packet("slow/#", shardmq_codec::QoS::AtLeastOnce)).await;
    assert!(matches!(slow.recv().await, Some(Packet::SubAck(_))));

    let mut fast = V4::connect(a, "fast-sub", |o| {
        o.set_max_packet_size(128 * 1024, 128 * 1024);
    })
    .await;
    fast.subscribe("slow/#", QoS::AtLeastOnce).await;

    // 32 MiB of QoS 0 (delivered at QoS 0), then an end marker at QoS 1 (never dropped).
    let mut publisher = Raw::connect(a, "flood-pub", ProtocolVersion::V3_1_1).await;
    for seq in 0..FLOOD_MESSAGES {
        let mut payload = vec![0u8; PAYLOAD_BYTES];
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        publisher
            .send(&Raw::publish_packet("slow/t", shardmq_codec::QoS::AtMostOnce, None, payload))
            .await;
    }
    let end =
        Raw::publish_packet("slow/end", shardmq_codec::QoS::AtLeastOnce, Some(1), b"end".to_vec());
    publisher.send(&end).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));

    // The reading subscriber is served while the other one's socket is full.
    let mut last = None;
    loop {
        let p = fast.next_publish("the flood and the end marker").await;
        if p.topic == "slow/end" {
            break;
        }
        let seq = seq_of(&p.payload);
        assert!(last.is_none_or(|l| seq > l), "fast: {seq} after {last:?}");
        last = Some(seq);
    }

    // The slow subscriber now reads: what waited for it is in order, ends with the marker,
    // and is far less than the flood (its queue was bounded, QoS 0 past it dropped).
    let mut received = 0u32;
    let mut last = None;
    loop {
        match slow.recv().await {
            Some(Packet::Publish(p)) if &*p.topic == "slow/end" => break,
            Some(Packet::Publish(p)) => {
                let seq = seq_of(&p.payload);
                assert!(last.is_none_or(|l| seq > l), "slow: {seq} after {last:?}");
                last = Some(seq);
                received += 1;
            }
            other => panic!("slow subscriber: unexpected {other:?}"),
        }
    }
    assert!(
        received < FLOOD_MESSAGES,
        "the slow subscriber got all {received} messages: nothing was dropped, so its queue \
         was not bounded"
    );

    fast.disconnect().await;
    shutdown(b).await;
}
