//! A moving session merged into one already there, and what its exporter does between the
//! snapshot and the commit (ARCHITECTURE.md "Persistent sessions move (two-phase)"): the
//! unacknowledged messages of the session it merges into stay; messages the exporter drops
//! meanwhile (expired, or the oldest of a full queue) do not make it send its snapshot again;
//! the session does not expire there while it moves; a handover that comes after the
//! importer stopped waiting is merged, not dropped.

use std::time::Duration;

use super::move_loss::{
    connack, connected_with_unacked, every_message_once_or_more, offline_session, pubacks,
    reconnect, reconnect_expiring,
};
use super::move_runtime::Kind;
use super::*;

#[test]
fn a_pulled_session_merged_into_an_offline_one_keeps_its_unacknowledged_messages() {
    // The client is connected on node 0 with messages it has not acknowledged.
    let (mut cl, p, a) = connected_with_unacked();
    // It connects on node 1, which reaches no node: a new session there. Node 0 kicks its
    // connection and offers the session; node 1 pulls it, the snapshot held on the way.
    cl.moves.unreachable = vec![0, 2];
    cl.moves.hold = vec![Kind::ClaimReply];
    let b = reconnect(&mut cl, 1);
    assert!(!connack(&mut cl, 1, b).expect("CONNACK").session_present);
    assert!(cl.nodes[0].clients[a].closed, "the older connection is kicked");
    // On node 1 it subscribes, gets a message it does not acknowledge, and leaves.
    cl.subscribe(1, b, &[("r/#", QoS::AtLeastOnce)]);
    cl.nodes[1].clients[b].auto_ack = false;
    cl.nodes[2].publish(p, "r/x", "n0", QoS::AtLeastOnce, false);
    cl.run();
    assert_eq!(cl.nodes[1].clients[b].take_payloads(), vec!["n0"]);
    cl.nodes[1].drop_conn(b);
    cl.run();
    // The snapshot arrives and is merged into the offline session on node 1.
    cl.release_moves(Kind::ClaimReply);
    assert_eq!(pubacks(&mut cl, 2, p), 4);
    let c = reconnect(&mut cl, 1);
    assert!(connack(&mut cl, 1, c).expect("CONNACK").session_present);
    let mut got = cl.nodes[1].clients[c].take_payloads();
    got.sort();
    assert_eq!(got, vec!["m0", "m1", "m2", "n0"], "n0 unacknowledged on node 1, kept");
}

#[test]
fn a_message_expiring_on_the_exporter_during_the_move_is_not_sent_twice() {
    let (mut cl, p) = offline_session(3, 0, Limits::default(), 0);
    let expiring =
        shardmq_codec::Properties { message_expiry_interval_secs: Some(1), ..Default::default() };
    cl.nodes[2].publish(p, "q/x", "m0", QoS::AtLeastOnce, false);
    cl.nodes[2].publish_props(p, "q/x", "gone", QoS::AtLeastOnce, false, expiring);
    cl.nodes[2].publish(p, "q/x", "m1", QoS::AtLeastOnce, false);
    cl.run();
    assert_eq!(pubacks(&mut cl, 2, p), 3);
    cl.moves.hold = vec![Kind::Commit];
    let b = reconnect(&mut cl, 1);
    // Before the commit arrives, node 0's offline queue sheds the expired message from its
    // middle [MQTT-3.3.2-5]; nothing arrives there since the snapshot.
    cl.nodes[0].advance(Duration::from_secs(2));
    cl.run();
    cl.release_moves(Kind::Commit);
    assert!(connack(&mut cl, 1, b).expect("CONNACK").session_present);
    // The snapshot (taken before the message expired, which node 1's clock has not reached)
    // and an empty tail: each message once.
    assert_eq!(cl.nodes[1].clients[b].take_payloads(), vec!["m0", "gone", "m1"]);
}

