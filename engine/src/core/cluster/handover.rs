//! The second phase of a session move (ARCHITECTURE.md "Persistent sessions move
//! (two-phase)"), the shards' side: the exporter ending its copy at the importer's commit and
//! handing over what arrived since its snapshot; the importer finishing the move with it; an
//! export aborted; and a kicked connection's session offered to the winner's node instead of
//! being ended. Shard-local.

use std::time::Instant;

use shardmq_codec::{ByteStr, ReasonCode};

use crate::core::mesh::mesh_cost;
use crate::core::shard::{CloseKind, ShardCore};

use super::moves::{exported_messages, exported_subs};
use super::{ClusterOut, HandoverOutcome, NodeId, SessionExport, SESSION_MOVE_BYTES_MAX};

impl ShardCore {
    /// The importer (node `from`, shard, token) holds the snapshot and every node routes the
    /// session there: end this copy and hand over its messages since the snapshot, if the
    /// session is still exporting to that claim; otherwise say it was kept.
    pub(crate) fn cluster_commit(
        &mut self,
        from: NodeId,
        shard: u16,
        token: u64,
        client_id: &ByteStr,
        now: Instant,
    ) {
        let Some(c) = self.cluster.as_deref_mut() else { return };
        let export = c.exports.get(client_id).filter(|e| e.to == (from, shard, token)).cloned();
        let slot = self.sessions.find(client_id);
        let tail = match (export, slot) {
            (Some(e), Some(slot)) if self.sessions.get(slot).conn.is_none() => {
                let s = self.sessions.get(slot);
                let tail = exported_messages(std::iter::empty(), s.queued_since(e.queued_from));
                // A tail past the move limit (a queue limit larger than it) is not sent: the
                // session stays here, whole, and the importer drops its copy.
                let bytes: usize = tail.iter().map(|m| mesh_cost(&m.msg) as usize).sum();
                (bytes <= SESSION_MOVE_BYTES_MAX).then_some((slot, tail))
            }
            _ => None,
        };
        let session = match tail {
            Some((slot, tail)) => {
                let s = self.sessions.get(slot);
                let export = SessionExport {
                    client_id: client_id.clone(),
                    expiry_secs: s.expiry_secs,
                    subs: exported_subs(s),
                    messages: tail,
                    was_connected: false,
                };
                self.cluster_forget_export(client_id);
                self.end_session(slot, now);
                tracing::info!(shard = %self.shard, %client_id, tail = export.messages.len(), "session moved to another node");
                Some(Box::new(export))
            }
            None => {
                tracing::info!(shard = %self.shard, %client_id, "a commit for an export that was aborted (or a tail past the limit): the session stays here");
                None
            }
        };
        if let Some(c) = self.cluster.as_deref_mut() {
            c.out.push(ClusterOut::Handover { to: from, shard, token, session });
        }
    }

    /// The export of `client_id`'s session to (node, shard, token) is off: it is an ordinary
    /// offline session here again (it kept every message).
    pub(crate) fn cluster_move_abort(
        &mut self,
        to: NodeId,
        shard: u16,
        token: u64,
        client_id: &ByteStr,
    ) {
        let Some(c) = self.cluster.as_deref_mut() else { return };
        if c.exports.get(client_id).is_some_and(|e| e.to == (to, shard, token)) {
            self.cluster_forget_export(client_id);
            tracing::info!(shard = %self.shard, %client_id, "session export aborted: it stays here");
        }
    }

    /// `client_id`'s session here is no longer exporting (its client came back here, or it
    /// moved, or ended).
    pub(crate) fn cluster_forget_export(&mut self, client_id: &str) {
        let Some(c) = self.cluster.as_deref_mut() else { return };
        if c.exports.is_empty() || c.exports.remove(&ByteStr::from(client_id)).is_none() {
            return;
        }
        if let Some(slot) = self.sessions.find(client_id) {
            self.sessions.get_mut(slot).pin_queue_seq(false);
        }
    }

    /// True while `client_id`'s session here is exporting to another node.
    pub(crate) fn cluster_exporting(&self, client_id: &str) -> bool {
        self.cluster.as_deref().is_some_and(|c| {
            !c.exports.is_empty() && c.exports.contains_key(&ByteStr::from(client_id))
        })
    }

