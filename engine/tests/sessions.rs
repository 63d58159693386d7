//! Sessions across shards: wills, takeover, persistent sessions with offline queues.

mod common;

use common::*;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as P5};
use rumqttc::{LastWill, QoS};
use shardmq_codec::{Packet, ProtocolVersion};

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

        // Normal DISCONNECT: the will is discarded [MQTT-3.1.2-10]. Once the broker has
        // closed the polite connection, a marker published on the will's shard follows any
        // will it would have published on the same path.
        let polite_id = id_on_shard(&format!("{tag}-polite"), will_shard, 2);
        let mut polite = Raw::open(a).await;
        let mut connect = Raw::connect_packet(&polite_id, ProtocolVersion::V3_1_1, true);
        if let Packet::Connect(c) = &mut connect {
            c.will = Some(shardmq_codec::Will {
                topic: format!("{tag}/polite").as_str().into(),
                payload: "no".into(),
                qos: shardmq_codec::QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
            });
        }
        polite.send(&connect).await;
        assert!(matches!(polite.recv().await, Some(Packet::ConnAck(_))), "{polite_id}: CONNACK");
        let bye =
            shardmq_codec::Disconnect { reason: shardmq_codec::ReasonCode(0), properties: None };
        polite.send(&Packet::Disconnect(bye)).await;
        assert!(polite.until_closed().await.is_empty(), "{polite_id}: nothing after DISCONNECT");
        let marker = format!("{tag}/marker");
        let marker_pub =
            V4::connect(a, &id_on_shard(&format!("{tag}-mark"), will_shard, 2), |_| {}).await;
        marker_pub.client.publish(&marker, QoS::AtLeastOnce, false, "m").await.unwrap();
        sub.assert_no_publish_before_marker(&marker, "no will after DISCONNECT").await;
        marker_pub.disconnect().await;
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
        // A live message after the reconnection comes after the whole queue (which must hold
        // each message once): it is the marker.
        publisher.client.publish(&topic, QoS::AtLeastOnce, false, vec![10]).await.unwrap();
        let got = back.publishes(11, &format!("{id}'s offline queue, then a live message")).await;
        let payloads: Vec<u8> = got.iter().map(|p| p.payload[0]).collect();
        assert_eq!(payloads, (0..=10).collect::<Vec<u8>>(), "{id}: every queued message once");
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
    // The new session's only subscription: the marker, published after the message the old
    // subscription would have matched.
    c.subscribe("cs/marker", QoS::AtLeastOnce).await;
    let publisher = V4::connect(a, "cs-pub", |_| {}).await;
    publisher.client.publish("cs/t", QoS::AtLeastOnce, false, "x").await.unwrap();
    publisher.client.publish("cs/marker", QoS::AtLeastOnce, false, "m").await.unwrap();
    c.assert_no_publish_before_marker("cs/marker", "the old subscription is gone").await;
    shutdown(b).await;
}
