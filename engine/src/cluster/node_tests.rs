//! One machine in isolation: membership is injected (as foca would report it) and the
//! effects are read one by one.

use super::*;

use shardmq_codec::{ByteStr, QoS};

use crate::core::mesh::{mesh_cost, Message, Origin};

const PEER: NodeId = NodeId(2);

fn machine() -> (NodeMachine, Instant) {
    let now = Instant::now();
    let s = NodeSettings {
        id: NodeId(1),
        advertise: "10.0.0.1:7000".parse().unwrap(),
        seeds: vec!["10.0.0.1:7000".parse().unwrap()],
        shard_count: 2,
        boot_id: 5,
        rng_seed: 1,
        started_at: now,
        counters: Arc::new(ClusterCounters::default()),
    };
    let mut m = NodeMachine::new(s, now);
    drain(&mut m);
    (m, now)
}

fn peer(node: NodeId) -> Member {
    Member { node: node.0, addr: SocketAddr::from(([10, 0, 0, node.0 as u8], 7000)), boot_id: 9 }
}

/// Makes `node` live with its link up; returns nothing of what that sent.
fn up(m: &mut NodeMachine, node: NodeId, now: Instant) {
    m.member_up(peer(node), now);
    m.link_up(node, now);
    drain(m);
}

fn drain(m: &mut NodeMachine) -> Vec<Effect> {
    std::iter::from_fn(|| m.poll_effect()).collect()
}

/// The frames sent to `node` among `effects`, decoded.
fn frames_to(effects: &[Effect], node: NodeId) -> Vec<Frame> {
    effects
        .iter()
        .flat_map(|e| match e {
            Effect::Send { node: n, frame } if *n == node => {
                let mut buf = bytes::BytesMut::from(&frame[..]);
                let frames: Vec<Frame> =
                    std::iter::from_fn(|| wire::split_frame(&mut buf).unwrap())
                        .map(|f| wire::decode(&f).unwrap())
                        .collect();
                assert!(buf.is_empty(), "a Send holds whole frames");
                frames
            }
            _ => Vec::new(),
        })
        .collect()
}

/// What the machine handed its shards, but route barriers (`answer_barriers`).
fn to_shards(effects: &[Effect]) -> Vec<(ShardId, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ToShard { msg: ClusterIn::RouteBarrier { .. }, .. } => None,
            Effect::ToShard { shard, msg } => Some((*shard, format!("{msg:?}"))),
            _ => None,
        })
        .collect()
}

/// The shards (or shard `only`) answer the route barriers among `effects`, as a shard does
/// once it applied the routes before them; what the machine did then.
fn answer_barriers(
    m: &mut NodeMachine,
    effects: &[Effect],
    only: Option<ShardId>,
    now: Instant,
) -> Vec<Effect> {
    for e in effects {
        if let Effect::ToShard { shard, msg: ClusterIn::RouteBarrier { node, boot, seq } } = e {
            if only.is_none_or(|o| o == *shard) {
                let applied = ClusterOut::RouteApplied { node: *node, boot: *boot, seq: *seq };
                m.handle_shard(*shard, applied, now);
            }
        }
    }
    drain(m)
}

fn filter(m: &mut NodeMachine, shard: u16, f: &'static str, added: bool, seq: u64, now: Instant) {
    let msg = ClusterOut::Filter { filter: ByteStr::from_static(f), added, seq };
    m.handle_shard(ShardId(shard), msg, now);
}

fn ack(m: &mut NodeMachine, from: NodeId, seq: u64, now: Instant) {
    let f = Frame::RouteAck { seq }.encode().unwrap();
    m.handle_frame(from, &f[wire::LENGTH_PREFIX_BYTES..], now);
}

fn message(retain: bool, payload_len: usize) -> Arc<Message> {
    Arc::new(Message {
        topic: ByteStr::from_static("t/1"),
        payload: Bytes::from(vec![7u8; payload_len]),
        qos: QoS::AtMostOnce,
        retain,
        properties: None,
        origin: Origin { shard: ShardId(0), session: 0 },
        received_at_ms: 0,
    })
}

