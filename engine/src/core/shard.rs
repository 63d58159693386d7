//! `ShardCore`: everything one shard knows, as a sans-IO state machine.
//!
//! The io layer drives it: it calls `handle_*` for every input (a decoded packet, a decode
//! error, a closed socket, a message from another shard, a timer tick), each with `now`, and
//! then collects the outputs: bytes queued on connections ([`ShardCore::tx`]), actions
//! ([`ShardCore::poll_action`]) and messages for other shards ([`ShardCore::drain_mesh_out`]).
//!
//! The behaviour is split by concept: `sessions/connect.rs` (CONNECT, takeover, sessions starting
//! and ending, wills), `delivery/publish.rs` (inbound PUBLISH and its acknowledgements, routing,
//! the retained store's replication), `delivery/deliver.rs` (fan-out to local sessions,
//! encode-once, outbound windows and acknowledgements), `routing/subscribe.rs`
//! (SUBSCRIBE/UNSUBSCRIBE, routing deltas and the SUBACK gate), `sessions/timers.rs` (keep alive,
//! expiry, will delay, `$SYS`), `dispatch.rs` (the inputs: packets by connection phase, decode
//! errors, mesh messages). This file holds the state and the rest of the io-facing API.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardmq_codec::{encode, ByteStr, Disconnect, Packet, ProtocolVersion, QoS, ReasonCode};

use crate::core::admin::DisconnectReason;
use crate::core::auth::plain::PasswordChecks;
use crate::core::auth::{AuthConfig, AuthRng};
use crate::core::delivery::deliver::Fanout;
use crate::core::delivery::drops::{DropReason, Traffic};
use crate::core::delivery::tx::TxQueue;
use crate::core::delivery::tx_budget::TxBudget;
use crate::core::hash::HashKeys;
use crate::core::ids::{ConnId, SessionSlot, ShardId};
use crate::core::limits::Limits;
use crate::core::mesh::{MeshMsg, Message};
use crate::core::policy::Denial;
use crate::core::routing::retained::RetainedStore;
use crate::core::routing::route_index::RouteIndex;
use crate::core::routing::shared::SharedGroups;
use crate::core::routing::subscribe::{SubAckGate, SubOptions};
use crate::core::routing::topic::TopicLimits;
use crate::core::routing::trie::SubscriptionTrie;
use crate::core::sessions::conn::{Conn, ConnTable, Phase};
use crate::core::sessions::conn_info::ConnInfo;
use crate::core::sessions::session::SessionTable;

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
    /// Authentication and redirection (`auth/mod.rs`).
    pub auth: AuthConfig,
    /// Test-only fault injection: a PUBLISH to exactly this topic panics the shard, so the
    /// tests can check that a failing shard ends the process (`io::failfast`). Honoured in
    /// debug builds only, and set only from `SHARDMQ_TEST_PANIC_TOPIC` at start-up
    /// (`io::Broker::start`); always `None` in release builds.
    #[doc(hidden)]
    pub fault_panic_topic: Option<ByteStr>,
    /// The keys of every hash table of the core (`hash.rs`): random in the broker (drawn by
    /// the io layer at start-up), derived from the seed in the simulator.
    pub hash_keys: HashKeys,
    /// The cluster this node is in (`core/cluster/`); `None` for a single node.
    pub cluster: Option<crate::core::cluster::ClusterCore>,
}

