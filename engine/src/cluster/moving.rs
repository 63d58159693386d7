//! The second phase of a session move, the machine's side (ARCHITECTURE.md "Persistent
//! sessions move (two-phase)"; the claim is in `claims.rs`, the shards' side in
//! `core/cluster/handover.rs`): the importer's commit, the exporter's handover (kept until
//! acknowledged, sent again when the link comes back, restored here if the importer goes
//! down), aborts, timeouts, and a kicked session offered to the winner's node.

use std::time::Instant;

use bytes::Bytes;
use shardmq_codec::ByteStr;

use crate::core::cluster::{ClusterIn, HandoverOutcome, NodeId, SessionExport};
use crate::core::ids::ShardId;

use super::claims::{decode_session, encode_session, session_frames, MOVE_TIMEOUT};
use super::node::{Effect, NodeMachine};
use super::wire::{Frame, MoveFrame};

/// Commits given up on (timed out, or the exporter went down) that are remembered, so a
/// handover arriving later is merged: the oldest is forgotten past it (a handover for a key
/// no longer remembered is taken for a repeat and dropped).
pub(super) const GAVE_UP_MAX: usize = 4096;

/// A session one of this node's shards is exporting.
#[derive(Debug)]
pub(super) struct Export {
    /// The shard that has it.
    pub home: ShardId,
    /// The client id.
    pub client_id: ByteStr,
    /// When the export is aborted if the importer neither commits nor aborts.
    pub deadline: Instant,
}

/// A handover sent and not acknowledged yet.
#[derive(Debug)]
pub(super) struct Sent {
    frames: Vec<Frame>,
    /// Restored on the exporting shard if the importer goes down first.
    session: Box<SessionExport>,
    home: ShardId,
}

impl NodeMachine {
    /// A shard's commit of claim `token`: ask the exporter `to` for its handover (sent
    /// again when the link comes back, until the handover arrives).
    pub(super) fn on_commit(&mut self, shard: ShardId, to: NodeId, token: u64, now: Instant) {
        self.claims.commits.insert((to, shard.0, token), now + MOVE_TIMEOUT);
        self.send(to, &Frame::Move(MoveFrame::Commit { shard: shard.0, token }));
    }

    /// A move frame from peer `from`.
    pub(super) fn on_move_frame(&mut self, from: NodeId, frame: MoveFrame, now: Instant) {
        match frame {
            MoveFrame::ClaimReq { shard, token, client_id, discard } => {
                self.on_claim_req(from, shard, token, client_id, discard)
            }
            MoveFrame::ClaimReply { shard, token, status, parts, body } => {
                self.on_claim_reply(from, (shard, token), status, parts, body, now)
            }
            MoveFrame::SessionPart { shard, token, index, body } => {
                self.on_session_part(from, shard, token, index, body)
            }
            MoveFrame::ClaimAbort { shard, token } => {
                if let Some(e) = self.claims.exports.remove(&(from, shard, token)) {
                    self.abort_export(e, from, shard, token);
                }
            }
            MoveFrame::Commit { shard, token } => self.on_commit_frame(from, shard, token),
            MoveFrame::Handover { shard, token, moved, parts, body } => {
                self.on_handover_frame(from, (shard, token), moved, parts, body, now)
            }
            MoveFrame::HandoverAck { shard, token } => {
                self.claims.handovers.remove(&(from, shard, token));
            }
            MoveFrame::Offer { client_id } => {
                let home = crate::core::shard::ShardCore::home_shard(
                    client_id.as_bytes(),
                    self.shard_count,
                );
                let msg = ClusterIn::Offer { from, client_id };
                self.effects.push_back(Effect::ToShard { shard: home, msg });
            }
        }
    }

    fn abort_export(&mut self, e: Export, to: NodeId, shard: u16, token: u64) {
        let msg = ClusterIn::MoveAbort { to, shard, token, client_id: e.client_id };
        self.effects.push_back(Effect::ToShard { shard: e.home, msg });
    }