    /// The exporter `from` answered the commit of claim `token`.
    pub(crate) fn cluster_handover(
        &mut self,
        token: u64,
        from: NodeId,
        outcome: HandoverOutcome,
        now: Instant,
    ) {
        let Some(c) = self.cluster.as_deref_mut() else { return };
        let Some(i) = c.imports.iter().position(|(t, _)| *t == token) else {
            // A handover for no import: one that came after this node gave up waiting (and
            // kept its copy, `HandoverOutcome::Unknown`), which the machine forwards (it
            // filters out repeats after a lost acknowledgement). Merged into that copy.
            if let HandoverOutcome::Moved(s) = outcome {
                self.import_offline(*s, now);
            }
            return;
        };
        let import = &mut c.imports[i].1;
        if !import.exporters.contains(&from) {
            return;
        }
        import.exporters.retain(|n| *n != from);
        let client_id = import.client_id.clone();
        match outcome {
            HandoverOutcome::Moved(s) => {
                import.keep = true;
                let n = s.messages.len();
                let at = import.insert_at;
                import.insert_at += n;
                match self.sessions.find(&client_id) {
                    Some(slot) => self.import_messages(slot, s.messages, Some(at), now),
                    None => self.import_offline(*s, now),
                }
            }
            // Nothing here ended the exporter's copy: keep this one too (no loss; a copy
            // may come back with its node and linger).
            HandoverOutcome::Unknown => import.keep = true,
            HandoverOutcome::Kept => {}
        }
        self.finish_import(token, now);
    }

    /// An import whose every exporter answered: answer its CONNECT with the session, or, if
    /// every exporter kept its copy, drop this one (theirs holds everything) and refuse it.
    fn finish_import(&mut self, token: u64, now: Instant) {
        let Some(c) = self.cluster.as_deref_mut() else { return };
        let Some(i) = c.imports.iter().position(|(t, i)| *t == token && i.exporters.is_empty())
        else {
            return;
        };
        let (_, import) = c.imports.remove(i);
        if import.keep {
            if let Some(held) = import.held {
                self.answer_held(held, true, now);
            }
            return;
        }
        let other = self.cluster.as_deref().is_some_and(|c| {
            c.imports.iter().any(|(_, i)| i.client_id.as_str() == import.client_id.as_str())
        });
        if let Some(slot) = self.sessions.find(&import.client_id) {
            // Another import of the client's session fills this copy too: it stays.
            if self.sessions.get(slot).conn.is_none() && !other {
                self.end_session(slot, now);
            }
        }
        if let Some(h) = import.held.filter(|h| !h.closed) {
            tracing::info!(shard = %self.shard, client_id = %import.client_id, "the session stayed on its node: CONNECT refused");
            self.refuse_connect(h.conn, h.connect.protocol, ReasonCode::SERVER_UNAVAILABLE, now);
        }
    }

    /// The client id connected later on node `by`: end this connection (if `token` still
    /// names it). Its session stays here, offline, offered to `by`, which claims it or has it
    /// discarded: a kick never ends a session by itself.
    pub(crate) fn cluster_kick(&mut self, client_id: &str, token: u64, by: NodeId, now: Instant) {
        let Some(c) = self.cluster.as_deref() else { return };
        let Some(slot) = self.sessions.find(client_id) else { return };
        let conn = self.sessions.get(slot).conn;
        if let Some(conn) = conn {
            if !c.is_conn(conn, token) {
                // A newer connection on this node: the kick was for one already gone.
                return;
            }
            // [MQTT-3.1.4-3]: the existing connection is closed; 5.0 gets 0x8E first.
            let kind = CloseKind::Abnormal(Some(ReasonCode::SESSION_TAKEN_OVER));
            self.close_conn(conn, kind, now);
        }
        tracing::info!(shard = %self.shard, %client_id, "client id connected on another node: taken over");
        // The close ended a session with expiry 0; a persistent one is offered to the winner.
        if self.sessions.find(client_id).is_some() && !self.cluster_importing(client_id) {
            if let Some(c) = self.cluster.as_deref_mut() {
                c.out.push(ClusterOut::Offer { to: by, client_id: ByteStr::from(client_id) });
            }
        }
    }

    /// Node `from` kicked its connection of `client_id` for one here and keeps its session:
    /// pull it if this node's connection resumed a session (Clean Start = 0), else have it
    /// discarded (the client started clean here [MQTT-3.1.2-4]).
    pub(crate) fn cluster_offer(&mut self, from: NodeId, client_id: &ByteStr) {
        let resumed = self.sessions.find(client_id).is_some_and(|slot| {
            let s = self.sessions.get(slot);
            match s.conn {
                Some(conn) => self.cluster.as_deref().is_some_and(|c| c.conn_resumed(conn)),
                // The client left again: its session here is kept, so merge into it.
                None => true,
            }
        });
        let Some(c) = self.cluster.as_deref_mut() else { return };
        c.last_claim += 1;
        let token = c.last_claim;
        if resumed {
            c.pulls.insert(token, client_id.clone());
        }
        c.out.push(ClusterOut::Claim {
            client_id: client_id.clone(),
            token,
            only: Some(from),
            discard: !resumed,
        });
    }

    /// The winner of a race started clean: end the offered session here, if it is still
    /// offline (a newer connection here keeps it).
    pub(crate) fn discard_offered(&mut self, client_id: &str, now: Instant) {
        let Some(slot) = self.sessions.find(client_id) else { return };
        if self.sessions.get(slot).conn.is_some() || self.cluster_importing(client_id) {
            return;
        }
        self.cluster_forget_export(client_id);
        tracing::info!(shard = %self.shard, %client_id, "an offered session discarded: its client started clean on another node");
        self.end_session(slot, now);
    }
}
