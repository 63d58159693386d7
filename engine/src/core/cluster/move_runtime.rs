//! The test runtime's side of session moves: what `cluster/claims.rs` and
//! `cluster/moving.rs` do between real nodes, played synchronously between simulated ones,
//! with switches to lose or hold frames (a broken link) and to run the timeouts.
//! Sessions travel through their wire body (`claims::encode_session`), cut in pieces of
//! `wire_move::SESSION_PART_BYTES` as on a link.

use std::collections::BTreeMap;

use crate::cluster::claims::{decode_session, encode_session};
use crate::cluster::wire_move::SESSION_PART_BYTES;
use crate::core::cluster::{
    ClaimOutcome, ClusterIn, ClusterOut, HandoverOutcome, NodeId, SessionExport,
    SESSION_MOVE_BYTES_MAX,
};
use crate::core::ids::ShardId;
use crate::core::shard::ShardCore;

use super::Cluster;

/// A move frame kind, to lose or hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    ClaimReply,
    Commit,
    Handover,
}

/// (importer node, its shard, claim token).
type Claim = (usize, u16, u64);

#[derive(Debug)]
struct Open {
    waiting: Vec<usize>,
    sessions: Vec<(NodeId, SessionExport)>,
    outcome: ClaimOutcome,
}

/// The moves in progress and the test's switches.
#[derive(Debug, Default)]
pub(super) struct Moves {
    open: BTreeMap<Claim, Open>,
    /// Exporter node and claim → the exporting shard and client id.
    exports: BTreeMap<(usize, Claim), (ShardId, shardmq_codec::ByteStr)>,
    /// Commits waiting for a handover: (exporter node, claim).
    commits: Vec<(usize, Claim)>,
    /// Handovers not acknowledged: (exporter node, claim) → session, exporting shard.
    handovers: BTreeMap<(usize, Claim), (Box<SessionExport>, ShardId)>,
    /// Commits that timed out: a handover that still comes is merged (`moving.rs`).
    gave_up: Vec<(usize, Claim)>,
    /// Frames of these kinds are lost (a broken link).
    pub(super) lose: Vec<Kind>,
    /// Frames of these kinds wait in `held` until `release_moves`.
    pub(super) hold: Vec<Kind>,
    held: Vec<(usize, ShardId, ClusterOut)>,
    /// The next claim does not ask these nodes (their links are down then).
    pub(super) unreachable: Vec<usize>,
    /// The most pieces a session body was cut into.
    pub(super) parts_max: usize,
}