    /// The importer `from` commits: the exporting shard ends its copy and hands over. A
    /// repeated commit gets the handover again; one for an aborted export gets "kept".
    fn on_commit_frame(&mut self, from: NodeId, shard: u16, token: u64) {
        let key = (from, shard, token);
        if let Some(sent) = self.claims.handovers.get(&key) {
            let frames = sent.frames.clone();
            self.send_all(from, &frames);
            return;
        }
        match self.claims.exports.remove(&key) {
            Some(e) => {
                let msg = ClusterIn::Commit { from, shard, token, client_id: e.client_id };
                self.effects.push_back(Effect::ToShard { shard: e.home, msg });
            }
            None => {
                let kept = MoveFrame::Handover {
                    shard,
                    token,
                    moved: false,
                    parts: 0,
                    body: Bytes::new(),
                };
                self.send(from, &Frame::Move(kept));
            }
        }
    }

    /// The exporting shard `home` answered a commit: its copy ended (`Some`: the tail, kept
    /// here until the importer acknowledges it) or it kept the session (`None`).
    pub(super) fn on_handover_out(
        &mut self,
        home: ShardId,
        to: NodeId,
        shard: u16,
        token: u64,
        session: Option<Box<SessionExport>>,
        now: Instant,
    ) {
        let Some(session) = session else {
            let kept =
                MoveFrame::Handover { shard, token, moved: false, parts: 0, body: Bytes::new() };
            self.send(to, &Frame::Move(kept));
            return;
        };
        let body = encode_session(&session, self.uptime_ms(now));
        let frames = session_frames(shard, token, &body, |parts, body| MoveFrame::Handover {
            shard,
            token,
            moved: true,
            parts,
            body,
        });
        // Sent now if the link is up, else when it comes back (`moves_link_up`).
        self.send_all(to, &frames);
        self.claims.handovers.insert((to, shard, token), Sent { frames, session, home });
    }

