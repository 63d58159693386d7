//! One machine's side of a session move (`claims.rs`, `moving.rs`): a session cut in pieces
//! and put together again, one past the limit refused, a lost answer, a handover kept until
//! acknowledged.

use super::*;

use crate::cluster::wire::{MoveFrame, ReplyStatus};
use crate::core::cluster::{ClaimOutcome, SESSION_MOVE_BYTES_MAX};
use crate::core::cluster::{ExportedMsg, ExportedSub, HandoverOutcome, SessionExport};

/// A session of `n` QoS 1 messages of `size` bytes each.
fn session(n: usize, size: usize) -> SessionExport {
    let messages = (0..n)
        .map(|i| {
            let mut payload = vec![b'x'; size];
            payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
            ExportedMsg {
                msg: Arc::new(Message {
                    topic: ByteStr::from_static("q/x"),
                    payload: Bytes::from(payload),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: None,
                    origin: Origin { shard: ShardId(0), session: 1 },
                    received_at_ms: 0,
                }),
                qos: QoS::AtLeastOnce,
                retain: false,
                sub_ids: Box::new([]),
                group: None,
            }
        })
        .collect();
    SessionExport {
        client_id: ByteStr::from_static("mover"),
        expiry_secs: 60,
        subs: vec![ExportedSub {
            filter: ByteStr::from_static("q/#"),
            opts: Default::default(),
            sub_id: None,
        }],
        messages,
        was_connected: false,
    }
}

fn feed(m: &mut NodeMachine, from: NodeId, frames: &[Frame], now: Instant) {
    for f in frames {
        let bytes = f.encode().expect("encodes");
        m.handle_frame(from, &bytes[wire::LENGTH_PREFIX_BYTES..], now);
    }
}

/// A `Claimed` the machine handed a shard: shard, token, sessions by node, outcome.
type Decided = (ShardId, u64, Vec<(NodeId, SessionExport)>, ClaimOutcome);

fn claimed(effects: &[Effect]) -> Vec<Decided> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ToShard { shard, msg: ClusterIn::Claimed { token, sessions, outcome } } => {
                Some((*shard, *token, sessions.clone(), *outcome))
            }
            _ => None,
        })
        .collect()
}

fn claim(m: &mut NodeMachine, token: u64, now: Instant) {
    let msg = ClusterOut::Claim {
        client_id: ByteStr::from_static("mover"),
        token,
        only: None,
        discard: false,
    };
    m.handle_shard(ShardId(1), msg, now);
}

#[test]
fn a_session_larger_than_a_frame_travels_in_pieces_and_arrives_whole() {
    let (mut m, now) = machine();
    up(&mut m, PEER, now);
    // This node exports 40 messages of 64 KiB (2.5 MiB) to the peer's shard 1, claim 7.
    let export = ClusterOut::Export {
        to: PEER,
        shard: 1,
        token: 7,
        session: Some(Box::new(session(40, 64 * 1024))),
    };
    m.handle_shard(ShardId(0), export, now);
    let frames = frames_to(&drain(&mut m), PEER);
    let parts =
        frames.iter().filter(|f| matches!(f, Frame::Move(MoveFrame::SessionPart { .. }))).count();
    assert!(parts >= 2, "{parts} pieces");
    for f in &frames {
        let len = f.encode().unwrap().len();
        assert!(
            len <= crate::cluster::wire_move::SESSION_PART_BYTES + 64,
            "a piece of {len} bytes"
        );
    }
    assert!(
        matches!(frames.last(), Some(Frame::Move(MoveFrame::ClaimReply { status: ReplyStatus::Session, parts: p, .. })) if *p as usize == parts)
    );
    // The same frames arriving at a node that claimed (shard 1, token 7) from the peer.
    let (mut importer, now) = machine();
    up(&mut importer, PEER, now);
    claim(&mut importer, 7, now);
    drain(&mut importer);
    feed(&mut importer, PEER, &frames, now);
    let got = claimed(&drain(&mut importer));
    assert_eq!(got.len(), 1);
    let (shard, token, sessions, outcome) = &got[0];
    assert_eq!((*shard, *token, *outcome), (ShardId(1), 7, ClaimOutcome::Answered));
    assert_eq!(sessions[0].0, PEER);
    let numbers: Vec<u32> = sessions[0]
        .1
        .messages
        .iter()
        .map(|m| u32::from_be_bytes(m.msg.payload[..4].try_into().unwrap()))
        .collect();
    assert_eq!(numbers, (0..40).collect::<Vec<_>>(), "every message, in order");
    // A piece lost on the way: the body is dropped and the claim cannot decide.
    claim(&mut importer, 8, now);
    drain(&mut importer);
    let mut broken: Vec<Frame> = frames.clone();
    broken.remove(1);
    for f in &mut broken {
        if let Frame::Move(
            MoveFrame::SessionPart { token, .. } | MoveFrame::ClaimReply { token, .. },
        ) = f
        {
            *token = 8;
        }
    }
    feed(&mut importer, PEER, &broken, now);
    let effects = drain(&mut importer);
    assert_eq!(claimed(&effects)[0].3, ClaimOutcome::Unanswered);
    let back = frames_to(&effects, PEER);
    assert!(back.contains(&Frame::Move(MoveFrame::ClaimAbort { shard: 1, token: 8 })), "{back:?}");
}