impl Cluster {
    pub(super) fn handle_move(&mut self, node: usize, shard: ShardId, msg: ClusterOut) {
        let kind = match &msg {
            ClusterOut::Export { .. } => Some(Kind::ClaimReply),
            ClusterOut::Commit { .. } => Some(Kind::Commit),
            ClusterOut::Handover { .. } => Some(Kind::Handover),
            _ => None,
        };
        if kind.is_some_and(|k| self.moves.hold.contains(&k)) {
            self.moves.held.push((node, shard, msg));
            return;
        }
        match msg {
            ClusterOut::Claim { client_id, token, only, discard } => {
                let unreachable = std::mem::take(&mut self.moves.unreachable);
                let others: Vec<usize> = (0..self.nodes.len())
                    .filter(|&n| n != node && !unreachable.contains(&n))
                    .filter(|&n| only.is_none_or(|o| usize::from(o.0) == n))
                    .collect();
                let key = (node, shard.0, token);
                let open = Open {
                    waiting: others.clone(),
                    sessions: Vec::new(),
                    outcome: ClaimOutcome::Answered,
                };
                self.moves.open.insert(key, open);
                for to in others {
                    let n = self.nodes[to].shards.len() as u16;
                    let home = ShardCore::home_shard(client_id.as_bytes(), n);
                    let from = NodeId(node as u16);
                    let client_id = client_id.clone();
                    let claim =
                        ClusterIn::Claim { from, shard: shard.0, token, client_id, discard };
                    self.tell_shard(to, home, claim);
                }
                self.release_claim(key);
            }
            ClusterOut::Export { to, shard: asker, token, session } => {
                let key = (usize::from(to.0), asker, token);
                let Some(s) = session else {
                    self.reply(node, key, None, ClaimOutcome::Answered);
                    return;
                };
                let (body, parts) = self.through_the_wire(&s);
                if body.len() > SESSION_MOVE_BYTES_MAX {
                    let abort =
                        ClusterIn::MoveAbort { to, shard: asker, token, client_id: s.client_id };
                    self.tell_shard(node, shard, abort);
                    self.reply(node, key, None, ClaimOutcome::TooLarge);
                    return;
                }
                self.moves.exports.insert((node, key), (shard, s.client_id.clone()));
                if self.moves.lose.contains(&Kind::ClaimReply) {
                    return;
                }
                assert!(parts >= 1);
                let s = decode_session(&body, 0).expect("decodes");
                self.reply(node, key, Some(s), ClaimOutcome::Answered);
            }
            ClusterOut::Commit { to, token } => {
                let claim = (node, shard.0, token);
                let exporter = usize::from(to.0);
                self.moves.commits.push((exporter, claim));
                if self.moves.lose.contains(&Kind::Commit) {
                    return;
                }
                self.deliver_commit(exporter, claim);
            }
            ClusterOut::Handover { to, shard: asker, token, session } => {
                let claim = (usize::from(to.0), asker, token);
                if let Some(s) = &session {
                    self.moves.handovers.insert((node, claim), (s.clone(), shard));
                }
                if self.moves.lose.contains(&Kind::Handover) {
                    return;
                }
                self.deliver_handover(node, claim, session);
            }
            ClusterOut::Offer { to, client_id } => {
                let to = usize::from(to.0);
                let n = self.nodes[to].shards.len() as u16;
                let home = ShardCore::home_shard(client_id.as_bytes(), n);
                let from = NodeId(node as u16);
                self.tell_shard(to, home, ClusterIn::Offer { from, client_id });
            }
            _ => unreachable!("not a move"),
        }
    }

    /// The session's wire body and the number of pieces a link carries it in.
    fn through_the_wire(&mut self, s: &SessionExport) -> (bytes::Bytes, usize) {
        let body = encode_session(s, 0);
        let parts = body.len().div_ceil(SESSION_PART_BYTES).max(1);
        self.moves.parts_max = self.moves.parts_max.max(parts);
        (body, parts)
    }

    fn reply(
        &mut self,
        from: usize,
        key: Claim,
        session: Option<SessionExport>,
        outcome: ClaimOutcome,
    ) {
        let Some(open) = self.moves.open.get_mut(&key) else {
            if session.is_some() {
                self.abort_export(from, key);
            }
            return;
        };
        open.waiting.retain(|&n| n != from);
        if outcome != ClaimOutcome::Answered {
            open.outcome = outcome;
        }
        open.sessions.extend(session.map(|s| (NodeId(from as u16), s)));
        self.release_claim(key);
    }

    fn release_claim(&mut self, key: Claim) {
        if !self.moves.open.get(&key).is_some_and(|o| o.waiting.is_empty()) {
            return;
        }
        let open = self.moves.open.remove(&key).expect("checked");
        let mut sessions = open.sessions;
        if open.outcome != ClaimOutcome::Answered {
            for (from, _) in sessions.drain(..) {
                self.abort_export(usize::from(from.0), key);
            }
        }
        let (node, shard, token) = key;
        let msg = ClusterIn::Claimed { token, sessions, outcome: open.outcome };
        self.tell_shard(node, ShardId(shard), msg);
    }

    fn abort_export(&mut self, exporter: usize, claim: Claim) {
        if let Some((home, client_id)) = self.moves.exports.remove(&(exporter, claim)) {
            let (to, shard, token) = claim;
            let to = NodeId(to as u16);
            self.tell_shard(exporter, home, ClusterIn::MoveAbort { to, shard, token, client_id });
        }
    }

