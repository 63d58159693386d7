//! Persistent sessions moving between nodes, the machine's side of the claim (the shards'
//! side is `core/cluster/moves.rs`; the commit and handover are in `moving.rs`; the
//! protocol is in ARCHITECTURE.md "Persistent sessions move (two-phase)"): a shard's
//! `Claim` becomes a `ClaimReq` frame to every live peer whose link is up (or to one peer);
//! each peer's home shard for the client id answers with a snapshot of the session or
//! nothing (`Export` → a `ClaimReply`, the snapshot in pieces); when every asked peer has
//! answered or gone down, or one lost its link or [`CLAIM_TIMEOUT`] passed, the shard gets
//! `Claimed` with what arrived and how the claim ended. A session travels as the body
//! [`encode_session`] writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use shardmq_codec::{ByteStr, Limits, Packet, PacketId, ProtocolVersion, Publish, QoS};

use crate::core::cluster::{
    ClaimOutcome, ClusterIn, ExportedMsg, ExportedSub, NodeId, SessionExport,
    SESSION_MOVE_BYTES_MAX,
};
use crate::core::ids::ShardId;
use crate::core::persist::restore::options_from_byte;
use crate::core::shard::ShardCore;

use super::moving::Export;
use super::node::{Effect, NodeMachine};
use super::wire::{self, Frame, MoveFrame, ReplyStatus, WireError};
use super::wire_move::SESSION_PART_BYTES;

/// The bytes of session bodies being received in pieces, all peers together; a piece past
/// it drops its body (the claim cannot decide, or the handover is sent again).
pub const PARTS_BYTES_MAX: usize = 4 * SESSION_MOVE_BYTES_MAX;

/// How long a claim waits for a peer that neither answers nor goes down.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an exporter keeps a session for an importer that neither commits nor aborts
/// (then it is an ordinary offline session there again), and how long an importer waits for
/// the handover after its commit (then it keeps its copy).
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Claims this node's shards made, and the session moves in progress (`moving.rs`).
#[derive(Debug, Default)]
pub(super) struct Claims {
    /// By (shard, token).
    open: BTreeMap<(u16, u64), Open>,
    /// Session bodies being received in pieces: (from, shard, token) → (pieces so far, bytes).
    pub(super) parts: BTreeMap<(NodeId, u16, u64), (u32, BytesMut)>,
    /// Sessions this node's shards are exporting: (importer, its shard, token).
    pub(super) exports: BTreeMap<(NodeId, u16, u64), Export>,
    /// Commits waiting for their handover: (exporter, shard, token) → deadline.
    pub(super) commits: BTreeMap<(NodeId, u16, u64), Instant>,
    /// Handovers sent and not acknowledged: (importer, shard, token) → frames and session.
    pub(super) handovers: BTreeMap<(NodeId, u16, u64), super::moving::Sent>,
    /// Commits given up on, oldest first, at most [`super::moving::GAVE_UP_MAX`]: a
    /// handover for one of them that still comes is merged (`moving.rs`).
    pub(super) gave_up: std::collections::VecDeque<(NodeId, u16, u64)>,
}

#[derive(Debug)]
struct Open {
    waiting: Vec<NodeId>,
    /// Peers that sent a snapshot, with it.
    sessions: Vec<(NodeId, SessionExport)>,
    outcome: ClaimOutcome,
    deadline: Instant,
}

impl Claims {
    /// The earliest deadline of an open claim or a move.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let claims = self.open.values().map(|o| o.deadline);
        let exports = self.exports.values().map(|e| e.deadline);
        claims.chain(exports).chain(self.commits.values().copied()).min()
    }
}

