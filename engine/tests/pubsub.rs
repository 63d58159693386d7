//! Publish/subscribe through an in-process broker with two shards: every QoS, wildcards,
//! retained messages. Client ids are chosen so that both shards home sessions.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rumqttc::QoS;

/// `per_shard` ids homed on each of `shards` shards.
fn ids_per_shard(prefix: &str, per_shard: usize, shards: u16) -> Vec<String> {
    let mut out = Vec::new();
    for s in 0..shards {
        let mut i = 0;
        let mut found = 0;
        while found < per_shard {
            let id = format!("{prefix}-{s}-{i}");
            if shardmq_engine::core::shard::ShardCore::home_shard(id.as_bytes(), shards).0 == s {
                out.push(id);
                found += 1;
            }
            i += 1;
        }
    }
    out
}

/// 10 subscribers and 10 publishers (half homed on each shard); every subscriber must get
/// every message exactly once, in each publisher's order, at the granted QoS. Each publisher
/// ends with a marker on its topic, after which none of its messages may come (a duplicate
/// would arrive before it: one publisher's messages stay in order per topic, MQTT 4.6).
async fn all_to_all(qos: QoS) {
    const PER_PUBLISHER: usize = 50;
    let b = broker(2);
    let a = addr(&b);
    let subs_ids = ids_per_shard(&format!("sub{}", qos as u8), 5, 2);
    let pubs_ids = ids_per_shard(&format!("pub{}", qos as u8), 5, 2);

    let mut subs = Vec::new();
    for id in &subs_ids {
        let mut c = V4::connect(a, id, |_| {}).await;
        c.subscribe("load/#", qos).await;
        subs.push(c);
    }
    let mut pubs = Vec::new();
    for id in &pubs_ids {
        pubs.push(V4::connect(a, id, |_| {}).await);
    }
    for seq in 0..PER_PUBLISHER {
        for (p, id) in pubs.iter().zip(&pubs_ids) {
            p.client
                .publish(format!("load/{id}"), qos, false, format!("{id}:{seq}"))
                .await
                .expect("publish queued");
        }
    }
    for (p, id) in pubs.iter().zip(&pubs_ids) {
        p.client.publish(format!("load/{id}"), qos, false, "end").await.expect("marker queued");
    }
    for (sub, sub_id) in subs.iter_mut().zip(&subs_ids) {
        let mut got = Vec::new();
        let mut ended = 0;
        while ended < pubs_ids.len() {
            let what = format!("{sub_id} at QoS {} ({} received)", qos as u8, got.len());
            let p = sub.next_publish(&what).await;
            if &p.payload[..] == b"end" {
                ended += 1;
            } else {
                got.push(p);
            }
        }
        let mut next: HashMap<String, usize> = HashMap::new();
        for p in got {
            assert_eq!(p.qos, qos, "{sub_id}: delivered at the publish/subscription QoS");
            let payload = String::from_utf8(p.payload.to_vec()).unwrap();
            let (publisher, seq) = payload.split_once(':').unwrap();
            assert_eq!(p.topic, format!("load/{publisher}"));
            let seq: usize = seq.parse().unwrap();
            let expected = next.entry(publisher.to_owned()).or_default();
            assert_eq!(seq, *expected, "{sub_id}: from {publisher}, out of order or duplicated");
            *expected += 1;
        }
        assert_eq!(next.len(), pubs_ids.len());
        assert!(next.values().all(|&n| n == PER_PUBLISHER));
    }
    for c in subs.into_iter().chain(pubs) {
        c.disconnect().await;
    }
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_every_message_once_in_order_across_shards() {
    all_to_all(QoS::AtMostOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_every_message_once_in_order_across_shards() {
    all_to_all(QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_every_message_once_in_order_across_shards() {
    all_to_all(QoS::ExactlyOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_is_downgraded_to_the_subscription() {
    let b = broker(2);
    let a = addr(&b);
    let mut sub = V4::connect(a, &id_on_shard("dg-sub", 0, 2), |_| {}).await;
    sub.subscribe("dg/t", QoS::AtLeastOnce).await;
    let publisher = V4::connect(a, &id_on_shard("dg-pub", 1, 2), |_| {}).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher.client.publish("dg/t", qos, false, vec![qos as u8]).await.unwrap();
    }
    let got = sub.publishes(3, "downgraded publishes").await;
    let qos: Vec<QoS> = got.iter().map(|p| p.qos).collect();
    assert_eq!(qos, [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::AtLeastOnce]);
    let payloads: Vec<u8> = got.iter().map(|p| p.payload[0]).collect();
    assert_eq!(payloads, [0, 1, 2]);
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_per_spec() {
    let b = broker(2);
    let a = addr(&b);
    let filters = ["w/+/c", "w/#", "w/b/+", "+/b/c", "#", "w/b/c/#", "+"];
    let topics = ["w/b/c", "w/x/c", "w/b/d", "w", "v/b/c", "w/b/c/d"];
    let matches = |f: &str, t: &str| -> bool {
        let (fl, tl): (Vec<&str>, Vec<&str>) = (f.split('/').collect(), t.split('/').collect());
        for (i, level) in fl.iter().enumerate() {
            match *level {
                "#" => return true,
                "+" if i < tl.len() => {}
                l if i < tl.len() && l == tl[i] => {}
                _ => return false,
            }
        }
        fl.len() == tl.len()
    };
    let mut subs = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let mut c =
            V4::connect(a, &id_on_shard(&format!("wc{i}"), (i % 2) as u16, 2), |_| {}).await;
        c.subscribe(f, QoS::AtLeastOnce).await;
        subs.push(c);
    }
    // After the topics under test, one marker topic per filter (its wildcards filled in), so
    // that every subscriber's last expected message is a marker: a topic it must not get
    // would have come before that (one publisher, one QoS: shardmq keeps its order).
    let markers: Vec<String> = filters
        .iter()
        .map(|f| f.split('/').map(|l| if l == "+" || l == "#" { "m" } else { l }))
        .map(|levels| levels.collect::<Vec<_>>().join("/"))
        .collect();
    let all: Vec<&str> = topics.iter().copied().chain(markers.iter().map(String::as_str)).collect();
    let publisher = V4::connect(a, "wc-pub", |_| {}).await;
    for t in &all {
        publisher.client.publish(*t, QoS::AtLeastOnce, false, t.as_bytes().to_vec()).await.unwrap();
    }
    for (c, f) in subs.iter_mut().zip(filters) {
        let expected: Vec<&str> = all.iter().copied().filter(|t| matches(f, t)).collect();
        assert!(markers.iter().any(|m| expected.last() == Some(&m.as_str())), "{f}: a marker last");
        let got = c.publishes(expected.len(), &format!("publishes matching {f}")).await;
        let got: Vec<String> = got.into_iter().map(|p| p.topic).collect();
        assert_eq!(got, expected, "filter {f}");
    }
    shutdown(b).await;
}

/// Subscribes a fresh client homed on `shard` to `filter` and returns the retained
/// messages it gets as (topic, payload), sorted by topic (collecting until 300 ms pass
/// without one).
async fn retained_seen(
    a: std::net::SocketAddr,
    name: &str,
    shard: u16,
    filter: &str,
) -> Vec<(String, String)> {
    let mut c = V4::connect(a, &id_on_shard(name, shard, 2), |_| {}).await;
    c.subscribe(filter, QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    while let Some(p) = c.publish_within(Duration::from_millis(300)).await {
        if !p.retain {
            // A live copy of a PUBLISH still in flight from the publisher: the new
            // subscription matched it before its SUBACK, which the server may do
            // (3.1.1 §3.8.4). Retained copies carry RETAIN = 1 [MQTT-3.3.1-8].
            continue;
        }
        got.push((p.topic, String::from_utf8(p.payload.to_vec()).unwrap()));
    }
    c.disconnect().await;
    got.sort();
    got
}

/// Subscribes fresh clients homed on every shard until each sees exactly `expected`:
/// retained updates reach other shards asynchronously.
async fn retained_eventually(
    a: std::net::SocketAddr,
    tag: &str,
    filter: &str,
    expected: &[(&str, &str)],
) {
    let expected: Vec<(String, String)> =
        expected.iter().map(|(t, p)| (t.to_string(), p.to_string())).collect();
    for shard in [0u16, 1] {
        within(&format!("{tag}: retained {expected:?} on shard {shard}"), async {
            for attempt in 0.. {
                let got =
                    retained_seen(a, &format!("{tag}-{shard}-{attempt}"), shard, filter).await;
                if got == expected {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_set_replace_clear_and_wildcard_subscribe() {
    let b = broker(2);
    let a = addr(&b);
    let publisher = V4::connect(a, "ret-pub", |_| {}).await;

    publisher.client.publish("ret/1", QoS::AtLeastOnce, true, "a").await.unwrap();
    publisher.client.publish("ret/2", QoS::AtLeastOnce, true, "b").await.unwrap();
    publisher.client.publish("ret/2/deep", QoS::AtLeastOnce, true, "c").await.unwrap();
    retained_eventually(a, "set", "ret/#", &[("ret/1", "a"), ("ret/2", "b"), ("ret/2/deep", "c")])
        .await;
    // A single-level wildcard sees only its level.
    retained_eventually(a, "plus", "ret/+", &[("ret/1", "a"), ("ret/2", "b")]).await;

    // Replace.
    publisher.client.publish("ret/1", QoS::AtLeastOnce, true, "a2").await.unwrap();
    retained_eventually(
        a,
        "replace",
        "ret/#",
        &[("ret/1", "a2"), ("ret/2", "b"), ("ret/2/deep", "c")],
    )
    .await;

    // Clear with an empty retained payload [MQTT-3.3.1-10].
    publisher.client.publish("ret/2", QoS::AtLeastOnce, true, "").await.unwrap();
    retained_eventually(a, "clear", "ret/#", &[("ret/1", "a2"), ("ret/2/deep", "c")]).await;
    // An exact subscription to a cleared topic gets nothing.
    retained_eventually(a, "exact", "ret/2", &[]).await;
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_shard_broker_serves_pubsub() {
    let b = broker(1);
    let a = addr(&b);
    let mut sub = V4::connect(a, "one-sub", |_| {}).await;
    sub.subscribe("one/#", QoS::ExactlyOnce).await;
    let p = V4::connect(a, "one-pub", |_| {}).await;
    for i in 0..20u8 {
        p.client.publish("one/t", QoS::ExactlyOnce, false, vec![i]).await.unwrap();
    }
    let got = sub.publishes(20, "single-shard publishes").await;
    assert_eq!(got.iter().map(|p| p.payload[0]).collect::<Vec<_>>(), (0..20).collect::<Vec<u8>>());
    shutdown(b).await;
}
