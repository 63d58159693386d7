//! The node link's frames of a session move (ARCHITECTURE.md "Persistent sessions move
//! (two-phase)"; the machine's side is `claims.rs` and `moving.rs`). Carried as
//! [`Frame::Move`](super::wire::Frame::Move), encoded like every frame (`wire.rs`).
//!
//! A session body (`claims::encode_session`) larger than [`SESSION_PART_BYTES`] travels as
//! `SessionPart` frames (numbered from 0) followed by the `ClaimReply` or `Handover` that
//! carries its last piece and the number of parts before it: a receiver that did not get
//! exactly those parts, in order, drops the body.

use bytes::{BufMut, Bytes, BytesMut};
use shardmq_codec::ByteStr;

use super::wire::{put_str, Reader, WireError};

/// The largest piece of a session body in one frame.
pub const SESSION_PART_BYTES: usize = 1024 * 1024;

/// What a `ClaimReply` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStatus {
    /// No session here.
    None,
    /// The session's snapshot follows (it stays here until the commit).
    Session,
    /// The session is past the move limit: it stays here.
    TooLarge,
}

/// One move frame.
#[derive(Debug, Clone, PartialEq)]
pub enum MoveFrame {
    /// The sender's shard `shard` holds a CONNECT for `client_id` (Clean Start = 0): send
    /// a snapshot of the session if the receiver has it; with `discard`, end it instead.
    ClaimReq {
        /// The asking shard.
        shard: u16,
        /// Its claim token.
        token: u64,
        /// The client id.
        client_id: ByteStr,
        /// End the session (the asker's client started clean).
        discard: bool,
    },
    /// The answer to `ClaimReq` (the last piece of the snapshot, if any).
    ClaimReply {
        /// The asking shard.
        shard: u16,
        /// Its claim token.
        token: u64,
        /// What the sender has.
        status: ReplyStatus,
        /// `SessionPart` frames sent before this one.
        parts: u32,
        /// The last piece of the session body (empty without a session).
        body: Bytes,
    },
    /// A piece of a session body for (shard, token), before its `ClaimReply`/`Handover`.
    SessionPart {
        /// The importing shard.
        shard: u16,
        /// Its claim token.
        token: u64,
        /// The piece's number, from 0.
        index: u32,
        /// The piece.
        body: Bytes,
    },
    /// The importer gives up the claim: the exporter's session stays an ordinary one.
    ClaimAbort {
        /// The importing shard.
        shard: u16,
        /// Its claim token.
        token: u64,
    },
    /// The importer holds the snapshot and every node routes the session to it: end the
    /// session and hand over what arrived since the snapshot.
    Commit {
        /// The importing shard.
        shard: u16,
        /// Its claim token.
        token: u64,
    },
    /// The answer to `Commit` (the last piece of the tail, if moved).
    Handover {
        /// The importing shard.
        shard: u16,
        /// Its claim token.
        token: u64,
        /// The exporter ended its copy (false: it had aborted and kept the session).
        moved: bool,
        /// `SessionPart` frames sent before this one.
        parts: u32,
        /// The last piece of the tail's body (empty when not moved).
        body: Bytes,
    },
    /// The importer has the handover: the exporter forgets it.
    HandoverAck {
        /// The importing shard.
        shard: u16,
        /// Its claim token.
        token: u64,
    },
    /// The sender kicked its connection of `client_id` for one on the receiver and keeps the
    /// session offline: claim it (or have it discarded).
    Offer {
        /// The client id.
        client_id: ByteStr,
    },
}

pub(super) const KIND_CLAIM_REQ: u8 = 12;
pub(super) const KIND_CLAIM_REPLY: u8 = 13;
const KIND_SESSION_PART: u8 = 14;
const KIND_CLAIM_ABORT: u8 = 15;
const KIND_COMMIT: u8 = 16;
const KIND_HANDOVER: u8 = 17;
const KIND_HANDOVER_ACK: u8 = 18;
pub(super) const KIND_OFFER: u8 = 19;

