//! The cluster runtime (`engine/src/cluster/runtime.rs`) with real sockets: two or three
//! nodes in one process on 127.0.0.1 (port 0), each with a fake `ShardSink` that records
//! what the runtime hands to its shards.
//!
//! Every wait is for a marker (a message that must arrive, a status that must be reached),
//! with a generous deadline as the failure guard; nothing sleeps and then asserts.

mod cluster_kit;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use shardmq_codec::QoS;
use shardmq_engine::cluster::node::{LinkState, MemberState};
use shardmq_engine::cluster::wire::{Frame, PROTOCOL_VERSION};
use shardmq_engine::core::cluster::{ClusterIn, ClusterOut, NodeId, NodeSet};
use shardmq_engine::core::ids::ShardId;
use shardmq_engine::core::mesh::{mesh_cost, Origin};

use cluster_kit::{add_filter, measure_throughput, message, Node, PATIENCE};

/// Two nodes, B joining through A, converged.
fn pair(a_id: u16, b_id: u16) -> (Node, Node) {
    let a = Node::start(a_id, &[]);
    let b = Node::start(b_id, &[a.addr()]);
    a.wait_converged(&[b.id]);
    b.wait_converged(&[a.id]);
    (a, b)
}

#[test]
fn membership_converges_and_links_come_up() {
    let a = Node::start(1, &[]);
    let b = Node::start(2, &[a.addr()]);
    let c = Node::start(3, &[b.addr(), a.addr()]);
    a.wait_converged(&[b.id, c.id]);
    b.wait_converged(&[a.id, c.id]);
    let s = c.wait_status("converged", |s| {
        s.members.len() == 3 && s.members.iter().all(|m| m.state == MemberState::Alive)
    });
    assert_eq!(s.node, c.id);
    assert_eq!(s.members[0].node, c.id, "this node first");
    assert_eq!(s.members[0].link, LinkState::SelfNode);
    assert_eq!(s.members[0].addr, c.addr());
    c.wait_converged(&[a.id, b.id]);
    assert_eq!(a.counters.members.load(Relaxed), 3);
    assert_eq!(a.counters.links_up.load(Relaxed), 2);
    assert_eq!(a.counters.node_id.load(Relaxed), 1);
    // A graceful stop: the others hear it leave (not by failure detection) and drop it.
    c.rt.stop();
    a.wait_status("without node 3", |s| {
        s.members.iter().all(|m| m.node != NodeId(3) || m.state == MemberState::Down)
    });
    a.wait_for("NodeDown(3)", |_, m| matches!(m, ClusterIn::NodeDown(NodeId(3))).then_some(()));
}

#[test]
fn a_filter_becomes_a_route_on_the_peer_and_is_acknowledged() {
    let (a, b) = pair(11, 12);
    add_filter(&a, &b, "sensors/+/temp", 1);
    add_filter(&b, &a, "#", 1);
    assert_eq!(b.counters.remote_routes.load(Relaxed), 1);
}

#[test]
fn a_publish_crosses_and_is_credited_exactly_once() {
    let (a, b) = pair(21, 22);
    add_filter(&a, &b, "t/+", 1);
    let tx = b.rt.tx();
    // Two messages of different cost: the second's credit is the marker that no second
    // credit of the first came before it.
    let first = message("t/1", b"hello");
    let second = message("t/2", b"a longer payload");
    assert_ne!(mesh_cost(&first), mesh_cost(&second));
    let to_a = NodeSet(1 << a.id.0);
    tx.send(ShardId(1), ClusterOut::Publish { nodes: to_a, msg: first.clone() });
    let (got, _) = a.wait_for("Publish", |shard, m| match m {
        ClusterIn::Publish { from, msg } => Some((shard, *from, msg.clone())),
        _ => None,
    });
    // All of one origin shard's messages go to the same shard: origin_shard % shard_count.
    assert_eq!(got.0, ShardId(1));
    assert_eq!(got.1, b.id);
    assert_eq!(got.2.topic, first.topic);
    assert_eq!(got.2.payload, first.payload);
    assert_eq!(got.2.qos, QoS::AtLeastOnce);
    assert_eq!(got.2.origin, Origin::REMOTE);
    let credit = |want: u64| {
        move |shard: ShardId, m: &ClusterIn| match m {
            ClusterIn::Credit { bytes } if *bytes == want => Some(shard),
            _ => None,
        }
    };
    let (shard, _) = b.wait_for("first Credit", credit(mesh_cost(&first)));
    assert_eq!(shard, ShardId(1), "credited to the publishing shard");
    tx.send(ShardId(1), ClusterOut::Publish { nodes: to_a, msg: second.clone() });
    let (_, between) = b.wait_for("second Credit", credit(mesh_cost(&second)));
    let extra: Vec<_> =
        between.iter().filter(|(_, m)| matches!(m, ClusterIn::Credit { .. })).collect();
    assert!(extra.is_empty(), "a message credited twice: {extra:?}");
    a.wait_for("second Publish", |_, m| match m {
        ClusterIn::Publish { msg, .. } if msg.topic == second.topic => Some(()),
        _ => None,
    });
    assert!(b.counters.messages_out.load(Relaxed) >= 2);
    assert!(a.counters.messages_in.load(Relaxed) >= 2);
}