/// Per-shard counters, shared read-only across shards for `$SYS` (each shard writes its own).
///
/// The core owns `clients_connected` and the `messages_*` counters: it counts locally and
/// stores the totals into these slots on every tick (so they lag by at most one tick). The
/// io layer owns `bytes_received`, `bytes_sent` and `clients_sleeping`: it counts in the
/// shard and stores the totals every idle sweep (`io/idle.rs`, once a second).
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
    /// Connections asleep: no task, the socket in the shard's idle poller (written by the
    /// io layer, `io/idle.rs`).
    pub clients_sleeping: AtomicU64,
    /// Connections marked slow consumers now (`delivery/tx_budget.rs`).
    pub clients_slow: AtomicU64,
    /// Bytes waiting in the shard's transmit queues now.
    pub tx_bytes_queued: AtomicU64,
    /// Times the shard paused its publishers (back-pressure), since start.
    pub publish_pauses: AtomicU64,
    /// Policy denials by reason since start, indexed by [`Denial`] (`$SYS/broker/denied/…`).
    pub denials: [AtomicU64; Denial::COUNT],
    /// PUBLISH packets and their bytes sent, by QoS (`$SYS/broker/messages/sent/qos/<n>`).
    pub sent_messages_by_qos: [AtomicU64; 3],
    pub sent_bytes_by_qos: [AtomicU64; 3],
    /// Messages dropped by reason, indexed by [`DropReason`]
    /// (`$SYS/broker/messages/dropped/<reason>`).
    pub dropped_by_reason: [AtomicU64; DropReason::COUNT],
    /// TLS handshakes completed, since start (written by the io layer).
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes refused or failed (bad certificate, garbage, timeout), since start.
    pub tls_handshake_failures: AtomicU64,
    /// WebSocket upgrades accepted, since start.
    pub ws_upgrades: AtomicU64,
    /// WebSocket upgrades refused (HTTP 4xx) or abandoned, and connections closed for a bad
    /// frame, since start.
    pub ws_failures: AtomicU64,
    /// Connections closed at once because `handshakes_per_shard_max` handshakes were in
    /// progress, since start.
    pub handshakes_refused_busy: AtomicU64,
}

/// Counters of every shard. Process-wide; created once at start-up.
#[derive(Debug)]
pub struct GlobalStats {
    /// One entry per shard, indexed by shard id.
    pub shards: Vec<ShardCounters>,
    /// One entry per bridge, in configuration order (written by the bridge's threads).
    pub bridges: Vec<Arc<BridgeCounters>>,
}

impl GlobalStats {
    /// Zeroed counters for `shard_count` shards.
    pub fn new(shard_count: u16) -> GlobalStats {
        GlobalStats {
            shards: (0..shard_count).map(|_| ShardCounters::default()).collect(),
            bridges: Vec::new(),
        }
    }
}

/// One bridge's state, read by `$SYS` (`$SYS/broker/bridges/NAME/...`).
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// The bridge's name.
    pub name: String,
    /// 1 while both links are up.
    pub connected: AtomicU64,
    /// Messages forwarded to the remote broker.
    pub forwarded_out: AtomicU64,
    /// Messages forwarded from the remote broker.
    pub forwarded_in: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Messages the bridge acknowledged without forwarding (no rule maps the topic), or whose
    /// refusal could not be told to a 3.1.1 peer.
    pub dropped: AtomicU64,
    /// The bridge's session at this broker (its client id), whose home shard fills the next
    /// three in its periodic scan.
    pub local_client_id: String,
    /// Messages queued for the remote in that session (not yet sent to the bridge).
    pub queued: AtomicU64,
    /// Their bytes.
    pub queued_bytes: AtomicU64,
    /// QoS 1/2 messages sent to the bridge and not yet acknowledged by the remote.
    pub inflight: AtomicU64,
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

/// The shard's own counters, exported to [`GlobalStats`] on every tick.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LocalStats {
    pub(crate) clients_connected: u64,
    pub(crate) messages_received: u64,
    pub(crate) messages_sent: u64,
    pub(crate) messages_dropped: u64,
    /// Policy denials by reason (`policy/denial.rs`), indexed by [`Denial`].
    pub(crate) denials: [u64; Denial::COUNT],
    /// Sent by QoS, dropped by reason (`delivery/drops.rs`); `messages_sent` and
    /// `messages_dropped` are their sums.
    pub(crate) traffic: Traffic,
}

impl LocalStats {
    /// One PUBLISH of `bytes` (the whole packet) queued for a client.
    #[inline]
    pub(crate) fn sent(&mut self, qos: QoS, bytes: usize) {
        self.messages_sent += 1;
        self.traffic.sent_messages_by_qos[qos as usize] += 1;
        self.traffic.sent_bytes_by_qos[qos as usize] += bytes as u64;
    }