impl MoveFrame {
    /// Writes the kind byte and the body.
    pub(super) fn encode_into(&self, out: &mut BytesMut) -> Option<()> {
        match self {
            MoveFrame::ClaimReq { shard, token, client_id, discard } => {
                out.put_u8(KIND_CLAIM_REQ);
                out.put_u16(*shard);
                out.put_u64(*token);
                out.put_u8(u8::from(*discard));
                put_str(out, client_id)?;
            }
            MoveFrame::ClaimReply { shard, token, status, parts, body } => {
                out.put_u8(KIND_CLAIM_REPLY);
                out.put_u16(*shard);
                out.put_u64(*token);
                out.put_u8(match status {
                    ReplyStatus::None => 0,
                    ReplyStatus::Session => 1,
                    ReplyStatus::TooLarge => 2,
                });
                out.put_u32(*parts);
                out.put_slice(body);
            }
            MoveFrame::SessionPart { shard, token, index, body } => {
                out.put_u8(KIND_SESSION_PART);
                out.put_u16(*shard);
                out.put_u64(*token);
                out.put_u32(*index);
                out.put_slice(body);
            }
            MoveFrame::ClaimAbort { shard, token }
            | MoveFrame::Commit { shard, token }
            | MoveFrame::HandoverAck { shard, token } => {
                out.put_u8(match self {
                    MoveFrame::ClaimAbort { .. } => KIND_CLAIM_ABORT,
                    MoveFrame::Commit { .. } => KIND_COMMIT,
                    _ => KIND_HANDOVER_ACK,
                });
                out.put_u16(*shard);
                out.put_u64(*token);
            }
            MoveFrame::Handover { shard, token, moved, parts, body } => {
                out.put_u8(KIND_HANDOVER);
                out.put_u16(*shard);
                out.put_u64(*token);
                out.put_u8(u8::from(*moved));
                out.put_u32(*parts);
                out.put_slice(body);
            }
            MoveFrame::Offer { client_id } => {
                out.put_u8(KIND_OFFER);
                put_str(out, client_id)?;
            }
        }
        Some(())
    }

    /// Decodes the body of a frame of kind `kind` (one of this module's kinds).
    pub(super) fn decode(kind: u8, body: &[u8]) -> Result<MoveFrame, WireError> {
        let mut r = Reader::new(body);
        if kind == KIND_OFFER {
            let client_id = r.str("offer client id")?;
            r.finish("Offer")?;
            return Ok(MoveFrame::Offer { client_id });
        }
        let shard = r.u16("move shard")?;
        let token = r.u64("move token")?;
        let f = match kind {
            KIND_CLAIM_REQ => {
                let discard = r.bool("claim discard")?;
                let client_id = r.str("claim client id")?;
                MoveFrame::ClaimReq { shard, token, client_id, discard }
            }
            KIND_CLAIM_REPLY => {
                let status = match r.u8("claim status")? {
                    0 => ReplyStatus::None,
                    1 => ReplyStatus::Session,
                    2 => ReplyStatus::TooLarge,
                    _ => return Err(WireError::Invalid("claim status")),
                };
                let parts = r.u32("claim parts")?;
                let body = Bytes::copy_from_slice(r.rest());
                MoveFrame::ClaimReply { shard, token, status, parts, body }
            }
            KIND_SESSION_PART => {
                let index = r.u32("part index")?;
                let body = Bytes::copy_from_slice(r.rest());
                MoveFrame::SessionPart { shard, token, index, body }
            }
            KIND_HANDOVER => {
                let moved = r.bool("handover moved")?;
                let parts = r.u32("handover parts")?;
                let body = Bytes::copy_from_slice(r.rest());
                MoveFrame::Handover { shard, token, moved, parts, body }
            }
            KIND_CLAIM_ABORT => MoveFrame::ClaimAbort { shard, token },
            KIND_COMMIT => MoveFrame::Commit { shard, token },
            KIND_HANDOVER_ACK => MoveFrame::HandoverAck { shard, token },
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish("move")?;
        Ok(f)
    }
}