impl NodeMachine {
    /// A shard holds a CONNECT for `client_id` (or pulls an offered session from `only`):
    /// ask every live peer with an up link, or `only`.
    pub(super) fn on_claim(
        &mut self,
        shard: ShardId,
        client_id: ByteStr,
        token: u64,
        only: Option<NodeId>,
        discard: bool,
        now: Instant,
    ) {
        let waiting: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(n, p)| p.live && p.link_up && only.is_none_or(|o| o == **n))
            .map(|(n, _)| *n)
            .collect();
        let frame = Frame::Move(MoveFrame::ClaimReq { shard: shard.0, token, client_id, discard });
        for n in &waiting {
            self.send(*n, &frame);
        }
        let open = Open {
            waiting,
            sessions: Vec::new(),
            outcome: ClaimOutcome::Answered,
            deadline: now + CLAIM_TIMEOUT,
        };
        self.claims.open.insert((shard.0, token), open);
        self.release_claims(now);
    }

    /// This node's home shard `home` answered `to`'s claim: a snapshot (the session stays
    /// there, exporting) or nothing. A snapshot past [`SESSION_MOVE_BYTES_MAX`], or one
    /// that cannot be sent, is refused and the export aborted at once.
    pub(super) fn on_export(
        &mut self,
        home: ShardId,
        to: NodeId,
        shard: u16,
        token: u64,
        session: Option<Box<SessionExport>>,
        now: Instant,
    ) {
        let Some(session) = session else {
            let reply = MoveFrame::ClaimReply {
                shard,
                token,
                status: ReplyStatus::None,
                parts: 0,
                body: Bytes::new(),
            };
            self.send(to, &Frame::Move(reply));
            return;
        };
        let client_id = session.client_id.clone();
        let abort = ClusterIn::MoveAbort { to, shard, token, client_id: client_id.clone() };
        let body = encode_session(&session, self.uptime_ms(now));
        if body.len() > SESSION_MOVE_BYTES_MAX {
            tracing::warn!(node = %to, %client_id, bytes = body.len(), "cluster: a session too large to move stays here");
            let reply = MoveFrame::ClaimReply {
                shard,
                token,
                status: ReplyStatus::TooLarge,
                parts: 0,
                body: Bytes::new(),
            };
            self.send(to, &Frame::Move(reply));
            self.effects.push_back(Effect::ToShard { shard: home, msg: abort });
            return;
        }
        let frames = session_frames(shard, token, &body, |parts, body| MoveFrame::ClaimReply {
            shard,
            token,
            status: ReplyStatus::Session,
            parts,
            body,
        });
        if !self.send_all(to, &frames) {
            // The link is down: the importer never hears of it; the session stays here.
            self.effects.push_back(Effect::ToShard { shard: home, msg: abort });
            return;
        }
        if session.was_connected {
            // The connection ended here because its client id connected on `to`.
            self.counters.takeovers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let export = Export { home, client_id, deadline: now + super::claims::MOVE_TIMEOUT };
        self.claims.exports.insert((to, shard, token), export);
    }

    /// Peer `from` asks for `client_id`'s session: its home shard here answers.
    pub(super) fn on_claim_req(
        &mut self,
        from: NodeId,
        shard: u16,
        token: u64,
        client_id: ByteStr,
        discard: bool,
    ) {
        let home = ShardCore::home_shard(client_id.as_bytes(), self.shard_count);
        let msg = ClusterIn::Claim { from, shard, token, client_id, discard };
        self.effects.push_back(Effect::ToShard { shard: home, msg });
    }

    /// Peer `from` answered one of this node's claims (`body`: the snapshot's last piece).
    pub(super) fn on_claim_reply(
        &mut self,
        from: NodeId,
        (shard, token): (u16, u64),
        status: ReplyStatus,
        parts: u32,
        body: Bytes,
        now: Instant,
    ) {
        let whole = self.whole_body(from, shard, token, parts, body);
        let open_here =
            self.claims.open.get(&(shard, token)).is_some_and(|o| o.waiting.contains(&from));
        if !open_here {
            // A late answer (the claim was decided without it): the session stays there.
            if status == ReplyStatus::Session {
                self.send(from, &Frame::Move(MoveFrame::ClaimAbort { shard, token }));
            }
            return;
        }
        let uptime = self.uptime_ms(now);
        let (outcome, session) = match status {
            ReplyStatus::None => (None, None),
            ReplyStatus::TooLarge => (Some(ClaimOutcome::TooLarge), None),
            ReplyStatus::Session => match whole.map(|b| decode_session(&b, uptime)) {
                Some(Ok(s)) => (None, Some(s)),
                failed => {
                    // Pieces missing or a body that does not decode: the session stays
                    // there, and this claim cannot decide.
                    if let Some(Err(e)) = failed {
                        tracing::warn!(node = %from, "cluster: a moved session did not decode: {e}");
                    }
                    self.send(from, &Frame::Move(MoveFrame::ClaimAbort { shard, token }));
                    (Some(ClaimOutcome::Unanswered), None)
                }
            },
        };
        let open = self.claims.open.get_mut(&(shard, token)).expect("checked");
        open.waiting.retain(|n| *n != from);
        if let Some(o) = outcome {
            open.outcome = o;
        }
        open.sessions.extend(session.map(|s| (from, s)));
        self.release_claims(now);
    }

    /// Answers the claims nobody is waiting for any more: every asked peer answered or went
    /// down; or one lost its link, or the claim timed out (undecided: the snapshots that came
    /// are aborted and the shard told so).
    pub(super) fn release_claims(&mut self, now: Instant) {
        let peers = &self.peers;
        let done: Vec<(u16, u64)> = self
            .claims
            .open
            .iter_mut()
            .filter_map(|(k, o)| {
                // A peer declared down answers nothing: its sessions come back with it.
                o.waiting.retain(|n| peers.get(n).is_some_and(|p| p.live));
                let lost = o.waiting.iter().any(|n| peers.get(n).is_some_and(|p| !p.link_up));
                if lost || (now >= o.deadline && !o.waiting.is_empty()) {
                    o.outcome = ClaimOutcome::Unanswered;
                    o.waiting.clear();
                }
                o.waiting.is_empty().then_some(*k)
            })
            .collect();
        for (shard, token) in done {
            let open = self.claims.open.remove(&(shard, token)).expect("listed");
            // Pieces of a reply that will not be read now.
            self.claims.parts.retain(|k, _| (k.1, k.2) != (shard, token));
            let mut sessions = open.sessions;
            if open.outcome != ClaimOutcome::Answered {
                for (node, _) in sessions.drain(..) {
                    self.send(node, &Frame::Move(MoveFrame::ClaimAbort { shard, token }));
                }
            }
            let msg = ClusterIn::Claimed { token, sessions, outcome: open.outcome };
            self.effects.push_back(Effect::ToShard { shard: ShardId(shard), msg });
        }
    }

    /// Sends every frame to `to`; false if one could not be (the link is down).
    pub(super) fn send_all(&mut self, to: NodeId, frames: &[Frame]) -> bool {
        frames.iter().all(|f| self.send(to, f))
    }

    /// The whole body of a session whose last piece is `body` after `parts` pieces from
    /// `from`; `None` if the pieces received are not exactly those.
    pub(super) fn whole_body(
        &mut self,
        from: NodeId,
        shard: u16,
        token: u64,
        parts: u32,
        body: Bytes,
    ) -> Option<Bytes> {
        let got = self.claims.parts.remove(&(from, shard, token));
        match got {
            None if parts == 0 => Some(body),
            Some((n, mut buf)) if n == parts => {
                buf.extend_from_slice(&body);
                Some(buf.freeze())
            }
            _ => None,
        }
    }

    /// A piece of a session body from `from`, kept (bounded) until its last piece comes.
    pub(super) fn on_session_part(
        &mut self,
        from: NodeId,
        shard: u16,
        token: u64,
        index: u32,
        body: Bytes,
    ) {
        let key = (from, shard, token);
        if index == 0 {
            // A first piece starts the body again (one sent again after a broken link).
            self.claims.parts.insert(key, (0, BytesMut::new()));
        }
        let total: usize = self.claims.parts.values().map(|(_, b)| b.len()).sum();
        let Some((n, buf)) = self.claims.parts.get_mut(&key) else { return };
        // A handover may be as large as a snapshot plus what the exporter queued since.
        if *n != index
            || buf.len() + body.len() > 2 * SESSION_MOVE_BYTES_MAX
            || total + body.len() > PARTS_BYTES_MAX
        {
            tracing::warn!(node = %from, "cluster: a moving session's pieces out of order or past the limits: dropped");
            self.claims.parts.remove(&key);
            return;
        }
        *n += 1;
        buf.extend_from_slice(&body);
    }
}