    /// `n` messages dropped for `why`.
    #[inline]
    pub(crate) fn dropped(&mut self, why: DropReason, n: u64) {
        self.messages_dropped += n;
        self.traffic.dropped_by_reason[why as usize] += n;
    }
}

/// How often the periodic scan (keep alive, connect timeout, session expiry, will delay,
/// freeing closed connections) runs. The scan is O(connections + sessions): at 15,000
/// connections that is tens of microseconds every half second. A timer wheel would make it
/// O(expiring); not needed yet.
pub(crate) const SCAN_INTERVAL: Duration = Duration::from_millis(500);

/// How long a closed connection's queue stays readable by the io layer after
/// [`IoAction::Close`] before the core frees it.
pub(crate) const CLOSING_LINGER: Duration = Duration::from_secs(1);

/// Why the core closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseKind {
    /// The client sent DISCONNECT: no will (unless 5.0 reason 0x04, handled by the caller).
    Normal,
    /// A protocol violation, decode error, keep-alive timeout: the will is published.
    /// 5.0 connections get a DISCONNECT with `reason` first, if given.
    Abnormal(Option<ReasonCode>),
    /// The socket is already gone: abnormal, nothing can be sent, and the io layer needs
    /// no `Close` action.
    SocketGone,
}

/// Everything one shard owns: connections, sessions (homed here by client id), the local
/// subscription trie, the replicated routing index and retained store, counters.
///
/// Shard-local: one per shard, never shared.
#[derive(Debug)]
pub struct ShardCore {
    pub(crate) shard: ShardId,
    pub(crate) config: CoreConfig,
    pub(crate) topic_limits: TopicLimits,
    pub(crate) conns: ConnTable,
    pub(crate) sessions: SessionTable,
    /// This shard's sessions' subscriptions.
    pub(crate) trie: SubscriptionTrie<SessionSlot, SubOptions>,
    /// Replica of the filter → shards index (including this shard's own entries).
    pub(crate) routes: RouteIndex,
    /// Replica of the broker's retained messages.
    pub(crate) retained: RetainedStore<Arc<Message>>,
    /// The shared-subscription groups this shard owns (`routing/shared.rs`).
    pub(crate) shared: SharedGroups,
    pub(crate) actions: VecDeque<IoAction>,
    pub(crate) mesh_out: Vec<(ShardId, MeshMsg)>,
    pub(crate) gate: SubAckGate,
    pub(crate) fanout: Fanout,
    /// Retained messages still to send after SUBACKs (`routing/replay.rs`).
    pub(crate) replays: crate::core::routing::replay::Replays,
    pub(crate) stats: LocalStats,
    /// Counters only metrics read (`admin/mod.rs`).
    pub(crate) ops: crate::core::admin::OpsCounters,
    /// Warnings about misbehaving clients left in this window (`admin/conn_log.rs`).
    pub(crate) warn_budget: crate::core::admin::conn_log::LogBudget,
    /// Counter for assigned client identifiers.
    pub(crate) assigned_ids: u64,
    pub(crate) next_scan_at: Option<Instant>,
    pub(crate) next_sys_at: Option<Instant>,
    /// Persistence (`persist/mod.rs`): `None` when everything stays in memory.
    pub(crate) persist: Option<Box<crate::core::persist::Persist>>,
    /// Nonces of authentication exchanges.
    pub(crate) auth_rng: AuthRng,
    /// Plain-password checks: outcome cache and PBKDF2 budget (`auth/plain.rs`).
    pub(crate) password_checks: PasswordChecks,
    /// New connections per source address (`policy/quota.rs`).
    pub(crate) connect_rates: crate::core::policy::quota::ConnectRates,
    /// PUBLISH rate buckets of connections that published, when a publish quota is
    /// configured (`policy/quota.rs`); an entry goes when its connection starts closing.
    pub(crate) publish_rates:
        crate::core::hash::Map<ConnId, crate::core::policy::quota::PublishRate>,
    mesh_backlog: usize,
    /// Queued outgoing bytes and the back-pressure they drive (`delivery/tx_budget.rs`).
    pub(crate) tx_budget: Rc<TxBudget>,
    /// The pause state last told to the other shards (`MeshMsg::Pressure`).
    pressure_sent: bool,
    /// Which other shards said their publishers must wait.
    peers_paused: Vec<bool>,
    /// Per other shard: bytes (`mesh_cost`) of messages routed there and not yet credited.
    mesh_inflight: Vec<u64>,
    /// Per other shard: bytes of its messages handled here and not yet credited back.
    mesh_credit_due: Vec<u64>,
    /// The shard's side of the cluster (`cluster/shard_side.rs`); `None` for a single node.
    pub(crate) cluster: Option<Box<crate::core::cluster::shard_side::ClusterState>>,
    /// The running bridges' counters (`$SYS/broker/bridges/…`): the configuration's at
    /// start, replaced when the admin API adds or removes one (`set_bridges`).
    pub(crate) bridges: Vec<Arc<BridgeCounters>>,
}