/// Receive-side back-pressure: while a shard's subscribers hold publishers back (its bit of
/// `shards_paused`, set by the shard), the runtime keeps other nodes' messages for it, in
/// order, and hands them over once the bit clears; messages for other shards go on.
#[test]
fn messages_for_a_paused_shard_wait_until_it_resumes() {
    let (a, b) = pair(41, 42);
    add_filter(&a, &b, "p/#", 1);
    let tx = b.rt.tx();
    let to_a = NodeSet(1 << a.id.0);
    // A's shard 1 is paused: B's messages from its shard 1 go to A's shard 1.
    a.counters.shards_paused.store(1 << 1, Relaxed);
    for i in 0..3 {
        tx.send(
            ShardId(1),
            ClusterOut::Publish { nodes: to_a, msg: message(&format!("p/{i}"), b"x") },
        );
    }
    // The marker: a later message from B's shard 0 (same link, so read after the three)
    // reaches A's shard 0, and none of the three came before it.
    tx.send(ShardId(0), ClusterOut::Publish { nodes: to_a, msg: message("p/marker", b"m") });
    let (shard, before) = a.wait_for("the marker", |shard, m| match m {
        ClusterIn::Publish { msg, .. } if &*msg.topic == "p/marker" => Some(shard),
        _ => None,
    });
    assert_eq!(shard, ShardId(0));
    let early: Vec<_> =
        before.iter().filter(|(_, m)| matches!(m, ClusterIn::Publish { .. })).collect();
    assert!(early.is_empty(), "handed to a paused shard: {early:?}");
    a.counters.shards_paused.store(0, Relaxed);
    for i in 0..3 {
        let want = format!("p/{i}");
        let (shard, _) = a.wait_for("a kept message", |shard, m| match m {
            ClusterIn::Publish { msg, .. } => Some((shard, msg.topic.to_string())),
            _ => None,
        });
        assert_eq!(shard, (ShardId(1), want), "in order, to the shard that was paused");
    }
}

/// A shard that falls behind gets no more than 1,024 of the peers' messages it has not
/// reported handled (each fans out to its subscribers); the rest wait, in order, and follow
/// once it reports some handled.
#[test]
fn a_shard_that_is_behind_is_handed_at_most_its_window() {
    let (a, b) = pair(51, 52);
    add_filter(&a, &b, "w/#", 1);
    let tx = b.rt.tx();
    let to_a = NodeSet(1 << a.id.0);
    for i in 0..1025 {
        let msg = message(&format!("w/{i}"), b"x");
        tx.send(ShardId(1), ClusterOut::Publish { nodes: to_a, msg });
    }
    // Markers: later messages from B's shard 0 reach A's shard 0; the second comes in a
    // later turn of A's runtime than anything handed with the first, so whatever A handed
    // its shard 1 by then has arrived.
    let mut handed = 0;
    for marker in ["w/marker1", "w/marker2"] {
        tx.send(ShardId(0), ClusterOut::Publish { nodes: to_a, msg: message(marker, b"m") });
        let (_, before) = a.wait_for(marker, |_, m| match m {
            ClusterIn::Publish { msg, .. } if &*msg.topic == marker => Some(()),
            _ => None,
        });
        handed += before.iter().filter(|(_, m)| matches!(m, ClusterIn::Publish { .. })).count();
    }
    assert_eq!(handed, 1024, "A's shard 1 reported nothing handled: it gets its window only");
    // Shard 1 reports one handled: the last one follows.
    a.rt.tx().send(ShardId(1), ClusterOut::Handled { messages: 1 });
    let (topic, _) = a.wait_for("the 1,025th", |shard, m| match m {
        ClusterIn::Publish { msg, .. } if shard == ShardId(1) => Some(msg.topic.to_string()),
        _ => None,
    });
    assert_eq!(topic, "w/1024");
}

/// Opens a raw connection to `node`'s link listener and writes `bytes`; true when the node
/// then closes it (EOF or reset) — the wait is for that, bounded by the read timeout.
fn closed_after(node: &Node, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(node.addr()).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false, // the node never writes on an incoming link
        Err(e) => {
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        }
    }
}