    fn deliver_commit(&mut self, exporter: usize, claim: Claim) {
        if let Some((s, _)) = self.moves.handovers.get(&(exporter, claim)) {
            // A repeated commit gets the handover again.
            let s = s.clone();
            self.deliver_handover(exporter, claim, Some(s));
            return;
        }
        let (node, shard, token) = claim;
        match self.moves.exports.remove(&(exporter, claim)) {
            Some((home, client_id)) => {
                let from = NodeId(node as u16);
                self.tell_shard(
                    exporter,
                    home,
                    ClusterIn::Commit { from, shard, token, client_id },
                );
            }
            None => self.deliver_handover(exporter, claim, None),
        }
    }

    fn deliver_handover(&mut self, exporter: usize, claim: Claim, s: Option<Box<SessionExport>>) {
        let Some(i) = self.moves.commits.iter().position(|c| *c == (exporter, claim)) else {
            self.moves.handovers.remove(&(exporter, claim));
            let late = self.moves.gave_up.iter().position(|c| *c == (exporter, claim));
            if let (Some(i), Some(s)) = (late, s) {
                // The importer stopped waiting: what comes is merged into the copy it kept.
                self.moves.gave_up.remove(i);
                let (body, _) = self.through_the_wire(&s);
                let outcome =
                    HandoverOutcome::Moved(Box::new(decode_session(&body, 0).expect("decodes")));
                let (node, shard, token) = claim;
                let from = NodeId(exporter as u16);
                self.tell_shard(node, ShardId(shard), ClusterIn::Handover { token, from, outcome });
            }
            return;
        };
        self.moves.commits.remove(i);
        let outcome = match s {
            Some(s) => {
                let (body, _) = self.through_the_wire(&s);
                self.moves.handovers.remove(&(exporter, claim));
                HandoverOutcome::Moved(Box::new(decode_session(&body, 0).expect("decodes")))
            }
            None => HandoverOutcome::Kept,
        };
        let (node, shard, token) = claim;
        let from = NodeId(exporter as u16);
        self.tell_shard(node, ShardId(shard), ClusterIn::Handover { token, from, outcome });
    }

    /// Releases the held frames of `kind`, in order, and runs the cluster.
    pub(super) fn release_moves(&mut self, kind: Kind) {
        self.moves.hold.retain(|k| *k != kind);
        let held = std::mem::take(&mut self.moves.held);
        for (node, shard, msg) in held {
            let of_kind = match &msg {
                ClusterOut::Export { .. } => kind == Kind::ClaimReply,
                ClusterOut::Commit { .. } => kind == Kind::Commit,
                _ => kind == Kind::Handover,
            };
            if of_kind {
                self.handle_move(node, shard, msg);
            } else {
                self.moves.held.push((node, shard, msg));
            }
        }
        self.run();
    }

    /// The links came back: lost commits and unacknowledged handovers are sent again (as
    /// the machine does when a link comes up).
    pub(super) fn links_back(&mut self) {
        self.moves.lose.clear();
        for (exporter, claim) in self.moves.commits.clone() {
            self.deliver_commit(exporter, claim);
        }
        self.run();
    }

    /// Every open claim times out (an asked node never answered).
    pub(super) fn time_out_claims(&mut self) {
        let keys: Vec<Claim> = self.moves.open.keys().copied().collect();
        for key in keys {
            if let Some(o) = self.moves.open.get_mut(&key) {
                o.outcome = ClaimOutcome::Unanswered;
                o.waiting.clear();
            }
            self.release_claim(key);
        }
        self.run();
    }

    /// Every export and commit times out (`MOVE_TIMEOUT`).
    pub(super) fn time_out_moves(&mut self) {
        let exports: Vec<_> = self.moves.exports.keys().copied().collect();
        for (exporter, claim) in exports {
            self.abort_export(exporter, claim);
        }
        for (exporter, (node, shard, token)) in std::mem::take(&mut self.moves.commits) {
            self.moves.gave_up.push((exporter, (node, shard, token)));
            let from = NodeId(exporter as u16);
            let outcome = HandoverOutcome::Unknown;
            self.tell_shard(node, ShardId(shard), ClusterIn::Handover { token, from, outcome });
        }
        self.run();
    }
}