impl ShardCore {
    /// A new, empty shard.
    pub fn new(shard: ShardId, config: CoreConfig) -> ShardCore {
        assert!(shard.0 < config.shard_count, "{shard} of {} shards", config.shard_count);
        // Before any table is built: they take their keys from here.
        crate::core::hash::use_keys(config.hash_keys);
        let next_sys_at = (shard.0 == 0)
            .then(|| config.started_at + Duration::from_secs(config.sys_interval_secs.into()));
        ShardCore {
            shard,
            bridges: config.stats.bridges.clone(),
            topic_limits: TopicLimits::from(&config.limits),
            conns: ConnTable::default(),
            sessions: SessionTable::default(),
            trie: SubscriptionTrie::new(),
            routes: RouteIndex::new(config.shard_count),
            retained: RetainedStore::new(
                config.limits.retained_messages_max as usize,
                usize::try_from(config.limits.retained_bytes_max).unwrap_or(usize::MAX),
                |topic, m| topic.len() + m.payload.len(),
            ),
            shared: SharedGroups::default(),
            actions: VecDeque::new(),
            mesh_out: Vec::new(),
            gate: SubAckGate::new(config.shard_count),
            fanout: Fanout::default(),
            replays: Default::default(),
            stats: LocalStats::default(),
            ops: Default::default(),
            warn_budget: Default::default(),
            assigned_ids: 0,
            next_scan_at: None,
            next_sys_at,
            persist: None,
            auth_rng: AuthRng::new(config.auth.rng_seed, shard.0),
            password_checks: PasswordChecks::new(
                &config.auth.rng_seed,
                shard.0,
                config.auth.password_rounds_per_sec,
            )
            .with_per_key_share(crate::core::auth::plain::PER_KEY_SHARE),
            connect_rates: Default::default(),
            publish_rates: Default::default(),
            mesh_backlog: 0,
            tx_budget: Rc::new(TxBudget::new(&config.limits)),
            pressure_sent: false,
            peers_paused: vec![false; usize::from(config.shard_count)],
            mesh_inflight: vec![0; usize::from(config.shard_count)],
            mesh_credit_due: vec![0; usize::from(config.shard_count)],
            cluster: config
                .cluster
                .as_ref()
                .map(|c| Box::new(crate::core::cluster::shard_side::ClusterState::new(c))),
            config,
        }
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

    /// Registers a new socket whose first packet will be CONNECT, with its network identity
    /// (listener, transport, remote address, certificate subject). `None` when the shard's
    /// connection limit is reached (the io layer then refuses it).
    pub fn open_connection(&mut self, info: ConnInfo, now: Instant) -> Option<ConnId> {
        if self.conns.len() >= self.config.limits.connections_per_shard_max as usize {
            return None;
        }
        if let (Some(rate), Some(remote)) =
            (self.config.auth.quotas.connections_per_sec_per_address, info.remote)
        {
            // `policy/quota.rs`: closed before CONNECT is read.
            if !self.connect_rates.admit(remote.ip(), rate, now) {
                self.stats.denials[Denial::ConnectRate as usize] += 1;
                tracing::debug!(shard = %self.shard, %remote, "denied: connections_per_sec_per_address");
                return None;
            }
        }
        self.next_scan_at.get_or_insert(now + SCAN_INTERVAL);
        Some(self.conns.insert(Conn::new(now, self.tx_budget.clone(), info)))
    }

    /// The network identity `conn` was opened with, while it is open.
    pub fn conn_info(&self, conn: ConnId) -> Option<&ConnInfo> {
        Some(&self.conns.get(conn)?.info)
    }

    /// The protocol version negotiated on `conn` (its CONNECT's), if known: the version the
    /// io layer passes to the decoder.
    pub fn protocol_version(&self, conn: ConnId) -> Option<ProtocolVersion> {
        self.conns.get(conn)?.version
    }

    /// Timers: keep alive, will delay, session expiry, `$SYS` publication.
    pub fn handle_tick(&mut self, now: Instant) {
        self.run_timers(now);
    }

    /// When [`ShardCore::handle_tick`] next has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers_deadline()
    }

