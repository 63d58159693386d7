//! The two-phase session move loses no acknowledged message (ARCHITECTURE.md "Persistent
//! sessions move (two-phase)"): a lost reply, commit or handover; a session larger than a
//! frame, and one past the move limit; messages published while the move is under way; two
//! connections of one client id racing on two nodes. Each test counts the publisher's
//! PUBACKs and checks that the subscriber got every acknowledged message (duplicates allowed
//! and counted: QoS 1 with DUP).

use super::move_runtime::Kind;
use super::moves::connect_persistent;
use super::*;

/// PUBACKs client `c` on `node` received (taken).
pub(super) fn pubacks(cl: &mut Cluster, node: usize, c: usize) -> usize {
    let packets = cl.nodes[node].clients[c].take_packets();
    packets.iter().filter(|p| matches!(p, Packet::PubAck(_))).count()
}

/// A persistent session "mover" on node 0 subscribed to `q/#` at QoS 1, offline, with
/// `queued` messages published by "pub" on node 2 and acknowledged. Returns the cluster and
/// the publisher.
pub(super) fn offline_session(
    nodes: usize,
    queued: usize,
    limits: Limits,
    size: usize,
) -> (Cluster, usize) {
    let mut cl = Cluster::with_limits(nodes, 2, limits);
    let p = cl.nodes[2].client("pub", V5);
    cl.nodes[2].connect(p);
    let a = cl.nodes[0].client("mover", V5);
    assert!(!connect_persistent(&mut cl, 0, a).session_present);
    cl.subscribe(0, a, &[("q/#", QoS::AtLeastOnce)]);
    cl.nodes[0].drop_conn(a);
    cl.run();
    let pad = "x".repeat(size);
    for i in 0..queued {
        cl.nodes[2].publish(p, "q/x", &format!("m{i}{pad}"), QoS::AtLeastOnce, false);
    }
    cl.run();
    assert_eq!(pubacks(&mut cl, 2, p), queued);
    (cl, p)
}

/// Sends a persistent CONNECT for "mover" on `node` and runs; the client.
pub(super) fn reconnect(cl: &mut Cluster, node: usize) -> usize {
    reconnect_expiring(cl, node, 600)
}

/// Sends a persistent CONNECT for "mover" with Session Expiry Interval `expiry_secs` on
/// `node` and runs; the client.
pub(super) fn reconnect_expiring(cl: &mut Cluster, node: usize, expiry_secs: u32) -> usize {
    let b = cl.nodes[node].client("mover", V5);
    let sim = &mut cl.nodes[node];
    sim.open(b);
    let properties = shardmq_codec::Properties {
        session_expiry_interval_secs: Some(expiry_secs),
        ..Default::default()
    };
    let connect = shardmq_codec::Connect {
        protocol: V5,
        clean_start: false,
        keep_alive_secs: 0,
        client_id: "mover".into(),
        will: None,
        username: None,
        password: None,
        properties,
    };
    sim.send(b, &Packet::Connect(Box::new(connect)));
    cl.run();
    b
}

pub(super) fn connack(cl: &mut Cluster, node: usize, c: usize) -> Option<shardmq_codec::ConnAck> {
    cl.nodes[node].clients[c].packets.iter().find_map(|p| match p {
        Packet::ConnAck(a) => Some(a.clone()),
        _ => None,
    })
}

/// Checks `got` holds each of `m0 .. m{n-1}` (payloads cut to their name) at least once, in
/// first-arrival order; returns the number of duplicates.
pub(super) fn every_message_once_or_more(got: &[String], n: usize) -> usize {
    let names: Vec<&str> = got.iter().map(|g| g.trim_end_matches('x')).collect();
    let mut firsts = Vec::new();
    for name in &names {
        if !firsts.contains(name) {
            firsts.push(name);
        }
    }
    let want: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    let firsts: Vec<String> = firsts.iter().map(|s| s.to_string()).collect();
    assert_eq!(firsts, want, "every acknowledged message, in order of first arrival");
    names.len() - n
}

/// Three nodes; the session's client connected on node 0 (Session Present) with three QoS 1
/// messages from node 2 it has not acknowledged: the cluster, the publisher, the client.
pub(super) fn connected_with_unacked() -> (Cluster, usize, usize) {
    let (mut cl, p) = offline_session(3, 0, Limits::default(), 0);
    let a = reconnect(&mut cl, 0);
    assert!(connack(&mut cl, 0, a).expect("CONNACK").session_present);
    cl.nodes[0].clients[a].auto_ack = false;
    for i in 0..3 {
        cl.nodes[2].publish(p, "q/x", &format!("m{i}"), QoS::AtLeastOnce, false);
    }
    cl.run();
    assert_eq!(cl.nodes[0].clients[a].take_payloads().len(), 3);
    (cl, p, a)
}

