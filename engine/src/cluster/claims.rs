//! Persistent sessions moving between nodes, the machine's side (the shards' side is
//! `core/cluster/moves.rs`): a shard's `Claim` becomes a `ClaimReq` frame to every live
//! peer whose link is up; each peer's home shard for the client id answers with the session
//! or nothing (`Export` → a `ClaimReply` frame); when every asked peer has answered, gone
//! down or lost its link, or [`CLAIM_TIMEOUT`] passed, the shard gets `Claimed` with what
//! arrived. A session travels as the frame body [`encode_session`] writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use shardmq_codec::{ByteStr, Limits, Packet, PacketId, ProtocolVersion, Publish, QoS};

use crate::core::cluster::{ClusterIn, ExportedMsg, ExportedSub, NodeId, SessionExport};
use crate::core::ids::ShardId;
use crate::core::persist::restore::options_from_byte;
use crate::core::shard::ShardCore;

use super::node::{Effect, NodeMachine};
use super::wire::{self, Frame, WireError};

/// How long a claim waits for a peer that neither answers nor goes down.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// Claims this node's shards made, waiting for peers.
#[derive(Debug, Default)]
pub(super) struct Claims {
    /// By (shard, token).
    open: BTreeMap<(u16, u64), Open>,
}

#[derive(Debug)]
struct Open {
    waiting: Vec<NodeId>,
    sessions: Vec<SessionExport>,
    deadline: Instant,
}

impl Claims {
    /// The earliest deadline of an open claim.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|o| o.deadline).min()
    }
}

impl NodeMachine {
    /// A shard holds a CONNECT for `client_id`: ask every live peer with an up link.
    pub(super) fn on_claim(
        &mut self,
        shard: ShardId,
        client_id: ByteStr,
        token: u64,
        now: Instant,
    ) {
        let waiting: Vec<NodeId> =
            self.peers.iter().filter(|(_, p)| p.live && p.link_up).map(|(n, _)| *n).collect();
        let frame = Frame::ClaimReq { shard: shard.0, token, client_id };
        for n in &waiting {
            self.send(*n, &frame);
        }
        let open = Open { waiting, sessions: Vec::new(), deadline: now + CLAIM_TIMEOUT };
        self.claims.open.insert((shard.0, token), open);
        self.release_claims(now);
    }

    /// This node's home shard answered `to`'s claim.
    pub(super) fn on_export(
        &mut self,
        to: NodeId,
        shard: u16,
        token: u64,
        session: Option<Box<SessionExport>>,
        now: Instant,
    ) {
        let uptime = self.uptime_ms(now);
        if session.as_deref().is_some_and(|s| s.was_connected) {
            // The connection ended here because its client id connected on `to`.
            self.counters.takeovers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let body = session.as_deref().map(|s| encode_session(s, uptime));
        if session.is_some() && !self.peers.get(&to).is_some_and(|p| p.link_up) {
            tracing::warn!(node = %to, "cluster: a session moving to a node whose link is down is lost");
        }
        self.send(to, &Frame::ClaimReply { shard, token, session: body });
    }

    /// Peer `from` asks for `client_id`'s session: its home shard here answers.
    pub(super) fn on_claim_req(
        &mut self,
        from: NodeId,
        shard: u16,
        token: u64,
        client_id: ByteStr,
    ) {
        let home = ShardCore::home_shard(client_id.as_bytes(), self.shard_count);
        let msg = ClusterIn::Claim { from, shard, token, client_id };
        self.effects.push_back(Effect::ToShard { shard: home, msg });
    }

    /// Peer `from` answered one of this node's claims.
    pub(super) fn on_claim_reply(
        &mut self,
        from: NodeId,
        shard: u16,
        token: u64,
        session: Option<Bytes>,
        now: Instant,
    ) {
        let uptime = self.uptime_ms(now);
        let session = session.and_then(|body| match decode_session(&body, uptime) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(node = %from, "cluster: a moved session did not decode: {e}");
                None
            }
        });
        let Some(open) = self.claims.open.get_mut(&(shard, token)) else {
            // A late answer (the claim timed out or its peer's link went down): the session
            // left its node, so it is handed over anyway, to be kept offline.
            if let Some(s) = session.filter(|_| shard < self.shard_count) {
                let msg = ClusterIn::Claimed { token, sessions: vec![s] };
                self.effects.push_back(Effect::ToShard { shard: ShardId(shard), msg });
            }
            return;
        };
        open.waiting.retain(|n| *n != from);
        open.sessions.extend(session);
        self.release_claims(now);
    }

    /// Answers the claims nobody is waiting for any more: every asked peer answered, went
    /// down or lost its link, or the claim timed out.
    pub(super) fn release_claims(&mut self, now: Instant) {
        let peers = &self.peers;
        let done: Vec<(u16, u64)> = self
            .claims
            .open
            .iter_mut()
            .filter_map(|(k, o)| {
                o.waiting.retain(|n| peers.get(n).is_some_and(|p| p.live && p.link_up));
                (o.waiting.is_empty() || now >= o.deadline).then_some(*k)
            })
            .collect();
        for (shard, token) in done {
            let open = self.claims.open.remove(&(shard, token)).expect("listed");
            let msg = ClusterIn::Claimed { token, sessions: open.sessions };
            self.effects.push_back(Effect::ToShard { shard: ShardId(shard), msg });
        }
    }
}

/// A session as a ClaimReply frame carries it. Messages past the frame limit stay behind
/// (counted in the log line of the exporting shard's caller); everything else is kept.
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
        if ok.is_err() || out.len() > wire::FRAME_SIZE_MAX_BYTES - 64 {
            out.truncate(mark);
            tracing::warn!(client_id = %s.client_id, "cluster: a moving session's messages past the frame limit stay behind");
            break;
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