    /// The transmit queue of `conn`, if it is open.
    pub fn tx(&mut self, conn: ConnId) -> Option<&mut TxQueue> {
        Some(&mut self.conns.get_mut(conn)?.tx)
    }

    /// The next action for the io layer.
    pub fn poll_action(&mut self) -> Option<IoAction> {
        self.actions.pop_front()
    }

    /// Moves the messages for other shards into `out`, in order per destination.
    pub fn drain_mesh_out(&mut self, out: &mut Vec<(ShardId, MeshMsg)>) {
        out.append(&mut self.mesh_out);
    }

    /// The io layer reports that `n` messages for other shards could not be pushed onto full
    /// rings and are held in its outbox: past `mesh_outbox_messages_max` the core asks the io
    /// layer to stop reading from publishers ([`ShardCore::reading_paused`]).
    pub fn set_mesh_backlog(&mut self, n_messages: usize) {
        self.mesh_backlog = n_messages;
    }

    /// True while this shard must take no PUBLISH from its clients: the io layer stops
    /// reading a socket whose next packet is a PUBLISH (TCP back-pressure), and keeps
    /// reading the others (acknowledgements, PINGREQ, …). Paused while this shard's queued
    /// outgoing bytes are past their marks (`delivery/tx_budget.rs`), while another shard says the
    /// same of its own (`MeshMsg::Pressure`: messages routed there would fill it), or while
    /// the io layer holds more than `mesh_outbox_messages_max` messages for full rings.
    pub fn publishing_paused(&self) -> bool {
        let window = self.config.limits.mesh_inflight_bytes_max;
        self.tx_budget.paused()
            || self.peers_paused.iter().any(|p| *p)
            || self.mesh_inflight.iter().any(|b| *b >= window)
            || self.mesh_backlog >= self.config.limits.mesh_outbox_messages_max as usize
            || self.cluster_paused()
    }

    /// True while this node's subscribers' queues hold publishers back (this shard's budget,
    /// or another shard's, `MeshMsg::Pressure`): the cluster runtime then stops handing this
    /// shard other nodes' messages (`ClusterCounters::shards_paused`).
    pub(crate) fn subscribers_paused(&self) -> bool {
        self.tx_budget.paused() || self.peers_paused.iter().any(|p| *p)
    }

    /// True when this shard's own pause state differs from what the other shards were
    /// told: [`ShardCore::sync_pressure`] has a message to send.
    pub fn pressure_dirty(&self) -> bool {
        self.config.shard_count > 1 && self.tx_budget.paused() != self.pressure_sent
    }

    /// The io layer holds `conn`'s next packet, a PUBLISH, while publishing is paused: the
    /// client sent it, so it counts as received for keep alive.
    pub fn note_held(&mut self, conn: ConnId, now: Instant) {
        if let Some(c) = self.conns.get_mut(conn) {
            if matches!(c.phase, Phase::Connected(_)) {
                c.last_rx = now;
            }
        }
    }

