//! The cluster as a shard's core sees it: which other nodes want which messages, and the
//! messages it exchanges with the node's cluster runtime (`engine/src/cluster/`, a thread
//! outside the shards that owns membership and the links to other nodes).
//!
//! A shard talks to the runtime with [`ClusterOut`] (queued by the core, drained by the io
//! layer, sent on one channel shared by the node's shards) and hears from it through
//! [`ClusterIn`] (delivered by the control plane, `io/control.rs`). Nothing here does IO.

pub(crate) mod handover;
pub mod moves;
pub mod routes;
pub(crate) mod shard_side;

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use shardmq_codec::ByteStr;

use crate::core::ids::ShardId;
use crate::core::mesh::Message;

pub use moves::{ExportedMsg, ExportedSub, SessionExport};
pub use routes::NodeRouteIndex;

/// The largest session (its snapshot as it travels) that moves between nodes; a larger one
/// stays where it is and the CONNECT elsewhere is refused (Quota exceeded).
pub const SESSION_MOVE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// A node of the cluster (`--node-id`), 0 to [`NodeSet::CAPACITY`] − 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct NodeId(pub u16);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node{}", self.0)
    }
}

/// A set of nodes, as a bitmask of at most [`NodeSet::CAPACITY`] nodes. Plain `Copy` data.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NodeSet(pub u64);

impl NodeSet {
    /// The largest number of nodes a cluster can have.
    pub const CAPACITY: usize = 64;
    /// The empty set.
    pub const EMPTY: NodeSet = NodeSet(0);

    /// True if the set holds no node.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Number of nodes in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    /// True if `node` is in the set.
    pub fn contains(self, node: NodeId) -> bool {
        node.0 < 64 && self.0 & (1 << node.0) != 0
    }
    /// Adds `node` (ids past the capacity are ignored); true if it was not in the set.
    pub fn insert(&mut self, node: NodeId) -> bool {
        if node.0 >= 64 {
            return false;
        }
        let had = self.contains(node);
        self.0 |= 1 << node.0;
        !had
    }
    /// Removes `node`; true if it was in the set.
    pub fn remove(&mut self, node: NodeId) -> bool {
        let had = self.contains(node);
        if had {
            self.0 &= !(1 << node.0);
        }
        had
    }
    /// The nodes, lowest id first.
    pub fn iter(self) -> impl Iterator<Item = NodeId> {
        (0..64u16).filter(move |i| self.0 & (1 << i) != 0).map(NodeId)
    }
}

