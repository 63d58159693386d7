//! Persistent sessions moving between simulated nodes (`cluster/moves.rs`), on the test
//! runtime of `shard_tests.rs`.

use super::*;

/// CONNECT through the cluster (its CONNACK may wait for other nodes); the CONNACK.
pub(super) fn connect_persistent(
    cl: &mut Cluster,
    node: usize,
    c: usize,
) -> shardmq_codec::ConnAck {
    let sim = &mut cl.nodes[node];
    sim.open(c);
    let cli = &sim.clients[c];
    let mut properties = shardmq_codec::Properties::default();
    if cli.version == V5 {
        properties.session_expiry_interval_secs = Some(3600);
    }
    let connect = shardmq_codec::Connect {
        protocol: cli.version,
        clean_start: false,
        keep_alive_secs: 0,
        client_id: cli.id.as_str().into(),
        will: None,
        username: None,
        password: None,
        properties,
    };
    sim.send(c, &Packet::Connect(Box::new(connect)));
    cl.run();
    let packets = &mut cl.nodes[node].clients[c].packets;
    let i = packets.iter().position(|p| matches!(p, Packet::ConnAck(_))).expect("CONNACK");
    match packets.remove(i) {
        Packet::ConnAck(a) => a,
        _ => unreachable!(),
    }
}

#[test]
fn a_persistent_session_moves_with_its_subscriptions_and_queued_messages() {
    for version in [V5, V311] {
        let mut cl = Cluster::new(3, 2);
        let p = cl.nodes[2].client("pub", V5);
        cl.nodes[2].connect(p);
        let a = cl.nodes[0].client("mover", version);
        assert!(!connect_persistent(&mut cl, 0, a).session_present);
        cl.subscribe(0, a, &[("q/#", QoS::AtLeastOnce)]);
        cl.nodes[0].drop_conn(a);
        cl.run();
        for i in 0..3 {
            cl.nodes[2].publish(p, "q/x", &format!("m{i}"), QoS::AtLeastOnce, false);
        }
        cl.run();
        // The client comes back on node 1: the session moves there, queue and all.
        let b = cl.nodes[1].client("mover", version);
        let ack = connect_persistent(&mut cl, 1, b);
        assert!(ack.session_present, "{version:?}: Session Present after the move");
        assert_eq!(cl.nodes[1].clients[b].take_payloads(), vec!["m0", "m1", "m2"]);
        // Its subscription moved too: node 2 routes to node 1 now, and node 0 has nothing.
        cl.nodes[2].publish(p, "q/y", "after", QoS::AtLeastOnce, false);
        cl.run();
        assert_eq!(cl.nodes[1].clients[b].take_payloads(), vec!["after"]);
        let old_home = cl.nodes[0].home("mover");
        assert!(cl.nodes[0].shards[old_home].sessions.find("mover").is_none());
    }
}

#[test]
fn an_online_session_moves_with_its_unacknowledged_messages_and_the_old_connection_gets_0x8e() {
    let mut cl = Cluster::new(2, 1);
    let p = cl.nodes[0].client("pub", V5);
    cl.nodes[0].connect(p);
    let a = cl.nodes[0].client("mover", V5);
    connect_persistent(&mut cl, 0, a);
    cl.subscribe(0, a, &[("t", QoS::AtLeastOnce)]);
    cl.nodes[0].clients[a].auto_ack = false;
    cl.nodes[0].publish(p, "t", "unacked", QoS::AtLeastOnce, false);
    cl.run();
    assert_eq!(cl.nodes[0].clients[a].take_payloads(), vec!["unacked"]);
    let b = cl.nodes[1].client("mover", V5);
    let ack = connect_persistent(&mut cl, 1, b);
    assert!(ack.session_present);
    let old = &mut cl.nodes[0].clients[a];
    assert!(old.closed);
    let reason = old.take_packets().into_iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason),
        _ => None,
    });
    assert_eq!(reason, Some(ReasonCode::SESSION_TAKEN_OVER));
    // Sent again on the new node (at least once).
    assert_eq!(cl.nodes[1].clients[b].take_payloads(), vec!["unacked"]);
}

#[test]
fn a_persistent_connect_with_no_session_anywhere_starts_one() {
    let mut cl = Cluster::new(2, 1);
    let a = cl.nodes[1].client("fresh", V5);
    let ack = connect_persistent(&mut cl, 1, a);
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    assert!(!ack.session_present);
}

