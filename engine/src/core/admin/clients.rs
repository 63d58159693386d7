//! The admin API's view of a shard's clients (the sessions homed here): a page of them, one
//! in detail, and kicking one (`DELETE /api/v1/clients/{id}`).

use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use shardmq_codec::{ProtocolVersion, ReasonCode};

use crate::core::ids::SessionSlot;
use crate::core::sessions::conn::Phase;
use crate::core::sessions::session::Session;
use crate::core::shard::{CloseKind, ShardCore};

/// Which clients to list: ids after `after` (exclusive) in byte order, at most `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientQuery {
    /// Only ids starting with this.
    pub prefix: Option<String>,
    /// Only clients authenticated as this user.
    pub user: Option<String>,
    /// Only ids greater than this (the previous page's last id).
    pub after: Option<String>,
    /// Most clients returned.
    pub limit: usize,
}

/// One client, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSummary {
    /// The client identifier.
    pub client_id: String,
    /// Its home shard.
    pub shard: u16,
    /// Whether a connection is attached.
    pub connected: bool,
    /// `3.1`, `3.1.1` or `5.0` while connected.
    pub protocol: Option<&'static str>,
    /// The client's address while connected.
    pub remote: Option<String>,
    /// The listener it connected on (index into the configuration's listener list).
    pub listener: Option<u16>,
    /// The user its session belongs to (the CONNECT's user name, or the certificate's CN with
    /// identity-as-username), when authentication gave one.
    pub user: Option<String>,
    /// Subscriptions held.
    pub subscriptions: usize,
    /// Messages waiting in its queue.
    pub queued_messages: usize,
    /// Outgoing QoS 1/2 messages not yet acknowledged.
    pub inflight: usize,
    /// When the connection's CONNECT was accepted, while connected (to the second: at most
    /// one second early).
    pub connected_since: Option<Instant>,
    /// When its last connection ended, while offline: its expiry deadline less its Session
    /// Expiry Interval (after a restart, as the log's deadline tells; for a session moved
    /// here from another node, when it arrived).
    pub disconnected_at: Option<Instant>,
}

/// One subscription of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// The filter as sent (`$share/GROUP/…` for a shared subscription).
    pub filter: String,
    /// Maximum QoS granted.
    pub qos: u8,
    /// No Local, Retain As Published, Retain Handling (5.0).
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    /// Subscription Identifier, if one was given.
    pub id: Option<u32>,
}

/// One client in detail (`GET /api/v1/clients/{id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientDetail {
    /// What the list shows.
    pub summary: ClientSummary,
    /// Its subscriptions.
    pub subscriptions: Vec<SubscriptionInfo>,
    /// Bytes of its queued messages.
    pub queued_bytes: u64,
    /// Session Expiry Interval in force.
    pub session_expiry_secs: u32,
    /// Keep alive granted, while connected.
    pub keep_alive_secs: Option<u16>,
    /// Bytes waiting in its transmit queue, while connected.
    pub tx_queued_bytes: Option<u64>,
}

/// What kicking a client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickOutcome {
    /// No session with that id on this shard.
    NotFound,
    /// Its connection is being closed (5.0: DISCONNECT 0x98 first); `session_ended` when the
    /// session is gone too.
    Disconnected {
        /// The session ended as well.
        session_ended: bool,
    },
    /// Not connected: the (offline) session was ended.
    SessionEnded,
    /// Not connected, and the session was kept (`discard_session` was false).
    NotConnected,
}

