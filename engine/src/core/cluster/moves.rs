//! A persistent session moving between nodes.
//!
//! A CONNECT with Clean Start = 0 (3.1.1: Clean Session = 0) for a client id that has no
//! session on this node is held while the node asks every other node for the session
//! ([`ClusterOut::Claim`]). A node that has it ends its connection (5.0 DISCONNECT 0x8E,
//! Session taken over [MQTT-3.1.4-3]), takes the session's subscriptions and the messages it
//! holds for the client out, ends it there and answers with them ([`ClusterOut::Export`]).
//! When every live node has answered ([`ClusterIn::Claimed`]), this node re-creates the
//! session (subscriptions as a live SUBSCRIBE makes them, messages queued in their order)
//! and then answers the CONNECT, with Session Present = 1 [MQTT-3.2.2-2]. Packets the
//! client sent behind its CONNECT wait with it (bounded).
//!
//! What moves: subscriptions (options, Subscription Identifier), the sent-but-unacknowledged
//! QoS 1 and QoS 2 messages (before PUBREC) and the queue, in that order; they are sent again
//! under new packet ids (a QoS 1 duplicate is allowed; a QoS 2 message whose PUBREC was lost
//! on the way may arrive twice, the one case where "exactly once" is not kept). What does not:
//! the packet ids of messages past PUBREC (the client has them; its PUBCOMP finds no id and
//! is answered as such) and inbound QoS 2 ids awaiting PUBREL (the message was routed on the
//! old node; the client's PUBREL is answered 0x92). Shard-local.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use shardmq_codec::{ByteStr, Connect, Packet, QoS, SubscriptionOptions};

use crate::core::auth::exchange::AuthOk;
use crate::core::ids::{ConnId, SessionSlot};
use crate::core::mesh::Message;
use crate::core::routing::shared::{is_shared, is_valid_shared};
use crate::core::routing::subscribe::SubOptions;
use crate::core::routing::topic::split_shared;
use crate::core::sessions::session::{Awaiting, Queued, Session};
use crate::core::shard::{CloseKind, ShardCore};
use shardmq_codec::topic::validate_topic_filter;

use super::{ClusterOut, NodeId};

/// Packets a client may send behind a CONNECT that waits for its session; past it the
/// connection is closed.
pub(crate) const HELD_PACKETS_MAX: usize = 64;

/// Bytes of PUBLISH payloads and topics held behind such a CONNECT; past it, closed.
pub(crate) const HELD_BYTES_MAX: usize = 1 << 20;

/// A session on its way to another node.
#[derive(Debug, Clone)]
pub struct SessionExport {
    /// The client id.
    pub client_id: ByteStr,
    /// Its Session Expiry Interval.
    pub expiry_secs: u32,
    /// Its subscriptions.
    pub subs: Vec<ExportedSub>,
    /// The messages it held for the client, in delivery order.
    pub messages: Vec<ExportedMsg>,
    /// Its client was connected on the exporting node (which closed it with 0x8E). Not sent
    /// on the wire.
    pub was_connected: bool,
}

/// One subscription of a moving session.
#[derive(Debug, Clone)]
pub struct ExportedSub {
    /// The filter as subscribed (`$share/...` for a shared one).
    pub filter: ByteStr,
    /// Its options.
    pub opts: SubscriptionOptions,
    /// Its Subscription Identifier.
    pub sub_id: Option<u32>,
}

/// One message a moving session held for its client.
#[derive(Debug, Clone)]
pub struct ExportedMsg {
    /// The message.
    pub msg: Arc<Message>,
    /// The QoS it is delivered at.
    pub qos: QoS,
    /// RETAIN as delivered.
    pub retain: bool,
    /// Its Subscription Identifiers.
    pub sub_ids: Box<[u32]>,
    /// The shared subscription it was delivered for.
    pub group: Option<ByteStr>,
}

/// A CONNECT waiting for its session to arrive from other nodes.
#[derive(Debug)]
pub(crate) struct HeldConnect {
    pub(crate) conn: ConnId,
    connect: Connect,
    auth: Option<AuthOk>,
    /// Packets the client sent after the CONNECT.
    packets: Vec<Packet>,
    /// The connection closed while waiting (its id may be reused: never answer it then).
    closed: bool,
    /// Payload and topic bytes of the PUBLISH packets in `packets`.
    held_bytes: usize,
}