impl fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// From a shard to the node's cluster runtime. Sent as `(ShardId, ClusterOut)`: the runtime
/// answers the sending shard where an answer is due.
#[derive(Debug, Clone)]
pub enum ClusterOut {
    /// A message published on this node (never one that came from another node, never a
    /// `$SYS` topic). `nodes` are the other nodes whose routes match its topic; the runtime
    /// sends one copy to each of them and, when `msg.retain` is set, to every live peer (each
    /// node keeps a full replica of the retained store). The runtime answers
    /// [`ClusterIn::Credit`] with [`crate::core::mesh::mesh_cost`] of the message once it is
    /// written to every link or dropped (a link that is down drops it, counted).
    Publish {
        /// Destination nodes (never this node).
        nodes: NodeSet,
        /// The message.
        msg: Arc<Message>,
    },
    /// A message published on this node for the shared group `group`
    /// (`$share/{name}/{filter}`), whose owner shard here picked `node` (which has members)
    /// for it: one member cluster-wide gets each message. Credited like `Publish`.
    PublishShared {
        /// The node that serves the group this time.
        node: NodeId,
        /// The whole `$share/{name}/{filter}`.
        group: ByteStr,
        /// The message.
        msg: Arc<Message>,
    },
    /// `filter` entered (`added`) or left this shard's set of local filters (the same
    /// change `MeshMsg::SubDelta` tells the other shards). The runtime folds the shards'
    /// changes into the node's set, tells every peer when the node's set changes, and answers
    /// [`ClusterIn::FilterAck`] with `seq` once every live peer holds the change (at once
    /// when there is no live peer): the SUBACK waits for it, so a message published on any
    /// node after SUBACK reaches the new subscription.
    Filter {
        /// The topic filter (a shared subscription's inner filter, as on the mesh).
        filter: ByteStr,
        /// Added or removed.
        added: bool,
        /// The shard's delta sequence number (increasing per shard).
        seq: u64,
    },
    /// A client connected to this shard (after CONNACK was decided). The runtime registers
    /// the client id with its owner node; a connection with the same id elsewhere in the
    /// cluster is taken over (the older one gets [`ClusterIn::Kick`]).
    Connected {
        /// The client id.
        client_id: ByteStr,
        /// Names this connection on this shard (increasing per shard).
        token: u64,
    },
    /// A CONNECT with Clean Start = 0 for `client_id`, which has no session here, waits:
    /// the runtime asks every live peer for the session (`ClusterIn::Claim` on the id's home
    /// shard there) and answers [`ClusterIn::Claimed`] with `token` once each answered or
    /// went down (at once when there is no live peer). With `only`, that node alone is asked
    /// (a session offered after a kick, `ClusterIn::Offer`); with `discard`, it is asked to
    /// end the session instead of sending it.
    Claim {
        /// The client id.
        client_id: ByteStr,
        /// Names the claim on this shard.
        token: u64,
        /// Ask this node only.
        only: Option<NodeId>,
        /// End the session there (the winner of a race started clean).
        discard: bool,
    },
    /// The answer to `ClusterIn::Claim`: a snapshot of the session (which stays here,
    /// offline and exporting, until `ClusterIn::Commit` or `ClusterIn::MoveAbort`), or
    /// `None`.
    Export {
        /// The node that asked.
        to: NodeId,
        /// Its shard that asked.
        shard: u16,
        /// Its claim token.
        token: u64,
        /// The session.
        session: Option<Box<SessionExport>>,
    },
    /// Every node routes the moved session of claim `token` here: node `to` may end its
    /// copy and hand over what arrived since its snapshot (`ClusterIn::Handover`).
    Commit {
        /// The exporting node.
        to: NodeId,
        /// The claim token.
        token: u64,
    },
    /// The answer to `ClusterIn::Commit`: what arrived since the snapshot (this node's copy
    /// ended), or `None` if this node kept the session (the export was aborted).
    Handover {
        /// The importing node.
        to: NodeId,
        /// Its shard.
        shard: u16,
        /// Its claim token.
        token: u64,
        /// The session's subscriptions and its messages since the snapshot.
        session: Option<Box<SessionExport>>,
    },
    /// A kick ended this shard's connection of `client_id` for a newer one on node `to`; the
    /// session stays here, offline, offered to `to` (which claims it or has it discarded).
    Offer {
        /// The winner's node.
        to: NodeId,
        /// The client id.
        client_id: ByteStr,
    },
    /// This shard applied every `ClusterIn::Route` of node `node` sent before the
    /// `ClusterIn::RouteBarrier` with `seq` (the answer to it): once every shard did, the
    /// runtime acknowledges `seq` to that node.
    RouteApplied {
        /// The peer whose routes these are.
        node: NodeId,
        /// Its incarnation, as in the barrier.
        boot: u64,
        /// Its route sequence number.
        seq: u64,
    },
    /// This shard handled this many `ClusterIn::Publish` / `PublishShared` messages (in
    /// order): the runtime releases their frames' share of its inbound budget, so a peer
    /// cannot publish faster than this node's shards take its messages (receive-side
    /// back-pressure: past the budget the link's reader stops reading).
    Handled {
        /// Messages handled since the last `Handled`.
        messages: u64,
    },
    /// The connection named by `token` ended.
    Disconnected {
        /// The client id.
        client_id: ByteStr,
        /// As in `Connected`.
        token: u64,
    },
}

