//! `NodeMachine`: one node's side of the cluster as a sans-IO state machine.
//!
//! Inputs are `handle_*` calls (a UDP datagram, a frame from a peer's link, a message from a
//! shard, a link coming up or going down, a timer) with the current `Instant`; outputs are
//! [`Effect`]s taken with [`NodeMachine::poll_effect`]. The runtime (`cluster::runtime`) owns
//! the sockets and threads; nothing here does IO or reads a clock.
//!
//! What it keeps:
//! - membership, through foca (SWIM over the UDP datagrams it asks to send): a peer that
//!   comes up is dialled ([`Effect::Dial`]); a peer that goes down is hung up, and every
//!   shard forgets its routes ([`ClusterIn::NodeDown`]);
//! - routes: the shards' filter changes folded into one node-level set, sent to every peer
//!   whose link is up (a full snapshot when a link comes up), with each shard's SUBACK held
//!   until the peers acknowledged ([`ClusterIn::FilterAck`]); the peers' routes, passed on to
//!   every shard ([`ClusterIn::Route`]);
//! - client ids: each connection registered with the id's owner (rendezvous hashing over the
//!   live members), which kicks the older of two connections of one id (`registry.rs`).
//!
//! Links: the runtime keeps an outgoing link to every node it was told to [`Effect::Dial`]
//! (reconnecting as needed, reporting [`NodeMachine::link_up`] / [`NodeMachine::link_down`])
//! until told to [`Effect::Hangup`]. A peer's frames arrive on the link the peer dialled.
//!
//! Lives on the cluster runtime's thread: one per node.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use foca::{Foca, OwnedNotification, PostcardCodec};

use crate::core::cluster::{ClusterCounters, ClusterIn, ClusterOut, NodeId, NodeSet};
use crate::core::ids::ShardId;

use super::members::{foca_config, Member, SplitMix, Swim, Timers};
use super::registry::{Clock, Registry};
use super::routes::{LocalFilters, PendingAcks};
use super::wire::{self, Frame, WireError, PROTOCOL_VERSION};

/// Kicks kept per peer to send again when its link comes up (`Peer::kicks`).
pub(super) const KICKS_KEPT: usize = 1024;

/// What the machine needs to start.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// This node (`--node-id`), below [`NodeSet::CAPACITY`].
    pub id: NodeId,
    /// Where peers reach this node, UDP and TCP (`--cluster-advertise`).
    pub advertise: SocketAddr,
    /// Other nodes' advertised addresses to join through (this node's own is ignored).
    pub seeds: Vec<SocketAddr>,
    /// This node's shard count.
    pub shard_count: u16,
    /// New on every start and larger than the previous start's (the runtime uses the wall
    /// clock in ns): a restarted node replaces its old incarnation only if its boot id is
    /// larger.
    pub boot_id: u64,
    /// Seeds foca's generator (probe targets).
    pub rng_seed: u64,
    /// When the broker started: `Message::received_at_ms` counts from it.
    pub started_at: Instant,
    /// The counters the machine keeps up to date.
    pub counters: Arc<ClusterCounters>,
}

/// What the machine asks its runtime to do.
#[derive(Debug)]
pub enum Effect {
    /// Send foca's datagram from the UDP socket bound to the listen address.
    Datagram {
        /// The peer's advertised address.
        to: SocketAddr,
        /// The datagram.
        data: Vec<u8>,
    },
    /// Open (or keep) the outgoing link to `node`, reconnecting until [`Effect::Hangup`].
    Dial {
        /// The peer.
        node: NodeId,
        /// Its advertised address.
        addr: SocketAddr,
    },
    /// Close the outgoing link to `node` (it left or failed).
    Hangup {
        /// The peer.
        node: NodeId,
    },
    /// Write encoded frames (each with its length prefix: usually one, a run of them for a
    /// route snapshot) on the link to `node`; dropped if that link is down.
    Send {
        /// The peer.
        node: NodeId,
        /// The frame.
        frame: Bytes,
    },
    /// A shard's published message for `nodes`: the same encoded frame written on each
    /// link; the runtime sends [`ClusterIn::Credit`] `{ bytes: cost }` to `shard` once every
    /// link has written it or dropped it.
    Publish {
        /// The destinations (live, link up when the effect was made).
        nodes: NodeSet,
        /// The frame (length prefix included).
        frame: Bytes,
        /// The publishing shard.
        shard: ShardId,
        /// What to credit back (`mesh_cost` of the message).
        cost: u64,
    },
    /// Deliver `msg` to `shard`.
    ToShard {
        /// The shard.
        shard: ShardId,
        /// The message.
        msg: ClusterIn,
    },
}