#[test]
fn a_malformed_frame_closes_only_its_link() {
    let (a, b) = pair(31, 32);
    let hello = |node: u16| {
        Frame::Hello {
            version: PROTOCOL_VERSION,
            node: NodeId(node),
            boot_id: 1,
            shard_count: 1,
            clock_ms: 0,
        }
        .encode()
        .unwrap()
    };
    // Garbage instead of a Hello; a frame longer than the limit; an unknown kind after a
    // good Hello; a second Hello; a Hello of another protocol version.
    let mut unknown_kind = hello(40).to_vec();
    unknown_kind.extend_from_slice(&[0, 0, 0, 1, 0xEE]);
    let mut two_hellos = hello(41).to_vec();
    two_hellos.extend_from_slice(&hello(41));
    let other_version = Frame::Hello {
        version: PROTOCOL_VERSION + 1,
        node: NodeId(42),
        boot_id: 1,
        shard_count: 1,
        clock_ms: 0,
    }
    .encode()
    .unwrap();
    let cases: [(&str, Vec<u8>); 7] = [
        ("the node's own id", hello(a.id.0).to_vec()),
        ("garbage", b"\x00\x00\x00\x05hello".to_vec()),
        ("oversized", vec![0xFF, 0xFF, 0xFF, 0xFF]),
        ("empty", vec![0, 0, 0, 0]),
        ("unknown kind", unknown_kind),
        ("second Hello", two_hellos),
        ("other version", other_version.to_vec()),
    ];
    for (what, bytes) in &cases {
        assert!(closed_after(&a, bytes), "{what}: the link stays open");
    }
    // The link between A and B is untouched: a filter still round-trips both ways.
    a.wait_converged(&[b.id]);
    add_filter(&b, &a, "still/works", 1);
    add_filter(&a, &b, "still/works/too", 1);
}

/// Established TCP connections (local, remote) from /proc/net/tcp (IPv4).
fn tcp_connections() -> Vec<(SocketAddr, SocketAddr)> {
    let parse = |hex: &str| -> SocketAddr {
        let (ip, port) = hex.split_once(':').unwrap();
        let ip = u32::from_str_radix(ip, 16).unwrap().to_le_bytes();
        SocketAddr::from((ip, u16::from_str_radix(port, 16).unwrap()))
    };
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(3) == Some(&"01")).then(|| (parse(f[1]), parse(f[2])))
        })
        .collect()
}

#[test]
fn the_source_address_is_the_listen_address() {
    // Datagrams: a seed that is only a UDP socket sees the node's announcements come from
    // the node's listen address, port included.
    let seed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    seed.set_read_timeout(Some(PATIENCE)).unwrap();
    let x = Node::start_with(51, "127.0.0.52:0", &[seed.local_addr().unwrap()], |_| {});
    let mut buf = [0u8; 2048];
    let (_, from) = seed.recv_from(&mut buf).expect("an announcement to the seed");
    assert_eq!(from, x.addr());
    // Links: each node's outgoing connection to the other leaves from its listen IP.
    let a = Node::start_with(53, "127.0.0.53:0", &[], |_| {});
    let b = Node::start_with(54, "127.0.0.54:0", &[a.addr()], |_| {});
    a.wait_converged(&[b.id]);
    b.wait_converged(&[a.id]);
    let links = tcp_connections();
    for (from, to) in [(&a, &b), (&b, &a)] {
        let sources: Vec<SocketAddr> =
            links.iter().filter(|(_, remote)| *remote == to.addr()).map(|(l, _)| *l).collect();
        assert!(!sources.is_empty(), "no link to {}: {links:?}", to.id);
        assert!(
            sources.iter().all(|s| s.ip() == from.addr().ip() && s.port() != from.addr().port()),
            "links to {} from {sources:?}, not from {}'s listen IP",
            to.id,
            from.id
        );
    }
}

/// A measurement, not a check: `cargo test --release -p shardmq-engine --test
/// cluster_runtime -- --ignored --nocapture throughput`.
#[test]
#[ignore]
fn throughput() {
    let (a, b) = pair(61, 62);
    let n: u64 = 200_000;
    let (secs, cpu) = measure_throughput(&a, &b, n);
    println!(
        "{n} messages of 100 B across one link: {:.0} msg/s, {:.2} µs CPU per message (both nodes)",
        n as f64 / secs,
        cpu * 1e6 / n as f64
    );
}

#[test]
fn gossip_signed_with_another_key_is_dropped_and_never_joins() {
    let dir = std::env::temp_dir().join(format!("shardmq-gossip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (good, bad) = (dir.join("good.key"), dir.join("bad.key"));
    std::fs::write(&good, "the cluster's shared gossip key\n").unwrap();
    std::fs::write(&bad, "somebody else's gossip key....\n").unwrap();
    let a = Node::start_with(1, "127.0.0.1:0", &[], |s| s.gossip_key_file = Some(good.clone()));
    let b = Node::start_with(2, "127.0.0.1:0", &[a.addr()], |s| s.gossip_key_file = Some(good));
    a.wait_converged(&[b.id]);
    // A node with another key, seeded with both: its announcements are dropped.
    let x = Node::start_with(3, "127.0.0.1:0", &[a.addr(), b.addr()], |s| {
        s.gossip_key_file = Some(bad)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.rt.gossip_rejected() < 3 || b.rt.gossip_rejected() < 3 {
        assert!(Instant::now() < deadline, "the other key's datagrams were not seen");
        std::thread::sleep(Duration::from_millis(20));
    }
    for n in [&a, &b] {
        let s = n.rt.status().expect("status");
        assert!(s.members.iter().all(|m| m.node != x.id), "{:?} let node 3 in: {s:?}", n.id);
    }
    assert_eq!(x.counters.members.load(Relaxed), 1, "node 3 is alone");
    assert_eq!(a.counters.members.load(Relaxed), 2);
    let _ = std::fs::remove_dir_all(&dir);
}
