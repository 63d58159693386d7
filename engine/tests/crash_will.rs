//! Wills across `kill -9` (issue 10, `core/persist/will.rs`): the will of a persistent
//! session whose connection the crash cut is published after the restart; a will discarded
//! by a normal DISCONNECT before the crash is not. Real clients (rumqttc), the `shardmq`
//! binary as a child process.

mod common;
#[path = "common/crash_kit.rs"]
mod crash_kit;

use common::{id_on_shard, V4};
use crash_kit::{data_dir, Broker};
use rumqttc::{LastWill, QoS};

fn persistent_with_will(
    topic: &str,
    payload: &'static str,
) -> impl FnOnce(&mut rumqttc::MqttOptions) {
    let topic = topic.to_string();
    move |o| {
        o.set_clean_session(false);
        o.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, false));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_sessions_will_survives_kill9() {
    let run = format!("will-{}", std::process::id());
    let dir = data_dir(&run);
    let broker = Broker::start(&dir, "sync").await;
    let topic = format!("{run}/will");

    // The subscriber: a persistent session on shard 1, subscribed, offline.
    let sub_id = id_on_shard(&format!("{run}-sub"), 1, 2);
    let mut s = V4::connect(broker.addr, &sub_id, |o| {
        o.set_clean_session(false);
    })
    .await;
    s.subscribe(&topic, QoS::AtLeastOnce).await;
    s.disconnect().await;

    // Two persistent sessions with wills on shard 0: `a` is connected at the crash, `b`
    // disconnected normally before it (its will is discarded [MQTT-3.1.2-10]).
    let a_id = id_on_shard(&format!("{run}-a"), 0, 2);
    let b_id = id_on_shard(&format!("{run}-b"), 0, 2);
    let mut a = V4::connect(broker.addr, &a_id, persistent_with_will(&topic, "a-gone")).await;
    let mut b = V4::connect(broker.addr, &b_id, persistent_with_will(&topic, "b-gone")).await;
    b.subscribe(&format!("{run}/b"), QoS::AtLeastOnce).await;
    b.disconnect().await;
    // A persistent session's SUBACK waits until its shard's log is durable up to it: the
    // wills' records (same shard, earlier) are durable when it arrives.
    a.subscribe(&format!("{run}/a"), QoS::AtLeastOnce).await;
    broker.kill9().await;
    a.kill();

    let broker = Broker::start(&dir, "sync").await;
    let mut s = V4::connect(broker.addr, &sub_id, |o| {
        o.set_clean_session(false);
    })
    .await;
    let first = s.next_publish("a's will after the restart").await;
    assert_eq!((&first.topic[..], &first.payload[..]), (topic.as_str(), &b"a-gone"[..]));
    // A marker from shard 0 after the wills were published there: anything published with
    // them arrives before it.
    let m_id = id_on_shard(&format!("{run}-marker"), 0, 2);
    let m = V4::connect(broker.addr, &m_id, |_| {}).await;
    m.client.publish(&topic, QoS::AtLeastOnce, false, "marker").await.expect("marker");
    let next = s.next_publish("the marker").await;
    assert_eq!(&next.payload[..], b"marker", "b's will was discarded by its DISCONNECT");
    m.kill();
    s.kill();
    broker.kill9().await;
    let _ = std::fs::remove_dir_all(&dir);
}
