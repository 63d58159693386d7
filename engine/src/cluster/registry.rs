//! Client ids across the cluster: which node owns each id's registration (rendezvous
//! hashing over the live members), the owner's table of where each id is connected, and the
//! clock that orders two connections of one id.
//!
//! The clock: a hybrid logical clock over the node's uptime. `ms` is this node's uptime in
//! ms plus an offset that only grows: every stamp or clock reading received from a peer
//! (Hello, Register, Unregister, Kick) moves the offset up so that this node's clock is at
//! least the peer's. All nodes therefore run on the clock of the longest-running node they
//! have heard from, advancing at real time; two sides of a netsplit keep advancing at real
//! time apart, so after the heal the later CONNECT (in real time, give or take the link
//! latency at the last exchange) has the larger stamp. Stamps taken in the same ms on one
//! node are ordered by a counter, and the node id breaks a tie between nodes. The machine
//! never reads a wall clock (it is sans-IO and takes `Instant`s), which is why uptime and
//! not wall time is the physical part.

use std::collections::BTreeMap;

use shardmq_codec::ByteStr;

use crate::core::cluster::NodeId;
use crate::core::ids::ShardId;

use super::wire::Stamp;

/// The registration clock (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset_ms: u64,
    last: Stamp,
}

impl Clock {
    /// The clock's ms at `uptime_ms`.
    pub fn now_ms(&self, uptime_ms: u64) -> u64 {
        uptime_ms + self.offset_ms
    }

    /// Moves the clock up to a peer's reading `ms`.
    pub fn observe(&mut self, uptime_ms: u64, ms: u64) {
        if ms > self.now_ms(uptime_ms) {
            self.offset_ms = ms - uptime_ms;
        }
    }

    /// A new stamp for `node`, larger than every stamp this clock gave before.
    pub fn stamp(&mut self, uptime_ms: u64, node: NodeId) -> Stamp {
        let ms = self.now_ms(uptime_ms).max(self.last.ms);
        let counter = if ms == self.last.ms { self.last.counter + 1 } else { 0 };
        self.last = Stamp { ms, counter, node: node.0 };
        self.last
    }
}

