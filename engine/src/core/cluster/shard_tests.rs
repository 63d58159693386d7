//! The shards' side of the cluster, in the simulator: two or three simulated nodes (each a
//! multi-shard [`Sim`]) wired by a test runtime that plays `engine/src/cluster/`'s part
//! exactly through the core's API (`drain_cluster_out`, `handle_cluster`).

use std::sync::Arc;

use shardmq_codec::{Packet, ProtocolVersion, QoS, ReasonCode};

use crate::core::cluster::{ClusterCore, ClusterCounters, ClusterIn, ClusterOut, NodeId};
use crate::core::hash::Map;
use crate::core::ids::ShardId;
use crate::core::limits::Limits;
use crate::core::mesh::{mesh_cost, Message, Origin};
use crate::core::sim::Sim;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

/// Nodes and the test runtime between them.
struct Cluster {
    nodes: Vec<Sim>,
    /// Per node: filter → per-shard counts folded to the node's set.
    filters: Vec<Map<String, u32>>,
    /// Client id → (node, shard, token) of its latest connection, cluster-wide.
    registry: Map<String, (usize, ShardId, u64)>,
    /// Hold filter acks (to observe the SUBACK gate).
    hold_acks: bool,
    held_acks: Vec<(usize, ShardId, u64)>,
    /// Bytes handed to the runtime and credited back, per node.
    inflight: Vec<u64>,
    /// Session moves between the nodes (`move_runtime.rs`).
    moves: move_runtime::Moves,
    /// Other nodes' messages each node's shards reported handled.
    handled: Vec<u64>,
    /// Other nodes' messages handed to each node.
    handed: Vec<u64>,
}

impl Cluster {
    fn new(nodes: usize, shards: u16) -> Cluster {
        Cluster::with_limits(nodes, shards, Limits::default())
    }

    fn with_limits(nodes: usize, shards: u16, limits: Limits) -> Cluster {
        let nodes: Vec<Sim> = (0..nodes)
            .map(|i| {
                let core = ClusterCore {
                    node: NodeId(i as u16),
                    counters: Arc::new(ClusterCounters::default()),
                };
                Sim::with_cluster(shards, 7 + i as u64, limits.clone(), Some(core))
            })
            .collect();
        let n = nodes.len();
        Cluster {
            nodes,
            filters: (0..n).map(|_| Map::default()).collect(),
            registry: Map::default(),
            hold_acks: false,
            held_acks: Vec::new(),
            inflight: vec![0; n],
            moves: Default::default(),
            handled: vec![0; n],
            handed: vec![0; n],
        }
    }