#[test]
fn shards_filters_fold_into_one_node_level_change() {
    let (mut m, now) = machine();
    up(&mut m, PEER, now);
    filter(&mut m, 0, "a/+", true, 1, now);
    filter(&mut m, 1, "a/+", true, 1, now);
    filter(&mut m, 0, "a/+", false, 2, now);
    let sent = frames_to(&drain(&mut m), PEER);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        matches!(&sent[0], Frame::Route { added: true, filter, .. } if filter.as_str() == "a/+")
    );
    filter(&mut m, 1, "a/+", false, 2, now);
    let sent = frames_to(&drain(&mut m), PEER);
    assert!(matches!(&sent[..], [Frame::Route { added: false, .. }]), "{sent:?}");
}

#[test]
fn filter_ack_waits_for_every_live_peer_with_an_up_link() {
    let (mut m, now) = machine();
    // No peer: acknowledged at once.
    filter(&mut m, 0, "a", true, 1, now);
    assert_eq!(to_shards(&drain(&mut m)), vec![(ShardId(0), "FilterAck { seq: 1 }".into())]);

    up(&mut m, PEER, now);
    up(&mut m, NodeId(3), now);
    filter(&mut m, 1, "b", true, 7, now);
    let effects = drain(&mut m);
    assert!(to_shards(&effects).is_empty(), "waits for the peers");
    let Frame::Route { seq, .. } = frames_to(&effects, PEER)[0].clone() else { panic!() };
    ack(&mut m, PEER, seq, now);
    assert!(to_shards(&drain(&mut m)).is_empty(), "node 3 has not acknowledged");
    // An older acknowledgement does not count.
    ack(&mut m, NodeId(3), seq - 1, now);
    assert!(to_shards(&drain(&mut m)).is_empty());
    ack(&mut m, NodeId(3), seq, now);
    assert_eq!(to_shards(&drain(&mut m)), vec![(ShardId(1), "FilterAck { seq: 7 }".into())]);

    // A peer whose link goes down no longer holds an acknowledgement back.
    filter(&mut m, 1, "c", true, 8, now);
    drain(&mut m);
    m.link_down(PEER, now);
    assert!(to_shards(&drain(&mut m)).is_empty(), "node 3 still must acknowledge");
    // ... nor does a peer that goes down.
    m.member_down(&peer(NodeId(3)));
    let effects = drain(&mut m);
    assert!(to_shards(&effects).contains(&(ShardId(1), "FilterAck { seq: 8 }".into())));
    assert!(effects.iter().any(|e| matches!(e, Effect::Hangup { node } if *node == NodeId(3))));
    // The link coming back sends a snapshot that must be acknowledged before new changes.
    m.link_up(PEER, now);
    let sent = frames_to(&drain(&mut m), PEER);
    assert!(matches!(sent.first(), Some(Frame::RoutesReset { .. })), "{sent:?}");
    assert!(matches!(sent.last(), Some(Frame::Register { .. }) | Some(Frame::Resync)));
    let routes = sent.iter().filter(|f| matches!(f, Frame::Route { added: true, .. })).count();
    assert_eq!(routes, 3, "the snapshot holds a, b and c: {sent:?}");
}