/// A score for `client_id` on `node`: the owner is the live member with the highest score.
/// A fixed function (FNV-1a, then splitmix64's finaliser with the node id), the same on
/// every node and every build. Not keyed: the owner must be computable by every node, and a
/// client choosing ids that land on one owner only moves registrations, not table lookups.
fn score(client_id: &[u8], node: NodeId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_id {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    let mut z = h ^ (u64::from(node.0).wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The owner of `client_id` among `members` (rendezvous hashing: highest score, lowest node
/// id on a tie). `members` is never empty (it holds this node).
pub(crate) fn owner(client_id: &[u8], members: impl Iterator<Item = NodeId>) -> NodeId {
    members
        .map(|n| (score(client_id, n), std::cmp::Reverse(n), n))
        .max()
        .map(|(_, _, n)| n)
        .expect("the member set holds this node")
}

/// One connection of a client id: where it is and when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Conn {
    pub node: NodeId,
    pub shard: ShardId,
    pub token: u64,
    pub stamp: Stamp,
}

impl Conn {
    /// True if `self` and `other` name the same connection.
    pub fn same(&self, other: &Conn) -> bool {
        self.node == other.node && self.shard == other.shard && self.token == other.token
    }
}

/// What a registration at the owner decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Registered {
    /// Recorded; nothing to end.
    Recorded,
    /// Recorded; this older connection of the id is to be ended.
    Kick(Conn),
    /// The registered connection is older than the one on record: it is to be ended.
    KickNew(Conn),
}

/// The client ids: this node's own connections (to re-register when their owner changes)
/// and, for the ids this node owns, where each is connected.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// This node's connections, by client id, each with the node it is registered at.
    pub local: BTreeMap<ByteStr, Vec<(Conn, NodeId)>>,
    /// The ids this node owns (or was told of as owner): the latest connection of each.
    pub owned: BTreeMap<ByteStr, Conn>,
}

impl Registry {
    /// Records a local connection.
    pub fn add_local(&mut self, client_id: &ByteStr, conn: Conn, owner: NodeId) {
        self.local.entry(client_id.clone()).or_default().push((conn, owner));
    }

    /// Forgets a local connection; returns it and the node it was registered at.
    pub fn remove_local(
        &mut self,
        client_id: &ByteStr,
        shard: ShardId,
        token: u64,
    ) -> Option<(Conn, NodeId)> {
        let conns = self.local.get_mut(client_id)?;
        let i = conns.iter().position(|(c, _)| c.shard == shard && c.token == token)?;
        let c = conns.swap_remove(i);
        if conns.is_empty() {
            self.local.remove(client_id);
        }
        Some(c)
    }

    /// At the owner: `conn` of `client_id` connected. The later stamp keeps the id.
    pub fn register(&mut self, client_id: &ByteStr, conn: Conn) -> Registered {
        match self.owned.get_mut(client_id) {
            None => {
                self.owned.insert(client_id.clone(), conn);
                Registered::Recorded
            }
            Some(held) if held.same(&conn) => {
                held.stamp = held.stamp.max(conn.stamp);
                Registered::Recorded
            }
            Some(held) if held.stamp < conn.stamp => {
                let old = std::mem::replace(held, conn);
                Registered::Kick(old)
            }
            Some(_) => Registered::KickNew(conn),
        }
    }

    /// At the owner: `conn` of `client_id` ended (forgotten only if it is the one on
    /// record).
    pub fn unregister(&mut self, client_id: &ByteStr, conn: &Conn) {
        if self.owned.get(client_id).is_some_and(|held| held.same(conn)) {
            self.owned.remove(client_id);
        }
    }

    /// Forgets the owned entries of connections on `node` (it went down).
    pub fn forget_node(&mut self, node: NodeId) {
        self.owned.retain(|_, c| c.node != node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(node: u16, token: u64, ms: u64) -> Conn {
        Conn { node: NodeId(node), shard: ShardId(0), token, stamp: Stamp { ms, counter: 0, node } }
    }

    #[test]
    fn later_stamp_keeps_the_id() {
        let mut r = Registry::default();
        let id = ByteStr::from_static("c");
        assert_eq!(r.register(&id, conn(1, 1, 10)), Registered::Recorded);
        assert_eq!(r.register(&id, conn(1, 1, 10)), Registered::Recorded, "idempotent");
        assert_eq!(r.register(&id, conn(2, 7, 20)), Registered::Kick(conn(1, 1, 10)));
        assert_eq!(r.register(&id, conn(3, 9, 15)), Registered::KickNew(conn(3, 9, 15)));
        r.unregister(&id, &conn(3, 9, 15));
        assert_eq!(r.owned[&id], conn(2, 7, 20), "only the connection on record unregisters");
        r.unregister(&id, &conn(2, 7, 20));
        assert!(r.owned.is_empty());
    }

    #[test]
    fn clock_orders_and_follows_peers() {
        let mut c = Clock::default();
        let a = c.stamp(5, NodeId(1));
        let b = c.stamp(5, NodeId(1));
        assert!(b > a);
        c.observe(6, 1000);
        let d = c.stamp(6, NodeId(1));
        assert_eq!(d.ms, 1000);
        c.observe(7, 10);
        assert_eq!(c.now_ms(7), 1001, "a clock never moves back");
    }

    #[test]
    fn owner_is_stable_and_spread() {
        let all: Vec<NodeId> = (0..5).map(NodeId).collect();
        let mut counts = [0usize; 5];
        for i in 0..1000 {
            let id = format!("client-{i}");
            let o = owner(id.as_bytes(), all.iter().copied());
            counts[o.0 as usize] += 1;
            // Removing a node that is not the owner never moves the id.
            let other = all.iter().copied().find(|n| *n != o).unwrap();
            assert_eq!(owner(id.as_bytes(), all.iter().copied().filter(|n| *n != other)), o);
        }
        assert!(counts.iter().all(|c| *c > 120), "{counts:?}");
    }
}