/// A member's liveness, as foca sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; still treated as live.
    Suspect,
    /// Declared down.
    Down,
}

impl MemberState {
    /// `"alive"`, `"suspect"` or `"down"` (the admin API's words).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

/// The outgoing link to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Connected, Hello sent.
    Up,
    /// Not connected.
    Down,
    /// The member is this node.
    SelfNode,
}

impl LinkState {
    /// `"up"`, `"down"` or `"self"` (the admin API's words).
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::Down => "down",
            LinkState::SelfNode => "self",
        }
    }
}

/// One member in [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its node id.
    pub node: NodeId,
    /// Its advertised address.
    pub addr: SocketAddr,
    /// Liveness.
    pub state: MemberState,
    /// This node's outgoing link to it.
    pub link: LinkState,
}

/// The membership as this node sees it (for the admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node.
    pub node: NodeId,
    /// Every member foca knows (this node first), then by node id.
    pub members: Vec<MemberStatus>,
}

/// A peer node as this node knows it.
#[derive(Debug)]
pub(super) struct Peer {
    /// Its current incarnation.
    pub member: Member,
    /// Live (alive or suspect) in foca's view.
    pub live: bool,
    /// This node's outgoing link to it is up.
    pub link_up: bool,
    /// The largest route sequence number it acknowledged (this node's sequence numbers).
    pub acked: u64,
    /// The largest route sequence number sent to it (the sequence numbers are this node's,
    /// shared by all peers: a snapshot to one peer uses one no other peer sees).
    pub sent: u64,
    /// The largest route sequence number of its own it sent us (acknowledged back).
    pub seq_in: u64,
    /// This node holds its routes and registrations (its snapshot since it came up).
    pub synced: bool,
    /// Its node-level filters, as its Route frames told (a mirror of what every shard holds).
    pub routes: std::collections::BTreeSet<shardmq_codec::ByteStr>,
    /// A snapshot being received (between `RoutesReset` and `RoutesDone`).
    pub staging: Option<std::collections::BTreeSet<shardmq_codec::ByteStr>>,
    /// The last kicks sent to it (at most [`KICKS_KEPT`]), sent again when the link comes
    /// up: one written on a link that then broke may never have arrived. A kick names one
    /// connection, so a repeated one does nothing.
    pub kicks: VecDeque<Frame>,
    /// Per shard of this node: the highest of its route sequence numbers that shard applied
    /// (`ClusterOut::RouteApplied`). The minimum is what is acknowledged to it.
    pub applied: Vec<u64>,
    /// The last acknowledgement sent to it.
    pub acked_out: u64,
}

/// One node's cluster state machine (see the module documentation).
pub struct NodeMachine {
    pub(super) id: NodeId,
    pub(super) seeds: Vec<SocketAddr>,
    pub(super) shard_count: u16,
    pub(super) started_at: Instant,
    pub(super) counters: Arc<ClusterCounters>,
    pub(super) foca: Swim,
    pub(super) timers: Timers,
    pub(super) notes: Vec<OwnedNotification<Member>>,
    pub(super) effects: VecDeque<Effect>,
    pub(super) peers: BTreeMap<NodeId, Peer>,
    pub(super) filters: LocalFilters,
    pub(super) route_seq: u64,
    pub(super) pending: PendingAcks,
    pub(super) registry: Registry,
    pub(super) clock: Clock,
    pub(super) last_now: Instant,
    pub(super) seed_announce_at: Instant,
    /// Claims of persistent sessions waiting for peers (`claims.rs`).
    pub(super) claims: super::claims::Claims,
}

