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

/// A QoS 1 publisher on its own task: publishes `move/{n}` with payload `n` (1 ms apart)
/// until told to stop, then waits for every PUBACK. Returns the numbers it got PUBACK for
/// and the client. `published` counts what it handed to the client so far.
fn keep_publishing(
    mut p: V4,
    stop: tokio::sync::watch::Receiver<bool>,
    published: tokio::sync::watch::Sender<u32>,
) -> tokio::task::JoinHandle<(std::collections::BTreeSet<u32>, V4)> {
    use rumqttc::{Event, Outgoing, Packet};
    tokio::spawn(async move {
        let mut next = 0u32;
        let mut order = std::collections::VecDeque::new();
        let mut by_pkid = std::collections::HashMap::new();
        let mut acked = std::collections::BTreeSet::new();
        loop {
            let stopping = *stop.borrow();
            if stopping && acked.len() == next as usize {
                return (acked, p);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(1)), if !stopping => {
                    let payload = next.to_be_bytes().to_vec();
                    p.client.publish("move/x", QoS::AtLeastOnce, false, payload).await.unwrap();
                    order.push_back(next);
                    next += 1;
                    published.send_replace(next);
                }
                ev = p.events.recv() => match ev {
                    Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        by_pkid.insert(pkid, order.pop_front().expect("a publish sent"));
                    }
                    Some(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                        acked.insert(by_pkid[&a.pkid]);
                    }
                    Some(Err(e)) => panic!("publisher: {e}"),
                    None => panic!("publisher: event loop ended"),
                    _ => {}
                },
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_moves_while_a_third_node_keeps_publishing_and_loses_nothing() {
    let a = node(1, Vec::new());
    let b = node(2, vec![a.cluster_addr().unwrap()]);
    let c = node(3, vec![a.cluster_addr().unwrap()]);
    for (n, peers) in [(&a, [2, 3]), (&b, [1, 3]), (&c, [1, 2])] {
        for p in peers {
            wait_for_peer(n, NodeId(p), MemberState::Alive).await;
        }
    }
    // A persistent QoS 1 subscriber on node 1, then offline.
    let persistent = |o: &mut rumqttc::MqttOptions| {
        o.set_clean_session(false);
    };
    let mut sub = V4::connect(addr(&a), "mover", persistent).await;
    sub.subscribe("move/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    // A publisher on node 3 publishes all along.
    let publisher = V4::connect(addr(&c), "pub-on-c", |_| {}).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0u32);
    let task = keep_publishing(publisher, stop_rx, count_tx);
    // Messages queue on node 1 meanwhile.
    within("50 messages published", count_rx.wait_for(|n| *n >= 50)).await.unwrap();

    // The client comes back on node 2: its session moves there while messages keep coming.
    let mut sub = V4::connect(addr(&b), "mover", persistent).await;
    let at_connack = *count_rx.borrow();
    let mut got: Vec<u32> = Vec::new();
    let number = |p: &rumqttc::Publish| u32::from_be_bytes(p.payload[..4].try_into().unwrap());
    // Marker: a message published well after the CONNACK arrives (the move is over).
    while got.last().is_none_or(|n| *n < at_connack + 50) {
        let p = sub.next_publish("messages after the move").await;
        got.push(number(&p));
    }
    stop_tx.send_replace(true);
    let (acked, publisher) = within("every PUBACK", task).await.unwrap();
    // The end marker, published after every acknowledged message, on the same path.
    publisher.client.publish("move/end", QoS::AtLeastOnce, false, vec![0xff; 4]).await.unwrap();
    let rest = sub.publishes_before_marker("move/end", "the rest").await;
    got.extend(rest.iter().map(number));

    let received: std::collections::BTreeSet<u32> = got.iter().copied().collect();
    let lost: Vec<u32> = acked.iter().filter(|n| !received.contains(n)).copied().collect();
    assert!(lost.is_empty(), "acknowledged and never delivered: {lost:?}");
    let duplicates = got.len() - received.len();
    eprintln!(
        "{} messages acknowledged, {} delivered, {duplicates} duplicates (QoS 1, allowed)",
        acked.len(),
        got.len()
    );
    assert!(acked.len() as u32 >= at_connack + 50);

    sub.disconnect().await;
    publisher.disconnect().await;
    for n in [c, b, a] {
        shutdown(n).await;
    }
}
