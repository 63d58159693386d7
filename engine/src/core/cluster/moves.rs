//! A persistent session moving between nodes, the shards' side (ARCHITECTURE.md "Persistent
//! sessions move (two-phase)"; the commit and handover are in `handover.rs`).
//!
//! A CONNECT with Clean Start = 0 (3.1.1: Clean Session = 0) for a client id that has no
//! session on this node is held while the node asks every other node for the session
//! ([`ClusterOut::Claim`]). A node that has it ends its connection (5.0 DISCONNECT 0x8E,
//! Session taken over [MQTT-3.1.4-3]) and answers with a snapshot of its subscriptions and
//! messages ([`ClusterOut::Export`]), keeping the session offline (still routed to, still
//! queueing) until this node commits. When every live node has answered
//! ([`ClusterIn::Claimed`]), this node re-creates the session offline, waits until every
//! shard and node routes it here, commits, and answers the CONNECT (Session Present 1
//! [MQTT-3.2.2-2]) once the exporter handed over what arrived since its snapshot. Packets
//! the client sent behind its CONNECT wait with it (bounded).
//!
//! What moves: subscriptions (options, Subscription Identifier), the sent-but-unacknowledged
//! QoS 1 and QoS 2 messages (before PUBREC) and the queue, in that order; they are sent again
//! under new packet ids (a QoS 1 duplicate is allowed; a QoS 2 message whose PUBREC was lost
//! on the way may arrive twice). What does not: the packet ids of messages past PUBREC (the
//! client has them; its PUBCOMP finds no id and is answered as such) and inbound QoS 2 ids
//! awaiting PUBREL (the message was routed on the old node; the client's PUBREL is answered
//! 0x92). Shard-local.

use std::sync::Arc;
use std::time::Instant;

use shardmq_codec::{ByteStr, Connect, Packet, QoS, ReasonCode, SubscriptionOptions};

use crate::core::auth::exchange::AuthOk;
use crate::core::ids::{ConnId, SessionSlot};
use crate::core::mesh::Message;
use crate::core::routing::shared::{is_shared, is_valid_shared};
use crate::core::routing::subscribe::SubOptions;
use crate::core::routing::topic::split_shared;
use crate::core::sessions::session::{Awaiting, Queued, Session};
use crate::core::shard::{CloseKind, ShardCore};
use shardmq_codec::topic::validate_topic_filter;

use super::{ClaimOutcome, ClusterOut, NodeId};

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
    pub(crate) connect: Connect,
    pub(crate) auth: Option<AuthOk>,
    /// Packets the client sent after the CONNECT.
    pub(crate) packets: Vec<Packet>,
    /// The connection closed while waiting (its id may be reused: never answer it then).
    pub(crate) closed: bool,
    /// Payload and topic bytes of the PUBLISH packets in `packets`.
    held_bytes: usize,
}

/// A session being imported: its snapshot is here (offline), waiting for the route
/// acknowledgements, then for each exporter's handover (`handover.rs`).
#[derive(Debug)]
pub(crate) struct Import {
    /// The CONNECT it is for (`None`: a session pulled after a kick, `ClusterIn::Offer`).
    pub(crate) held: Option<HeldConnect>,
    /// The client id.
    pub(crate) client_id: ByteStr,
    /// (mesh delta seq, cluster seq) to be acknowledged before the commit; `None` once
    /// committed.
    pub(crate) wait: Option<(u64, u64)>,
    /// Exporters whose handover is awaited.
    pub(crate) exporters: Vec<NodeId>,
    /// An exporter handed over, or did not say (this copy is kept).
    pub(crate) keep: bool,
    /// Where handed-over messages go in the (offline) session's queue (a position in the
    /// queue, not counting its inflight window): after the snapshot, before what reached
    /// this copy directly.
    pub(crate) insert_at: usize,
}