impl std::fmt::Debug for NodeMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMachine").field("id", &self.id).field("peers", &self.peers).finish()
    }
}

impl NodeMachine {
    /// A machine for `s`, announcing itself to its seeds.
    pub fn new(s: NodeSettings, now: Instant) -> NodeMachine {
        assert!((s.id.0 as usize) < NodeSet::CAPACITY, "node id checked by the configuration");
        let me = Member { node: s.id.0, addr: s.advertise, boot_id: s.boot_id };
        let rng = SplitMix(s.rng_seed ^ 0x0063_6c75_7374_6572);
        let foca = Foca::new(me, foca_config(), rng, PostcardCodec);
        s.counters.node_id.store(u64::from(s.id.0), Ordering::Relaxed);
        let seeds = s.seeds.iter().copied().filter(|a| *a != s.advertise).collect();
        let mut m = NodeMachine {
            id: s.id,
            seeds,
            shard_count: s.shard_count.max(1),
            started_at: s.started_at,
            counters: s.counters,
            foca,
            timers: Timers::default(),
            notes: Vec::new(),
            effects: VecDeque::new(),
            peers: BTreeMap::new(),
            filters: LocalFilters::default(),
            route_seq: 0,
            pending: PendingAcks::default(),
            registry: Registry::default(),
            clock: Clock::default(),
            last_now: now,
            seed_announce_at: now,
            claims: Default::default(),
        };
        m.update_counters();
        m.announce_to_seeds(now);
        m
    }

    /// The first frame of an outgoing link.
    pub fn hello(&self) -> Bytes {
        let uptime = self.uptime_ms(self.last_now);
        Frame::Hello {
            version: PROTOCOL_VERSION,
            node: self.id,
            boot_id: self.foca.identity().boot_id,
            shard_count: self.shard_count,
            clock_ms: self.clock.now_ms(uptime),
        }
        .encode()
        .expect("a Hello frame is small")
    }

    /// A UDP datagram (foca's) arrived. A malformed one is ignored.
    pub fn handle_datagram(&mut self, data: &[u8], now: Instant) {
        self.last_now = now;
        self.with_foca(now, |foca, io| foca.handle_data(data, io));
    }

    /// Runs what is due at `now` (call when [`NodeMachine::next_deadline`] passes).
    pub fn handle_timer(&mut self, now: Instant) {
        self.last_now = now;
        while let Some(t) = self.timers.pop_due(now) {
            self.with_foca(now, |foca, io| foca.handle_timer(t, io));
        }
        if now >= self.seed_announce_at {
            self.announce_to_seeds(now);
        }
        self.release_claims(now);
        self.moves_timer(now);
    }