    /// Runs every node and the runtime until nothing moves.
    fn run(&mut self) {
        for _ in 0..10_000 {
            for sim in &mut self.nodes {
                sim.run();
            }
            let mut moved = false;
            for node in 0..self.nodes.len() {
                for s in 0..self.nodes[node].shards.len() {
                    let mut out = Vec::new();
                    self.nodes[node].shards[s].drain_cluster_out(&mut out);
                    for m in out {
                        moved = true;
                        self.handle(node, ShardId(s as u16), m);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the cluster does not settle");
    }

    fn tell_shard(&mut self, node: usize, shard: ShardId, msg: ClusterIn) {
        let sim = &mut self.nodes[node];
        let now = sim.now;
        sim.shards[usize::from(shard.0)].handle_cluster(msg, now);
    }

    fn tell_all_shards(&mut self, node: usize, msg: ClusterIn) {
        for s in 0..self.nodes[node].shards.len() {
            self.tell_shard(node, ShardId(s as u16), msg.clone());
        }
    }

    fn handle(&mut self, node: usize, shard: ShardId, msg: ClusterOut) {
        match msg {
            ClusterOut::Publish { nodes, msg } => {
                let cost = mesh_cost(&msg);
                self.inflight[node] += cost;
                let n = self.nodes.len();
                for to in (0..n).filter(|&to| to != node) {
                    if nodes.contains(NodeId(to as u16)) || msg.retain {
                        let copy = Arc::new(Message { origin: Origin::REMOTE, ..(*msg).clone() });
                        let dest = ShardId(shard.0 % self.nodes[to].shards.len() as u16);
                        let from = NodeId(node as u16);
                        self.handed[to] += 1;
                        self.tell_shard(to, dest, ClusterIn::Publish { from, msg: copy });
                    }
                }
                self.inflight[node] -= cost;
                self.tell_shard(node, shard, ClusterIn::Credit { bytes: cost });
            }
            ClusterOut::PublishShared { node: to, group, msg } => {
                let cost = mesh_cost(&msg);
                let copy = Arc::new(Message { origin: Origin::REMOTE, ..(*msg).clone() });
                let to = usize::from(to.0);
                let dest = ShardId(shard.0 % self.nodes[to].shards.len() as u16);
                let from = NodeId(node as u16);
                self.handed[to] += 1;
                self.tell_shard(to, dest, ClusterIn::PublishShared { from, group, msg: copy });
                self.tell_shard(node, shard, ClusterIn::Credit { bytes: cost });
            }
            ClusterOut::Filter { filter, added, seq } => {
                let count = self.filters[node].entry(filter.to_string()).or_insert(0);
                let before = *count;
                if added {
                    *count += 1;
                } else {
                    *count -= 1;
                }
                let changed = (before == 0) != (*count == 0);
                if changed {
                    for to in (0..self.nodes.len()).filter(|&to| to != node) {
                        let route = ClusterIn::Route {
                            node: NodeId(node as u16),
                            filter: filter.clone(),
                            added,
                        };
                        self.tell_all_shards(to, route);
                    }
                }
                if self.hold_acks {
                    self.held_acks.push((node, shard, seq));
                } else {
                    self.tell_shard(node, shard, ClusterIn::FilterAck { seq });
                }
            }
            ClusterOut::Connected { client_id, token } => {
                let key = client_id.to_string();
                if let Some((old_node, old_shard, old_token)) =
                    self.registry.insert(key, (node, shard, token))
                {
                    if old_node != node {
                        let by = NodeId(node as u16);
                        let kick = ClusterIn::Kick { client_id, token: old_token, by };
                        self.tell_shard(old_node, old_shard, kick);
                    }
                }
            }
            m @ (ClusterOut::Claim { .. }
            | ClusterOut::Export { .. }
            | ClusterOut::Commit { .. }
            | ClusterOut::Handover { .. }
            | ClusterOut::Offer { .. }) => self.handle_move(node, shard, m),
            ClusterOut::Handled { messages } => self.handled[node] += messages,
            // This runtime acknowledges filters itself (`FilterAck` above).
            ClusterOut::RouteApplied { .. } => {}
            ClusterOut::Disconnected { client_id, token } => {
                let key = client_id.to_string();
                if self.registry.get(&key).is_some_and(|e| e.0 == node && e.2 == token) {
                    self.registry.remove(&key);
                }
            }
        }
    }

    /// SUBSCRIBE on `node`; runs the cluster until idle; the SUBACK's reason codes.
    fn subscribe(&mut self, node: usize, c: usize, filters: &[(&str, QoS)]) -> Vec<ReasonCode> {
        let sim = &mut self.nodes[node];
        let packet_id = sim.clients[c].next_packet_id();
        let filters = filters
            .iter()
            .map(|(f, q)| {
                let opts = shardmq_codec::SubscriptionOptions { qos: *q, ..Default::default() };
                ((*f).into(), opts)
            })
            .collect();
        let sub = shardmq_codec::Subscribe { packet_id, filters, properties: None };
        sim.send(c, &Packet::Subscribe(sub));
        self.run();
        self.nodes[node].take_suback(c, packet_id).expect("SUBACK")
    }

    fn release_acks(&mut self) {
        for (node, shard, seq) in std::mem::take(&mut self.held_acks) {
            self.tell_shard(node, shard, ClusterIn::FilterAck { seq });
        }
        self.run();
    }
}

#[test]
fn a_message_reaches_subscribers_on_other_nodes_once_per_node_in_order() {
    let mut cl = Cluster::new(3, 2);
    let p = cl.nodes[0].client("pub", V5);
    cl.nodes[0].connect(p);
    let s1 = cl.nodes[1].client("sub1", V311);
    cl.nodes[1].connect(s1);
    let s2 = cl.nodes[2].client("sub2", V5);
    cl.nodes[2].connect(s2);
    let s2b = cl.nodes[2].client("sub2b", V5);
    cl.nodes[2].connect(s2b);
    cl.run();
    for (node, c, filter) in [(1, s1, "t/#"), (2, s2, "t/+"), (2, s2b, "t/a")] {
        let reasons = cl.subscribe(node, c, &[(filter, QoS::AtLeastOnce)]);
        assert_eq!(reasons, vec![ReasonCode::GRANTED_QOS_1]);
    }
    for i in 0..20 {
        cl.nodes[0].publish(p, "t/a", &format!("m{i}"), QoS::AtLeastOnce, false);
    }
    cl.run();
    let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(cl.nodes[1].clients[s1].take_payloads(), want);
    assert_eq!(cl.nodes[2].clients[s2].take_payloads(), want);
    assert_eq!(cl.nodes[2].clients[s2b].take_payloads(), want);
    // One copy per node: node 2 has two subscribers, and its shards got 20 messages from
    // node 0, not 40 (mesh publishes on node 2 carry them between its own shards only).
    assert_eq!(cl.inflight[0], 0, "every byte handed to the runtime was credited back");
    // Receive side: every message handed to a node is reported handled, once.
    assert_eq!(cl.handed, cl.handled);
    assert_eq!(cl.handled[1], 20);
    // A topic nobody outside node 0 wants never leaves it.
    cl.nodes[0].publish(p, "other", "x", QoS::AtMostOnce, false);
    cl.run();
    assert!(cl.nodes[1].clients[s1].take_payloads().is_empty());
}

#[test]
fn suback_waits_for_the_other_nodes_and_unsubscribe_stops_routing() {
    let mut cl = Cluster::new(2, 1);
    let p = cl.nodes[0].client("pub", V5);
    cl.nodes[0].connect(p);
    let s = cl.nodes[1].client("sub", V5);
    cl.nodes[1].connect(s);
    cl.run();
    cl.hold_acks = true;
    let sim = &mut cl.nodes[1];
    let packet_id = sim.clients[s].next_packet_id();
    let sub = shardmq_codec::Subscribe {
        packet_id,
        filters: vec![("a".into(), Default::default())],
        properties: None,
    };
    sim.send(s, &Packet::Subscribe(sub));
    cl.run();
    assert!(cl.nodes[1].take_suback(s, packet_id).is_none(), "SUBACK before the nodes hold it");
    cl.hold_acks = false;
    cl.release_acks();
    assert!(cl.nodes[1].take_suback(s, packet_id).is_some());
    cl.nodes[0].publish(p, "a", "1", QoS::AtMostOnce, false);
    cl.run();
    assert_eq!(cl.nodes[1].clients[s].take_payloads(), vec!["1"]);
    cl.nodes[1].unsubscribe(s, &["a"]);
    cl.run();
    cl.nodes[0].publish(p, "a", "2", QoS::AtMostOnce, false);
    cl.run();
    assert!(cl.nodes[1].clients[s].take_payloads().is_empty());
    assert!(cl.nodes[0].shards[0].cluster.as_ref().expect("cluster").routes.is_empty());
}

#[test]
fn retained_messages_reach_every_node_and_are_not_sent_back() {
    let mut cl = Cluster::new(3, 2);
    let p = cl.nodes[0].client("pub", V5);
    cl.nodes[0].connect(p);
    cl.run();
    cl.nodes[0].publish(p, "r/1", "kept", QoS::AtLeastOnce, true);
    cl.run();
    let late = cl.nodes[2].client("late", V5);
    cl.nodes[2].connect(late);
    cl.subscribe(2, late, &[("r/#", QoS::AtLeastOnce)]);
    cl.run();
    let got = cl.nodes[2].clients[late].take_messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].retain, "a retained message from another node keeps RETAIN");
    // Clearing it on node 1 clears it everywhere.
    let q = cl.nodes[1].client("clear", V5);
    cl.nodes[1].connect(q);
    cl.nodes[1].publish(q, "r/1", "", QoS::AtMostOnce, true);
    cl.run();
    let later = cl.nodes[0].client("later", V5);
    cl.nodes[0].connect(later);
    cl.subscribe(0, later, &[("r/#", QoS::AtLeastOnce)]);
    cl.run();
    assert!(cl.nodes[0].clients[later].take_messages().is_empty());
}

#[test]
fn a_client_id_connected_on_another_node_takes_over_with_0x8e() {
    let mut cl = Cluster::new(2, 2);
    let a = cl.nodes[0].client("same", V5);
    cl.nodes[0].connect(a);
    cl.run();
    let b = cl.nodes[1].client("same", V5);
    cl.nodes[1].connect(b);
    cl.run();
    let old = &mut cl.nodes[0].clients[a];
    assert!(old.closed, "the older connection is closed");
    let disconnect = old.take_packets().into_iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason),
        _ => None,
    });
    assert_eq!(disconnect, Some(ReasonCode::SESSION_TAKEN_OVER));
    assert!(!cl.nodes[1].clients[b].closed, "the newer one stays");
    // The old node's session is gone with it: a later kick for the same token is a no-op,
    // and a reconnection on the old node takes the id back.
    let again = cl.nodes[0].client("same", V5);
    cl.nodes[0].connect(again);
    cl.run();
    assert!(cl.nodes[1].clients[b].closed);
    assert!(!cl.nodes[0].clients[again].closed);
}

