//! MQTT 5.0 features end to end with rumqttc v5 against an in-process broker with two shards:
//! topic aliases both ways, subscription identifiers, property pass-through, message expiry,
//! Maximum Packet Size, shared subscriptions (one member per message). Publisher and subscriber are
//! homed on different shards so every message crosses the mesh.

mod common;

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS;

const SHARDS: u16 = 2;

/// The next PUBLISH (other packets skipped).
async fn next_publish(c: &mut V5, what: &str) -> rumqttc::v5::mqttbytes::v5::Publish {
    loop {
        match c.next_incoming(what).await {
            Ok(Packet::Publish(p)) => return p,
            Ok(_) => {}
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Subscribes with a Subscription Identifier and waits for SUBACK.
async fn subscribe_with_id(c: &mut V5, filter: &str, id: usize) {
    let props = SubscribeProperties { id: Some(id), user_properties: Vec::new() };
    c.client.subscribe_with_properties(filter, QoS::AtLeastOnce, props).await.expect("queued");
    loop {
        match c.next_incoming("SUBACK").await {
            Ok(Packet::SubAck(_)) => return,
            Ok(_) => {}
            Err(e) => panic!("SUBACK: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_both_ways() {
    let b = broker(SHARDS);
    let a = addr(&b);
    let mut sub = V5::connect(a, &id_on_shard("alias-sub", 0, SHARDS), |o| {
        o.set_topic_alias_max(Some(4));
    })
    .await;
    sub.subscribe("alias/#", QoS::AtLeastOnce).await;
    let publ = V5::connect(a, &id_on_shard("alias-pub", 1, SHARDS), |_| {}).await;
    let with_alias = || PublishProperties { topic_alias: Some(1), ..Default::default() };
    // First with topic + alias, then only the alias: the broker resolves it.
    for (topic, payload) in [("alias/x", "one"), ("", "two")] {
        publ.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, with_alias())
            .await
            .expect("queued");
    }
    // Outbound: the topic with alias 1 the first time, then an empty topic and alias 1
    // (rumqttc's events show the packet as received on the wire).
    for (topic, expected) in [(&b"alias/x"[..], "one"), (&b""[..], "two")] {
        let p = next_publish(&mut sub, expected).await;
        assert_eq!(&p.topic[..], topic);
        assert_eq!(&p.payload[..], expected.as_bytes());
        assert_eq!(p.properties.and_then(|p| p.topic_alias), Some(1));
    }
    sub.kill();
    publ.kill();
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_and_properties_pass_through() {
    let b = broker(SHARDS);
    let a = addr(&b);
    let mut sub = V5::connect(a, &id_on_shard("props-sub", 0, SHARDS), |_| {}).await;
    subscribe_with_id(&mut sub, "props/+", 11).await;
    subscribe_with_id(&mut sub, "props/x", 12).await;
    let publ = V5::connect(a, &id_on_shard("props-pub", 1, SHARDS), |_| {}).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        response_topic: Some("props/reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x00corr")),
        user_properties: vec![("k".into(), "2".into()), ("a".into(), "1".into())],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    publ.client
        .publish_with_properties("props/x", QoS::AtLeastOnce, false, "body", props.clone())
        .await
        .expect("queued");
    let p = next_publish(&mut sub, "the message with properties").await;
    let mut got = p.properties.expect("properties");
    got.subscription_identifiers.sort_unstable();
    // [MQTT-3.3.4-3]: one copy with both identifiers. The expiry interval counts down
    // [MQTT-3.3.2-6], so it is at most what was sent.
    assert_eq!(got.subscription_identifiers, [11, 12]);
    assert!(got.message_expiry_interval.is_some_and(|s| (1..=3600).contains(&s)));
    let expected = PublishProperties {
        message_expiry_interval: got.message_expiry_interval,
        subscription_identifiers: vec![11, 12],
        ..props
    };
    assert_eq!(got, expected);
    sub.kill();
    publ.kill();
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_larger_than_the_clients_maximum_are_not_sent() {
    let b = broker(SHARDS);
    let a = addr(&b);
    let mut sub = V5::connect(a, &id_on_shard("small-sub", 1, SHARDS), |o| {
        o.set_max_packet_size(Some(200));
    })
    .await;
    sub.subscribe("size", QoS::AtMostOnce).await;
    let publ = V5::connect(a, &id_on_shard("size-pub", 0, SHARDS), |_| {}).await;
    publ.client.publish("size", QoS::AtMostOnce, false, vec![b'x'; 1000]).await.expect("queued");
    publ.client.publish("size", QoS::AtMostOnce, false, "small").await.expect("queued");
    // [MQTT-3.1.2-25]: the large one is skipped; the next arrives (and nothing else did).
    let p = next_publish(&mut sub, "the small message").await;
    assert_eq!(&p.payload[..], b"small");
    sub.kill();
    publ.kill();
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_delivers_each_message_to_one_member() {
    let b = broker(SHARDS);
    let a = addr(&b);
    // The publisher lives on the group's owner shard, so a job (owner -> member) and the
    // plain marker that follows the jobs (same shard -> member) take the same FIFO path: a
    // member has every job meant for it, and no duplicate, once it has the marker.
    let owner =
        shardmq_engine::core::shard::ShardCore::home_shard(b"$share/workers/jobs/+", SHARDS);
    let mut members = Vec::new();
    for i in 0..3u16 {
        let id = id_on_shard(&format!("share-m{i}"), i % SHARDS, SHARDS);
        let mut m = V5::connect(a, &id, |_| {}).await;
        m.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce).await;
        m.subscribe("jobs-done", QoS::AtLeastOnce).await;
        members.push(m);
    }
    let publ = V5::connect(a, &id_on_shard("share-pub", owner.0, SHARDS), |_| {}).await;
    for i in 0..30 {
        publ.client
            .publish("jobs/x", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .expect("queued");
    }
    publ.client.publish("jobs-done", QoS::AtLeastOnce, false, "done").await.expect("queued");
    let mut seen = Vec::new();
    for m in &mut members {
        let mut got = 0;
        loop {
            let p = next_publish(m, "a job or the marker").await;
            if p.topic == "jobs-done" {
                break;
            }
            seen.push(std::str::from_utf8(&p.payload).unwrap().parse::<usize>().unwrap());
            got += 1;
        }
        // Round-robin in join order: an even share each.
        assert_eq!(got, 10, "each member gets a third");
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..30).collect::<Vec<_>>(), "each message exactly once");
    for m in members {
        m.kill();
    }
    publ.kill();
    shutdown(b).await;
}