/// The frames of a session body: `SessionPart`s of at most [`SESSION_PART_BYTES`], then
/// `last(parts, last piece)`.
pub(super) fn session_frames(
    shard: u16,
    token: u64,
    body: &Bytes,
    last: impl FnOnce(u32, Bytes) -> MoveFrame,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut rest = body.clone();
    let mut index = 0u32;
    while rest.len() > SESSION_PART_BYTES {
        let piece = rest.split_to(SESSION_PART_BYTES);
        frames.push(Frame::Move(MoveFrame::SessionPart { shard, token, index, body: piece }));
        index += 1;
    }
    frames.push(Frame::Move(last(index, rest)));
    frames
}

/// A session's body as it travels (in pieces: [`session_frames`]). A message the codec cannot
/// encode is left out (logged); the caller checks the size against the move limit.
pub fn encode_session(s: &SessionExport, uptime_ms: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    put_str(&mut out, &s.client_id);
    out.put_u32(s.expiry_secs);
    out.put_u32(s.subs.len() as u32);
    for sub in &s.subs {
        put_str(&mut out, &sub.filter);
        out.put_u8(crate::core::persist::options_byte(&sub.opts));
        out.put_u32(sub.sub_id.unwrap_or(0));
    }
    let count_at = out.len();
    out.put_u32(0);
    let mut count = 0u32;
    for m in &s.messages {
        let mark = out.len();
        out.put_u8(m.qos as u8);
        out.put_u8(u8::from(m.retain));
        put_str(&mut out, m.group.as_ref().unwrap_or(&ByteStr::from("")));
        out.put_u16(m.sub_ids.len().min(usize::from(u16::MAX)) as u16);
        for id in m.sub_ids.iter().take(usize::from(u16::MAX)) {
            out.put_u32(*id);
        }
        let age = uptime_ms.saturating_sub(m.msg.received_at_ms);
        out.put_u32(u32::try_from(age).unwrap_or(u32::MAX));
        let len_at = out.len();
        out.put_u32(0);
        let publish = Publish {
            dup: false,
            qos: m.msg.qos,
            retain: m.msg.retain,
            topic: m.msg.topic.clone(),
            packet_id: (m.msg.qos != QoS::AtMostOnce).then(|| PacketId::new(1).expect("non-zero")),
            payload: m.msg.payload.clone(),
            properties: m.msg.properties.clone(),
        };
        let ok = shardmq_codec::encode(&Packet::Publish(publish), ProtocolVersion::V5, &mut out);
        let len = out.len() - len_at - 4;
        if ok.is_err() {
            out.truncate(mark);
            tracing::warn!(client_id = %s.client_id, "cluster: a moving session's message does not encode: left out");
            continue;
        }
        out[len_at..len_at + 4].copy_from_slice(&(len as u32).to_be_bytes());
        count += 1;
    }
    out[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
    out.freeze()
}

/// Reads what [`encode_session`] wrote; messages get this node's receive time minus their age.
pub fn decode_session(body: &[u8], uptime_ms: u64) -> Result<SessionExport, WireError> {
    let mut r = wire::Reader::new(body);
    let client_id = r.str("session client id")?;
    let expiry_secs = r.u32("session expiry")?;
    let n_subs = r.u32("subscription count")?;
    let mut subs = Vec::new();
    for _ in 0..n_subs {
        let filter = r.str("subscription filter")?;
        let opts = options_from_byte(r.u8("subscription options")?);
        let id = r.u32("subscription id")?;
        subs.push(ExportedSub { filter, opts, sub_id: (id != 0).then_some(id) });
    }
    let n_msgs = r.u32("message count")?;
    let mut messages = Vec::new();
    for _ in 0..n_msgs {
        let qos = QoS::from_u8(r.u8("message qos")?).ok_or(WireError::Invalid("qos"))?;
        let retain = r.bool("message retain")?;
        let group = r.str("message group")?;
        let n_ids = r.u16("sub id count")?;
        let mut sub_ids = Vec::with_capacity(usize::from(n_ids));
        for _ in 0..n_ids {
            sub_ids.push(r.u32("sub id")?);
        }
        let age_ms = r.u32("message age")?;
        let len = r.u32("message length")? as usize;
        let mut packet = BytesMut::from(r.take(len, "message")?);
        let limits = Limits { packet_size_max_bytes: wire::FRAME_SIZE_MAX_BYTES as u32 };
        let publish = match shardmq_codec::decode(&mut packet, &limits, ProtocolVersion::V5) {
            Ok(Some(Packet::Publish(p))) if packet.is_empty() && !p.topic.is_empty() => p,
            _ => return Err(WireError::Invalid("a moved message")),
        };
        let msg: Arc<_> = wire::publish_message(publish, age_ms, uptime_ms);
        let group = (!group.is_empty()).then_some(group);
        messages.push(ExportedMsg { msg, qos, retain, sub_ids: sub_ids.into(), group });
    }
    r.finish("session")?;
    Ok(SessionExport { client_id, expiry_secs, subs, messages, was_connected: false })
}

fn put_str(out: &mut BytesMut, s: &ByteStr) {
    let len = s.as_bytes().len().min(usize::from(u16::MAX));
    out.put_u16(len as u16);
    out.put_slice(&s.as_bytes()[..len]);
}
