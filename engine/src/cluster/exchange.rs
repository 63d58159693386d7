//! The node machine's exchanges with its shards and its peers: published messages, the
//! route exchange and its acknowledgements, client-id registration and takeover. (The
//! machine's state and its membership side are in `node.rs`.)

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use shardmq_codec::ByteStr;

use crate::core::cluster::{ClusterIn, NodeId, NodeSet};
use crate::core::ids::ShardId;
use crate::core::mesh::{mesh_cost, Message};

use super::node::{Effect, NodeMachine, KICKS_KEPT};
use super::registry::{owner, Conn, Registered};
use super::routes::PendingAck;
use super::wire::{self, Frame};

/// A snapshot's frames are handed to the link in runs of about this many bytes.
const SNAPSHOT_BATCH_BYTES: usize = 64 * 1024;

impl NodeMachine {
    /// A peer's frame, decoded.
    pub(super) fn on_frame(&mut self, from: NodeId, frame: Frame, now: Instant) {
        let live = self.peers.get(&from).is_some_and(|p| p.live);
        match frame {
            Frame::Hello { .. } => {
                // Only the first frame of a connection is a Hello; the runtime checks that.
            }
            Frame::Publish { origin_shard, age_ms, publish } => {
                // A message is delivered even from a node this node thinks is down: it was
                // published, and a subscriber asked for it.
                self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
                let msg = wire::publish_message(publish, age_ms, self.uptime_ms(now));
                let shard = ShardId(origin_shard % self.shard_count);
                self.effects
                    .push_back(Effect::ToShard { shard, msg: ClusterIn::Publish { from, msg } });
            }
            Frame::PublishShared { origin_shard, age_ms, group, publish } => {
                self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
                let msg = wire::publish_message(publish, age_ms, self.uptime_ms(now));
                let shard = ShardId(origin_shard % self.shard_count);
                let msg = ClusterIn::PublishShared { from, group, msg };
                self.effects.push_back(Effect::ToShard { shard, msg });
            }
            Frame::Move(m) => self.on_move_frame(from, m, now),
            // Routes and registrations from a node that is not live here are ignored and not
            // acknowledged: when it comes back up, this node asks for all of them (Resync).
            Frame::Route { .. }
            | Frame::RoutesReset { .. }
            | Frame::RoutesDone { .. }
            | Frame::Register { .. }
            | Frame::Unregister { .. }
                if !live => {}
            Frame::Route { seq, added, filter } => {
                let p = self.peers.get_mut(&from).expect("live");
                if let Some(staging) = p.staging.as_mut() {
                    // Part of a snapshot: applied as a whole at RoutesDone.
                    if added {
                        staging.insert(filter);
                    } else {
                        staging.remove(&filter);
                    }
                    return;
                }
                let changed =
                    if added { p.routes.insert(filter.clone()) } else { p.routes.remove(&filter) };
                // Acknowledged only once this node holds the peer's whole set (a snapshot
                // since the peer came up): an acknowledgement covers every earlier change.
                let synced = p.synced;
                if synced {
                    p.seq_in = p.seq_in.max(seq);
                }
                if changed {
                    self.send_every_shard(ClusterIn::Route { node: from, filter, added });
                }
                if synced {
                    self.route_barrier(from, seq);
                }
                self.update_counters();
            }
            Frame::RoutesReset { .. } => {
                let p = self.peers.get_mut(&from).expect("live");
                p.staging = Some(Default::default());
            }
            Frame::RoutesDone { seq } => {
                let p = self.peers.get_mut(&from).expect("live");
                // Without a staged snapshot (its start came before the peer was up here),
                // this is not a whole set: the Resync this node sent brings one.
                let Some(new) = p.staging.take() else { return };
                p.synced = true;
                p.seq_in = p.seq_in.max(seq);
                // The shards get the difference, not a reset: a route both in the old and
                // the new set never disappears, so no message to it is missed while the
                // snapshot is applied.
                let gone: Vec<ByteStr> = p.routes.difference(&new).cloned().collect();
                let came: Vec<ByteStr> = new.difference(&p.routes).cloned().collect();
                p.routes = new;
                for filter in gone {
                    self.send_every_shard(ClusterIn::Route { node: from, filter, added: false });
                }
                for filter in came {
                    self.send_every_shard(ClusterIn::Route { node: from, filter, added: true });
                }
                self.update_counters();
                self.route_barrier(from, seq);
            }
            Frame::RouteAck { seq } => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.acked = p.acked.max(seq);
                }
                self.release_acks();
            }
            Frame::Resync => {
                if live {
                    self.send_snapshot(from);
                    self.send_registrations(from);
                }
            }
            Frame::Register { stamp, client_id, shard, token } => {
                self.clock.observe(self.uptime_ms(now), stamp.ms);
                let conn = Conn { node: from, shard: ShardId(shard), token, stamp };
                self.register_here(&client_id, conn);
            }
            Frame::Unregister { stamp, client_id, shard, token } => {
                self.clock.observe(self.uptime_ms(now), stamp.ms);
                let conn = Conn { node: from, shard: ShardId(shard), token, stamp };
                self.registry.unregister(&client_id, &conn);
            }
            Frame::Kick { stamp, client_id, shard, token, by } => {
                self.clock.observe(self.uptime_ms(now), stamp.ms);
                self.kick_local(&client_id, ShardId(shard), token, by);
            }
        }
    }

    /// Peer `from`'s routes up to `seq` are queued for every shard: acknowledged once every
    /// shard applied them (`on_route_applied`), not when queued.
    fn route_barrier(&mut self, from: NodeId, seq: u64) {
        let Some(p) = self.peers.get(&from) else { return };
        let boot = p.member.boot_id;
        self.send_every_shard(ClusterIn::RouteBarrier { node: from, boot, seq });
    }

    /// Shard `shard` applied peer `node`'s routes up to `seq`: acknowledged to the peer when
    /// every shard has.
    pub(super) fn on_route_applied(&mut self, shard: ShardId, node: NodeId, boot: u64, seq: u64) {
        let Some(p) = self.peers.get_mut(&node) else { return };
        if p.member.boot_id != boot || !p.live {
            return;
        }
        let Some(a) = p.applied.get_mut(usize::from(shard.0)) else { return };
        *a = (*a).max(seq);
        let all = p.applied.iter().copied().min().unwrap_or(seq);
        if all > p.acked_out {
            p.acked_out = all;
            self.send(node, &Frame::RouteAck { seq: all });
        }
    }

    /// A shard's published message.
    pub(super) fn on_publish(
        &mut self,
        shard: ShardId,
        nodes: NodeSet,
        msg: Arc<Message>,
        now: Instant,
    ) {
        let cost = mesh_cost(&msg);
        let mut reachable = NodeSet::EMPTY;
        for (n, p) in &self.peers {
            if p.live && p.link_up {
                reachable.insert(*n);
            }
        }
        // Retained messages go to every live peer: each node keeps the whole retained store.
        let wanted = if msg.retain { reachable } else { nodes };
        let dest = NodeSet(wanted.0 & reachable.0);
        let missed = NodeSet(nodes.0 & !dest.0).len() as u64;
        let frame = if dest.is_empty() {
            None
        } else {
            let age_ms = self.uptime_ms(now).saturating_sub(msg.received_at_ms);
            wire::encode_publish(&msg, shard, age_ms)
        };
        match frame {
            Some(frame) => {
                let n = dest.len() as u64;
                self.counters.messages_out.fetch_add(n, Ordering::Relaxed);
                self.counters.bytes_out.fetch_add(n * frame.len() as u64, Ordering::Relaxed);
                self.counters.messages_dropped.fetch_add(missed, Ordering::Relaxed);
                self.effects.push_back(Effect::Publish { nodes: dest, frame, shard, cost });
            }
            None => {
                // No destination left, or a message too large for a frame: it is dropped
                // for every destination and credited back at once.
                let dropped = NodeSet(nodes.0 | dest.0).len() as u64;
                self.counters.messages_dropped.fetch_add(dropped, Ordering::Relaxed);
                self.effects
                    .push_back(Effect::ToShard { shard, msg: ClusterIn::Credit { bytes: cost } });
            }
        }
    }

    /// A shard's message for one member of the shared group `group` on `node`: sent there
    /// only; dropped (counted, credited) if that node is not reachable now.
    pub(super) fn on_publish_shared(
        &mut self,
        shard: ShardId,
        node: NodeId,
        group: ByteStr,
        msg: Arc<Message>,
        now: Instant,
    ) {
        let cost = mesh_cost(&msg);
        let reachable = self.peers.get(&node).is_some_and(|p| p.live && p.link_up);
        let age_ms = self.uptime_ms(now).saturating_sub(msg.received_at_ms);
        let frame =
            reachable.then(|| wire::encode_publish_shared(&msg, &group, shard, age_ms)).flatten();
        match frame {
            Some(frame) => {
                self.counters.messages_out.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_out.fetch_add(frame.len() as u64, Ordering::Relaxed);
                let mut nodes = NodeSet::EMPTY;
                nodes.insert(node);
                self.effects.push_back(Effect::Publish { nodes, frame, shard, cost });
            }
            None => {
                self.counters.messages_dropped.fetch_add(1, Ordering::Relaxed);
                self.effects
                    .push_back(Effect::ToShard { shard, msg: ClusterIn::Credit { bytes: cost } });
            }
        }
    }

    /// A shard's filter change: fold it, tell the peers if the node's set changed, and hold
    /// the shard's acknowledgement until they acknowledged.
    pub(super) fn on_filter(&mut self, shard: ShardId, filter: ByteStr, added: bool, seq: u64) {
        if self.filters.apply(shard, &filter, added) {
            self.route_seq += 1;
            let frame = Frame::Route { seq: self.route_seq, added, filter };
            for node in self.up_peers() {
                self.send(node, &frame);
            }
        }
        self.pending.push(PendingAck { shard, shard_seq: seq, needed: self.route_seq });
        self.release_acks();
    }

    /// The live peers whose link is up.
    fn up_peers(&self) -> Vec<NodeId> {
        self.peers.iter().filter(|(_, p)| p.live && p.link_up).map(|(n, _)| *n).collect()
    }

    /// Answers the shards' filter changes every live peer with an up link acknowledged. A
    /// change that arrived when the route sequence number was `needed` is held by peer `p`
    /// once `p` acknowledged `needed` or later (its frames arrive in order), or everything
    /// sent to it (it never saw a sequence number that late: snapshots to other peers).
    pub(super) fn release_acks(&mut self) {
        let threshold = self
            .peers
            .values()
            .filter(|p| p.live && p.link_up && p.acked < p.sent)
            .map(|p| p.acked)
            .min()
            .unwrap_or(u64::MAX);
        for p in self.pending.release(threshold) {
            self.effects.push_back(Effect::ToShard {
                shard: p.shard,
                msg: ClusterIn::FilterAck { seq: p.shard_seq },
            });
        }
    }

    /// Sends `node` this node's whole set of filters: `RoutesReset`, one `Route` per filter,
    /// `RoutesDone` (acknowledged like a change).
    pub(super) fn send_snapshot(&mut self, node: NodeId) {
        self.route_seq += 1;
        let seq = self.route_seq;
        let Some(p) = self.peers.get_mut(&node).filter(|p| p.link_up) else { return };
        p.sent = p.sent.max(seq);
        // The frames go in batches (a node may hold 100,000 filters): each `Send` is a run
        // of whole frames, which the link writes as they are.
        let mut chunks = Vec::new();
        let mut batch = BytesMut::new();
        let reset = Frame::RoutesReset { seq }.encode().expect("a small frame");
        batch.extend_from_slice(&reset);
        for filter in self.filters.iter() {
            let f = Frame::Route { seq, added: true, filter: filter.clone() };
            // A filter is at most 65,535 bytes: its frame always encodes.
            batch.extend_from_slice(&f.encode().expect("a filter fits a frame"));
            if batch.len() >= SNAPSHOT_BATCH_BYTES {
                chunks.push(batch.split().freeze());
            }
        }
        batch.extend_from_slice(&Frame::RoutesDone { seq }.encode().expect("a small frame"));
        chunks.push(batch.freeze());
        for frame in chunks {
            self.counters.bytes_out.fetch_add(frame.len() as u64, Ordering::Relaxed);
            self.effects.push_back(Effect::Send { node, frame });
        }
    }

    /// Sends `node` a Register for every local connection it owns.
    pub(super) fn send_registrations(&mut self, node: NodeId) {
        let mut frames = Vec::new();
        for (client_id, conns) in &self.registry.local {
            for (c, at) in conns {
                if *at == node {
                    frames.push(Frame::Register {
                        stamp: c.stamp,
                        client_id: client_id.clone(),
                        shard: c.shard.0,
                        token: c.token,
                    });
                }
            }
        }
        for f in frames {
            self.send(node, &f);
        }
    }

    /// A client connected on one of this node's shards.
    pub(super) fn on_connected(
        &mut self,
        shard: ShardId,
        client_id: ByteStr,
        token: u64,
        now: Instant,
    ) {
        let stamp = self.clock.stamp(self.uptime_ms(now), self.id);
        let conn = Conn { node: self.id, shard, token, stamp };
        let at = owner(client_id.as_bytes(), self.live_nodes());
        self.registry.add_local(&client_id, conn, at);
        self.register_at(&client_id, conn, at);
    }

    /// A connection on one of this node's shards ended.
    pub(super) fn on_disconnected(&mut self, shard: ShardId, client_id: ByteStr, token: u64) {
        let Some((conn, at)) = self.registry.remove_local(&client_id, shard, token) else {
            return;
        };
        if at == self.id {
            self.registry.unregister(&client_id, &conn);
        } else {
            let frame = Frame::Unregister { stamp: conn.stamp, client_id, shard: shard.0, token };
            self.send(at, &frame);
        }
    }

    /// Registers `conn` with the owner `at` (this node, or a frame to it).
    fn register_at(&mut self, client_id: &ByteStr, conn: Conn, at: NodeId) {
        if at == self.id {
            self.register_here(client_id, conn);
        } else {
            let frame = Frame::Register {
                stamp: conn.stamp,
                client_id: client_id.clone(),
                shard: conn.shard.0,
                token: conn.token,
            };
            // If the link is down, the registration is sent when it comes up.
            self.send(at, &frame);
        }
    }

    /// As the owner: records `conn` and ends the older connection of the id, if any.
    fn register_here(&mut self, client_id: &ByteStr, conn: Conn) {
        let (victim, by) = match self.registry.register(client_id, conn) {
            Registered::Recorded => return,
            Registered::Kick(old) => (old, conn.node),
            Registered::KickNew(new) => {
                let kept = self.registry.owned.get(client_id).map_or(self.id, |c| c.node);
                (new, kept)
            }
        };
        if victim.node == self.id {
            self.kick_local(client_id, victim.shard, victim.token, by);
        } else {
            let frame = Frame::Kick {
                stamp: victim.stamp,
                client_id: client_id.clone(),
                shard: victim.shard.0,
                token: victim.token,
                by,
            };
            self.send(victim.node, &frame);
            if let Some(p) = self.peers.get_mut(&victim.node) {
                if p.kicks.len() == KICKS_KEPT {
                    p.kicks.pop_front();
                }
                p.kicks.push_back(frame);
            }
        }
    }

    /// Ends this node's connection (shard, token) of `client_id`, if it still exists.
    fn kick_local(&mut self, client_id: &ByteStr, shard: ShardId, token: u64, by: NodeId) {
        if self.registry.remove_local(client_id, shard, token).is_none() {
            return;
        }
        self.counters.takeovers.fetch_add(1, Ordering::Relaxed);
        self.effects.push_back(Effect::ToShard {
            shard,
            msg: ClusterIn::Kick { client_id: client_id.clone(), token, by },
        });
    }

    /// After a membership change: registers every local connection whose owner changed with
    /// its new owner, and forgets the owned entries of ids this node no longer owns.
    pub(super) fn reassign_owners(&mut self) {
        let live: Vec<NodeId> = self.live_nodes().collect();
        let mut moves = Vec::new();
        for (client_id, conns) in &mut self.registry.local {
            let now_owner = owner(client_id.as_bytes(), live.iter().copied());
            for (c, at) in conns.iter_mut() {
                if *at != now_owner {
                    *at = now_owner;
                    moves.push((client_id.clone(), *c, now_owner));
                }
            }
        }
        for (client_id, conn, at) in moves {
            self.register_at(&client_id, conn, at);
        }
        let me = self.id;
        self.registry
            .owned
            .retain(|client_id, _| owner(client_id.as_bytes(), live.iter().copied()) == me);
    }
}