#[test]
fn a_node_that_goes_down_loses_its_routes_and_messages_from_others_are_not_forwarded() {
    let mut cl = Cluster::new(2, 1);
    let s = cl.nodes[1].client("sub", V5);
    cl.nodes[1].connect(s);
    cl.subscribe(1, s, &[("x/#", QoS::AtMostOnce)]);
    cl.run();
    assert_eq!(cl.nodes[0].shards[0].cluster.as_ref().expect("cluster").routes.len(), 1);
    let now = cl.nodes[0].now;
    cl.nodes[0].shards[0].handle_cluster(ClusterIn::NodeDown(NodeId(1)), now);
    assert!(cl.nodes[0].shards[0].cluster.as_ref().expect("cluster").routes.is_empty());
    // A message from node 1 delivered on node 0 is not sent on (node 0's sub to it too).
    let local = cl.nodes[0].client("local", V5);
    cl.nodes[0].connect(local);
    cl.subscribe(0, local, &[("x/#", QoS::AtMostOnce)]);
    cl.run();
    let p = cl.nodes[1].client("pub", V5);
    cl.nodes[1].connect(p);
    cl.nodes[1].publish(p, "x/1", "hello", QoS::AtMostOnce, false);
    cl.run();
    assert_eq!(cl.nodes[0].clients[local].take_payloads(), vec!["hello"]);
    assert_eq!(cl.nodes[1].clients[s].take_payloads(), vec!["hello"], "exactly once");
}