/// A version's label.
pub fn protocol_label(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V3_1 => "3.1",
        ProtocolVersion::V3_1_1 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

impl ShardCore {
    fn summary(&self, slot: SessionSlot, s: &Session) -> ClientSummary {
        let conn = s.conn.and_then(|id| self.conns.get(id).map(|c| (id, c)));
        let connected = conn.is_some_and(|(_, c)| matches!(c.phase, Phase::Connected(_)));
        ClientSummary {
            client_id: s.client_id.to_string(),
            shard: self.shard.0,
            connected,
            protocol: conn.and_then(|(_, c)| c.version).map(protocol_label),
            remote: conn.and_then(|(_, c)| c.info.remote).map(|a| a.to_string()),
            listener: conn.map(|(_, c)| c.info.listener),
            user: self.sessions.user(slot).map(str::to_owned),
            subscriptions: s.subs.len(),
            queued_messages: s.queue().len(),
            inflight: s.inflight().len(),
            connected_since: conn.filter(|_| connected).map(|(_, c)| {
                self.config.started_at + Duration::from_secs(c.connected_at_secs.into())
            }),
            // The deadline is set when the connection ends: that moment plus the interval.
            disconnected_at: s
                .expires_at
                .filter(|_| !connected)
                .and_then(|t| t.checked_sub(Duration::from_secs(s.expiry_secs.into()))),
        }
    }

    /// A page of this shard's clients, in client id order. O(sessions × log limit).
    pub fn admin_list_clients(&self, q: &ClientQuery) -> Vec<ClientSummary> {
        let mut slots = Vec::new();
        self.sessions.slots(&mut slots);
        // The `limit` smallest matching ids: a max-heap that drops its largest.
        let mut best: BinaryHeap<(&str, u32)> = BinaryHeap::with_capacity(q.limit + 1);
        for slot in slots {
            let Some(s) = self.sessions.try_get(slot) else { continue };
            let id = &*s.client_id;
            if q.after.as_deref().is_some_and(|a| id <= a)
                || q.prefix.as_deref().is_some_and(|p| !id.starts_with(p))
            {
                continue;
            }
            if q.user.as_deref().is_some_and(|u| self.sessions.user(slot) != Some(u)) {
                continue;
            }
            if best.len() == q.limit {
                match best.peek() {
                    Some((top, _)) if id < *top => {
                        best.pop();
                    }
                    _ => continue,
                }
            }
            if q.limit > 0 {
                best.push((id, slot.0));
            }
        }
        let mut page = best.into_sorted_vec();
        page.dedup();
        page.into_iter()
            .map(|(_, slot)| {
                let slot = SessionSlot(slot);
                self.summary(slot, self.sessions.get(slot))
            })
            .collect()
    }

    /// One client in detail, if its session lives here.
    pub fn admin_client(&self, client_id: &str) -> Option<ClientDetail> {
        let slot = self.sessions.find(client_id)?;
        let s = self.sessions.get(slot);
        let subscriptions = s
            .subs
            .iter()
            .map(|(filter, o)| SubscriptionInfo {
                filter: filter.to_string(),
                qos: o.opts.qos as u8,
                no_local: o.opts.no_local,
                retain_as_published: o.opts.retain_as_published,
                retain_handling: o.opts.retain_handling as u8,
                id: o.id,
            })
            .collect();
        let conn = s.conn.and_then(|c| self.conns.get(c));
        Some(ClientDetail {
            summary: self.summary(slot, s),
            subscriptions,
            queued_bytes: s.queue_bytes(),
            session_expiry_secs: s.expiry_secs,
            keep_alive_secs: conn.map(|c| c.keep_alive_secs),
            tx_queued_bytes: conn.map(|c| c.tx.len_bytes() as u64),
        })
    }

    /// Disconnects a client (a 5.0 client gets DISCONNECT 0x98 Administrative action, and
    /// its will is published as for any close it did not ask for); with `discard_session`
    /// its session ends too.
    pub fn admin_kick(
        &mut self,
        client_id: &str,
        discard_session: bool,
        now: Instant,
    ) -> KickOutcome {
        let Some(slot) = self.sessions.find(client_id) else { return KickOutcome::NotFound };
        let conn = self.sessions.get(slot).conn;
        let outcome = match conn {
            Some(conn) => {
                let kind = CloseKind::Abnormal(Some(ReasonCode::ADMINISTRATIVE_ACTION));
                self.close_conn(conn, kind, now);
                KickOutcome::Disconnected { session_ended: false }
            }
            None if discard_session => KickOutcome::SessionEnded,
            None => return KickOutcome::NotConnected,
        };
        if discard_session {
            // The close may have ended it already (a session that ends with its connection).
            if let Some(slot) = self.sessions.find(client_id) {
                self.end_session(slot, now);
            }
        }
        tracing::info!(shard = %self.shard, %client_id, discard_session, "client kicked (admin API)");
        match outcome {
            KickOutcome::Disconnected { .. } => {
                KickOutcome::Disconnected { session_ended: self.sessions.find(client_id).is_none() }
            }
            other => other,
        }
    }
}