/// A session this shard is exporting: offline, routed to, queueing, until the importer
/// commits or the export is aborted.
#[derive(Debug, Clone)]
pub(crate) struct Exporting {
    /// The importing node, shard and claim token.
    pub(crate) to: (NodeId, u16, u64),
    /// The session's next queue number at the snapshot ([`Session::pin_queue_seq`]): the
    /// tail handed over at the commit is what it queued since. The snapshot held its whole
    /// inflight window, which an offline session never adds to (a connection coming back
    /// here ends the export); messages it drops meanwhile (expired, or the oldest of a full
    /// queue) are dropped, not sent again.
    pub(crate) queued_from: u32,
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
            // A CONNECT for a session here that is exporting takes it back: the export is
            // off (the importer's commit finds the session kept).
            self.cluster_forget_export(&connect.client_id);
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
        c.out.push(ClusterOut::Claim { client_id, token, only: None, discard: false });
        None
    }

    /// Every held CONNECT: claims waiting for answers and imports waiting to finish.
    fn held_connects(&mut self) -> impl Iterator<Item = &mut HeldConnect> + '_ {
        let c = self.cluster.as_deref_mut();
        c.into_iter().flat_map(|c| {
            let imports = c.imports.iter_mut().filter_map(|(_, i)| i.held.as_mut());
            c.held.values_mut().chain(imports)
        })
    }

    /// A newer CONNECT for `client_id` arrived: an older one still waiting for its session
    /// is dropped (closed without CONNACK, as a takeover would close it [MQTT-3.1.4-3]), so
    /// it never takes over from the newer one when its session arrives.
    pub(crate) fn cluster_supersede_held(&mut self, client_id: &str, now: Instant) {
        let older: Vec<ConnId> = self
            .held_connects()
            .filter(|h| !h.closed && h.connect.client_id.as_str() == client_id)
            .map(|h| h.conn)
            .collect();
        for conn in older {
            self.close_conn(conn, CloseKind::Abnormal(None), now);
        }
    }

    /// True if `conn`'s CONNECT waits for its session.
    pub(crate) fn cluster_connect_held(&mut self, conn: ConnId) -> bool {
        self.held_connects().any(|h| h.conn == conn && !h.closed)
    }

    /// `conn` closed: a CONNECT of it that waits is never answered.
    pub(crate) fn cluster_held_closed(&mut self, conn: ConnId) {
        for h in self.held_connects().filter(|h| h.conn == conn) {
            h.closed = true;
        }
    }

    /// A packet behind a held CONNECT: kept for when it is answered (bounded).
    pub(crate) fn cluster_hold_packet(&mut self, conn: ConnId, packet: Packet, now: Instant) {
        let bytes = match &packet {
            Packet::Publish(p) => p.payload.len() + p.topic.len(),
            _ => 0,
        };
        let Some(h) = self.held_connects().find(|h| h.conn == conn && !h.closed) else {
            return;
        };
        if h.packets.len() < HELD_PACKETS_MAX && h.held_bytes + bytes <= HELD_BYTES_MAX {
            h.held_bytes += bytes;
            h.packets.push(packet);
            return;
        }
        tracing::debug!(shard = %self.shard, "too much sent behind a held CONNECT");
        self.close_conn(conn, CloseKind::Abnormal(None), now);
    }

    /// The claim `token` is decided: re-create what the exporters sent (offline) and wait for
    /// the routes (then commit, `handover.rs`); or answer the CONNECT at once when nothing
    /// came; or refuse it when the claim could not be decided.
    pub(crate) fn cluster_claimed(
        &mut self,
        token: u64,
        sessions: Vec<(NodeId, SessionExport)>,
        outcome: ClaimOutcome,
        now: Instant,
    ) {
        let Some(c) = self.cluster.as_deref_mut() else { return };
        let held = c.held.remove(&token);
        let pulled = c.pulls.remove(&token);
        let client_id = match (&held, pulled) {
            (Some(h), _) => ByteStr::from(h.connect.client_id.as_str()),
            (None, Some(id)) => id,
            (None, None) => {
                // The machine aborts what arrives for no claim; nothing to do.
                debug_assert!(sessions.is_empty(), "snapshots for no claim");
                return;
            }
        };
        if held.as_ref().is_some_and(|h| h.closed) && self.newer_claim_of(&client_id) {
            // A newer CONNECT of the client claimed after this one: the exporter gave the
            // session to that claim (its export replaces this one), so nothing is taken here.
            return;
        }
        if outcome != ClaimOutcome::Answered {
            // An asked node may hold the session (or holds one too large to move): nothing is
            // created here, and the client is told to try again (the machine aborted the
            // snapshots that came, so their sessions stay where they are). A refusing CONNACK
            // has Session Present 0 [MQTT-3.2.2-6] (3.1.1: return code 3 [MQTT-3.2.2-4]).
            if let Some(h) = held.filter(|h| !h.closed) {
                let version = h.connect.protocol;
                let reason = if outcome == ClaimOutcome::TooLarge {
                    ReasonCode::QUOTA_EXCEEDED
                } else {
                    ReasonCode::SERVER_UNAVAILABLE
                };
                tracing::info!(shard = %self.shard, %client_id, ?outcome, "a persistent session could not be claimed: CONNECT refused");
                self.refuse_connect(h.conn, version, reason, now);
            }
            return;
        }
        let mut exporters = Vec::new();
        for (node, s) in sessions {
            if s.client_id.as_str() != client_id.as_str() {
                tracing::warn!(shard = %self.shard, client_id = %s.client_id, "a moved session for another client id: dropped");
                continue;
            }
            self.import_session(s, now);
            exporters.push(node);
        }
        if exporters.is_empty() {
            if let Some(h) = held {
                self.answer_held(h, false, now);
            }
            return;
        }
        let insert_at =
            self.sessions.find(&client_id).map_or(0, |slot| self.sessions.get(slot).queue().len());
        let import = Import {
            held,
            client_id,
            wait: Some((self.gate_seq(), self.cluster_seq())),
            exporters,
            keep: false,
            insert_at,
        };
        if let Some(c) = self.cluster.as_deref_mut() {
            c.imports.push((token, import));
        }
        self.release_moved_connects(now);
    }

    /// True if a CONNECT of `client_id` that is still open waits here for its session.
    pub(crate) fn newer_claim_of(&self, client_id: &str) -> bool {
        self.cluster.as_deref().is_some_and(|c| {
            let imports = c.imports.iter().filter_map(|(_, i)| i.held.as_ref());
            c.held
                .values()
                .chain(imports)
                .any(|h| !h.closed && h.connect.client_id.as_str() == client_id)
        })
    }

    /// Commits the imports whose subscriptions every shard and node now routes here.
    pub(crate) fn release_moved_connects(&mut self, _now: Instant) {
        let Some(c) = self.cluster.as_deref() else { return };
        let due: Vec<u64> = c
            .imports
            .iter()
            .filter(|(_, i)| i.wait.is_some_and(|w| self.moved_routes_acked(w)))
            .map(|(t, _)| *t)
            .collect();
        for token in due {
            let c = self.cluster.as_deref_mut().expect("checked");
            let Some((_, import)) = c.imports.iter_mut().find(|(t, _)| *t == token) else {
                continue;
            };
            import.wait = None;
            for to in import.exporters.clone() {
                c.out.push(ClusterOut::Commit { to, token });
            }
        }
    }

    fn moved_routes_acked(&self, (mesh_seq, cluster_seq): (u64, u64)) -> bool {
        self.gate_acked(mesh_seq) && self.cluster_acked(cluster_seq)
    }

    /// Answers a held CONNECT (and the packets behind it), or, if its client left, keeps a
    /// moved session offline.
    pub(crate) fn answer_held(&mut self, held: HeldConnect, moved: bool, now: Instant) {
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

    /// True while `client_id`'s session here is a copy being imported.
    pub(crate) fn cluster_importing(&self, client_id: &str) -> bool {
        self.cluster
            .as_deref()
            .is_some_and(|c| c.imports.iter().any(|(_, i)| i.client_id.as_str() == client_id))
    }

    /// Another node asks for `client_id`'s session: end its connection here and answer with
    /// a snapshot, the session staying here (offline, exporting) until the commit; or, with
    /// `discard`, end the session. Answers `None` when there is no session to give.
    pub(crate) fn cluster_export(
        &mut self,
        from: NodeId,
        shard: u16,
        token: u64,
        client_id: &str,
        discard: bool,
        now: Instant,
    ) {
        let session = if discard {
            self.discard_offered(client_id, now);
            None
        } else if self.cluster_importing(client_id) {
            // A copy on its way here is not this node's to give.
            None
        } else {
            self.snapshot_session(client_id, (from, shard, token), now)
        };
        if let Some(c) = self.cluster.as_deref_mut() {
            c.out.push(ClusterOut::Export {
                to: from,
                shard,
                token,
                session: session.map(Box::new),
            });
        }
    }

    fn snapshot_session(
        &mut self,
        client_id: &str,
        to: (NodeId, u16, u64),
        now: Instant,
    ) -> Option<SessionExport> {
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
        // Its queue numbering goes on until the export ends: the tail is what it queued since.
        let queued_from = self.sessions.get_mut(slot).pin_queue_seq(true);
        let session = self.sessions.get(slot);
        // A copy: the session keeps its messages (and queues more) until the commit.
        let messages = exported_messages(session.inflight().iter(), session.queue().iter());
        let export = SessionExport {
            client_id: ByteStr::from(client_id),
            expiry_secs: session.expiry_secs,
            subs: exported_subs(session),
            messages,
            was_connected,
        };
        let count = export.messages.len();
        if let Some(c) = self.cluster.as_deref_mut() {
            // A newer claim replaces an older one's export (that importer's commit finds the
            // session kept, and drops its copy).
            c.exports.insert(ByteStr::from(client_id), Exporting { to, queued_from });
        }
        tracing::info!(shard = %self.shard, %client_id, messages = count, "session exporting to another node");
        Some(export)
    }

    /// Re-creates a session sent by another node (merged into one already here).
    pub(crate) fn import_session(&mut self, e: SessionExport, now: Instant) {
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
        self.import_messages(slot, e.messages, None, now);
    }

    /// Adds moved messages to the session in `slot`: for an offline session the log does not
    /// hold yet, into its queue at `at` (the end if `None`) without the queue limit (they
    /// were accepted on the other node), its inflight window untouched; otherwise delivered
    /// as new messages.
    pub(crate) fn import_messages(
        &mut self,
        slot: SessionSlot,
        messages: Vec<ExportedMsg>,
        at: Option<usize>,
        now: Instant,
    ) {
        let session = self.sessions.get_mut(slot);
        if session.plog.is_none() && session.conn.is_none() {
            // Into the queue only: messages this session sent and its client has not
            // acknowledged stay in its inflight window, resent first when it comes back.
            let moved = messages.into_iter().map(|m| Queued {
                msg: m.msg,
                qos: m.qos,
                retain: m.retain,
                sub_ids: m.sub_ids,
                group: m.group,
                seq: 0,
            });
            session.insert_moved(at, moved);
            return;
        }
        let now_ms = self.uptime_ms(now);
        for m in messages {
            // The layout cache holds one message's frames.
            self.fanout.layouts.reset();
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
    /// is live here (then what came is merged into it).
    pub(crate) fn import_offline(&mut self, s: SessionExport, now: Instant) {
        let home = Self::home_shard(s.client_id.as_bytes(), self.config.shard_count);
        if home != self.shard {
            return;
        }
        let client_id = s.client_id.clone();
        self.import_session(s, now);
        if let Some(slot) = self.sessions.find(&client_id) {
            self.detach_imported(slot, now);
        }
    }

    /// A moved session whose client left before it arrived: offline, expiring as usual.
    pub(crate) fn detach_imported(&mut self, slot: SessionSlot, now: Instant) {
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

/// A session's subscriptions as they travel.
pub(crate) fn exported_subs(session: &Session) -> Vec<ExportedSub> {
    session
        .subs
        .iter()
        .map(|(filter, e)| ExportedSub { filter: filter.clone(), opts: e.opts, sub_id: e.id })
        .collect()
}

/// The messages of a session's backlog to send again: unacknowledged ones before PUBREC,
/// then the queue.
pub(crate) fn exported_messages<'a>(
    inflight: impl Iterator<Item = &'a crate::core::sessions::session::Inflight>,
    queued: impl Iterator<Item = &'a Queued>,
) -> Vec<ExportedMsg> {
    let sent = inflight.filter(|i| i.state != Awaiting::PubComp).map(|i| ExportedMsg {
        msg: i.msg.clone(),
        qos: i.qos,
        retain: i.retain,
        sub_ids: i.sub_ids.clone(),
        group: i.group.clone(),
    });
    let waiting = queued.map(|q| ExportedMsg {
        msg: q.msg.clone(),
        qos: q.qos,
        retain: q.retain,
        sub_ids: q.sub_ids.clone(),
        group: q.group.clone(),
    });
    sent.chain(waiting).collect()
}
