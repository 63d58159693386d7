//! What the cluster runtime tests share (`cluster_runtime.rs`, `cluster_tls.rs`): a node
//! (a `ClusterRuntime` on 127.0.0.1, port 0) with a fake `ShardSink` recording what the
//! runtime hands to its shards, the waits on its markers, and a route exchange.
//!
//! Every wait is for a marker (a message that must arrive, a status or a counter that must
//! be reached), with a generous deadline as the failure guard; nothing sleeps and then
//! asserts.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardmq_codec::{ByteStr, QoS};
use shardmq_engine::cluster::node::{ClusterStatus, LinkState, MemberState};
use shardmq_engine::cluster::runtime::{start, ClusterRuntime};
use shardmq_engine::config::ClusterSettings;
use shardmq_engine::core::cluster::{
    ClusterCounters, ClusterIn, ClusterOut, ClusterTx, NodeId, ShardSink,
};
use shardmq_engine::core::ids::ShardId;
use shardmq_engine::core::mesh::{Message, Origin};

/// The failure guard of every wait (membership takes a few gossip rounds).
pub const PATIENCE: Duration = Duration::from_secs(30);
/// Shards of every test node.
pub const SHARDS: u16 = 2;

/// Records every `ClusterIn` with its shard, in order, and answers route barriers as a
/// shard does (it applies `ClusterIn` in order: every route before a barrier is applied).
struct Recorder {
    tx: Mutex<Sender<(ShardId, ClusterIn)>>,
    /// The runtime's channel from the shards, set once it started.
    runtime: std::sync::OnceLock<Arc<dyn ClusterTx>>,
}

impl ShardSink for Recorder {
    fn send(&self, shard: ShardId, msgs: Vec<ClusterIn>) {
        let tx = self.tx.lock().unwrap();
        for m in msgs {
            if let ClusterIn::RouteBarrier { node, boot, seq } = m {
                if let Some(rt) = self.runtime.get() {
                    rt.send(shard, ClusterOut::RouteApplied { node, boot, seq });
                }
                continue;
            }
            let _ = tx.send((shard, m));
        }
    }
    fn shard_count(&self) -> u16 {
        SHARDS
    }
}

/// A running cluster runtime and what it handed to its shards.
pub struct Node {
    pub id: NodeId,
    pub rt: ClusterRuntime,
    pub inbox: Receiver<(ShardId, ClusterIn)>,
    pub counters: Arc<ClusterCounters>,
}

impl Node {
    /// Node `id` on 127.0.0.1 (port 0) joining through `seeds`.
    pub fn start(id: u16, seeds: &[SocketAddr]) -> Node {
        Node::start_with(id, "127.0.0.1:0", seeds, |_| {})
    }

    /// Node `id` listening on `listen`, joining through `seeds`, its settings changed by
    /// `adjust` (link TLS, a gossip key, …).
    pub fn start_with(
        id: u16,
        listen: &str,
        seeds: &[SocketAddr],
        adjust: impl FnOnce(&mut ClusterSettings),
    ) -> Node {
        let (tx, inbox) = mpsc::channel();
        let counters = Arc::new(ClusterCounters::default());
        let mut settings =
            ClusterSettings::new(NodeId(id), listen.parse().unwrap(), seeds.to_vec());
        adjust(&mut settings);
        let sink = Arc::new(Recorder { tx: Mutex::new(tx), runtime: std::sync::OnceLock::new() });
        let rt = start(settings, sink.clone(), counters.clone(), Instant::now(), SHARDS).unwrap();
        let _ = sink.runtime.set(rt.tx());
        Node { id: NodeId(id), rt, inbox, counters }
    }

    pub fn addr(&self) -> SocketAddr {
        self.rt.local_addr()
    }

