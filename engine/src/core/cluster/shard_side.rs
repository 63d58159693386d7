//! A shard's side of the cluster: what it tells the node's cluster runtime
//! ([`ClusterOut`]) and what it does with what the runtime tells it ([`ClusterIn`]).
//!
//! - A message published on this node is sent, once per destination node, to the nodes
//!   whose routes match its topic (and to every node when it is retained: each node keeps the
//!   whole retained store). Messages that came from another node are never sent on.
//! - The shard's filter changes (the same ones `MeshMsg::SubDelta` carries) go to the
//!   runtime, and a SUBACK also waits for the runtime's `FilterAck`.
//! - Bytes handed to the runtime count against a window like the mesh's: past it, the shard
//!   stops reading PUBLISH until the runtime credits them back.
//! - Each connection is registered; a `Kick` for it (its client id connected later on another
//!   node) ends it with 0x8E, Session taken over [MQTT-3.1.4-3]; its session is offered to
//!   the winner's node (`handover.rs`).
//!
//! Shard-local: one [`ClusterState`] per shard, `None` when the node is not in a cluster.

use std::sync::Arc;
use std::time::Instant;

use shardmq_codec::ByteStr;

use crate::core::delivery::publish::is_sys_topic;
use crate::core::hash::Map;
use crate::core::ids::ConnId;
use crate::core::mesh::{mesh_cost, Message, Origin};
use crate::core::routing::shared::is_shared;
use crate::core::shard::ShardCore;

use super::{ClusterCore, ClusterIn, ClusterOut, NodeId, NodeRouteIndex};

/// A shard's cluster state.
#[derive(Debug)]
pub(crate) struct ClusterState {
    /// This node.
    pub(crate) node: NodeId,
    /// Replica of the other nodes' routes.
    pub(crate) routes: NodeRouteIndex,
    /// Messages for the runtime, drained by the io layer.
    pub(crate) out: Vec<ClusterOut>,
    /// Bytes (`mesh_cost`) handed to the runtime and not yet credited.
    pub(crate) inflight: u64,
    /// The last filter change's sequence number (`ClusterOut::Filter`).
    pub(crate) last_seq: u64,
    /// The highest filter change sequence number every live peer holds.
    pub(crate) acked: u64,
    /// The last connection token handed out.
    last_token: u64,
    /// Connected connections: client id, token, and whether the CONNECT resumed a session
    /// (Clean Start = 0).
    conns: Map<ConnId, (ByteStr, u64, bool)>,
    /// The last claim token handed out (`moves.rs`).
    pub(crate) last_claim: u64,
    /// CONNECTs waiting for their session from other nodes, by claim token.
    pub(crate) held: Map<u64, super::moves::HeldConnect>,
    /// Sessions being imported (their snapshot is here), by claim token, in order.
    pub(crate) imports: Vec<(u64, super::moves::Import)>,
    /// Claims of sessions offered after a kick (no CONNECT waits): token → client id.
    pub(crate) pulls: Map<u64, ByteStr>,
    /// Sessions of this shard being exported, by client id.
    pub(crate) exports: Map<ByteStr, super::moves::Exporting>,
    /// `ClusterIn::Publish`/`PublishShared` handled and not yet reported (`Handled`).
    pub(crate) handled: u64,
    /// The pause state last shown to the runtime (`ClusterCounters::shards_paused`).
    paused_shown: bool,
    /// This shard's ordinary subscriptions per filter (shared groups are told apart: a
    /// group's inner filter shares the shard route index's count, not this one).
    subs: Map<ByteStr, u32>,
}

impl ClusterState {
    /// True if `conn` is connected here under `token`.
    pub(crate) fn is_conn(&self, conn: ConnId, token: u64) -> bool {
        self.conns.get(&conn).is_some_and(|(_, t, _)| *t == token)
    }

    /// True if `conn` connected with Clean Start = 0.
    pub(crate) fn conn_resumed(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|(_, _, r)| *r)
    }

    /// A shard's state in the cluster described by `core`.
    pub(crate) fn new(core: &ClusterCore) -> ClusterState {
        ClusterState {
            node: core.node,
            routes: NodeRouteIndex::new(),
            out: Vec::new(),
            inflight: 0,
            last_seq: 0,
            acked: 0,
            last_token: 0,
            conns: Map::default(),
            subs: Map::default(),
            last_claim: 0,
            paused_shown: false,
            held: Map::default(),
            imports: Vec::new(),
            pulls: Map::default(),
            exports: Map::default(),
            handled: 0,
        }
    }
}