impl ShardCore {
    /// Holds `connect` while the other nodes are asked for its session, if that is needed:
    /// a cluster, Clean Start = 0, a client id, no session of it here. Gives the CONNECT
    /// back if it is not held.
    pub(crate) fn cluster_hold_connect(
        &mut self,
        conn: ConnId,
        connect: Connect,
        auth: Option<AuthOk>,
    ) -> Option<(Connect, Option<AuthOk>)> {
        let wanted = self.cluster.is_some()
            && !connect.clean_start
            && !connect.client_id.is_empty()
            && self.sessions.find(&connect.client_id).is_none();
        if !wanted {
            return Some((connect, auth));
        }
        let c = self.cluster.as_deref_mut().expect("checked");
        c.last_claim += 1;
        let token = c.last_claim;
        let client_id = ByteStr::from(connect.client_id.as_str());
        c.held.insert(
            token,
            HeldConnect { conn, connect, auth, packets: Vec::new(), closed: false, held_bytes: 0 },
        );
        c.out.push(ClusterOut::Claim { client_id, token });
        None
    }

    /// A newer CONNECT for `client_id` arrived: an older one still waiting for its session
    /// is dropped (closed without CONNACK, as a takeover would close it [MQTT-3.1.4-3]), so
    /// it never takes over from the newer one when its session arrives.
    pub(crate) fn cluster_supersede_held(&mut self, client_id: &str, now: Instant) {
        let Some(c) = self.cluster.as_deref() else { return };
        let older: Vec<ConnId> = c
            .held
            .values()
            .chain(c.routing.iter().map(|(_, h)| h))
            .filter(|h| !h.closed && h.connect.client_id.as_str() == client_id)
            .map(|h| h.conn)
            .collect();
        for conn in older {
            self.close_conn(conn, CloseKind::Abnormal(None), now);
        }
    }

    /// True if `conn`'s CONNECT waits for its session.
    pub(crate) fn cluster_connect_held(&self, conn: ConnId) -> bool {
        self.cluster.as_deref().is_some_and(|c| {
            c.held
                .values()
                .chain(c.routing.iter().map(|(_, h)| h))
                .any(|h| h.conn == conn && !h.closed)
        })
    }

    /// `conn` closed: a CONNECT of it that waits is never answered.
    pub(crate) fn cluster_held_closed(&mut self, conn: ConnId) {
        if let Some(c) = self.cluster.as_deref_mut() {
            let routing = c.routing.iter_mut().map(|(_, h)| h);
            for h in c.held.values_mut().chain(routing).filter(|h| h.conn == conn) {
                h.closed = true;
            }
        }
    }

    /// A packet behind a held CONNECT: kept for when it is answered (bounded).
    pub(crate) fn cluster_hold_packet(&mut self, conn: ConnId, packet: Packet, now: Instant) {
        let Some(c) = self.cluster.as_deref_mut() else { return };
        let routing = c.routing.iter_mut().map(|(_, h)| h);
        let held = c.held.values_mut().chain(routing).find(|h| h.conn == conn && !h.closed);
        let Some(h) = held else { return };
        let bytes = match &packet {
            Packet::Publish(p) => p.payload.len() + p.topic.len(),
            _ => 0,
        };
        if h.packets.len() >= HELD_PACKETS_MAX || h.held_bytes + bytes > HELD_BYTES_MAX {
            tracing::debug!(shard = %self.shard, "too much sent behind a held CONNECT");
            self.close_conn(conn, CloseKind::Abnormal(None), now);
            return;
        }
        h.held_bytes += bytes;
        h.packets.push(packet);
    }

    /// The other nodes answered the claim `token`: re-create what they sent, then answer the
    /// CONNECT (if its connection is still there) and the packets behind it.
    pub(crate) fn cluster_claimed(
        &mut self,
        token: u64,
        sessions: Vec<SessionExport>,
        now: Instant,
    ) {
        let Some(c) = self.cluster.as_deref_mut() else { return };
        let Some(held) = c.held.remove(&token) else {
            // No CONNECT waits (a late answer, or the claim was given up): keep what came as
            // an offline session rather than lose it.
            for s in sessions {
                self.import_offline(s, now);
            }
            return;
        };
        let live = |core: &ShardCore, id: &str| {
            core.sessions.find(id).is_some_and(|slot| core.sessions.get(slot).conn.is_some())
        };
        if held.closed && live(self, &held.connect.client_id) {
            // A newer connection of the client has a session here now: it chose it.
            for s in &sessions {
                tracing::warn!(shard = %self.shard, client_id = %s.client_id, "a moved session arrived after a newer connection: dropped");
            }
            return;
        }
        let moved = !sessions.is_empty();
        for s in sessions {
            if s.client_id.as_str() != held.connect.client_id.as_str() {
                tracing::warn!(shard = %self.shard, client_id = %s.client_id, "a moved session for another client id: dropped");
                continue;
            }
            self.import_session(s, now);
        }
        if moved {
            // Answer once every shard and node routes the moved subscriptions here, as a
            // SUBACK waits (a message published after CONNACK must reach them).
            let wait = (self.gate_seq(), self.cluster_seq());
            if !self.moved_routes_acked(wait) {
                if let Some(c) = self.cluster.as_deref_mut() {
                    c.routing.push((wait, held));
                }
                return;
            }
        }
        self.answer_held(held, moved, now);
    }