    /// The next `ClusterIn` for which `pick` says yes; the others are returned in order.
    pub fn wait_for<T>(
        &self,
        what: &str,
        mut pick: impl FnMut(ShardId, &ClusterIn) -> Option<T>,
    ) -> (T, Vec<(ShardId, ClusterIn)>) {
        let deadline = Instant::now() + PATIENCE;
        let mut others = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(left) {
                Ok((shard, m)) => match pick(shard, &m) {
                    Some(t) => return (t, others),
                    None => others.push((shard, m)),
                },
                Err(_) => panic!("{}: no {what} within {PATIENCE:?}; got {others:?}", self.id),
            }
        }
    }

    /// Waits until `ok` holds of this node's status.
    pub fn wait_status(&self, what: &str, ok: impl Fn(&ClusterStatus) -> bool) -> ClusterStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let s = self.rt.status().expect("the main loop answers");
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not {what} within {PATIENCE:?}: {s:?}",
                self.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until this node sees `peer` alive with its link in state `link`.
    pub fn wait_link(&self, peer: NodeId, link: LinkState) {
        self.wait_status(&format!("{peer} alive, link {}", link.as_str()), |s| {
            s.members
                .iter()
                .any(|m| m.node == peer && m.state == MemberState::Alive && m.link == link)
        });
    }

    /// Waits until this node sees exactly `peers` alive with links up.
    pub fn wait_converged(&self, peers: &[NodeId]) {
        self.wait_status("converged", |s| {
            let others: Vec<_> = s.members.iter().filter(|m| m.node != self.id).collect();
            others.len() == peers.len()
                && others.iter().all(|m| {
                    peers.contains(&m.node)
                        && m.state == MemberState::Alive
                        && m.link == LinkState::Up
                })
        });
    }
}

/// A QoS 1 message as a shard of the publishing node hands it over.
pub fn message(topic: &str, payload: &[u8]) -> Arc<Message> {
    Arc::new(Message {
        topic: ByteStr::from(topic),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
        origin: Origin { shard: ShardId(1), session: 3 },
        received_at_ms: 0,
    })
}

/// `filter` added on `from`'s shard 0, seq `seq`: every shard of `to` holds the route, and
/// `from`'s shard 0 (the shard that asked) gets the FilterAck. Returns what else `to`
/// received meanwhile.
pub fn add_filter(from: &Node, to: &Node, filter: &str, seq: u64) -> Vec<(ShardId, ClusterIn)> {
    let tx = from.rt.tx();
    tx.send(ShardId(0), ClusterOut::Filter { filter: ByteStr::from(filter), added: true, seq });
    let mut shards_with_route = Vec::new();
    let mut seen = Vec::new();
    while shards_with_route.len() < usize::from(SHARDS) {
        let (shard, others) = to.wait_for("Route", |shard, m| match m {
            ClusterIn::Route { node, filter: f, added: true }
                if *node == from.id && f.as_str() == filter =>
            {
                Some(shard)
            }
            _ => None,
        });
        seen.extend(others);
        assert!(!shards_with_route.contains(&shard), "one Route per shard");
        shards_with_route.push(shard);
    }
    let (shard, _) = from.wait_for("FilterAck", |shard, m| match m {
        ClusterIn::FilterAck { seq: s } if *s == seq => Some(shard),
        _ => None,
    });
    assert_eq!(shard, ShardId(0), "the ack goes to the shard that asked");
    seen
}

/// CPU seconds this process has used (user + system), from /proc/self/stat.
pub fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Sends `n` messages of 100 B from `b`'s two shards to `a` (whose shards report each one
/// handled, as real shards do) and waits until every one arrived and was credited back;
/// returns the wall and CPU seconds taken (both nodes). A measurement, not a check.
pub fn measure_throughput(a: &Node, b: &Node, n: u64) -> (f64, f64) {
    use shardmq_engine::core::cluster::NodeSet;
    use shardmq_engine::core::mesh::mesh_cost;
    add_filter(a, b, "m/#", 1);
    let msg = message("m/x", &[7u8; 100]);
    let cost = mesh_cost(&msg);
    let tx = b.rt.tx();
    let (t0, c0) = (Instant::now(), cpu_secs());
    for i in 0..n {
        tx.send(
            ShardId((i % 2) as u16),
            ClusterOut::Publish { nodes: NodeSet(1 << a.id.0), msg: msg.clone() },
        );
    }
    let handled = a.rt.tx();
    let mut got = 0;
    while got < n {
        let (shard, _) = a.wait_for("Publish", |shard, m| {
            matches!(m, ClusterIn::Publish { .. }).then_some(shard)
        });
        handled.send(shard, ClusterOut::Handled { messages: 1 });
        got += 1;
    }
    let mut credited = 0;
    while credited < n * cost {
        credited += b
            .wait_for("Credit", |_, m| match m {
                ClusterIn::Credit { bytes } => Some(*bytes),
                _ => None,
            })
            .0;
    }
    (t0.elapsed().as_secs_f64(), cpu_secs() - c0)
}