/// From the node's cluster runtime to one shard.
#[derive(Debug, Clone)]
pub enum ClusterIn {
    /// A message published on node `from`: delivered to this node's subscribers (and stored if
    /// retained), never sent on to other nodes. `msg.origin` is `Origin::REMOTE`.
    Publish {
        /// The node it was published on.
        from: NodeId,
        /// The message.
        msg: Arc<Message>,
    },
    /// A message published on node `from` for one member of the shared group `group` on this
    /// node (`ClusterOut::PublishShared`): handed to the group's owner shard here, which
    /// gives it to a local member (or drops it, counted, if none is left).
    PublishShared {
        /// The node it was published on.
        from: NodeId,
        /// The whole `$share/{name}/{filter}`.
        group: ByteStr,
        /// The message.
        msg: Arc<Message>,
    },
    /// Node `node` gained (`added`) or lost its last subscriber of `filter` (for a shared
    /// group: its last member of `$share/{name}/{filter}`). Sent to every shard (each keeps
    /// a replica of the node route index; a group's owner shard keeps the group's nodes).
    Route {
        /// The node.
        node: NodeId,
        /// The filter.
        filter: ByteStr,
        /// Added or removed.
        added: bool,
    },
    /// Answer `ClusterOut::RouteApplied` with the same fields: every `Route` of `node` sent
    /// before this one is applied (shards apply `ClusterIn` in order, so at once). A peer's
    /// route change is acknowledged to it only when every shard answered, so a PUBLISH a shard
    /// routes after a remote SUBACK sees the new route.
    RouteBarrier {
        /// The peer whose routes these are.
        node: NodeId,
        /// Its incarnation (boot id): an answer for an older one is ignored.
        boot: u64,
        /// Its route sequence number.
        seq: u64,
    },
    /// Forget every route of `node`: it left or failed (a re-synchronised link sends the
    /// difference as `Route` messages instead, so a route held before and after never
    /// disappears). Sent to every shard.
    NodeDown(NodeId),
    /// Every live peer holds this shard's filter changes up to `seq`.
    FilterAck {
        /// The acknowledged sequence number.
        seq: u64,
    },
    /// The runtime is done with this many bytes (`mesh_cost`) of this shard's
    /// `ClusterOut::Publish` messages.
    Credit {
        /// Bytes handled.
        bytes: u64,
    },
    /// Node `from` holds a CONNECT for `client_id` (Clean Start = 0): end its connection
    /// here and send a snapshot of the session there (`ClusterOut::Export`), keeping the
    /// session (offline, exporting) until `Commit` or `MoveAbort`. With `discard`, end the
    /// session and answer `None`. Sent to the id's home shard.
    Claim {
        /// The node that asks.
        from: NodeId,
        /// Its shard that asks.
        shard: u16,
        /// Its claim token.
        token: u64,
        /// The client id.
        client_id: ByteStr,
        /// End the session instead of sending it.
        discard: bool,
    },
    /// This shard's claim `token` is decided: the snapshots received (none, usually one;
    /// more after a netsplit, merged), by exporting node, and whether every asked peer
    /// answered.
    Claimed {
        /// The claim token.
        token: u64,
        /// The snapshots, by exporting node.
        sessions: Vec<(NodeId, SessionExport)>,
        /// How the claim ended.
        outcome: ClaimOutcome,
    },
    /// Node `from` (shard, token) holds the snapshot of `client_id`'s session and every node
    /// routes it there: end the session here and hand over what arrived since the snapshot
    /// (`ClusterOut::Handover`), if it is still exporting to that claim.
    Commit {
        /// The importing node.
        from: NodeId,
        /// Its shard.
        shard: u16,
        /// Its claim token.
        token: u64,
        /// The client id.
        client_id: ByteStr,
    },
    /// The export of `client_id`'s session to (node, shard, token) is off (the importer gave
    /// up, went down, or the session was too large): the session is an ordinary offline
    /// session here again.
    MoveAbort {
        /// The importing node.
        to: NodeId,
        /// Its shard.
        shard: u16,
        /// Its claim token.
        token: u64,
        /// The client id.
        client_id: ByteStr,
    },
    /// The answer to this shard's `ClusterOut::Commit` for claim `token` from node `from`.
    Handover {
        /// The claim token.
        token: u64,
        /// The exporting node.
        from: NodeId,
        /// What happened there.
        outcome: HandoverOutcome,
    },
    /// A handover the importer never acknowledged before it went down: kept here as an
    /// offline session (its messages are not lost; the importer's copy comes back with it).
    Restore {
        /// The session's subscriptions and messages.
        session: Box<SessionExport>,
    },
    /// The client id connected later on another node: end this connection (5.0 DISCONNECT
    /// 0x8E, Session taken over) if `token` still names it. Its session stays, offline, and
    /// is offered to the winner's node `by` (`ClusterOut::Offer`).
    Kick {
        /// The client id.
        client_id: ByteStr,
        /// The connection, as in `ClusterOut::Connected`.
        token: u64,
        /// The node of the connection that won.
        by: NodeId,
    },
    /// Node `from` kicked this node's connection of `client_id` and keeps its session,
    /// offline: claim it (`ClusterOut::Claim` with `only`), or have it discarded.
    Offer {
        /// The node with the session.
        from: NodeId,
        /// The client id.
        client_id: ByteStr,
    },
}