#[test]
fn a_lost_claim_reply_keeps_the_session_where_it_was() {
    let (mut cl, p) = offline_session(3, 3, Limits::default(), 0);
    // The exporter's reply is lost with its link: the claim cannot decide.
    cl.moves.lose = vec![Kind::ClaimReply];
    let b = reconnect(&mut cl, 1);
    assert!(connack(&mut cl, 1, b).is_none(), "no CONNACK while an asked node owes its answer");
    // Published meanwhile: the session is still on node 0, routed to, queueing.
    cl.nodes[2].publish(p, "q/x", "m3", QoS::AtLeastOnce, false);
    cl.run();
    cl.time_out_claims();
    let ack = connack(&mut cl, 1, b).expect("CONNACK");
    assert_eq!(ack.reason, ReasonCode::SERVER_UNAVAILABLE, "refused: try again");
    assert!(!ack.session_present);
    cl.time_out_moves();
    cl.nodes[2].publish(p, "q/x", "m4", QoS::AtLeastOnce, false);
    cl.run();
    assert_eq!(pubacks(&mut cl, 2, p), 2);
    // The client tries again, the links are back: everything is there, in order.
    cl.links_back();
    let c = reconnect(&mut cl, 1);
    assert!(connack(&mut cl, 1, c).expect("CONNACK").session_present);
    let got = cl.nodes[1].clients[c].take_payloads();
    assert_eq!(every_message_once_or_more(&got, 5), 0);
}

#[test]
fn a_lost_commit_or_handover_loses_nothing() {
    for lost in [Kind::Commit, Kind::Handover] {
        let (mut cl, p) = offline_session(3, 3, Limits::default(), 0);
        cl.moves.lose = vec![lost];
        let b = reconnect(&mut cl, 1);
        assert!(connack(&mut cl, 1, b).is_none(), "{lost:?}: no CONNACK before the handover");
        // Both copies are routed to now (or only node 1's, after a handover was lost).
        for i in 3..6 {
            cl.nodes[2].publish(p, "q/x", &format!("m{i}"), QoS::AtLeastOnce, false);
        }
        cl.run();
        assert_eq!(pubacks(&mut cl, 2, p), 3);
        // The link comes back: the commit (or the handover) is sent again.
        cl.links_back();
        let ack = connack(&mut cl, 1, b).expect("CONNACK after the handover");
        assert!(ack.session_present, "{lost:?}");
        let got = cl.nodes[1].clients[b].take_payloads();
        let dups = every_message_once_or_more(&got, 6);
        assert!(dups <= 3, "{lost:?}: at most the window's messages twice, got {got:?}");
        let home = cl.nodes[0].home("mover");
        assert!(cl.nodes[0].shards[home].sessions.find("mover").is_none(), "{lost:?}");
    }
}

#[test]
fn a_session_larger_than_a_frame_moves_in_pieces() {
    // 40 messages of 64 KiB: a 2.5 MiB session, three pieces or more on the link.
    let (mut cl, _) = offline_session(3, 40, Limits::default(), 64 * 1024);
    let b = reconnect(&mut cl, 1);
    assert!(connack(&mut cl, 1, b).expect("CONNACK").session_present);
    assert!(cl.moves.parts_max >= 3, "cut in {} pieces", cl.moves.parts_max);
    let got = cl.nodes[1].clients[b].take_payloads();
    assert_eq!(every_message_once_or_more(&got, 40), 0);
}

#[test]
fn a_session_past_the_move_limit_stays_and_the_connect_is_refused() {
    let limits = Limits { session_queue_bytes_max: 64 * 1024 * 1024, ..Limits::default() };
    // 34 messages of 1 MiB: past the 32 MiB limit.
    let (mut cl, p) = offline_session(3, 34, limits, 1024 * 1024);
    let b = reconnect(&mut cl, 1);
    let ack = connack(&mut cl, 1, b).expect("CONNACK");
    assert_eq!(ack.reason, ReasonCode::QUOTA_EXCEEDED);
    // Nothing deleted: the session is on node 0, still routed to.
    cl.nodes[2].publish(p, "q/x", "m34", QoS::AtLeastOnce, false);
    cl.run();
    assert_eq!(pubacks(&mut cl, 2, p), 1);
    let a = reconnect(&mut cl, 0);
    assert!(connack(&mut cl, 0, a).expect("CONNACK").session_present);
    let got = cl.nodes[0].clients[a].take_payloads();
    assert_eq!(every_message_once_or_more(&got, 35), 0);
}