    /// Tells the other shards when this shard's own pause state changed, so their publishers
    /// wait too (cross-shard back-pressure: their messages would fill this shard's queues).
    pub fn sync_pressure(&mut self) {
        if !self.pressure_dirty() {
            return;
        }
        let paused = self.tx_budget.paused();
        self.pressure_sent = paused;
        for peer in 0..self.config.shard_count {
            if peer != self.shard.0 {
                self.mesh_out.push((ShardId(peer), MeshMsg::Pressure { paused }));
            }
        }
    }

    /// Another shard's pause state (`MeshMsg::Pressure`).
    pub(crate) fn set_peer_paused(&mut self, from: ShardId, paused: bool) {
        if let Some(p) = self.peers_paused.get_mut(usize::from(from.0)) {
            *p = paused;
        }
    }

    /// A message was routed to `to`: it counts against the window until credited.
    pub(crate) fn note_routed(&mut self, to: ShardId, m: &Message) {
        if let Some(b) = self.mesh_inflight.get_mut(usize::from(to.0)) {
            *b += crate::core::mesh::mesh_cost(m);
        }
    }

    /// A message routed here by `from` was handled: credit it back in batches of an eighth
    /// of the window (a remainder below that stays due; it never fills the window).
    pub(crate) fn credit_routed(&mut self, from: ShardId, m: &Message) {
        let batch = (self.config.limits.mesh_inflight_bytes_max / 8).max(1);
        let Some(due) = self.mesh_credit_due.get_mut(usize::from(from.0)) else { return };
        *due += crate::core::mesh::mesh_cost(m);
        if *due >= batch {
            let bytes = std::mem::take(due);
            self.mesh_out.push((from, MeshMsg::Credit { bytes }));
        }
    }

    /// `from` handled `bytes` of the messages routed to it.
    pub(crate) fn handle_credit(&mut self, from: ShardId, bytes: u64) {
        if let Some(b) = self.mesh_inflight.get_mut(usize::from(from.0)) {
            debug_assert!(*b >= bytes, "credit {bytes} for {b} in flight");
            *b = b.saturating_sub(bytes);
        }
    }

    /// Bytes routed to other shards and not yet credited back, all peers together.
    pub(crate) fn mesh_inflight_total(&self) -> u64 {
        self.mesh_inflight.iter().sum()
    }

    /// The shard's transmit budget (for counters).
    pub fn tx_budget(&self) -> &TxBudget {
        &self.tx_budget
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    // ---- shared helpers for the other core files ----

    /// Encodes `packet` onto `conn`'s queue in its version (3.1.1 before CONNECT).
    pub(crate) fn send_packet(&mut self, conn: ConnId, packet: &Packet) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        let version = c.version.unwrap_or(ProtocolVersion::V3_1_1);
        encode_onto(&mut c.tx, packet, version, conn, &mut self.actions);
    }

    /// Queues a DISCONNECT with `reason` if `conn` speaks 5.0 (3.1.1 has no server
    /// DISCONNECT).
    pub(crate) fn send_disconnect_v5(&mut self, conn: ConnId, reason: ReasonCode) {
        if self.conns.get(conn).is_some_and(Conn::is_v5) {
            let d = Disconnect { reason, properties: None };
            self.send_packet(conn, &Packet::Disconnect(d));
        }
    }

