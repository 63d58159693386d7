//! The core's inputs, dispatched: packets from clients (by connection phase), decode
//! errors, closed sockets and messages from other shards, each handed to the file that owns
//! the concept (`sessions/connect.rs`, `delivery/publish.rs`, `routing/subscribe.rs`,
//! `routing/shared.rs`, `persist/ack.rs`, …). Split from `shard.rs`, which keeps the state and the
//! output side of the io-facing API.
//!
//! Shard-local: methods of the shard's [`ShardCore`].

use std::time::Instant;

use shardmq_codec::{DecodeError, Packet, PacketType, ProtocolVersion, ReasonCode};

use crate::core::ids::{ConnId, SessionSlot, ShardId};
use crate::core::mesh::MeshMsg;
use crate::core::routing::subscribe::SubOptions;
use crate::core::sessions::conn::Phase;
use crate::core::shard::{CloseKind, ShardCore};

impl ShardCore {
    /// A packet decoded from `conn`.
    pub fn handle_packet(&mut self, conn: ConnId, packet: Packet, now: Instant) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        if c.phase != Phase::Closing {
            // A closing connection's packets are ignored; its `last_rx` times the linger.
            c.last_rx = now;
        }
        let authenticating = c.auth.is_some();
        let phase = c.phase;
        match phase {
            Phase::Closing => {}
            // An enhanced authentication exchange before CONNACK (`auth/exchange.rs`).
            Phase::AwaitingConnect if authenticating => {
                self.handle_packet_authenticating(conn, packet, now)
            }
            // A CONNECT waiting for its session from another node (`cluster/moves.rs`).
            Phase::AwaitingConnect if self.cluster_connect_held(conn) => {
                self.cluster_hold_packet(conn, packet, now)
            }
            Phase::AwaitingConnect => match packet {
                Packet::Connect(connect) => self.handle_connect(conn, *connect, now),
                // [MQTT-3.1.0-1]: the first packet must be CONNECT; close without answering.
                _ => self.close_conn(conn, CloseKind::Abnormal(None), now),
            },
            Phase::Connected(slot) => self.handle_connected_packet(conn, slot, packet, now),
        }
    }

    fn handle_connected_packet(
        &mut self,
        conn: ConnId,
        slot: SessionSlot,
        packet: Packet,
        now: Instant,
    ) {
        match packet {
            Packet::Publish(p) => self.handle_publish(conn, slot, p, now),
            Packet::PubAck(r) => self.handle_puback(slot, r.packet_id, self.uptime_ms(now)),
            Packet::PubRec(r) => self.handle_pubrec(conn, slot, r, self.uptime_ms(now)),
            Packet::PubRel(r) => self.handle_pubrel(conn, slot, r.packet_id, now),
            Packet::PubComp(r) => self.handle_pubcomp(slot, r.packet_id, self.uptime_ms(now)),
            Packet::Subscribe(s) => {
                self.handle_subscribe(conn, slot, s, now);
                self.persist_subscriptions(slot);
            }
            Packet::Unsubscribe(u) => {
                self.handle_unsubscribe(conn, slot, u, now);
                self.persist_subscriptions(slot);
            }
            Packet::PingReq => self.send_packet(conn, &Packet::PingResp),
            Packet::Disconnect(d) => self.handle_disconnect(conn, slot, d, now),
            // Re-authentication (`auth/exchange.rs`).
            Packet::Auth(a) => self.handle_auth_connected(conn, a, now),
            // [MQTT-3.1.0-2]: a second CONNECT is a protocol violation. Packets only a
            // server sends likewise.
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => {
                self.close_conn(conn, CloseKind::Abnormal(Some(ReasonCode::PROTOCOL_ERROR)), now)
            }
        }
    }

    /// `conn` sent bytes that do not decode: answer per spec (5.0: DISCONNECT with the
    /// error's reason code once connected; CONNACK for CONNECT errors) and close it.
    pub fn handle_decode_error(&mut self, conn: ConnId, err: DecodeError, now: Instant) {
        let Some(c) = self.conns.get(conn) else { return };
        match c.phase {
            Phase::Closing => {}
            Phase::AwaitingConnect => {
                if let DecodeError::UnsupportedProtocolLevel { .. } = err {
                    // [MQTT-3.1.2-2] (3.1.1): the server MUST answer CONNACK 0x01 and close;
                    // 5.0 §3.1.2.2 only says it MAY answer 0x84. Level 5 is supported, so an
                    // unsupported level is never 5.0: the 3.1.1 form is the one answer that
                    // satisfies both specifications.
                    self.send_connack_refusal(
                        conn,
                        ProtocolVersion::V3_1_1,
                        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                    );
                } else if err == DecodeError::PayloadFormatInvalid {
                    // Only a 5.0 CONNECT carries a will Payload Format Indicator. 5.0
                    // §3.1.3.2.3: the server MAY validate the will payload and, if it is not of
                    // the indicated format, send CONNACK 0x99 (Payload format invalid).
                    self.send_connack_refusal(
                        conn,
                        ProtocolVersion::V5,
                        ReasonCode::PAYLOAD_FORMAT_INVALID,
                    );
                }
                self.close_conn(conn, CloseKind::Abnormal(None), now);
            }
            Phase::Connected(_) => {
                tracing::debug!(shard = %self.shard, ?conn, %err, "decode error, closing");
                // A code DISCONNECT cannot carry (0x84, from a second CONNECT with an unknown
                // protocol name or level) becomes 0x82: a second CONNECT is a Protocol Error
                // [MQTT-3.1.0-2], and DISCONNECT's reason is one of 5.0 §3.14.2.1's codes.
                let mut reason = err.reason_code();
                if !reason.is_valid_for(PacketType::Disconnect, ProtocolVersion::V5) {
                    reason = ReasonCode::PROTOCOL_ERROR;
                }
                self.close_conn(conn, CloseKind::Abnormal(Some(reason)), now);
            }
        }
    }

    /// The socket of `conn` closed or failed (not after [`IoAction::Close`]): an abnormal
    /// disconnect unless DISCONNECT was received.
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        self.close_conn(conn, CloseKind::SocketGone, now);
    }

    /// A message from shard `from`.
    pub fn handle_mesh(&mut self, from: ShardId, msg: MeshMsg, now: Instant) {
        match msg {
            MeshMsg::Publish(m) => {
                let now_ms = self.uptime_ms(now);
                self.take_copy_refused();
                // `from` asks for this message's durability next: a copy that cannot be
                // kept here fails it, and then no copy is sent here (`delivery/refusal.rs`).
                self.set_answering(true);
                self.deliver_local(&m, now_ms);
                if !self.message_refused() {
                    self.deliver_shared(&m, now_ms);
                }
                self.set_answering(false);
                self.note_copies_refused(from);
                self.credit_routed(from, &m);
            }
            MeshMsg::SubDelta { filter, added, seq } => {
                if added {
                    self.routes.add(&filter, from);
                } else {
                    self.routes.remove(&filter, from);
                }
                self.mesh_out.push((from, MeshMsg::SubDeltaAck { seq }));
            }
            MeshMsg::SubDeltaAck { seq } => self.handle_sub_delta_ack(from, seq, now),
            MeshMsg::Pressure { paused } => self.set_peer_paused(from, paused),
            MeshMsg::Credit { bytes } => self.handle_credit(from, bytes),
            MeshMsg::RetainSet { topic, msg } => {
                debug_assert_eq!(self.retain_owner(&topic), self.shard, "RetainSet to non-owner");
                self.take_copy_refused();
                self.apply_retained_as_owner(topic, msg);
                self.note_copies_refused(from);
            }
            MeshMsg::RetainReplica { topic, msg } => {
                self.apply_retained(topic, msg);
            }
            MeshMsg::SharedJoin { group, session, opts, sub_id, token } => {
                self.join_group(
                    &group,
                    from,
                    session,
                    SubOptions { opts, id: sub_id, acl_check: false },
                );
                self.ack_shared_join(from, token);
            }
            MeshMsg::SharedJoinAck { token } => self.handle_shared_join_ack(token, now),
            MeshMsg::SharedLeave { group, session } => self.leave_group(&group, from, session),
            MeshMsg::SharedDeliver { group, session, msg, qos, retain, sub_id } => {
                let now_ms = self.uptime_ms(now);
                self.take_copy_refused();
                self.handle_shared_deliver(group, session, msg, qos, retain, sub_id, now_ms);
                self.note_copies_refused(from);
            }
            MeshMsg::SharedRequeue { group, msg } => {
                self.handle_shared_requeue(&group, &msg, self.uptime_ms(now));
            }
            MeshMsg::DurableReq { token, chain } => self.handle_durable_req(from, token, chain),
            MeshMsg::DurableAck { token, ok } => self.handle_durable_ack(from, token, ok, now),
            MeshMsg::Adopt { .. } | MeshMsg::Shutdown => {
                debug_assert!(false, "io-layer message handed to the core");
            }
        }
    }
}
