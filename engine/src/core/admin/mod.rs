//! What the operator sees of a shard: counters kept for metrics ([`OpsCounters`]), a snapshot
//! of them ([`CoreStats`]), and the admin API's queries and actions on the shard's clients,
//! subscriptions and retained messages (`clients.rs`, `topics.rs`).
//!
//! Sans-IO like the rest of the core: the io layer's control plane (`io/control.rs`) calls
//! these between two events, and every answer is bounded (a page size, a count limit).

pub mod clients;
pub(crate) mod conn_log;
pub mod topics;

use shardmq_codec::{ProtocolVersion, QoS, ReasonCode};

use crate::core::delivery::drops::Traffic;
use crate::core::policy::denial::Denial;
use crate::core::shard::ShardCore;

/// Counters that only metrics read. Shard-local: one per shard, plain integers (summed
/// across shards at scrape time).
#[derive(Debug, Default)]
pub(crate) struct OpsCounters {
    /// Connected clients by protocol version (3.1, 3.1.1, 5.0).
    pub(crate) connected_by_version: [u64; 3],
    /// Connected clients by listener (index into the configuration's listener list).
    pub(crate) connected_by_listener: Vec<u64>,
    /// CONNECTs accepted since start.
    pub(crate) connects: u64,
    /// PUBLISH packets received from clients, by QoS.
    pub(crate) received_by_qos: [u64; 3],
    /// CONNECTs refused, by CONNACK reason code (5.0 codes; 3.1.1 clients got the
    /// projected return code). Few distinct codes: a short list.
    pub(crate) connects_refused: Vec<(u8, u64)>,
    /// Connected clients that went away, by [`DisconnectReason`].
    pub(crate) disconnects: Vec<(DisconnectReason, u64)>,
    /// Messages and bytes in session queues, as of the last periodic scan.
    pub(crate) queued_messages: u64,
    pub(crate) queued_bytes: u64,
}

/// Why a connected client went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    Client,
    /// The socket closed (or failed) without a DISCONNECT.
    ConnectionLost,
    /// The broker ended it with this reason code (sent as DISCONNECT to 5.0 clients).
    Server(u8),
    /// The broker ended it without a reason code (a decode error on a 3.1.1 connection…).
    ServerOther,
}

impl DisconnectReason {
    /// The metric label value.
    pub fn label(self) -> String {
        match self {
            DisconnectReason::Client => "client".into(),
            DisconnectReason::ConnectionLost => "connection_lost".into(),
            DisconnectReason::Server(code) => format!("0x{code:02x}"),
            DisconnectReason::ServerOther => "server".into(),
        }
    }
}

/// Keeps the `limit` smallest items offered (one page of a listing), building an item only
/// when it would be kept: a listing walks everything but allocates only for its page.
#[derive(Debug)]
pub(crate) struct Smallest<T: Ord> {
    heap: std::collections::BinaryHeap<T>,
    limit: usize,
}

impl<T: Ord> Smallest<T> {
    pub(crate) fn new(limit: usize) -> Smallest<T> {
        Smallest { heap: std::collections::BinaryHeap::with_capacity(limit.min(1024) + 1), limit }
    }

    /// Offers a candidate: `beats(largest)` says whether it is smaller than the largest item
    /// kept; `make` builds it.
    pub(crate) fn offer(&mut self, beats: impl FnOnce(&T) -> bool, make: impl FnOnce() -> T) {
        if self.heap.len() < self.limit {
            self.heap.push(make());
        } else if self.heap.peek().is_some_and(beats) {
            self.heap.pop();
            self.heap.push(make());
        }
    }

    /// The kept items, smallest first.
    pub(crate) fn into_sorted(self) -> Vec<T> {
        self.heap.into_sorted_vec()
    }
}

fn bump<K: PartialEq + Copy>(list: &mut Vec<(K, u64)>, key: K) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => list.push((key, 1)),
    }
}

pub(crate) fn version_index(v: ProtocolVersion) -> usize {
    match v {
        ProtocolVersion::V3_1 => 0,
        ProtocolVersion::V3_1_1 => 1,
        ProtocolVersion::V5 => 2,
    }
}

impl OpsCounters {
    pub(crate) fn connected(&mut self, v: ProtocolVersion, listener: u16) {
        self.connected_by_version[version_index(v)] += 1;
        self.connects += 1;
        let i = usize::from(listener);
        if i >= self.connected_by_listener.len() {
            self.connected_by_listener.resize(i + 1, 0);
        }
        self.connected_by_listener[i] += 1;
    }

    pub(crate) fn disconnected(
        &mut self,
        v: Option<ProtocolVersion>,
        listener: u16,
        why: DisconnectReason,
    ) {
        if let Some(v) = v {
            let n = &mut self.connected_by_version[version_index(v)];
            *n = n.saturating_sub(1);
        }
        if let Some(n) = self.connected_by_listener.get_mut(usize::from(listener)) {
            *n = n.saturating_sub(1);
        }
        bump(&mut self.disconnects, why);
    }

