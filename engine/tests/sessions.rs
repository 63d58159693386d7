//! Sessions across shards: wills, takeover, persistent sessions with offline queues.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as P5};
use rumqttc::{LastWill, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_on_abnormal_close_only() {
    let b = broker(2);
    let a = addr(&b);
    for (sub_shard, will_shard) in [(0u16, 1u16), (1, 0), (0, 0)] {
        let tag = format!("w{sub_shard}{will_shard}");
        let mut sub =
            V4::connect(a, &id_on_shard(&format!("{tag}-sub"), sub_shard, 2), |_| {}).await;
        sub.subscribe(&format!("{tag}/#"), QoS::AtLeastOnce).await;

        // Abnormal close: the socket drops without DISCONNECT.
        let topic = format!("{tag}/gone");
        let will_id = id_on_shard(&format!("{tag}-dies"), will_shard, 2);
        let dying = V4::connect(a, &will_id, |o| {
            o.set_last_will(LastWill::new(topic.clone(), "bye", QoS::AtLeastOnce, false));
        })
        .await;
        dying.kill();
        let p = sub.next_publish(&format!("the will of {will_id}")).await;
        assert_eq!(p.topic, topic);
        assert_eq!(&p.payload[..], b"bye");

        // Normal DISCONNECT: the will is discarded [MQTT-3.1.2-10].
        let polite_id = id_on_shard(&format!("{tag}-polite"), will_shard, 2);
        let polite = V4::connect(a, &polite_id, |o| {
            o.set_last_will(LastWill::new(format!("{tag}/polite"), "no", QoS::AtLeastOnce, false));
        })
        .await;
        polite.disconnect().await;
        sub.assert_no_publish(Duration::from_millis(500)).await;
        sub.disconnect().await;
    }
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_disconnects_the_old_v5_client_with_0x8e() {
    let b = broker(2);
    let a = addr(&b);
    for i in 0..6 {
        let id = format!("takeover5-{i}");
        let mut old = Raw::connect(a, &id, shardmq_codec::ProtocolVersion::V5).await;
        let mut new = Raw::connect(a, &id, shardmq_codec::ProtocolVersion::V5).await;
        let seen = old.until_closed().await;
        match seen.as_slice() {
            [shardmq_codec::Packet::Disconnect(d)] => assert_eq!(d.reason.0, 0x8E, "{id}"),
            other => panic!("{id}: expected one DISCONNECT 0x8E, got {other:?}"),
        }
        new.send(&shardmq_codec::Packet::PingReq).await;
        assert_eq!(new.recv().await, Some(shardmq_codec::Packet::PingResp));
    }
    shutdown(b).await;
}

/// The same through rumqttc's 5.0 client, which must see the reason code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_reason_reaches_a_rumqttc_v5_client() {
    let b = broker(2);
    let a = addr(&b);
    // Several ids and several attempts each, so that the two connections of a pair are
    // accepted on different shards at least some of the time (the kernel picks).
    for i in 0..6 {
        let id = format!("takeover-{i}");
        let mut old = V5::connect(a, &id, |_| {}).await;
        let mut new = V5::connect(a, &id, |_| {}).await;
        // rumqttc reports a server DISCONNECT as the error that ends its event loop.
        let ended = within("the old client's DISCONNECT", async {
            loop {
                match old.next_incoming("DISCONNECT").await {
                    Ok(P5::Disconnect(d)) => return format!("{:?}", d.reason_code),
                    Ok(_) => {}
                    Err(e) => return e,
                }
            }
        })
        .await;
        assert!(
            ended.contains(&format!("{:?}", DisconnectReasonCode::SessionTakenOver)),
            "{id}: the old client must get DISCONNECT 0x8E, got: {ended}"
        );
        // The new connection works.
        new.subscribe(&format!("tk/{i}"), rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await;
        new.client
            .publish(format!("tk/{i}"), rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
        loop {
            match new.next_incoming("own publish after takeover").await {
                Ok(P5::Publish(p)) => {
                    assert_eq!(&p.payload[..], b"x");
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("{id}: new connection failed: {e}"),
            }
        }
        new.kill();
    }
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_closes_the_old_v311_connection() {
    let b = broker(2);
    let a = addr(&b);
    for i in 0..4 {
        let id = format!("takeover4-{i}");
        let mut old = Raw::connect(a, &id, shardmq_codec::ProtocolVersion::V3_1_1).await;
        let _new = Raw::connect(a, &id, shardmq_codec::ProtocolVersion::V3_1_1).await;
        let seen = old.until_closed().await;
        assert!(seen.is_empty(), "3.1.1 has no server DISCONNECT: {seen:?}");
    }
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_gets_its_offline_queue_on_reconnect() {
    let b = broker(2);
    let a = addr(&b);
    for (home, publisher_home) in [(0u16, 1u16), (1, 0), (1, 1)] {
        let id = id_on_shard(&format!("persist{home}{publisher_home}"), home, 2);
        let topic = format!("ps/{id}");
        let persistent = |o: &mut rumqttc::MqttOptions| {
            o.set_clean_session(false);
        };
        let mut c = V4::connect(a, &id, persistent).await;
        c.subscribe(&topic, QoS::AtLeastOnce).await;
        c.disconnect().await;

        let publisher =
            V4::connect(a, &id_on_shard(&format!("ps-pub{home}"), publisher_home, 2), |_| {}).await;
        for i in 0..10u8 {
            publisher.client.publish(&topic, QoS::AtLeastOnce, false, vec![i]).await.unwrap();
        }
        // Wait until the broker has acknowledged them all (so they are queued).
        let mut acked = 0;
        let mut publisher = publisher;
        while acked < 10 {
            if let rumqttc::Packet::PubAck(_) = publisher.next_incoming("PUBACK").await {
                acked += 1;
            }
        }

        let mut back = V4::connect(a, &id, |o| {
            o.set_clean_session(false);
        })
        .await;
        let got = back.publishes(10, &format!("{id}'s offline queue")).await;
        let payloads: Vec<u8> = got.iter().map(|p| p.payload[0]).collect();
        assert_eq!(payloads, (0..10).collect::<Vec<u8>>(), "{id}: every queued message, in order");
        back.assert_no_publish(Duration::from_millis(300)).await;
        back.disconnect().await;
        publisher.disconnect().await;
    }
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_session_discards_the_old_session() {
    let b = broker(2);
    let a = addr(&b);
    let id = id_on_shard("clean", 1, 2);
    let mut c = V4::connect(a, &id, |o| {
        o.set_clean_session(false);
    })
    .await;
    c.subscribe("cs/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut c = V4::connect(a, &id, |_| {}).await;
    let publisher = V4::connect(a, "cs-pub", |_| {}).await;
    publisher.client.publish("cs/t", QoS::AtLeastOnce, false, "x").await.unwrap();
    c.assert_no_publish(Duration::from_millis(500)).await;
    shutdown(b).await;
}