    /// Answers the held CONNECTs whose moved subscriptions every shard and node now route.
    pub(crate) fn release_moved_connects(&mut self, now: Instant) {
        let Some(c) = self.cluster.as_deref_mut() else { return };
        if c.routing.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut c.routing);
        let mut still = Vec::new();
        for (wait, held) in waiting {
            if self.moved_routes_acked(wait) {
                self.answer_held(held, true, now);
            } else {
                still.push((wait, held));
            }
        }
        if let Some(c) = self.cluster.as_deref_mut() {
            c.routing.extend(still);
        }
    }

    fn moved_routes_acked(&self, (mesh_seq, cluster_seq): (u64, u64)) -> bool {
        self.gate_acked(mesh_seq) && self.cluster_acked(cluster_seq)
    }

    /// Answers a held CONNECT (and the packets behind it), or, if its client left, keeps a
    /// moved session offline.
    fn answer_held(&mut self, held: HeldConnect, moved: bool, now: Instant) {
        if held.closed {
            // The client went away meanwhile: a moved session waits here, offline.
            if moved {
                if let Some(slot) = self.sessions.find(&held.connect.client_id) {
                    self.detach_imported(slot, now);
                }
            }
            return;
        }
        self.accept_connect(held.conn, held.connect, held.auth, now);
        for p in held.packets {
            self.handle_packet(held.conn, p, now);
        }
    }

    /// Another node asks for `client_id`'s session: end its connection here, take it out,
    /// end it, and answer with it (or with nothing).
    pub(crate) fn cluster_export(
        &mut self,
        from: NodeId,
        shard: u16,
        token: u64,
        client_id: &str,
        now: Instant,
    ) {
        let session = self.export_session(client_id, now);
        if let Some(c) = self.cluster.as_deref_mut() {
            c.out.push(ClusterOut::Export {
                to: from,
                shard,
                token,
                session: session.map(Box::new),
            });
        }
    }

    fn export_session(&mut self, client_id: &str, now: Instant) -> Option<SessionExport> {
        let slot = self.sessions.find(client_id)?;
        let was_connected = self.sessions.get(slot).conn.is_some();
        if let Some(conn) = self.sessions.get(slot).conn {
            // [MQTT-3.1.4-3]: the existing connection is closed; 5.0 gets 0x8E first.
            let kind = CloseKind::Abnormal(Some(shardmq_codec::ReasonCode::SESSION_TAKEN_OVER));
            self.close_conn(conn, kind, now);
        }
        // The close may have ended it (a session that ends with its connection).
        let slot = self.sessions.find(client_id)?;
        let session = self.sessions.get_mut(slot);
        // The session goes on elsewhere: a delayed will is not published [MQTT-3.1.3-9]
        // (a will without delay was published at the close, as for a local takeover).
        if session.take_pending_will().is_some() {
            self.persist_will_cleared(slot);
        }
        let session = self.sessions.get_mut(slot);
        let (inflight, queued) = session.take_messages();
        let export = SessionExport {
            client_id: ByteStr::from(client_id),
            expiry_secs: session.expiry_secs,
            subs: session
                .subs
                .iter()
                .map(|(filter, e)| ExportedSub {
                    filter: filter.clone(),
                    opts: e.opts,
                    sub_id: e.id,
                })
                .collect(),
            messages: exported_messages(inflight, queued),
            was_connected,
        };
        self.end_session(slot, now);
        tracing::info!(shard = %self.shard, %client_id, messages = export.messages.len(), "session moved to another node");
        Some(export)
    }

    /// Re-creates a session sent by another node (merged into one already here).
    fn import_session(&mut self, e: SessionExport, now: Instant) {
        let slot = match self.sessions.find(&e.client_id) {
            Some(slot) => slot,
            None => self.sessions.insert(Session::new(&e.client_id)),
        };
        self.sessions.get_mut(slot).expiry_secs = e.expiry_secs;
        let subs_max = self.config.limits.subscriptions_per_session_max as usize;
        for sub in e.subs {
            // Another node's data: checked as a SUBSCRIBE's filter is [MQTT-4.7.1-1..3],
            // [MQTT-4.8.2-1..2], with this broker's topic limits and per-session maximum.
            let shared = is_shared(&sub.filter);
            let valid = if shared {
                is_valid_shared(&sub.filter)
                    && split_shared(&sub.filter)
                        .is_some_and(|(_, f)| validate_topic_filter(f, false).is_ok())
            } else {
                validate_topic_filter(&sub.filter, false).is_ok()
            };
            if !valid || self.topic_limits.check(&sub.filter).is_err() {
                tracing::warn!(shard = %self.shard, filter = %sub.filter, "a moved session's filter is not valid here: dropped");
                continue;
            }
            let session = self.sessions.get_mut(slot);
            if session.sub_position(&sub.filter).is_some() || session.subs.len() >= subs_max {
                continue;
            }
            // A Subscription Identifier of 0 is a protocol error (5.0 §3.8.2.1.2).
            let id = sub.sub_id.filter(|&i| i != 0);
            let entry = SubOptions { opts: sub.opts, id, acl_check: false };
            session.subs.push((sub.filter.clone(), entry));
            self.restore_subscription(slot, sub.filter, entry);
        }
        if self.config.auth.any_acl() {
            self.refresh_acl_coverage(slot);
        }
        let now_ms = self.uptime_ms(now);
        let fresh = self.sessions.get(slot).plog.is_none();
        for m in e.messages {
            if fresh {
                // Accepted on the other node: no queue limit drops them here (the oldest,
                // the unacknowledged ones, would go first).
                let q = Queued {
                    msg: m.msg,
                    qos: m.qos,
                    retain: m.retain,
                    sub_ids: m.sub_ids,
                    group: m.group,
                };
                self.sessions.get_mut(slot).append_moved(q);
                continue;
            }
            self.deliver_to_session(
                slot,
                &m.msg,
                m.qos,
                m.retain,
                &m.sub_ids,
                m.group.as_ref(),
                now_ms,
            );
        }
    }

    /// A moved session no CONNECT waits for: kept offline, unless a connection of its client
    /// is live here (then it is dropped: that connection chose its session).
    fn import_offline(&mut self, s: SessionExport, now: Instant) {
        let home = Self::home_shard(s.client_id.as_bytes(), self.config.shard_count);
        if home != self.shard {
            return;
        }
        if let Some(slot) = self.sessions.find(&s.client_id) {
            if self.sessions.get(slot).conn.is_some() {
                tracing::warn!(shard = %self.shard, client_id = %s.client_id, "a late moved session for a connected client: dropped");
                return;
            }
        }
        let client_id = s.client_id.clone();
        self.import_session(s, now);
        if let Some(slot) = self.sessions.find(&client_id) {
            self.detach_imported(slot, now);
        }
    }

    /// A moved session whose client left before it arrived: offline, expiring as usual.
    fn detach_imported(&mut self, slot: SessionSlot, now: Instant) {
        let s = self.sessions.get_mut(slot);
        if s.conn.is_some() {
            // Another connection of the client took it meanwhile.
            return;
        }
        if s.expiry_secs == 0 {
            self.end_session(slot, now);
            return;
        }
        let expiry = std::time::Duration::from_secs(u64::from(s.expiry_secs));
        s.expires_at = Some(now + expiry);
        self.next_scan_at.get_or_insert(now + crate::core::shard::SCAN_INTERVAL);
        self.persist_connect(slot, true);
    }
}

/// The messages of a session's backlog to send again: unacknowledged ones before PUBREC,
/// then the queue.
fn exported_messages(
    inflight: VecDeque<crate::core::sessions::session::Inflight>,
    queued: VecDeque<crate::core::sessions::session::Queued>,
) -> Vec<ExportedMsg> {
    let sent = inflight.into_iter().filter(|i| i.state != Awaiting::PubComp).map(|i| ExportedMsg {
        msg: i.msg,
        qos: i.qos,
        retain: i.retain,
        sub_ids: i.sub_ids,
        group: i.group,
    });
    let waiting = queued.into_iter().map(|q| ExportedMsg {
        msg: q.msg,
        qos: q.qos,
        retain: q.retain,
        sub_ids: q.sub_ids,
        group: q.group,
    });
    sent.chain(waiting).collect()
}