    pub(crate) fn received(&mut self, qos: QoS) {
        self.received_by_qos[qos as usize] += 1;
    }

    pub(crate) fn refused(&mut self, reason: ReasonCode) {
        bump(&mut self.connects_refused, reason.0);
    }
}

/// Reason codes of CONNACKs that count as authentication failures.
pub const AUTH_FAILURE_CODES: [u8; 3] = [
    ReasonCode::BAD_USER_NAME_OR_PASSWORD.0,
    ReasonCode::NOT_AUTHORIZED.0,
    ReasonCode::BAD_AUTHENTICATION_METHOD.0,
];

/// A copy of one shard core's counters and sizes, for metrics and `GET /api/v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Connections the core holds (any phase, including those not yet connected).
    pub connections: u64,
    /// Connected clients.
    pub clients_connected: u64,
    /// Connected clients by protocol version: 3.1, 3.1.1, 5.0.
    pub clients_by_version: [u64; 3],
    /// Connected clients by listener index.
    pub clients_by_listener: Vec<u64>,
    /// Connections marked slow consumers now.
    pub clients_slow: u64,
    /// PUBLISH packets received, by QoS.
    pub messages_received_by_qos: [u64; 3],
    /// PUBLISH packets sent to clients.
    pub messages_sent: u64,
    /// Messages dropped (any reason).
    pub messages_dropped: u64,
    /// PUBLISH packets and bytes sent by QoS, messages dropped by reason.
    pub traffic: Traffic,
    /// CONNECTs accepted.
    pub connects: u64,
    /// CONNECTs refused, by reason code.
    pub connects_refused: Vec<(u8, u64)>,
    /// Disconnections of connected clients, by reason.
    pub disconnects: Vec<(DisconnectReason, u64)>,
    /// Sessions held (online and offline).
    pub sessions: u64,
    /// Subscriptions of this shard's sessions.
    pub subscriptions: u64,
    /// Messages and bytes in session queues (as of the last periodic scan, at most 0.5 s
    /// old).
    pub queued_messages: u64,
    pub queued_bytes: u64,
    /// Bytes waiting in transmit queues.
    pub tx_bytes_queued: u64,
    /// Times this shard paused its publishers.
    pub publish_pauses: u64,
    /// Retained messages and their bytes (this shard's replica: every shard holds all).
    pub retained_messages: u64,
    pub retained_bytes: u64,
    /// Bytes routed to other shards and not yet credited back.
    pub mesh_inflight_bytes: u64,
    /// Filters in this shard's replica of the routing index.
    pub route_filters: u64,
    /// Policy denials by reason, indexed like [`Denial::ALL`].
    pub denials: [u64; Denial::COUNT],
}

impl ShardCore {
    /// A snapshot of the counters. O(1) plus the short refusal/disconnect lists.
    pub fn core_stats(&self) -> CoreStats {
        let ops = &self.ops;
        let b = &self.tx_budget;
        CoreStats {
            connections: self.conns.len() as u64,
            clients_connected: self.stats.clients_connected,
            clients_by_version: ops.connected_by_version,
            clients_by_listener: ops.connected_by_listener.clone(),
            clients_slow: b.slow_conns(),
            messages_received_by_qos: ops.received_by_qos,
            messages_sent: self.stats.messages_sent,
            messages_dropped: self.stats.messages_dropped,
            traffic: self.stats.traffic,
            connects: ops.connects,
            connects_refused: ops.connects_refused.clone(),
            disconnects: ops.disconnects.clone(),
            sessions: self.sessions.len() as u64,
            subscriptions: self.trie.len() as u64,
            queued_messages: ops.queued_messages,
            queued_bytes: ops.queued_bytes,
            tx_bytes_queued: b.bytes() + b.slow_bytes(),
            publish_pauses: b.pauses(),
            retained_messages: self.retained.len() as u64,
            retained_bytes: self.retained.bytes() as u64,
            mesh_inflight_bytes: self.mesh_inflight_total(),
            route_filters: self.routes.len() as u64,
            denials: self.stats.denials,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_keeps_a_page_and_builds_only_what_it_keeps() {
        let mut page = Smallest::new(3);
        let mut built = 0;
        for n in [9, 4, 7, 1, 8, 2, 6] {
            page.offer(
                |top: &u32| n < *top,
                || {
                    built += 1;
                    n
                },
            );
        }
        assert_eq!(page.into_sorted(), vec![1, 2, 4]);
        assert_eq!(built, 5, "9, 4, 7 fill it; 1 and 2 replace; 8 and 6 are not built");
        let mut none = Smallest::new(0);
        none.offer(|_: &u32| true, || 1);
        assert!(none.into_sorted().is_empty());
    }
}
