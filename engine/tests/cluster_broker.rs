//! Two brokers in one process joined as a cluster (`Config::cluster`, the runtime started by
//! `Broker::start`), with real rumqttc clients: a message published on one node reaches a
//! subscriber on the other, in order, and a graceful shutdown of one is seen by the other.
//! Waits are for what the nodes report (the runtime's status) or for messages.

mod common;

use std::time::{Duration, Instant};

use common::{addr, broker_with, shutdown, within, V4, WAIT};
use rumqttc::QoS;
use shardmq_engine::cluster::node::{LinkState, MemberState};
use shardmq_engine::config::ClusterSettings;
use shardmq_engine::core::cluster::NodeId;
use shardmq_engine::io::BrokerHandle;

fn node(id: u16, seeds: Vec<std::net::SocketAddr>) -> BrokerHandle {
    broker_with(2, |c| {
        c.cluster = Some(ClusterSettings::new(NodeId(id), "127.0.0.1:0".parse().unwrap(), seeds));
    })
}

/// Waits until `b` sees `peer` as `state` (and, when alive, with its link up).
async fn wait_for_peer(b: &BrokerHandle, peer: NodeId, state: MemberState) {
    let view = b.cluster_view().expect("a cluster node");
    let deadline = Instant::now() + WAIT;
    loop {
        let v = view.clone();
        let s = tokio::task::spawn_blocking(move || v.status()).await.unwrap();
        let seen = s.as_ref().and_then(|s| s.members.iter().find(|m| m.node == peer).cloned());
        if seen.as_ref().is_some_and(|m| {
            m.state == state && (state != MemberState::Alive || m.link == LinkState::Up)
        }) {
            return;
        }
        assert!(Instant::now() < deadline, "{peer} never {state:?}: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_on_one_node_reaches_a_subscriber_on_the_other() {
    let a = node(1, Vec::new());
    let b = node(2, vec![a.cluster_addr().unwrap()]);
    wait_for_peer(&a, NodeId(2), MemberState::Alive).await;
    wait_for_peer(&b, NodeId(1), MemberState::Alive).await;

    let mut sub = V4::connect(addr(&b), "sub-on-b", |_| {}).await;
    // The SUBACK waits until node 1 holds the route: what is published there after it
    // reaches this subscriber.
    sub.subscribe("orders/#", QoS::AtLeastOnce).await;
    let publisher = V4::connect(addr(&a), "pub-on-a", |_| {}).await;
    for i in 0..20u32 {
        let topic = format!("orders/{}", i % 3);
        publisher
            .client
            .publish(topic, QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    let got = sub.publishes(20, "the messages from node 1").await;
    let order: Vec<u32> =
        got.iter().map(|p| u32::from_be_bytes(p.payload[..4].try_into().unwrap())).collect();
    assert_eq!(order, (0..20).collect::<Vec<_>>(), "in order per publisher");
    assert!(got.iter().all(|p| p.qos == QoS::AtLeastOnce));

    // A graceful stop: node 1 hears node 2 leave.
    sub.disconnect().await;
    shutdown(b).await;
    within("node 2 down", wait_for_peer(&a, NodeId(2), MemberState::Down)).await;
    publisher.disconnect().await;
    shutdown(a).await;
}
