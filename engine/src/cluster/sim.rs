//! A deterministic simulation of a cluster of node machines: an in-memory network with a
//! seeded generator (datagram loss and delay, links that break, partitions, nodes killed and
//! restarted with a new boot id) in virtual time, and a model of each node's shards (the
//! route index replica they keep, the acknowledgements, deliveries and kicks they get).
//!
//! The "runtime" here does what `cluster::runtime` does: it keeps an outgoing link to every
//! node it was told to dial (retrying while the peer is unreachable), delivers a link's
//! frames in order and loses those in flight when the link breaks, and credits a published
//! message as soon as it is written to its links.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shardmq_codec::{ByteStr, QoS};

use crate::core::cluster::{ClusterCounters, ClusterIn, ClusterOut, NodeId, NodeRouteIndex};
use crate::core::ids::ShardId;
use crate::core::mesh::{mesh_cost, Message, Origin};
use crate::splitmix::Rng;

use super::node::{Effect, LinkState, MemberState, NodeMachine, NodeSettings};
use super::wire::{decode, split_frame, LENGTH_PREFIX_BYTES};

/// Shards per simulated node.
pub(super) const SHARDS: u16 = 2;

/// One shard's model: what the node machine told it.
#[derive(Default)]
pub(super) struct ShardModel {
    /// The node route index replica.
    pub index: NodeRouteIndex,
    /// The same, as sets (to compare with the peers' actual filters).
    pub routes: BTreeMap<NodeId, BTreeSet<String>>,
    /// This shard's local filters and the next delta sequence number.
    pub filters: BTreeSet<String>,
    pub next_seq: u64,
    /// Filter changes not acknowledged yet: seq → (filter, added).
    pub unacked: BTreeMap<u64, (String, bool)>,
    /// When each filter's add was acknowledged, while subscribed.
    pub acked_at: BTreeMap<String, Acked>,
    /// Messages received from other nodes: (from, payload).
    pub received: Vec<(NodeId, Bytes)>,
    /// Bytes published / credited back.
    pub cost_out: u64,
    pub credited: u64,
    /// Connections on this shard: token → client id; and the tokens kicked.
    pub conns: BTreeMap<u64, String>,
    pub kicked: Vec<(String, u64)>,
}

/// When a filter's add was acknowledged and what the node machine had waited for.
#[derive(Clone)]
pub(super) struct Acked {
    pub at_ms: u64,
    /// The peers that had to acknowledge (live, link up).
    pub waited: BTreeSet<NodeId>,
    /// The generation of every link `peer → this node` then.
    pub gens: Vec<u64>,
}

/// One published message: (publishing node, time, topic, id in the payload).
pub(super) type Published = (usize, u64, String, u64);

/// One simulated node: its machine (None while killed), runtime and shards.
pub(super) struct SimNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub boot_id: u64,
    pub machine: Option<NodeMachine>,
    pub counters: Arc<ClusterCounters>,
    /// Outgoing links the machine wants (Dial without Hangup since).
    pub wanted: BTreeSet<usize>,
    pub shards: Vec<ShardModel>,
    pub next_token: u64,
}

/// An outgoing link `from → to`.
#[derive(Default, Clone, Copy)]
pub(super) struct Link {
    pub connected: bool,
    /// Connection generation: frames of an earlier connection are lost.
    pub gen: u64,
    /// The last delivery time queued (frames arrive in order).
    pub last_ms: u64,
    /// A connection attempt is queued.
    pub connecting: bool,
}

enum Event {
    Datagram { to: usize, data: Vec<u8> },
    Frame { from: usize, to: usize, gen: u64, frame: Bytes },
    Connect { from: usize, to: usize },
    Timer { node: usize, at: u64 },
}

/// The simulated cluster.
pub(super) struct Sim {
    pub rng: Rng,
    pub base: Instant,
    pub now_ms: u64,
    pub nodes: Vec<SimNode>,
    pub links: BTreeMap<(usize, usize), Link>,
    /// Partition side of each node (nodes on different sides cannot talk).
    pub side: Vec<u8>,
    /// Datagram loss, in per mille.
    pub loss_permille: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    next_event: u64,
    timer_at: Vec<Option<u64>>,
    pub seeds: Vec<SocketAddr>,
    pub publishes: u64,
    pub published: Vec<Published>,
    /// Publish from a random other node the moment a subscription is acknowledged (the
    /// hardest case for the no-loss rule).
    pub publish_after_ack: bool,
    queued_publishes: Vec<(usize, String)>,
    /// (Publish effects + direct credits) seen, to check one answer per publish.
    pub publish_answers: u64,
}