#[test]
fn a_shared_group_across_nodes_gets_each_message_once() {
    let mut cl = Cluster::new(3, 2);
    let p = cl.nodes[0].client("pub", V5);
    cl.nodes[0].connect(p);
    let m1 = cl.nodes[1].client("m1", V5);
    cl.nodes[1].connect(m1);
    let m2 = cl.nodes[2].client("m2", V5);
    cl.nodes[2].connect(m2);
    let m2b = cl.nodes[2].client("m2b", V5);
    cl.nodes[2].connect(m2b);
    cl.run();
    for (node, c) in [(1, m1), (2, m2), (2, m2b)] {
        let reasons = cl.subscribe(node, c, &[("$share/g/s/#", QoS::AtLeastOnce)]);
        assert_eq!(reasons, vec![ReasonCode::GRANTED_QOS_1]);
    }
    for i in 0..30 {
        cl.nodes[0].publish(p, "s/x", &format!("m{i}"), QoS::AtLeastOnce, false);
    }
    cl.run();
    let mut got = cl.nodes[1].clients[m1].take_payloads();
    let from1 = got.len();
    got.extend(cl.nodes[2].clients[m2].take_payloads());
    got.extend(cl.nodes[2].clients[m2b].take_payloads());
    got.sort();
    let mut want: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(got, want, "each message once, cluster-wide");
    assert!(from1 > 0 && from1 < 30, "both nodes serve the group: node 1 got {from1}");
    // Node 1's member leaves: everything goes to node 2.
    cl.nodes[1].unsubscribe(m1, &["$share/g/s/#"]);
    cl.run();
    for i in 0..10 {
        cl.nodes[0].publish(p, "s/x", &format!("n{i}"), QoS::AtMostOnce, false);
    }
    cl.run();
    assert!(cl.nodes[1].clients[m1].take_payloads().is_empty());
    let n2 = cl.nodes[2].clients[m2].take_payloads().len()
        + cl.nodes[2].clients[m2b].take_payloads().len();
    assert_eq!(n2, 10);
    // A publisher on a node with members shares with the other node too.
    let q = cl.nodes[2].client("pub2", V5);
    cl.nodes[2].connect(q);
    cl.run();
    let r1 = cl.subscribe(1, m1, &[("$share/g/s/#", QoS::AtLeastOnce)]);
    assert_eq!(r1, vec![ReasonCode::GRANTED_QOS_1]);
    for i in 0..9 {
        cl.nodes[2].publish(q, "s/y", &format!("o{i}"), QoS::AtMostOnce, false);
    }
    cl.run();
    let a = cl.nodes[1].clients[m1].take_payloads().len();
    let b = cl.nodes[2].clients[m2].take_payloads().len()
        + cl.nodes[2].clients[m2b].take_payloads().len();
    assert_eq!(a + b, 9);
    assert!(a > 0, "node 1's member gets a share of node 2's messages");
}