#[test]
fn the_oldest_messages_dropped_by_a_full_queue_during_the_move_are_not_sent_twice() {
    let limits = Limits { session_queue_messages_max: 2, ..Limits::default() };
    let (mut cl, p) = offline_session(3, 0, limits, 0);
    // One message sent and not acknowledged (in flight, ahead of the queue), then the client
    // leaves and the queue fills.
    let a = reconnect(&mut cl, 0);
    cl.nodes[0].clients[a].auto_ack = false;
    cl.nodes[2].publish(p, "q/x", "m0", QoS::AtLeastOnce, false);
    cl.run();
    assert_eq!(cl.nodes[0].clients[a].take_payloads(), vec!["m0"]);
    cl.nodes[0].drop_conn(a);
    cl.run();
    for i in 1..3 {
        cl.nodes[2].publish(p, "q/x", &format!("m{i}"), QoS::AtLeastOnce, false);
    }
    cl.run();
    // The snapshot (m0 in flight, m1 m2 queued) is on its way when m3 arrives on node 0
    // only: its full queue drops m1 (the oldest) for it.
    cl.moves.hold = vec![Kind::ClaimReply];
    let b = reconnect(&mut cl, 1);
    cl.nodes[2].publish(p, "q/x", "m3", QoS::AtLeastOnce, false);
    cl.run();
    assert_eq!(pubacks(&mut cl, 2, p), 4);
    cl.release_moves(Kind::ClaimReply);
    assert!(connack(&mut cl, 1, b).expect("CONNACK").session_present);
    // The tail is m3 alone.
    let got = cl.nodes[1].clients[b].take_payloads();
    assert_eq!(every_message_once_or_more(&got, 4), 0, "{got:?}");
}

#[test]
fn a_session_whose_expiry_passes_on_the_exporter_during_the_move_still_moves() {
    let mut cl = Cluster::new(3, 2);
    let p = cl.nodes[2].client("pub", V5);
    cl.nodes[2].connect(p);
    let a = reconnect_expiring(&mut cl, 0, 1);
    assert!(!connack(&mut cl, 0, a).expect("CONNACK").session_present);
    cl.subscribe(0, a, &[("q/#", QoS::AtLeastOnce)]);
    cl.nodes[0].drop_conn(a);
    cl.run();
    for i in 0..3 {
        cl.nodes[2].publish(p, "q/x", &format!("m{i}"), QoS::AtLeastOnce, false);
    }
    cl.run();
    assert_eq!(pubacks(&mut cl, 2, p), 3);
    // The client connects on node 1 in time; its session's expiry passes on node 0 before
    // the commit arrives there.
    cl.moves.hold = vec![Kind::Commit];
    let b = reconnect(&mut cl, 1);
    cl.nodes[0].advance(Duration::from_secs(3));
    cl.run();
    cl.release_moves(Kind::Commit);
    let ack = connack(&mut cl, 1, b).expect("CONNACK");
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    assert!(ack.session_present);
    assert_eq!(cl.nodes[1].clients[b].take_payloads(), vec!["m0", "m1", "m2"]);
    let home = cl.nodes[0].home("mover");
    assert!(cl.nodes[0].shards[home].sessions.find("mover").is_none(), "moved");
    assert!(!cl.nodes[0].shards[home].cluster_exporting("mover"));
}

#[test]
fn a_handover_after_the_importer_stopped_waiting_is_merged() {
    let (mut cl, p) = offline_session(3, 3, Limits::default(), 0);
    cl.moves.hold = vec![Kind::ClaimReply, Kind::Handover];
    let b = reconnect(&mut cl, 1);
    // Published after the snapshot, before node 1 routes the session: on node 0 only.
    cl.nodes[2].publish(p, "q/x", "m3", QoS::AtLeastOnce, false);
    cl.run();
    assert_eq!(pubacks(&mut cl, 2, p), 1);
    // Node 1 imports and commits; node 0 ends its copy, its handover (m3) held on the way.
    cl.release_moves(Kind::ClaimReply);
    assert!(connack(&mut cl, 1, b).is_none());
    // Node 1 stops waiting: it keeps its copy and answers the CONNECT.
    cl.time_out_moves();
    assert!(connack(&mut cl, 1, b).expect("CONNACK").session_present);
    assert_eq!(cl.nodes[1].clients[b].take_payloads(), vec!["m0", "m1", "m2"]);
    // The handover arrives late: merged into the live session.
    cl.release_moves(Kind::Handover);
    assert_eq!(cl.nodes[1].clients[b].take_payloads(), vec!["m3"]);
}