/// How a claim ended (`ClusterIn::Claimed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Every asked peer answered (or was declared down).
    Answered,
    /// A live peer that was asked did not answer (its link went down, or the claim timed
    /// out): it may hold the session, so nothing is decided (snapshots already aborted).
    Unanswered,
    /// A peer's session is past the move limit: it stays there (snapshots aborted).
    TooLarge,
}

/// What the exporter did with a commit (`ClusterIn::Handover`).
#[derive(Debug, Clone)]
pub enum HandoverOutcome {
    /// It ended its copy; these are the messages that arrived since the snapshot.
    Moved(Box<SessionExport>),
    /// It kept the session (the export had been aborted): its copy holds everything.
    Kept,
    /// No answer (the exporter went down, or the handover timed out): keep this copy.
    Unknown,
}

/// Carries [`ClusterOut`] messages from the shards to the runtime (implemented by the
/// runtime; held by every shard's io layer).
pub trait ClusterTx: Send + Sync {
    /// Queues `msg` from `shard`. Never blocks (the shard's byte window bounds what is queued).
    fn send(&self, shard: ShardId, msg: ClusterOut);
}

/// Delivers [`ClusterIn`] messages to shards (implemented by the control plane).
pub trait ShardSink: Send + Sync {
    /// Queues `msgs` for `shard`, in order.
    fn send(&self, shard: ShardId, msgs: Vec<ClusterIn>);
    /// The node's shard count.
    fn shard_count(&self) -> u16;
}

/// The cluster runtime's counters, read by `$SYS` (`$SYS/broker/cluster/...`) and the admin
/// API. Written by the runtime's threads only.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// This node's id.
    pub node_id: AtomicU64,
    /// Live members, this node included.
    pub members: AtomicU64,
    /// Links to peers that are up.
    pub links_up: AtomicU64,
    /// Messages sent to other nodes (one per destination node).
    pub messages_out: AtomicU64,
    /// Messages received from other nodes.
    pub messages_in: AtomicU64,
    /// Bytes written on node links.
    pub bytes_out: AtomicU64,
    /// Bytes read from node links.
    pub bytes_in: AtomicU64,
    /// Messages not sent because the destination's link was down or its queue full.
    pub messages_dropped: AtomicU64,
    /// Of those, the ones dropped because the link's queue was full (the rest: link down).
    pub messages_dropped_queue_full: AtomicU64,
    /// Routes (node, filter) this node holds for its peers.
    pub remote_routes: AtomicU64,
    /// TLS handshakes on node links that failed, both ways (a peer without a certificate the
    /// cluster CA signed, or a plain-TCP peer).
    pub link_handshake_failures: AtomicU64,
    /// Connections this node ended because the client id connected on another node (a kick,
    /// or the session moving there).
    pub takeovers: AtomicU64,
    /// Bit `i` set while shard `i`'s subscribers hold publishers back (its transmit budget,
    /// or another shard's): the runtime then keeps other nodes' messages for that shard in
    /// its inbound budget instead of handing them over (`cluster/runtime.rs`). Shards past
    /// 63 are never marked.
    pub shards_paused: AtomicU64,
}

/// What a shard's core needs to know of the cluster (`CoreConfig::cluster`).
#[derive(Debug, Clone)]
pub struct ClusterCore {
    /// This node.
    pub node: NodeId,
    /// The runtime's counters (shard 0 publishes them in `$SYS`).
    pub counters: Arc<ClusterCounters>,
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod shard_tests;