#[test]
fn a_session_past_the_limit_is_refused_and_stays() {
    let (mut m, now) = machine();
    up(&mut m, PEER, now);
    let big = session(SESSION_MOVE_BYTES_MAX / (1024 * 1024) + 1, 1024 * 1024);
    let export = ClusterOut::Export { to: PEER, shard: 1, token: 3, session: Some(Box::new(big)) };
    m.handle_shard(ShardId(0), export, now);
    let effects = drain(&mut m);
    let frames = frames_to(&effects, PEER);
    assert!(
        matches!(
            &frames[..],
            [Frame::Move(MoveFrame::ClaimReply { status: ReplyStatus::TooLarge, .. })]
        ),
        "{frames:?}"
    );
    let aborts = to_shards(&effects);
    assert_eq!(aborts.len(), 1);
    assert_eq!(aborts[0].0, ShardId(0), "the exporting shard keeps it");
    assert!(aborts[0].1.starts_with("MoveAbort"), "{aborts:?}");
}

#[test]
fn a_claim_whose_answer_is_lost_is_undecided_and_a_late_answer_is_aborted() {
    let (mut m, now) = machine();
    up(&mut m, PEER, now);
    claim(&mut m, 4, now);
    drain(&mut m);
    m.handle_timer(now + crate::cluster::claims::CLAIM_TIMEOUT);
    let got = claimed(&drain(&mut m));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].3, ClaimOutcome::Unanswered);
    assert!(got[0].2.is_empty());
    // The answer comes after all: the exporter is told to keep its session.
    let reply = Frame::Move(MoveFrame::ClaimReply {
        shard: 1,
        token: 4,
        status: ReplyStatus::Session,
        parts: 0,
        body: crate::cluster::claims::encode_session(&session(1, 8), 0),
    });
    feed(&mut m, PEER, &[reply], now);
    let back = frames_to(&drain(&mut m), PEER);
    assert_eq!(back, vec![Frame::Move(MoveFrame::ClaimAbort { shard: 1, token: 4 })]);
}

#[test]
fn a_handover_is_kept_until_acknowledged_and_restored_if_the_importer_dies() {
    let (mut m, now) = machine();
    up(&mut m, PEER, now);
    // This node exported to the peer's claim (shard 1, token 5); the peer commits.
    let export =
        ClusterOut::Export { to: PEER, shard: 1, token: 5, session: Some(Box::new(session(2, 8))) };
    m.handle_shard(ShardId(0), export, now);
    drain(&mut m);
    feed(&mut m, PEER, &[Frame::Move(MoveFrame::Commit { shard: 1, token: 5 })], now);
    let to_shard = to_shards(&drain(&mut m));
    assert!(to_shard[0].1.starts_with("Commit"), "{to_shard:?}");
    // The shard ended its copy and hands over its tail; the link breaks on the way.
    let tail = ClusterOut::Handover {
        to: PEER,
        shard: 1,
        token: 5,
        session: Some(Box::new(session(3, 8))),
    };
    m.handle_shard(ShardId(0), tail, now);
    drain(&mut m);
    m.link_down(PEER, now);
    m.link_up(PEER, now);
    let again = frames_to(&drain(&mut m), PEER);
    assert!(
        again.iter().any(|f| matches!(f, Frame::Move(MoveFrame::Handover { moved: true, .. }))),
        "sent again: {again:?}"
    );
    // A repeated commit gets it again too; the importer dies before acknowledging.
    m.member_down(&peer(PEER));
    let restored = to_shards(&drain(&mut m));
    assert!(
        restored.iter().any(|(s, m)| *s == ShardId(0) && m.starts_with("Restore")),
        "{restored:?}"
    );
}

#[test]
fn an_importer_keeps_its_copy_when_the_exporter_dies_after_the_commit() {
    let (mut m, now) = machine();
    up(&mut m, PEER, now);
    m.handle_shard(ShardId(1), ClusterOut::Commit { to: PEER, token: 6 }, now);
    let sent = frames_to(&drain(&mut m), PEER);
    assert_eq!(sent, vec![Frame::Move(MoveFrame::Commit { shard: 1, token: 6 })]);
    // The commit is sent again when the link comes back.
    m.link_down(PEER, now);
    m.link_up(PEER, now);
    assert!(frames_to(&drain(&mut m), PEER)
        .contains(&Frame::Move(MoveFrame::Commit { shard: 1, token: 6 })));
    m.member_down(&peer(PEER));
    let effects = drain(&mut m);
    let unknown = effects.iter().any(|e| {
        matches!(
            e,
            Effect::ToShard {
                shard: ShardId(1),
                msg: ClusterIn::Handover { token: 6, outcome: HandoverOutcome::Unknown, .. }
            }
        )
    });
    assert!(unknown, "{:?}", to_shards(&effects));
}