impl ShardCore {
    /// Sends a message published on this node to the other nodes that want it (called by
    /// `route_message` once the local checks passed).
    pub(crate) fn cluster_forward(&mut self, msg: &Arc<Message>) {
        let Some(c) = self.cluster.as_deref_mut() else { return };
        if msg.origin == Origin::REMOTE || is_sys_topic(&msg.topic) {
            return;
        }
        let nodes = c.routes.nodes_for(&msg.topic);
        if nodes.is_empty() && !msg.retain {
            return;
        }
        c.inflight += mesh_cost(msg);
        c.out.push(ClusterOut::Publish { nodes, msg: msg.clone() });
    }

    /// A shared group's owner picked `node` for `msg`.
    pub(crate) fn cluster_forward_shared(
        &mut self,
        node: NodeId,
        group: ByteStr,
        msg: &Arc<Message>,
    ) {
        let Some(c) = self.cluster.as_deref_mut() else { return };
        c.inflight += mesh_cost(msg);
        c.out.push(ClusterOut::PublishShared { node, group, msg: msg.clone() });
    }

    /// One ordinary subscription to `filter` more (`added`) or less on this shard: the first
    /// and the last are told to the nodes.
    pub(crate) fn cluster_sub(&mut self, filter: &ByteStr, added: bool) {
        let Some(c) = self.cluster.as_deref_mut() else { return };
        let changed = if added {
            let n = c.subs.entry(ByteStr::from(filter.as_str())).or_insert(0);
            *n += 1;
            *n == 1
        } else {
            match c.subs.get_mut(filter) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    c.subs.remove(filter);
                    true
                }
                None => false,
            }
        };
        if changed {
            self.cluster_filter(filter, added);
        }
    }

    /// `filter` entered or left this shard's set: the runtime tells the nodes. For a shared
    /// group, `filter` is the whole `$share/{name}/{filter}`: the nodes route the group's
    /// messages to one node each, not the inner filter to every node with a member.
    pub(crate) fn cluster_filter(&mut self, filter: &ByteStr, added: bool) {
        if let Some(c) = self.cluster.as_deref_mut() {
            c.last_seq += 1;
            let seq = c.last_seq;
            c.out.push(ClusterOut::Filter { filter: filter.clone(), added, seq });
        }
    }

    /// The sequence number of this shard's last filter change (0 outside a cluster).
    pub(crate) fn cluster_seq(&self) -> u64 {
        self.cluster.as_deref().map_or(0, |c| c.last_seq)
    }

    /// True when every live peer node holds this shard's filter changes up to `seq` (always
    /// true outside a cluster).
    pub(crate) fn cluster_acked(&self, seq: u64) -> bool {
        self.cluster.as_deref().is_none_or(|c| c.acked >= seq)
    }

    /// True while the bytes handed to the runtime are past the window.
    pub(crate) fn cluster_paused(&self) -> bool {
        self.cluster
            .as_deref()
            .is_some_and(|c| c.inflight >= self.config.limits.mesh_inflight_bytes_max)
    }

    /// `conn` connected as `client_id` (`resumed`: with Clean Start = 0): registered
    /// cluster-wide.
    pub(crate) fn cluster_connected(&mut self, conn: ConnId, client_id: &str, resumed: bool) {
        let Some(c) = self.cluster.as_deref_mut() else { return };
        c.last_token += 1;
        let token = c.last_token;
        let client_id = ByteStr::from(client_id);
        c.conns.insert(conn, (client_id.clone(), token, resumed));
        c.out.push(ClusterOut::Connected { client_id, token });
    }

    /// A connected `conn` closed.
    pub(crate) fn cluster_disconnected(&mut self, conn: ConnId) {
        let Some(c) = self.cluster.as_deref_mut() else { return };
        if let Some((client_id, token, _)) = c.conns.remove(&conn) {
            c.out.push(ClusterOut::Disconnected { client_id, token });
        }
    }

    /// Moves the messages for the cluster runtime into `out` (with one `Handled` for the
    /// other nodes' messages handled since the last call), and shows the runtime whether
    /// this shard's subscribers hold publishers back.
    pub fn drain_cluster_out(&mut self, out: &mut Vec<ClusterOut>) {
        let paused = self.subscribers_paused();
        let shard = self.shard.0;
        let mask = self.config.cluster.as_ref().map(|k| &k.counters.shards_paused);
        if let (Some(c), Some(mask)) = (self.cluster.as_deref_mut(), mask) {
            if paused != c.paused_shown && shard < 64 {
                c.paused_shown = paused;
                let bit = 1u64 << shard;
                if paused {
                    mask.fetch_or(bit, std::sync::atomic::Ordering::Release);
                } else {
                    mask.fetch_and(!bit, std::sync::atomic::Ordering::Release);
                }
            }
            out.append(&mut c.out);
            if c.handled > 0 {
                out.push(ClusterOut::Handled { messages: std::mem::take(&mut c.handled) });
            }
        }
    }

    /// True when the pause state shown to the cluster runtime is stale: the io layer drains
    /// (`drain_cluster_out` updates it).
    pub fn cluster_pause_dirty(&self) -> bool {
        self.cluster.as_deref().is_some_and(|c| c.paused_shown != self.subscribers_paused())
    }

    /// A message from the node's cluster runtime.
    pub fn handle_cluster(&mut self, msg: ClusterIn, now: Instant) {
        if self.cluster.is_none() {
            debug_assert!(false, "cluster message on a node outside a cluster");
            return;
        }
        match msg {
            ClusterIn::Publish { from, msg } => {
                debug_assert_eq!(msg.origin, Origin::REMOTE, "a message from {from}");
                self.cluster.as_deref_mut().expect("checked above").handled += 1;
                self.route_message(msg, now);
            }
            ClusterIn::PublishShared { from, group, msg } => {
                debug_assert_eq!(msg.origin, Origin::REMOTE, "a message from {from}");
                self.cluster.as_deref_mut().expect("checked above").handled += 1;
                if is_shared(&group) {
                    // To the group's owner here, which keeps it on this node.
                    self.shared_requeue(group, msg, self.uptime_ms(now));
                }
            }
            ClusterIn::Route { node, filter, added } => {
                let c = self.cluster.as_deref_mut().expect("checked above");
                // Another node's data: past this broker's topic limits (levels, length) a
                // filter is refused like a client's; syntax is checked where it is applied.
                if node == c.node || self.topic_limits.check(&filter).is_err() {
                    return;
                }
                if is_shared(&filter) {
                    self.group_remote(&filter, node, added);
                } else {
                    c.routes.apply(node, &filter, added);
                }
            }
            ClusterIn::RouteBarrier { node, boot, seq } => {
                // Every Route before this one was applied (in order, above).
                let c = self.cluster.as_deref_mut().expect("checked above");
                c.out.push(ClusterOut::RouteApplied { node, boot, seq });
            }
            ClusterIn::NodeDown(node) => {
                let c = self.cluster.as_deref_mut().expect("checked above");
                c.routes.remove_node(node);
                self.groups_forget_node(node);
            }
            ClusterIn::FilterAck { seq } => {
                let c = self.cluster.as_deref_mut().expect("checked above");
                c.acked = c.acked.max(seq);
                self.release_subacks(now);
                self.release_join_acks();
            }
            ClusterIn::Credit { bytes } => {
                let c = self.cluster.as_deref_mut().expect("checked above");
                debug_assert!(c.inflight >= bytes, "credit {bytes} for {} in flight", c.inflight);
                c.inflight = c.inflight.saturating_sub(bytes);
            }
            ClusterIn::Kick { client_id, token, by } => {
                self.cluster_kick(&client_id, token, by, now)
            }
            ClusterIn::Claim { from, shard, token, client_id, discard } => {
                self.cluster_export(from, shard, token, &client_id, discard, now)
            }
            ClusterIn::Claimed { token, sessions, outcome } => {
                self.cluster_claimed(token, sessions, outcome, now)
            }
            ClusterIn::Commit { from, shard, token, client_id } => {
                self.cluster_commit(from, shard, token, &client_id, now)
            }
            ClusterIn::MoveAbort { to, shard, token, client_id } => {
                self.cluster_move_abort(to, shard, token, &client_id)
            }
            ClusterIn::Handover { token, from, outcome } => {
                self.cluster_handover(token, from, outcome, now)
            }
            ClusterIn::Restore { session } => self.import_offline(*session, now),
            ClusterIn::Offer { from, client_id } => self.cluster_offer(from, &client_id),
        }
    }
}