    /// When [`NodeMachine::handle_timer`] is next due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let t = match self.timers.next_deadline() {
            Some(t) => t.min(self.seed_announce_at),
            None => self.seed_announce_at,
        };
        Some(self.claims.next_deadline().map_or(t, |c| c.min(t)))
    }

    /// The outgoing link to `node` connected (its Hello written).
    pub fn link_up(&mut self, node: NodeId, now: Instant) {
        self.last_now = now;
        let Some(p) = self.peers.get_mut(&node) else { return };
        if !p.live || p.link_up {
            return;
        }
        p.link_up = true;
        let seq_in = p.seq_in;
        let synced = p.synced;
        self.send_snapshot(node);
        let acked_out = self.peers.get(&node).map_or(0, |p| p.acked_out);
        if synced && seq_in > 0 && acked_out > 0 {
            // Acknowledgements sent while the link was down were lost.
            self.send(node, &Frame::RouteAck { seq: acked_out });
        }
        if !synced {
            self.send(node, &Frame::Resync);
        }
        self.send_registrations(node);
        let kicks: Vec<Frame> =
            self.peers.get(&node).map(|p| p.kicks.iter().cloned().collect()).unwrap_or_default();
        for k in kicks {
            self.send(node, &k);
        }
        self.moves_link_up(node);
        self.update_counters();
    }

    /// The outgoing link to `node` closed (the runtime redials while the node is live).
    pub fn link_down(&mut self, node: NodeId, now: Instant) {
        self.last_now = now;
        let Some(p) = self.peers.get_mut(&node) else { return };
        if !p.link_up {
            return;
        }
        p.link_up = false;
        self.moves_link_down(node);
        self.release_acks();
        self.release_claims(now);
        self.update_counters();
    }

    /// The first frame of an incoming connection: the dialling node, if its Hello is good.
    pub fn handle_hello(&mut self, frame: &[u8]) -> Result<NodeId, WireError> {
        self.count_in(frame.len());
        match wire::decode(frame)? {
            Frame::Hello { version, node, clock_ms, .. } => {
                if version != PROTOCOL_VERSION {
                    return Err(WireError::Version { theirs: version });
                }
                if node == self.id || (node.0 as usize) >= NodeSet::CAPACITY {
                    return Err(WireError::Invalid("hello node id"));
                }
                let uptime = self.uptime_ms(self.last_now);
                self.clock.observe(uptime, clock_ms);
                Ok(node)
            }
            _ => Err(WireError::NotHello),
        }
    }

    /// A later frame (without its length prefix) on the connection `from` dialled. A
    /// malformed frame is dropped here; the runtime decides whether to close the link.
    pub fn handle_frame(&mut self, from: NodeId, frame: &[u8], now: Instant) {
        self.last_now = now;
        self.count_in(frame.len());
        match wire::decode(frame) {
            Ok(f) => self.on_frame(from, f, now),
            Err(_) => {
                // A peer's bug; nothing of it reaches the shards.
            }
        }
    }

    /// As [`NodeMachine::handle_frame`], for a frame the runtime already decoded (its reader
    /// thread checks every frame): `len` is its size without the length prefix (for
    /// `bytes_in`). Saves the main loop a second decode and a copy of every message.
    pub fn handle_decoded(&mut self, from: NodeId, frame: Frame, len: usize, now: Instant) {
        self.last_now = now;
        self.count_in(len);
        self.on_frame(from, frame, now);
    }

    /// A message from one of this node's shards.
    pub fn handle_shard(&mut self, shard: ShardId, msg: ClusterOut, now: Instant) {
        self.last_now = now;
        match msg {
            ClusterOut::Publish { nodes, msg } => self.on_publish(shard, nodes, msg, now),
            ClusterOut::PublishShared { node, group, msg } => {
                self.on_publish_shared(shard, node, group, msg, now)
            }
            ClusterOut::Claim { client_id, token, only, discard } => {
                self.on_claim(shard, client_id, token, only, discard, now)
            }
            ClusterOut::Commit { to, token } => self.on_commit(shard, to, token, now),
            ClusterOut::Handover { to, shard: asker, token, session } => {
                self.on_handover_out(shard, to, asker, token, session, now)
            }
            ClusterOut::Offer { to, client_id } => self.on_offer(to, client_id),
            // The runtime's inbound budget (`runtime.rs`); nothing for the machine.
            ClusterOut::Handled { .. } => {}
            ClusterOut::RouteApplied { node, boot, seq } => {
                self.on_route_applied(shard, node, boot, seq)
            }
            ClusterOut::Export { to, shard: asker, token, session } => {
                self.on_export(shard, to, asker, token, session, now)
            }
            ClusterOut::Filter { filter, added, seq } => self.on_filter(shard, filter, added, seq),
            ClusterOut::Connected { client_id, token } => {
                self.on_connected(shard, client_id, token, now)
            }
            ClusterOut::Disconnected { client_id, token } => {
                self.on_disconnected(shard, client_id, token)
            }
        }
    }

    /// The next effect, in the order they were made.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The membership and links, this node first.
    pub fn status(&self) -> ClusterStatus {
        let me = self.foca.identity();
        let mut members = vec![MemberStatus {
            node: self.id,
            addr: me.addr,
            state: MemberState::Alive,
            link: LinkState::SelfNode,
        }];
        let mut others: Vec<MemberStatus> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.id().node != self.id.0)
            .map(|m| {
                let node = m.id().id();
                let link_up = self.peers.get(&node).is_some_and(|p| p.link_up);
                MemberStatus {
                    node,
                    addr: m.id().addr,
                    state: match m.state() {
                        foca::State::Alive => MemberState::Alive,
                        foca::State::Suspect => MemberState::Suspect,
                        foca::State::Down => MemberState::Down,
                    },
                    link: if link_up { LinkState::Up } else { LinkState::Down },
                }
            })
            .collect();
        others.sort_by_key(|m| m.node);
        members.extend(others);
        ClusterStatus { node: self.id, members }
    }

    /// Leaves the cluster (graceful shutdown): peers are told at once instead of detecting
    /// the node's failure.
    pub fn leave(&mut self, now: Instant) {
        self.last_now = now;
        self.with_foca(now, |foca, io| foca.leave_cluster(io));
        let nodes: Vec<NodeId> = self.peers.keys().copied().collect();
        for node in nodes {
            self.effects.push_back(Effect::Hangup { node });
        }
    }

    /// For the simulation's failure messages: the route sequence number and each peer's
    /// (live, link up, acknowledged).
    #[cfg(test)]
    pub(super) fn ack_state(&self) -> (u64, Vec<(NodeId, bool, bool, u64)>) {
        let peers = self.peers.iter().map(|(n, p)| (*n, p.live, p.link_up, p.acked)).collect();
        (self.route_seq, peers)
    }

    /// For the simulation's failure messages: what this node knows of `node`.
    #[cfg(test)]
    pub(super) fn peer_debug(&self, node: NodeId) -> String {
        match self.peers.get(&node) {
            None => "unknown".into(),
            Some(p) => format!(
                "local {:?} live {} link {} acked {} sent {} seq_in {} synced {} staging {:?} routes {:?} member {:?}",
                self.filters.iter().collect::<Vec<_>>(),
                p.live,
                p.link_up,
                p.acked,
                p.sent, p.seq_in, p.synced, p.staging, p.routes, p.member
            ),
        }
    }

    /// This node's uptime in ms at `now`.
    pub(super) fn uptime_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.started_at).as_millis())
            .unwrap_or(u64::MAX)
    }

    /// The live members, this node included.
    pub(super) fn live_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        std::iter::once(self.id).chain(self.peers.iter().filter(|(_, p)| p.live).map(|(n, _)| *n))
    }

    /// Encodes and queues `frame` for `node`; false (and dropped) if the link is down.
    pub(super) fn send(&mut self, node: NodeId, frame: &Frame) -> bool {
        if !self.peers.get(&node).is_some_and(|p| p.link_up) {
            return false;
        }
        if let Frame::Route { seq, .. } | Frame::RoutesDone { seq } = frame {
            if let Some(p) = self.peers.get_mut(&node) {
                p.sent = p.sent.max(*seq);
            }
        }
        let Some(bytes) = frame.encode() else { return false };
        self.counters.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.effects.push_back(Effect::Send { node, frame: bytes });
        true
    }

    fn count_in(&self, len: usize) {
        let n = (len + wire::LENGTH_PREFIX_BYTES) as u64;
        self.counters.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Sends `ToShard` with `msg` to every shard.
    pub(super) fn send_every_shard(&mut self, msg: ClusterIn) {
        for s in 0..self.shard_count {
            self.effects.push_back(Effect::ToShard { shard: ShardId(s), msg: msg.clone() });
        }
    }

    /// Stores the counters derived from the state.
    pub(super) fn update_counters(&self) {
        let live = self.peers.values().filter(|p| p.live).count() as u64;
        let links = self.peers.values().filter(|p| p.live && p.link_up).count() as u64;
        let routes: usize = self.peers.values().map(|p| p.routes.len()).sum();
        self.counters.members.store(live + 1, Ordering::Relaxed);
        self.counters.links_up.store(links, Ordering::Relaxed);
        self.counters.remote_routes.store(routes as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