#[test]
fn assigned_client_ids_name_the_node_so_nodes_never_take_each_others_clients() {
    let mut cl = Cluster::new(2, 1);
    let a = cl.nodes[0].client("", V5);
    let ack = cl.nodes[0].connect_with(a, Default::default());
    let b = cl.nodes[1].client("", V5);
    let ack_b = cl.nodes[1].connect_with(b, Default::default());
    cl.run();
    let id_a = ack.properties.and_then(|p| p.assigned_client_identifier).expect("assigned");
    let id_b = ack_b.properties.and_then(|p| p.assigned_client_identifier).expect("assigned");
    assert_ne!(id_a, id_b);
    assert!(id_a.starts_with("shardmq-n0-"), "{id_a}");
    assert!(!cl.nodes[0].clients[a].closed && !cl.nodes[1].clients[b].closed);
}

#[test]
fn a_subscription_next_to_a_shared_group_of_the_same_filter_is_routed_too() {
    // The group's owner shard routes the inner filter for the group; an ordinary subscriber
    // of the same filter on that shard must still be announced to the other nodes.
    let mut cl = Cluster::new(2, 1);
    let p = cl.nodes[0].client("pub", V5);
    cl.nodes[0].connect(p);
    let m = cl.nodes[1].client("member", V5);
    cl.nodes[1].connect(m);
    let s = cl.nodes[1].client("plain", V5);
    cl.nodes[1].connect(s);
    cl.run();
    cl.subscribe(1, m, &[("$share/g/a/#", QoS::AtMostOnce)]);
    cl.subscribe(1, s, &[("a/#", QoS::AtMostOnce)]);
    cl.nodes[0].publish(p, "a/b", "x", QoS::AtMostOnce, false);
    cl.run();
    assert_eq!(cl.nodes[1].clients[s].take_payloads(), vec!["x"]);
    assert_eq!(cl.nodes[1].clients[m].take_payloads(), vec!["x"]);
    cl.nodes[1].unsubscribe(s, &["a/#"]);
    cl.run();
    cl.nodes[0].publish(p, "a/b", "y", QoS::AtMostOnce, false);
    cl.run();
    assert!(cl.nodes[1].clients[s].take_payloads().is_empty());
    assert_eq!(cl.nodes[1].clients[m].take_payloads(), vec!["y"], "the group still gets it");
}

#[path = "move_runtime.rs"]
mod move_runtime;

#[path = "move_tests.rs"]
mod moves;

/// A shard whose subscribers hold publishers back shows it to the runtime (its bit of
/// `ClusterCounters::shards_paused`, which makes the runtime keep other nodes' messages for
/// it), on the backed-up node only, and clears it once the subscriber reads again.
#[test]
fn a_backed_up_shard_shows_the_runtime_its_pause() {
    let limits = Limits {
        connection_tx_bytes_pause: 4096,
        connection_tx_bytes_max: 1 << 20,
        ..Limits::default()
    };
    let mut cl = Cluster::with_limits(2, 2, limits);
    let p = cl.nodes[0].client("pub", V5);
    cl.nodes[0].connect(p);
    let sub_id = cl.nodes[1].id_on("sub", 1);
    let s = cl.nodes[1].client(&sub_id, V5);
    cl.nodes[1].connect(s);
    cl.run();
    assert_eq!(cl.subscribe(1, s, &[("flood", QoS::AtMostOnce)]), vec![ReasonCode::SUCCESS]);
    cl.nodes[1].clients[s].stalled = true;
    let payload = "x".repeat(1000);
    for _ in 0..10 {
        cl.nodes[0].publish(p, "flood", &payload, QoS::AtMostOnce, false);
    }
    cl.run();
    let mask = |cl: &Cluster, node: usize| {
        let c = cl.nodes[node].shards[0].config.cluster.as_ref().expect("a cluster node");
        c.counters.shards_paused.load(std::sync::atomic::Ordering::Relaxed)
    };
    // Shard 1 holds the subscriber (shard 0 follows once it hears of it, `MeshMsg::Pressure`,
    // which the simulator does not send). Node 0 is not backed up.
    assert_eq!(mask(&cl, 1) & 0b10, 0b10);
    assert_eq!(mask(&cl, 0), 0);
    cl.nodes[1].unstall(s);
    cl.run();
    assert_eq!(mask(&cl, 1), 0, "the pause ends once the queue drained");
    assert_eq!(cl.nodes[1].clients[s].take_payloads().len(), 10, "nothing was dropped");
}

#[path = "move_loss_tests.rs"]
mod move_loss;

#[path = "move_merge_tests.rs"]
mod move_merge;