    /// The exporter `from` answered this node's commit.
    fn on_handover_frame(
        &mut self,
        from: NodeId,
        (shard, token): (u16, u64),
        moved: bool,
        parts: u32,
        body: Bytes,
        now: Instant,
    ) {
        let whole = self.whole_body(from, shard, token, parts, body);
        let key = (from, shard, token);
        if !self.claims.commits.contains_key(&key) {
            let late = self.claims.gave_up.iter().position(|k| *k == key);
            match (moved, whole, late) {
                (true, Some(body), Some(i)) => {
                    // This node stopped waiting (it kept its copy) and the exporter ended
                    // its own: what it hands over is merged into the copy here (the shard
                    // finds no import for the token and keeps it offline or delivers it),
                    // never dropped.
                    self.claims.gave_up.remove(i);
                    self.send(from, &Frame::Move(MoveFrame::HandoverAck { shard, token }));
                    match decode_session(&body, self.uptime_ms(now)) {
                        Ok(s) => {
                            tracing::info!(node = %from, client_id = %s.client_id, "cluster: a handover after its commit was given up on: merged into the copy kept here");
                            let outcome = HandoverOutcome::Moved(Box::new(s));
                            let msg = ClusterIn::Handover { token, from, outcome };
                            self.effects.push_back(Effect::ToShard { shard: ShardId(shard), msg });
                        }
                        Err(e) => {
                            tracing::warn!(node = %from, "cluster: a late handover did not decode: {e}");
                        }
                    }
                }
                // A repeat of a handover already taken (its acknowledgement was lost).
                (true, Some(_), None) => {
                    self.send(from, &Frame::Move(MoveFrame::HandoverAck { shard, token }));
                }
                // The exporter kept the session too: nothing to merge.
                (false, _, Some(i)) => {
                    self.claims.gave_up.remove(i);
                }
                // Broken pieces: not acknowledged, sent again when the link comes back.
                _ => {}
            }
            return;
        }
        let outcome = if !moved {
            HandoverOutcome::Kept
        } else {
            let uptime = self.uptime_ms(now);
            match whole.map(|b| decode_session(&b, uptime)) {
                Some(Ok(s)) => HandoverOutcome::Moved(Box::new(s)),
                // Broken pieces: not acknowledged, so the exporter sends it again when the
                // link comes back (or the commit times out and this copy is kept).
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(node = %from, "cluster: a handover did not decode: {e}");
                    HandoverOutcome::Unknown
                }
            }
        };
        self.claims.commits.remove(&key);
        if moved {
            self.send(from, &Frame::Move(MoveFrame::HandoverAck { shard, token }));
        }
        let msg = ClusterIn::Handover { token, from, outcome };
        self.effects.push_back(Effect::ToShard { shard: ShardId(shard), msg });
    }

    /// A shard's connection of `client_id` was kicked for one on `to`: offer the session.
    pub(super) fn on_offer(&mut self, to: NodeId, client_id: ByteStr) {
        self.send(to, &Frame::Move(MoveFrame::Offer { client_id }));
    }

    /// The link to `node` came up: commits and handovers for it are sent again.
    pub(super) fn moves_link_up(&mut self, node: NodeId) {
        let commits: Vec<(u16, u64)> =
            self.claims.commits.keys().filter(|k| k.0 == node).map(|k| (k.1, k.2)).collect();
        for (shard, token) in commits {
            self.send(node, &Frame::Move(MoveFrame::Commit { shard, token }));
        }
        let frames: Vec<Frame> = self
            .claims
            .handovers
            .iter()
            .filter(|(k, _)| k.0 == node)
            .flat_map(|(_, s)| s.frames.iter().cloned())
            .collect();
        self.send_all(node, &frames);
    }

    /// `node` was declared down: exports to it are aborted, commits to it give up (this
    /// node keeps its copies), and handovers it never acknowledged are restored here.
    pub(super) fn moves_node_down(&mut self, node: NodeId) {
        let exports: Vec<_> = self.claims.exports.keys().filter(|k| k.0 == node).copied().collect();
        for key in exports {
            let e = self.claims.exports.remove(&key).expect("listed");
            self.abort_export(e, key.0, key.1, key.2);
        }
        let commits: Vec<_> = self.claims.commits.keys().filter(|k| k.0 == node).copied().collect();
        for key in commits {
            self.give_up_commit(key);
        }
        let sent: Vec<_> = self.claims.handovers.keys().filter(|k| k.0 == node).copied().collect();
        for key in sent {
            let s = self.claims.handovers.remove(&key).expect("listed");
            tracing::warn!(%node, client_id = %s.session.client_id, "cluster: a handover its importer never acknowledged is restored here");
            let msg = ClusterIn::Restore { session: s.session };
            self.effects.push_back(Effect::ToShard { shard: s.home, msg });
        }
        self.claims.parts.retain(|k, _| k.0 != node);
    }

    /// Exports and commits past their deadline.
    pub(super) fn moves_timer(&mut self, now: Instant) {
        let exports: Vec<_> = self
            .claims
            .exports
            .iter()
            .filter(|(_, e)| now >= e.deadline)
            .map(|(k, _)| *k)
            .collect();
        for key in exports {
            let e = self.claims.exports.remove(&key).expect("listed");
            tracing::info!(node = %key.0, client_id = %e.client_id, "cluster: a session export timed out: it stays here");
            self.abort_export(e, key.0, key.1, key.2);
        }
        let commits: Vec<_> =
            self.claims.commits.iter().filter(|(_, d)| now >= **d).map(|(k, _)| *k).collect();
        for key in commits {
            self.give_up_commit(key);
        }
    }

    /// A commit whose handover did not come in time (or whose exporter went down): the
    /// shard keeps its copy (`HandoverOutcome::Unknown`), the pieces received are freed, and
    /// the key is remembered so a handover that still comes is merged, not dropped.
    fn give_up_commit(&mut self, key: (NodeId, u16, u64)) {
        let (from, shard, token) = key;
        self.claims.commits.remove(&key);
        self.claims.parts.remove(&key);
        if self.claims.gave_up.len() >= GAVE_UP_MAX {
            self.claims.gave_up.pop_front();
        }
        self.claims.gave_up.push_back(key);
        let msg = ClusterIn::Handover { token, from, outcome: HandoverOutcome::Unknown };
        self.effects.push_back(Effect::ToShard { shard: ShardId(shard), msg });
    }

    /// The link to `node` went down: the pieces of session bodies it was sending are freed
    /// (a body is sent again whole, from its first piece).
    pub(super) fn moves_link_down(&mut self, node: NodeId) {
        self.claims.parts.retain(|k, _| k.0 != node);
    }
}