/// The `Handover`s the machine handed shard 1 for `token`: (moved, its message count).
fn handovers_to_shard(effects: &[Effect], token: u64) -> Vec<Option<usize>> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ToShard {
                shard: ShardId(1),
                msg: ClusterIn::Handover { token: t, outcome, .. },
            } if *t == token => Some(match outcome {
                HandoverOutcome::Moved(s) => Some(s.messages.len()),
                _ => None,
            }),
            _ => None,
        })
        .collect()
}

#[test]
fn a_handover_after_the_commit_timed_out_is_merged_and_a_repeat_is_not() {
    let (mut m, now) = machine();
    up(&mut m, PEER, now);
    m.handle_shard(ShardId(1), ClusterOut::Commit { to: PEER, token: 6 }, now);
    drain(&mut m);
    // No handover in time: the shard keeps its copy.
    let later = now + crate::cluster::claims::MOVE_TIMEOUT;
    m.handle_timer(later);
    assert_eq!(handovers_to_shard(&drain(&mut m), 6), vec![None], "Unknown: kept");
    // The exporter ended its copy after all: its tail arrives, is acknowledged and goes to
    // the shard (which merges it into the copy it kept).
    let body = crate::cluster::claims::encode_session(&session(2, 8), 0);
    let handover =
        Frame::Move(MoveFrame::Handover { shard: 1, token: 6, moved: true, parts: 0, body });
    feed(&mut m, PEER, std::slice::from_ref(&handover), later);
    let effects = drain(&mut m);
    assert_eq!(handovers_to_shard(&effects, 6), vec![Some(2)], "merged, not dropped");
    let ack = Frame::Move(MoveFrame::HandoverAck { shard: 1, token: 6 });
    assert_eq!(frames_to(&effects, PEER), vec![ack.clone()]);
    // The same handover again (its acknowledgement was lost): acknowledged, not merged twice.
    feed(&mut m, PEER, &[handover], later);
    let effects = drain(&mut m);
    assert!(handovers_to_shard(&effects, 6).is_empty());
    assert_eq!(frames_to(&effects, PEER), vec![ack]);
}

#[test]
fn pieces_of_a_session_are_freed_when_the_link_goes_down_or_the_claim_is_decided() {
    let (mut m, now) = machine();
    up(&mut m, PEER, now);
    let piece = |token| {
        let body = Bytes::from(vec![0u8; 1024]);
        Frame::Move(MoveFrame::SessionPart { shard: 1, token, index: 0, body })
    };
    // The first piece of the handover for commit 6; the link goes down.
    m.handle_shard(ShardId(1), ClusterOut::Commit { to: PEER, token: 6 }, now);
    feed(&mut m, PEER, &[piece(6)], now);
    assert_eq!(m.claims.parts.len(), 1);
    m.link_down(PEER, now);
    drain(&mut m);
    assert!(m.claims.parts.is_empty(), "freed with the link");
    m.link_up(PEER, now);
    // The first piece of a reply to claim 5, which then times out.
    claim(&mut m, 5, now);
    drain(&mut m);
    feed(&mut m, PEER, &[piece(5)], now);
    assert_eq!(m.claims.parts.len(), 1);
    m.handle_timer(now + crate::cluster::claims::CLAIM_TIMEOUT);
    drain(&mut m);
    assert!(m.claims.parts.is_empty(), "freed with the claim");
    // The first piece of the handover for commit 6 again; the commit times out.
    feed(&mut m, PEER, &[piece(6)], now);
    assert_eq!(m.claims.parts.len(), 1);
    m.handle_timer(now + crate::cluster::claims::MOVE_TIMEOUT);
    drain(&mut m);
    assert!(m.claims.parts.is_empty(), "freed with the commit");
}

#[test]
fn pieces_of_sessions_are_bounded_all_together() {
    let (mut m, now) = machine();
    up(&mut m, PEER, now);
    // Bodies of many claims, each under the per-body limit, together past the total one.
    let piece = crate::cluster::wire_move::SESSION_PART_BYTES;
    let body = Bytes::from(vec![0u8; piece]);
    let per_token = SESSION_MOVE_BYTES_MAX / piece;
    let tokens = crate::cluster::claims::PARTS_BYTES_MAX / (per_token * piece) + 2;
    for token in 0..tokens as u64 {
        for index in 0..per_token as u32 {
            let body = body.clone();
            let f = Frame::Move(MoveFrame::SessionPart { shard: 1, token, index, body });
            feed(&mut m, PEER, &[f], now);
        }
    }
    let held: usize = m.claims.parts.values().map(|(_, b)| b.len()).sum();
    assert!(held <= crate::cluster::claims::PARTS_BYTES_MAX, "{held} bytes held");
}