    /// Ends `conn`: detaches its session (publishing or delaying the will on an abnormal
    /// close, ending the session if it does not outlive the connection) and tells the io
    /// layer to close (unless the socket is already gone, then the entry is freed now).
    pub(crate) fn close_conn(&mut self, conn: ConnId, kind: CloseKind, now: Instant) {
        if !self.publish_rates.is_empty() {
            self.publish_rates.remove(&conn);
        }
        let Some(c) = self.conns.get(conn) else { return };
        let (phase, version, listener) = (c.phase, c.version, c.info.listener);
        if phase == Phase::AwaitingConnect {
            self.cluster_held_closed(conn);
        }
        if phase == Phase::Closing {
            if kind == CloseKind::SocketGone {
                self.conns.remove(conn);
            }
            return;
        }
        if let CloseKind::Abnormal(Some(reason)) = kind {
            if matches!(phase, Phase::Connected(_)) {
                self.send_disconnect_v5(conn, reason);
            }
        }
        if let Phase::Connected(slot) = phase {
            self.cluster_disconnected(conn);
            self.stats.clients_connected -= 1;
            self.config.auth.quotas.release_connection(listener);
            let why = match kind {
                CloseKind::Normal => DisconnectReason::Client,
                CloseKind::SocketGone => DisconnectReason::ConnectionLost,
                CloseKind::Abnormal(Some(reason)) => DisconnectReason::Server(reason.0),
                CloseKind::Abnormal(None) => DisconnectReason::ServerOther,
            };
            self.ops.disconnected(version, listener, why);
            self.log_disconnect(conn, why, now);
            let publish_will = kind != CloseKind::Normal;
            self.detach_session(slot, publish_will, now);
        }
        if kind == CloseKind::SocketGone {
            self.conns.remove(conn);
            return;
        }
        let c = self.conns.get_mut(conn).expect("checked above");
        c.phase = Phase::Closing;
        c.last_rx = now;
        self.actions.push_back(IoAction::Close(conn));
    }

    /// Milliseconds since the broker started (message timestamps).
    pub(crate) fn uptime_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.config.started_at).as_millis() as u64
    }

    /// Stores this shard's counters into its [`GlobalStats`] slot.
    pub(crate) fn export_stats(&self) {
        let slot = &self.config.stats.shards[usize::from(self.shard.0)];
        slot.clients_connected.store(self.stats.clients_connected, Ordering::Relaxed);
        slot.messages_received.store(self.stats.messages_received, Ordering::Relaxed);
        slot.messages_sent.store(self.stats.messages_sent, Ordering::Relaxed);
        slot.messages_dropped.store(self.stats.messages_dropped, Ordering::Relaxed);
        let b = &self.tx_budget;
        slot.clients_slow.store(b.slow_conns(), Ordering::Relaxed);
        slot.tx_bytes_queued.store(b.bytes() + b.slow_bytes(), Ordering::Relaxed);
        slot.publish_pauses.store(b.pauses(), Ordering::Relaxed);
        for (to, from) in slot.denials.iter().zip(self.stats.denials) {
            to.store(from, Ordering::Relaxed);
        }
        let t = &self.stats.traffic;
        for (to, from) in slot.sent_messages_by_qos.iter().zip(t.sent_messages_by_qos) {
            to.store(from, Ordering::Relaxed);
        }
        for (to, from) in slot.sent_bytes_by_qos.iter().zip(t.sent_bytes_by_qos) {
            to.store(from, Ordering::Relaxed);
        }
        for (to, from) in slot.dropped_by_reason.iter().zip(t.dropped_by_reason) {
            to.store(from, Ordering::Relaxed);
        }
    }
}

/// Encodes `packet` onto `tx`, asking for a flush if the queue was empty. Shared by the
/// control-packet paths; PUBLISH fan-out uses the per-layout header cache instead.
pub(crate) fn encode_onto(
    tx: &mut TxQueue,
    packet: &Packet,
    version: ProtocolVersion,
    conn: ConnId,
    actions: &mut VecDeque<IoAction>,
) {
    let was_empty = tx.is_empty();
    let tail = tx.tail_mut();
    let before = tail.len();
    match encode(packet, version, tail) {
        Ok(()) => {
            let n = tail.len() - before;
            tx.note_appended(n);
        }
        Err(e) => {
            // Our own packets are bounded far below the protocol maximum.
            tail.truncate(before);
            debug_assert!(false, "encoding {:?} failed: {e}", packet.packet_type());
        }
    }
    if was_empty && !tx.is_empty() {
        actions.push_back(IoAction::Flush(conn));
    }
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