impl Sim {
    /// `n` nodes, none started; seeds are the first three.
    pub fn new(n: usize, seed: u64) -> Sim {
        let addr =
            |i: usize| SocketAddr::from(([10, 0, (i / 200) as u8, (i % 200) as u8 + 1], 7000));
        let nodes = (0..n)
            .map(|i| SimNode {
                id: NodeId(i as u16),
                addr: addr(i),
                boot_id: 1000,
                machine: None,
                counters: Arc::new(ClusterCounters::default()),
                wanted: BTreeSet::new(),
                shards: (0..SHARDS).map(|_| ShardModel::default()).collect(),
                next_token: 1,
            })
            .collect();
        Sim {
            rng: Rng::new(seed),
            base: Instant::now(),
            now_ms: 0,
            nodes,
            links: BTreeMap::new(),
            side: vec![0; n],
            loss_permille: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            timer_at: vec![None; n],
            seeds: (0..n.min(3)).map(addr).collect(),
            publishes: 0,
            published: Vec::new(),
            publish_after_ack: false,
            queued_publishes: Vec::new(),
            publish_answers: 0,
        }
    }

    pub fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms)
    }

    fn push(&mut self, at_ms: u64, e: Event) {
        let n = self.next_event;
        self.next_event += 1;
        self.queue.push(Reverse((at_ms, n)));
        self.events.insert(n, e);
    }

    /// Starts (or restarts, with a larger boot id and fresh state) node `i`.
    pub fn start(&mut self, i: usize) {
        let now = self.now();
        let node = &mut self.nodes[i];
        node.boot_id += 1_000_000;
        node.shards = (0..SHARDS).map(|_| ShardModel::default()).collect();
        node.wanted.clear();
        node.counters = Arc::new(ClusterCounters::default());
        let s = NodeSettings {
            id: node.id,
            advertise: node.addr,
            seeds: self.seeds.clone(),
            shard_count: SHARDS,
            boot_id: node.boot_id,
            rng_seed: self.rng.next_u64(),
            started_at: now,
            counters: node.counters.clone(),
        };
        node.machine = Some(NodeMachine::new(s, now));
        self.timer_at[i] = None;
        self.after(i);
    }

    /// Kills node `i`: its machine and every link from or to it are gone.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].machine = None;
        self.nodes[i].wanted.clear();
        let keys: Vec<(usize, usize)> =
            self.links.keys().copied().filter(|(a, b)| *a == i || *b == i).collect();
        for (a, b) in keys {
            self.break_link(a, b);
        }
    }

    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].machine.is_some()
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.alive(a) && self.alive(b) && self.side[a] == self.side[b]
    }

    /// Breaks the link `a → b` if connected (its frames in flight are lost); `a` is told.
    pub fn break_link(&mut self, a: usize, b: usize) {
        let l = self.links.entry((a, b)).or_default();
        if !l.connected {
            return;
        }
        l.connected = false;
        l.gen += 1;
        let now = self.now();
        let id = self.nodes[b].id;
        if let Some(m) = self.nodes[a].machine.as_mut() {
            m.link_down(id, now);
            self.after(a);
        }
        if self.nodes[a].wanted.contains(&b) {
            self.schedule_connect(a, b);
        }
    }

    /// Splits the nodes into the sides given (breaking the links across).
    pub fn partition(&mut self, side: Vec<u8>) {
        self.side = side;
        let keys: Vec<(usize, usize)> = self.links.keys().copied().collect();
        for (a, b) in keys {
            if self.side[a] != self.side[b] {
                self.break_link(a, b);
            }
        }
    }

    pub fn heal(&mut self) {
        self.side = vec![0; self.nodes.len()];
    }

    fn schedule_connect(&mut self, a: usize, b: usize) {
        let l = self.links.entry((a, b)).or_default();
        if l.connecting || l.connected {
            return;
        }
        l.connecting = true;
        let at = self.now_ms + 1 + self.rng.below(5);
        self.push(at, Event::Connect { from: a, to: b });
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    /// Calls `f` on node `i`'s machine (if alive) and applies its effects.
    pub fn with_machine(&mut self, i: usize, f: impl FnOnce(&mut NodeMachine, Instant)) {
        let now = self.now();
        let Some(m) = self.nodes[i].machine.as_mut() else { return };
        f(m, now);
        self.after(i);
    }

    /// Applies node `i`'s effects (feeding back what its shards answer) and reschedules
    /// its timer.
    fn after(&mut self, i: usize) {
        loop {
            let mut follow_ups = Vec::new();
            while let Some(e) = self.nodes[i].machine.as_mut().and_then(|m| m.poll_effect()) {
                self.apply(i, e, &mut follow_ups);
            }
            if follow_ups.is_empty() {
                break;
            }
            let now = self.now();
            for (shard, msg) in follow_ups {
                if let Some(m) = self.nodes[i].machine.as_mut() {
                    m.handle_shard(shard, msg, now);
                }
            }
        }
        let Some(d) = self.nodes[i].machine.as_ref().and_then(|m| m.next_deadline()) else {
            return;
        };
        // Rounded up: a deadline inside a millisecond is due at its end.
        let since = d.saturating_duration_since(self.base);
        let at = (since.as_nanos().div_ceil(1_000_000) as u64).max(self.now_ms);
        if self.timer_at[i].is_none_or(|t| at < t) {
            self.timer_at[i] = Some(at);
            self.push(at, Event::Timer { node: i, at });
        }
    }

    fn send_frame(&mut self, from: usize, to: usize, frame: Bytes) {
        let delay = 1 + self.rng.below(4);
        let now_ms = self.now_ms;
        let l = self.links.entry((from, to)).or_default();
        if !l.connected {
            return;
        }
        let at = (now_ms + delay).max(l.last_ms);
        l.last_ms = at;
        let gen = l.gen;
        self.push(at, Event::Frame { from, to, gen, frame });
    }

    fn apply(&mut self, i: usize, e: Effect, follow_ups: &mut Vec<(ShardId, ClusterOut)>) {
        match e {
            Effect::Datagram { to, data } => {
                let Some(j) = self.index_of(to) else { return };
                if !self.reachable(i, j) || self.rng.below(1000) < self.loss_permille {
                    return;
                }
                let at = self.now_ms + 1 + self.rng.below(10);
                self.push(at, Event::Datagram { to: j, data });
            }
            Effect::Dial { node, .. } => {
                let j = node.0 as usize;
                self.nodes[i].wanted.insert(j);
                self.schedule_connect(i, j);
            }
            Effect::Hangup { node } => {
                let j = node.0 as usize;
                self.nodes[i].wanted.remove(&j);
                self.break_link(i, j);
            }
            Effect::Send { node, frame } => self.send_frame(i, node.0 as usize, frame),
            Effect::Publish { nodes, frame, shard, cost } => {
                self.publish_answers += 1;
                for n in nodes.iter() {
                    self.send_frame(i, n.0 as usize, frame.clone());
                }
                self.nodes[i].shards[shard.0 as usize].credited += cost;
            }
            Effect::ToShard { shard, msg } => {
                let now_ms = self.now_ms;
                let model = &mut self.nodes[i].shards[shard.0 as usize];
                match msg {
                    ClusterIn::Publish { from, msg } => {
                        assert_eq!(msg.origin, Origin::REMOTE);
                        model.received.push((from, msg.payload.clone()));
                    }
                    ClusterIn::Route { node, filter, added } => {
                        model.index.apply(node, filter.as_str(), added);
                        let set = model.routes.entry(node).or_default();
                        if added {
                            set.insert(filter.as_str().to_owned());
                        } else {
                            set.remove(filter.as_str());
                        }
                    }
                    ClusterIn::NodeDown(n) => {
                        model.index.remove_node(n);
                        model.routes.remove(&n);
                    }
                    ClusterIn::FilterAck { seq } => {
                        // Acknowledgements come in order, each exactly once.
                        let (&first, _) = model.unacked.first_key_value().expect("an ack is due");
                        assert_eq!(first, seq, "acks in order");
                        let (f, added) = model.unacked.remove(&seq).expect("known seq");
                        if added && model.filters.contains(&f) && !model.acked_at.contains_key(&f) {
                            let (_, peers) =
                                self.nodes[i].machine.as_ref().expect("alive").ack_state();
                            let waited = peers.iter().filter(|p| p.1 && p.2).map(|p| p.0).collect();
                            let gens = (0..self.nodes.len())
                                .map(|a| self.links.get(&(a, i)).map_or(0, |l| l.gen))
                                .collect();
                            if self.publish_after_ack {
                                let from = self.rng.index(self.nodes.len());
                                let topic = f.replace(['+', '#'], "x");
                                self.queued_publishes.push((from, topic));
                            }
                            let model = &mut self.nodes[i].shards[shard.0 as usize];
                            model.acked_at.insert(f, Acked { at_ms: now_ms, waited, gens });
                        }
                    }
                    ClusterIn::Credit { bytes } => {
                        self.publish_answers += 1;
                        model.credited += bytes;
                    }
                    ClusterIn::PublishShared { from, msg, .. } => {
                        assert_eq!(msg.origin, Origin::REMOTE);
                        model.received.push((from, msg.payload.clone()));
                    }
                    // The model's shards hold no persistent sessions: a claim finds none.
                    ClusterIn::Claim { from, shard: asker, token, .. } => {
                        let export =
                            ClusterOut::Export { to: from, shard: asker, token, session: None };
                        follow_ups.push((shard, export));
                    }
                    // The model applies routes as they come: every earlier one is applied.
                    ClusterIn::RouteBarrier { node, boot, seq } => {
                        follow_ups.push((shard, ClusterOut::RouteApplied { node, boot, seq }));
                    }
                    // Nothing is exported, so no move goes further; an offered session
                    // (after a kick) is pulled by nobody here.
                    ClusterIn::Claimed { .. }
                    | ClusterIn::Commit { .. }
                    | ClusterIn::MoveAbort { .. }
                    | ClusterIn::Handover { .. }
                    | ClusterIn::Restore { .. }
                    | ClusterIn::Offer { .. } => {}
                    ClusterIn::Kick { client_id, token, .. } => {
                        if model.conns.remove(&token).is_some() {
                            model.kicked.push((client_id.as_str().to_owned(), token));
                            follow_ups.push((shard, ClusterOut::Disconnected { client_id, token }));
                        }
                    }
                }
            }
        }
    }

    /// Runs events until `until_ms`.
    pub fn run_until(&mut self, until_ms: u64) {
        while let Some(&Reverse((at, n))) = self.queue.peek() {
            if at > until_ms {
                break;
            }
            self.queue.pop();
            self.now_ms = self.now_ms.max(at);
            let e = self.events.remove(&n).expect("queued event");
            self.handle(e);
            for (from, topic) in std::mem::take(&mut self.queued_publishes) {
                self.publish(from, 0, &topic, false);
            }
        }
        self.now_ms = until_ms;
    }

    fn handle(&mut self, e: Event) {
        match e {
            Event::Datagram { to, data } => {
                self.with_machine(to, |m, now| m.handle_datagram(&data, now));
            }
            Event::Frame { from, to, gen, frame } => {
                let l = self.links.get(&(from, to)).copied().unwrap_or_default();
                if !l.connected || l.gen != gen || !self.alive(to) {
                    return;
                }
                let id = self.nodes[from].id;
                let mut buf = BytesMut::from(&frame[..]);
                while let Some(f) = split_frame(&mut buf).expect("our own frames") {
                    // As the runtime does: decoded once (by its reader), then handed over.
                    let frame = decode(&f).expect("our own frames decode");
                    self.with_machine(to, |m, now| m.handle_decoded(id, frame, f.len(), now));
                }
                assert!(buf.is_empty(), "a Send holds whole frames");
            }
            Event::Connect { from, to } => {
                self.links.entry((from, to)).or_default().connecting = false;
                if !self.alive(from) || !self.nodes[from].wanted.contains(&to) {
                    return;
                }
                if !self.reachable(from, to) {
                    let at = self.now_ms + 200;
                    self.links.entry((from, to)).or_default().connecting = true;
                    self.push(at, Event::Connect { from, to });
                    return;
                }
                let l = self.links.entry((from, to)).or_default();
                l.connected = true;
                l.gen += 1;
                l.last_ms = self.now_ms;
                let hello = self.nodes[from].machine.as_ref().expect("alive").hello();
                let from_id = self.nodes[from].id;
                let to_id = self.nodes[to].id;
                let got = self.nodes[to]
                    .machine
                    .as_mut()
                    .expect("alive")
                    .handle_hello(&hello[LENGTH_PREFIX_BYTES..]);
                assert_eq!(got, Ok(from_id));
                self.with_machine(from, |m, now| m.link_up(to_id, now));
            }
            Event::Timer { node, at } => {
                if self.timer_at[node] != Some(at) {
                    return; // Superseded by an earlier deadline.
                }
                self.timer_at[node] = None;
                self.with_machine(node, |m, now| m.handle_timer(now));
            }
        }
    }

    // ----- The workload: what clients do on a node's shards. -----

    /// A shard of node `i` gains or loses `filter`.
    pub fn filter(&mut self, i: usize, shard: u16, filter: &str, added: bool) {
        if !self.alive(i) {
            return;
        }
        let model = &mut self.nodes[i].shards[shard as usize];
        let changed = if added {
            model.filters.insert(filter.to_owned())
        } else {
            model.filters.remove(filter)
        };
        if !changed {
            return;
        }
        if !added {
            model.acked_at.remove(filter);
        }
        model.next_seq += 1;
        let seq = model.next_seq;
        model.unacked.insert(seq, (filter.to_owned(), added));
        let msg = ClusterOut::Filter {
            filter: ByteStr::from_bytes(Bytes::copy_from_slice(filter.as_bytes())).unwrap(),
            added,
            seq,
        };
        self.with_machine(i, |m, now| m.handle_shard(ShardId(shard), msg, now));
    }

    /// A client on a shard of node `i` publishes `payload` to `topic` (routed by the shard's
    /// node route index, as the shard core does).
    pub fn publish(&mut self, i: usize, shard: u16, topic: &str, retain: bool) {
        if !self.alive(i) {
            return;
        }
        let id = self.published.len() as u64;
        self.published.push((i, self.now_ms, topic.to_owned(), id));
        let payload = Bytes::copy_from_slice(&id.to_be_bytes());
        let msg = Arc::new(Message {
            topic: ByteStr::from_bytes(Bytes::copy_from_slice(topic.as_bytes())).unwrap(),
            payload,
            qos: QoS::AtLeastOnce,
            retain,
            properties: None,
            origin: Origin { shard: ShardId(shard), session: 1 },
            received_at_ms: self.now_ms,
        });
        let model = &mut self.nodes[i].shards[shard as usize];
        let nodes = model.index.nodes_for(topic);
        model.cost_out += mesh_cost(&msg);
        self.publishes += 1;
        self.with_machine(i, |m, now| {
            m.handle_shard(ShardId(shard), ClusterOut::Publish { nodes, msg }, now)
        });
    }

    /// A client connects to a shard of node `i`; returns its token.
    pub fn connect(&mut self, i: usize, shard: u16, client_id: &str) -> u64 {
        let token = self.nodes[i].next_token;
        self.nodes[i].next_token += 1;
        self.nodes[i].shards[shard as usize].conns.insert(token, client_id.to_owned());
        let client_id = ByteStr::from_bytes(Bytes::copy_from_slice(client_id.as_bytes())).unwrap();
        self.with_machine(i, |m, now| {
            m.handle_shard(ShardId(shard), ClusterOut::Connected { client_id, token }, now)
        });
        token
    }

    /// The connection `token` on a shard of node `i` ends.
    pub fn disconnect(&mut self, i: usize, shard: u16, token: u64) {
        let Some(client_id) = self.nodes[i].shards[shard as usize].conns.remove(&token) else {
            return;
        };
        let client_id = ByteStr::from_bytes(Bytes::from(client_id.into_bytes())).unwrap();
        self.with_machine(i, |m, now| {
            m.handle_shard(ShardId(shard), ClusterOut::Disconnected { client_id, token }, now)
        });
    }

    // ----- What the checks read. -----

    /// Node `i`'s filters (the union of its shards').
    pub fn filters_of(&self, i: usize) -> BTreeSet<String> {
        self.nodes[i].shards.iter().flat_map(|s| s.filters.iter().cloned()).collect()
    }

    /// The live members node `i` sees (alive or suspect), itself included.
    pub fn view(&self, i: usize) -> BTreeSet<NodeId> {
        let m = self.nodes[i].machine.as_ref().expect("alive");
        m.status().members.iter().filter(|s| s.state != MemberState::Down).map(|s| s.node).collect()
    }

    /// True if node `i`'s link to `j` is up in its machine's view.
    pub fn link_up_in_view(&self, i: usize, j: usize) -> bool {
        let m = self.nodes[i].machine.as_ref().expect("alive");
        m.status().members.iter().any(|s| s.node == self.nodes[j].id && s.link == LinkState::Up)
    }
}

#[path = "sim_tests.rs"]
mod tests;