#[test]
fn every_publish_is_credited_exactly_once() {
    let (mut m, now) = machine();
    up(&mut m, PEER, now);
    m.member_up(peer(NodeId(3)), now); // live, link not up yet
    drain(&mut m);
    let msg = message(false, 10);
    let cost = mesh_cost(&msg);

    // To a peer with an up link: one Publish effect, no credit from the machine.
    let nodes = NodeSet(1 << PEER.0 | 1 << 3);
    m.handle_shard(ShardId(1), ClusterOut::Publish { nodes, msg: msg.clone() }, now);
    let effects = drain(&mut m);
    assert_eq!(effects.len(), 1);
    match &effects[0] {
        Effect::Publish { nodes, shard, cost: c, .. } => {
            assert_eq!((*nodes, *shard, *c), (NodeSet(1 << PEER.0), ShardId(1), cost));
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(m.counters.messages_dropped.load(Ordering::Relaxed), 1, "node 3's link is down");

    // To nobody reachable: credited at once, once.
    m.handle_shard(
        ShardId(0),
        ClusterOut::Publish { nodes: NodeSet(1 << 3), msg: msg.clone() },
        now,
    );
    assert_eq!(
        to_shards(&drain(&mut m)),
        vec![(ShardId(0), format!("Credit {{ bytes: {cost} }}"))]
    );

    // Too large for a frame: credited at once.
    let big = message(false, wire::FRAME_SIZE_MAX_BYTES);
    m.handle_shard(
        ShardId(0),
        ClusterOut::Publish { nodes: NodeSet(1 << PEER.0), msg: big.clone() },
        now,
    );
    let effects = drain(&mut m);
    assert_eq!(
        to_shards(&effects),
        vec![(ShardId(0), format!("Credit {{ bytes: {} }}", mesh_cost(&big)))]
    );

    // Retained: to every live peer with an up link, whatever `nodes` says.
    m.link_up(NodeId(3), now);
    drain(&mut m);
    m.handle_shard(
        ShardId(0),
        ClusterOut::Publish { nodes: NodeSet::EMPTY, msg: message(true, 1) },
        now,
    );
    match &drain(&mut m)[..] {
        [Effect::Publish { nodes, .. }] => assert_eq!(*nodes, NodeSet(1 << PEER.0 | 1 << 3)),
        e => panic!("{e:?}"),
    }
}

#[test]
fn peer_routes_reach_every_shard_and_are_acknowledged() {
    let (mut m, now) = machine();
    let route =
        Frame::Route { seq: 4, added: true, filter: ByteStr::from_static("x/#") }.encode().unwrap();
    // From a node that is not live: ignored, not acknowledged.
    m.handle_frame(PEER, &route[4..], now);
    assert!(drain(&mut m).is_empty());

    // Live but before its snapshot: applied, not acknowledged (an acknowledgement covers
    // every earlier change, and this node may have missed some).
    up(&mut m, PEER, now);
    m.handle_frame(PEER, &route[4..], now);
    let effects = drain(&mut m);
    let want = "Route { node: NodeId(2), filter: \"x/#\", added: true }";
    assert_eq!(to_shards(&effects), vec![(ShardId(0), want.into()), (ShardId(1), want.into())]);
    assert!(frames_to(&effects, PEER).is_empty());
    assert_eq!(m.counters.remote_routes.load(Ordering::Relaxed), 1);

    // After a snapshot (here: the same route), changes are acknowledged one by one.
    let frame = |f: Frame| f.encode().unwrap();
    let again = Frame::Route { seq: 3, added: true, filter: ByteStr::from_static("x/#") };
    for f in [Frame::RoutesReset { seq: 3 }, again, Frame::RoutesDone { seq: 3 }] {
        m.handle_frame(PEER, &frame(f)[4..], now);
    }
    let effects = drain(&mut m);
    assert!(to_shards(&effects).is_empty(), "{effects:?}");
    // Acknowledged once every shard applied the snapshot, not before.
    assert!(frames_to(&effects, PEER).is_empty(), "no RouteAck before the shards applied it");
    let after_one = answer_barriers(&mut m, &effects, Some(ShardId(0)), now);
    assert!(frames_to(&after_one, PEER).is_empty(), "shard 1 has not applied it yet");
    let after_all = answer_barriers(&mut m, &effects, Some(ShardId(1)), now);
    assert_eq!(frames_to(&after_all, PEER), vec![Frame::RouteAck { seq: 3 }]);
    m.handle_frame(PEER, &route[4..], now);
    let effects = drain(&mut m);
    assert!(frames_to(&effects, PEER).is_empty());
    let acks = answer_barriers(&mut m, &effects, None, now);
    assert_eq!(frames_to(&acks, PEER), vec![Frame::RouteAck { seq: 4 }]);

    // A snapshot that holds the route again changes nothing on the shards; an empty one
    // removes it.
    let again = Frame::Route { seq: 5, added: true, filter: ByteStr::from_static("x/#") };
    for f in [Frame::RoutesReset { seq: 5 }, again, Frame::RoutesDone { seq: 5 }] {
        m.handle_frame(PEER, &frame(f)[4..], now);
    }
    let effects = drain(&mut m);
    assert!(to_shards(&effects).is_empty(), "{effects:?}");
    let acks = answer_barriers(&mut m, &effects, None, now);
    assert_eq!(frames_to(&acks, PEER), vec![Frame::RouteAck { seq: 5 }]);
    for f in [Frame::RoutesReset { seq: 6 }, Frame::RoutesDone { seq: 6 }] {
        m.handle_frame(PEER, &frame(f)[4..], now);
    }
    let gone = "Route { node: NodeId(2), filter: \"x/#\", added: false }";
    assert_eq!(
        to_shards(&drain(&mut m)),
        vec![(ShardId(0), gone.into()), (ShardId(1), gone.into())]
    );
    assert_eq!(m.counters.remote_routes.load(Ordering::Relaxed), 0);
}

#[test]
fn a_snapshot_to_one_peer_does_not_hold_back_another_peers_acknowledgement() {
    let (mut m, now) = machine();
    up(&mut m, PEER, now);
    filter(&mut m, 0, "a", true, 1, now);
    let Frame::Route { seq, .. } = frames_to(&drain(&mut m), PEER)[0].clone() else { panic!() };
    ack(&mut m, PEER, seq, now);
    drain(&mut m);
    // Node 3 comes up: its snapshot takes a sequence number PEER never sees.
    up(&mut m, NodeId(3), now);
    let (route_seq, _) = m.ack_state();
    ack(&mut m, NodeId(3), route_seq, now);
    drain(&mut m);
    // A change that does not change the node's set waits for nothing new.
    filter(&mut m, 1, "a", true, 1, now);
    assert_eq!(to_shards(&drain(&mut m)), vec![(ShardId(1), "FilterAck { seq: 1 }".into())]);
}

#[test]
fn a_publish_frame_goes_to_the_origin_shards_counterpart() {
    let (mut m, now) = machine();
    let msg = message(false, 3);
    let frame = wire::encode_publish(&msg, ShardId(5), 0).unwrap();
    m.handle_frame(PEER, &frame[4..], now);
    match &drain(&mut m)[..] {
        [Effect::ToShard { shard, msg: ClusterIn::Publish { from, msg } }] => {
            assert_eq!((*shard, *from), (ShardId(1), PEER), "5 % 2 shards");
            assert_eq!(msg.origin, Origin::REMOTE);
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(m.counters.messages_in.load(Ordering::Relaxed), 1);
}

/// A client id whose owner among this node and `PEER` is `want`.
fn id_owned_by(want: NodeId) -> ByteStr {
    (0..)
        .map(|i| format!("client-{i}"))
        .find(|c| {
            super::super::registry::owner(c.as_bytes(), [NodeId(1), PEER].into_iter()) == want
        })
        .map(|c| ByteStr::from_bytes(Bytes::from(c)).unwrap())
        .unwrap()
}

#[test]
fn the_later_connection_of_a_client_id_takes_over() {
    let (mut m, now) = machine();
    up(&mut m, PEER, now);
    let id = id_owned_by(NodeId(1));
    let kick = |token, by: u16| {
        format!("Kick {{ client_id: {:?}, token: {token}, by: NodeId({by}) }}", id.as_str())
    };
    // Both connections on this node, the owner: the first is kicked.
    m.handle_shard(ShardId(0), ClusterOut::Connected { client_id: id.clone(), token: 1 }, now);
    m.handle_shard(ShardId(1), ClusterOut::Connected { client_id: id.clone(), token: 2 }, now);
    assert_eq!(to_shards(&drain(&mut m)), vec![(ShardId(0), kick(1, 1))]);
    assert_eq!(m.counters.takeovers.load(Ordering::Relaxed), 1);

    // A later registration from the peer: the local connection is kicked.
    let later = wire::Stamp { ms: u64::MAX / 2, counter: 0, node: PEER.0 };
    let reg = Frame::Register { stamp: later, client_id: id.clone(), shard: 0, token: 9 };
    m.handle_frame(PEER, &reg.encode().unwrap()[4..], now);
    assert_eq!(to_shards(&drain(&mut m)), vec![(ShardId(1), kick(2, PEER.0))]);

    // An earlier registration from the peer: the peer's connection is kicked, by a frame.
    let earlier = wire::Stamp { ms: 0, counter: 0, node: PEER.0 };
    let reg = Frame::Register { stamp: earlier, client_id: id.clone(), shard: 1, token: 10 };
    m.handle_frame(PEER, &reg.encode().unwrap()[4..], now);
    let kicks = frames_to(&drain(&mut m), PEER);
    assert!(matches!(&kicks[..], [Frame::Kick { token: 10, shard: 1, .. }]), "{kicks:?}");
    // It may have been lost with the link: sent again when the link comes back.
    m.link_down(PEER, now);
    m.link_up(PEER, now);
    let again = frames_to(&drain(&mut m), PEER);
    assert!(again.iter().any(|f| matches!(f, Frame::Kick { token: 10, .. })), "{again:?}");

    // An id the peer owns is registered there; a Kick frame from it ends the connection.
    let theirs = id_owned_by(PEER);
    m.handle_shard(ShardId(1), ClusterOut::Connected { client_id: theirs.clone(), token: 3 }, now);
    let sent = frames_to(&drain(&mut m), PEER);
    let [Frame::Register { stamp, token: 3, shard: 1, .. }] = sent[..] else { panic!("{sent:?}") };
    let k = Frame::Kick { stamp, client_id: theirs.clone(), shard: 1, token: 3, by: PEER };
    m.handle_frame(PEER, &k.encode().unwrap()[4..], now);
    assert_eq!(to_shards(&drain(&mut m)).len(), 1);
    // A second Kick for the same connection does nothing.
    m.handle_frame(PEER, &k.encode().unwrap()[4..], now);
    assert!(drain(&mut m).is_empty());
}

#[test]
fn a_bad_hello_is_refused() {
    let (mut m, _) = machine();
    let hello = |version, node| {
        Frame::Hello { version, node, boot_id: 1, shard_count: 1, clock_ms: 0 }.encode().unwrap()
    };
    assert_eq!(m.handle_hello(&hello(PROTOCOL_VERSION, PEER)[4..]), Ok(PEER));
    assert_eq!(m.handle_hello(&hello(9, PEER)[4..]), Err(WireError::Version { theirs: 9 }));
    assert!(m.handle_hello(&hello(PROTOCOL_VERSION, NodeId(1))[4..]).is_err(), "our own id");
    assert!(m.handle_hello(&hello(PROTOCOL_VERSION, NodeId(64))[4..]).is_err(), "out of range");
    let ack = Frame::RouteAck { seq: 1 }.encode().unwrap();
    assert_eq!(m.handle_hello(&ack[4..]), Err(WireError::NotHello));
    assert_eq!(m.handle_hello(&[]), Err(WireError::Empty));
}

#[test]
fn a_large_snapshot_goes_in_batches_of_whole_frames() {
    let (mut m, now) = machine();
    for i in 0..10_000u64 {
        let f = ByteStr::from_bytes(Bytes::from(format!("sensors/{i}/+"))).unwrap();
        m.handle_shard(ShardId(0), ClusterOut::Filter { filter: f, added: true, seq: i + 1 }, now);
    }
    drain(&mut m);
    up_without_drain(&mut m, PEER, now);
    let effects = drain(&mut m);
    let sends = effects.iter().filter(|e| matches!(e, Effect::Send { .. })).count();
    assert!(sends < 10, "{sends} sends for 10,000 filters");
    let frames = frames_to(&effects, PEER);
    assert!(matches!(frames.first(), Some(Frame::RoutesReset { .. })));
    let routes = frames.iter().filter(|f| matches!(f, Frame::Route { added: true, .. })).count();
    assert_eq!(routes, 10_000);
    assert!(frames.iter().any(|f| matches!(f, Frame::RoutesDone { .. })));
}

fn up_without_drain(m: &mut NodeMachine, node: NodeId, now: Instant) {
    m.member_up(peer(node), now);
    drain(m);
    m.link_up(node, now);
}

#[path = "move_node_tests.rs"]
mod moves;