#[test]
fn a_moved_session_is_answered_once_the_nodes_route_its_subscriptions() {
    let mut cl = Cluster::new(3, 2);
    let p = cl.nodes[2].client("pub", V5);
    cl.nodes[2].connect(p);
    let a = cl.nodes[0].client("mover", V5);
    connect_persistent(&mut cl, 0, a);
    cl.subscribe(0, a, &[("w/#", QoS::AtLeastOnce)]);
    cl.nodes[0].drop_conn(a);
    cl.run();
    cl.hold_acks = true;
    let b = cl.nodes[1].client("mover", V5);
    let sim = &mut cl.nodes[1];
    sim.open(b);
    let properties =
        shardmq_codec::Properties { session_expiry_interval_secs: Some(60), ..Default::default() };
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
    let acked = |cl: &Cluster| {
        cl.nodes[1].clients[b].packets.iter().any(|p| matches!(p, Packet::ConnAck(_)))
    };
    assert!(!acked(&cl), "no CONNACK before the other nodes route the moved subscription");
    cl.hold_acks = false;
    cl.release_acks();
    assert!(acked(&cl));
    cl.nodes[2].publish(p, "w/1", "right after", QoS::AtLeastOnce, false);
    cl.run();
    assert_eq!(cl.nodes[1].clients[b].take_payloads(), vec!["right after"]);
}

#[test]
fn a_newer_connection_during_a_move_keeps_the_session_and_nothing_panics() {
    let mut cl = Cluster::new(2, 1);
    let p = cl.nodes[0].client("pub", V5);
    cl.nodes[0].connect(p);
    let a = cl.nodes[0].client("racer", V5);
    connect_persistent(&mut cl, 0, a);
    cl.subscribe(0, a, &[("r/#", QoS::AtLeastOnce)]);
    cl.nodes[0].drop_conn(a);
    cl.run();
    // c1 on node 1: its session arrives, but the CONNACK waits for the route acks.
    cl.hold_acks = true;
    let c1 = cl.nodes[1].client("racer", V5);
    let sim = &mut cl.nodes[1];
    sim.open(c1);
    let connect = shardmq_codec::Connect {
        protocol: V5,
        clean_start: false,
        keep_alive_secs: 0,
        client_id: "racer".into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    };
    sim.send(c1, &Packet::Connect(Box::new(connect.clone())));
    cl.run();
    // The client gives up on c1 and connects again (Session Expiry 0): it takes the session.
    cl.nodes[1].drop_conn(c1);
    let c2 = cl.nodes[1].client("racer", V5);
    let sim = &mut cl.nodes[1];
    sim.open(c2);
    sim.send(c2, &Packet::Connect(Box::new(connect)));
    cl.run();
    cl.hold_acks = false;
    cl.release_acks();
    let ack = cl.nodes[1].clients[c2].packets.iter().find_map(|p| match p {
        Packet::ConnAck(a) => Some(a.clone()),
        _ => None,
    });
    assert!(ack.expect("c2's CONNACK").session_present);
    cl.nodes[0].publish(p, "r/1", "to c2", QoS::AtLeastOnce, false);
    cl.run();
    assert_eq!(cl.nodes[1].clients[c2].take_payloads(), vec!["to c2"]);
}

#[test]
fn a_moving_session_does_not_publish_its_delayed_will() {
    let mut cl = Cluster::new(2, 1);
    let w = cl.nodes[1].client("watcher", V5);
    cl.nodes[1].connect(w);
    cl.subscribe(1, w, &[("will/#", QoS::AtMostOnce)]);
    let a = cl.nodes[0].client("willing", V5);
    let sim = &mut cl.nodes[0];
    sim.open(a);
    let will = shardmq_codec::Will {
        topic: "will/x".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: shardmq_codec::Properties {
            will_delay_interval_secs: Some(60),
            ..Default::default()
        },
    };
    let connect = shardmq_codec::Connect {
        protocol: V5,
        clean_start: false,
        keep_alive_secs: 0,
        client_id: "willing".into(),
        will: Some(will),
        username: None,
        password: None,
        properties: shardmq_codec::Properties {
            session_expiry_interval_secs: Some(300),
            ..Default::default()
        },
    };
    sim.send(a, &Packet::Connect(Box::new(connect)));
    cl.run();
    cl.nodes[0].drop_conn(a);
    cl.run();
    let b = cl.nodes[1].client("willing", V5);
    assert!(connect_persistent(&mut cl, 1, b).session_present);
    // Marker: a message published after the move reaches the watcher; the will never did.
    let p = cl.nodes[0].client("pub", V5);
    cl.nodes[0].connect(p);
    cl.nodes[0].publish(p, "will/marker", "marker", QoS::AtMostOnce, false);
    cl.run();
    assert_eq!(cl.nodes[1].clients[w].take_payloads(), vec!["marker"]);
}