#[test]
fn messages_published_while_the_session_moves_all_arrive() {
    let (mut cl, p) = offline_session(3, 3, Limits::default(), 0);
    // Publishers on the exporter (node 0) and the importer (node 1) too.
    let p0 = cl.nodes[0].client("pub0", V5);
    cl.nodes[0].connect(p0);
    let p1 = cl.nodes[1].client("pub1", V5);
    cl.nodes[1].connect(p1);
    cl.run();
    cl.hold_acks = true;
    cl.moves.hold = vec![Kind::ClaimReply, Kind::Commit];
    let b = reconnect(&mut cl, 1);
    let mut n = 3;
    let mut publish = |cl: &mut Cluster| {
        for (node, c) in [(2, p), (0, p0), (1, p1)] {
            cl.nodes[node].publish(c, "q/x", &format!("m{n}"), QoS::AtLeastOnce, false);
            cl.run();
            n += 1;
        }
    };
    // Snapshot taken on node 0, not arrived on node 1: only node 0's copy is routed to.
    publish(&mut cl);
    cl.release_moves(Kind::ClaimReply);
    // Imported on node 1, its routes not acknowledged yet.
    publish(&mut cl);
    cl.hold_acks = false;
    cl.release_acks();
    // Routes acknowledged, the commit not arrived: both copies are routed to.
    publish(&mut cl);
    assert!(connack(&mut cl, 1, b).is_none(), "no CONNACK before the handover");
    cl.release_moves(Kind::Commit);
    assert!(connack(&mut cl, 1, b).expect("CONNACK").session_present);
    // After the move.
    publish(&mut cl);
    let acked = pubacks(&mut cl, 2, p) + pubacks(&mut cl, 0, p0) + pubacks(&mut cl, 1, p1);
    assert_eq!(acked, 12);
    let got = cl.nodes[1].clients[b].take_payloads();
    let dups = every_message_once_or_more(&got, 15);
    // Only messages routed to both copies may arrive twice: published between the moment
    // the publishing shard applied node 1's routes (here at once, before the acknowledgements)
    // and the commit.
    assert!(dups <= 6, "{dups} duplicates: {got:?}");
}

#[test]
fn a_kick_keeps_the_session_and_the_winner_pulls_it() {
    // The client is connected on node 0 with messages it has not acknowledged.
    let (mut cl, p, a) = connected_with_unacked();
    // Node 1 cannot reach node 0 when the same client id connects there: its claim finds
    // nothing and it starts a session; the owner then kicks the older connection.
    cl.moves.unreachable = vec![0];
    let b = reconnect(&mut cl, 1);
    assert!(!connack(&mut cl, 1, b).expect("CONNACK").session_present);
    assert!(cl.nodes[0].clients[a].closed, "the older connection is kicked");
    // The kicked session was offered and pulled: its messages and subscription are here.
    cl.nodes[2].publish(p, "q/x", "m3", QoS::AtLeastOnce, false);
    cl.run();
    assert_eq!(pubacks(&mut cl, 2, p), 4);
    let got = cl.nodes[1].clients[b].take_payloads();
    assert_eq!(every_message_once_or_more(&got, 4), 0);
    let home = cl.nodes[0].home("mover");
    assert!(cl.nodes[0].shards[home].sessions.find("mover").is_none(), "moved, not copied");
}

#[test]
fn a_kick_by_a_clean_start_discards_the_old_session() {
    let (mut cl, _) = offline_session(3, 0, Limits::default(), 0);
    let a = reconnect(&mut cl, 0);
    assert!(connack(&mut cl, 0, a).expect("CONNACK").session_present);
    let b = cl.nodes[1].client("mover", V5);
    cl.nodes[1].connect(b);
    cl.run();
    assert!(cl.nodes[0].clients[a].closed, "the older connection is kicked");
    let home = cl.nodes[0].home("mover");
    assert!(
        cl.nodes[0].shards[home].sessions.find("mover").is_none(),
        "a clean start discards the session [MQTT-3.1.2-4]"
    );
}

#[test]
fn a_client_that_connects_twice_while_its_session_moves_gets_it_whole() {
    let (mut cl, p) = offline_session(3, 3, Limits::default(), 0);
    // Both claims' snapshots are on their way when the second CONNECT supersedes the first.
    cl.moves.hold = vec![Kind::ClaimReply];
    let first = reconnect(&mut cl, 1);
    let second = reconnect(&mut cl, 1);
    assert!(cl.nodes[1].clients[first].closed, "the older CONNECT gives way");
    cl.nodes[2].publish(p, "q/x", "m3", QoS::AtLeastOnce, false);
    cl.run();
    cl.release_moves(Kind::ClaimReply);
    let ack = connack(&mut cl, 1, second).expect("CONNACK");
    assert!(ack.session_present);
    cl.nodes[2].publish(p, "q/x", "m4", QoS::AtLeastOnce, false);
    cl.run();
    assert_eq!(pubacks(&mut cl, 2, p), 2);
    let got = cl.nodes[1].clients[second].take_payloads();
    assert_eq!(every_message_once_or_more(&got, 5), 0, "{got:?}");
}
