//! `ShardCore`: everything one shard knows, as a sans-IO state machine.
//!
//! The io layer drives it: it calls `handle_*` for every input (a decoded packet, a decode
//! error, a closed socket, a message from another shard, a timer tick), each with `now`, and
//! then collects the outputs: bytes queued on connections ([`ShardCore::tx`]), actions
//! ([`ShardCore::poll_action`]) and messages for other shards ([`ShardCore::drain_mesh_out`]).
//! (API skeleton written by the lead; the core engineer implements it.)

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use shardmq_codec::{DecodeError, Packet, ProtocolVersion};

use crate::core::ids::ShardId;
use crate::core::limits::Limits;
use crate::core::mesh::MeshMsg;
use crate::core::tx::TxQueue;

/// A connection, unique on its shard for the life of the process (never reused).
/// Shard-local: meaningful only on the shard that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Read-only configuration every shard gets a copy of.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// All limits.
    pub limits: Limits,
    /// Number of shards.
    pub shard_count: u16,
    /// Interval between `$SYS/broker/...` publications (published by shard 0).
    pub sys_interval_secs: u32,
    /// Broker-wide counters, one slot per shard (shard i writes only slot i, relaxed
    /// atomics): read by shard 0 to publish `$SYS` totals. Not on the message path.
    pub stats: Arc<GlobalStats>,
    /// When the broker started (for `$SYS/broker/uptime` and message expiry).
    pub started_at: Instant,
}

/// Per-shard counters, shared read-only across shards for `$SYS` (each shard writes its own).
#[derive(Debug, Default)]
pub struct ShardCounters {
    /// Connected clients.
    pub clients_connected: AtomicU64,
    /// PUBLISH packets received from clients.
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: AtomicU64,
    /// Messages dropped (QoS 0 on a full connection queue, queue overflow, too large, expired).
    pub messages_dropped: AtomicU64,
    /// Bytes received.
    pub bytes_received: AtomicU64,
    /// Bytes sent.
    pub bytes_sent: AtomicU64,
}

/// Counters of every shard. Process-wide; created once at start-up.
#[derive(Debug)]
pub struct GlobalStats {
    /// One entry per shard, indexed by shard id.
    pub shards: Vec<ShardCounters>,
}

/// What the io layer must do for the core, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoAction {
    /// `conn` has bytes in its [`TxQueue`]: wake its writer.
    Flush(ConnId),
    /// Write what is queued on `conn`, then close the socket. The core has already forgotten
    /// the connection's protocol state; further packets from it must be ignored.
    Close(ConnId),
}

/// Everything one shard owns: connections, sessions (homed here by client id), the local
/// subscription trie, the replicated routing index and retained store, counters.
///
/// Shard-local: one per shard, never shared.
#[derive(Debug)]
pub struct ShardCore {
    shard: ShardId,
    config: CoreConfig,
}

impl ShardCore {
    /// A new, empty shard.
    pub fn new(shard: ShardId, config: CoreConfig) -> ShardCore {
        ShardCore { shard, config }
    }

    /// The home shard of a client id: a stable hash of its bytes, modulo the shard count.
    pub fn home_shard(client_id: &[u8], shard_count: u16) -> ShardId {
        // FNV-1a: stable across runs and builds (the log depends on it).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in client_id {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        ShardId((h % u64::from(shard_count.max(1))) as u16)
    }

    /// This shard's id.
    pub fn shard_id(&self) -> ShardId {
        self.shard
    }

    /// Registers a new socket whose first packet will be CONNECT. `None` when the shard's
    /// connection limit is reached (the io layer then refuses it).
    pub fn open_connection(&mut self, now: Instant) -> Option<ConnId> {
        let _ = now;
        unimplemented!()
    }

    /// The protocol version negotiated on `conn` (its CONNECT's), if known: the version the
    /// io layer passes to the decoder.
    pub fn protocol_version(&self, conn: ConnId) -> Option<ProtocolVersion> {
        let _ = conn;
        unimplemented!()
    }

    /// A packet decoded from `conn`.
    pub fn handle_packet(&mut self, conn: ConnId, packet: Packet, now: Instant) {
        let _ = (conn, packet, now);
        unimplemented!()
    }

    /// `conn` sent bytes that do not decode: answer per spec (5.0: DISCONNECT with the
    /// error's reason code once connected; CONNACK for CONNECT errors) and close it.
    pub fn handle_decode_error(&mut self, conn: ConnId, err: DecodeError, now: Instant) {
        let _ = (conn, err, now);
        unimplemented!()
    }

    /// The socket of `conn` closed or failed (not after [`IoAction::Close`]): an abnormal
    /// disconnect unless DISCONNECT was received.
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        let _ = (conn, now);
        unimplemented!()
    }

    /// A message from shard `from`.
    pub fn handle_mesh(&mut self, from: ShardId, msg: MeshMsg, now: Instant) {
        let _ = (from, msg, now);
        unimplemented!()
    }

    /// Timers: keep alive, will delay, session expiry, `$SYS` publication.
    pub fn handle_tick(&mut self, now: Instant) {
        let _ = now;
        unimplemented!()
    }

    /// When [`ShardCore::handle_tick`] next has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        unimplemented!()
    }

    /// The transmit queue of `conn`, if it is open.
    pub fn tx(&mut self, conn: ConnId) -> Option<&mut TxQueue> {
        let _ = conn;
        unimplemented!()
    }

    /// The next action for the io layer.
    pub fn poll_action(&mut self) -> Option<IoAction> {
        unimplemented!()
    }

    /// Moves the messages for other shards into `out`, in order per destination.
    pub fn drain_mesh_out(&mut self, out: &mut Vec<(ShardId, MeshMsg)>) {
        let _ = out;
        unimplemented!()
    }

    /// The io layer reports that `n` messages for other shards could not be pushed onto full
    /// rings and are held in its outbox: past `mesh_outbox_messages_max` the core asks the io
    /// layer to stop reading from publishers ([`ShardCore::reading_paused`]).
    pub fn set_mesh_backlog(&mut self, n_messages: usize) {
        let _ = n_messages;
        unimplemented!()
    }

    /// True while publishers' sockets must not be read (TCP back-pressure).
    pub fn reading_paused(&self) -> bool {
        unimplemented!()
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }
}
