//! Mutual TLS on node links (`--cluster-tls-*`, `engine/src/cluster/tls.rs`): cluster
//! runtimes in one process on 127.0.0.1 (port 0), each with a fake `ShardSink` recording
//! what the runtime hands to its shards. Certificates are made at test time with rcgen: the
//! cluster's CA, its node certificates, and a certificate from another CA.
//!
//! Every wait is for a marker (a message that must arrive, a status or a counter that must
//! be reached), with a generous deadline as the failure guard; nothing sleeps and then
//! asserts.

mod cluster_kit;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use shardmq_engine::cluster::node::LinkState;
use shardmq_engine::config::ClusterTls;
use shardmq_engine::core::cluster::{ClusterIn, ClusterOut, NodeId, NodeSet};
use shardmq_engine::core::ids::ShardId;
use shardmq_engine::core::mesh::mesh_cost;

use cluster_kit::{add_filter, measure_throughput, message, Node, PATIENCE};

/// A CA in a fresh directory, issuing node certificates as PEM files.
struct Ca {
    dir: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let dir = std::env::temp_dir().join(format!(
            "shardmq-cluster-tls-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, format!("{name} cluster CA"));
        let cert = p.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Ca { dir, cert, key }
    }

    /// Files for node `id`: a certificate signed by this CA; peers checked against `trust`.
    fn node(&self, id: u16, trust: &Ca) -> ClusterTls {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![format!("node-{id}")]).unwrap();
        p.distinguished_name.push(DnType::CommonName, format!("node-{id}"));
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let files = ClusterTls {
            cert: self.dir.join(format!("node-{id}.pem")),
            key: self.dir.join(format!("node-{id}.key")),
            ca: trust.dir.join("ca.pem"),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Link TLS in a test node's settings.
fn start(id: u16, seeds: &[SocketAddr], tls: Option<ClusterTls>) -> Node {
    Node::start_with(id, "127.0.0.1:0", seeds, |s| s.tls = tls)
}

/// Waits on a node's TLS refusals.
trait Refusals {
    /// Waits until at least `n` TLS handshakes failed on this node.
    fn wait_refusals(&self, n: u64);
}

impl Refusals for Node {
    fn wait_refusals(&self, n: u64) {
        let deadline = Instant::now() + PATIENCE;
        while self.rt.tls_handshakes_failed() < n {
            assert!(Instant::now() < deadline, "{}: fewer than {n} failed handshakes", self.id);
            std::thread::sleep(Duration::from_millis(20));
        }
        // The same failures reach $SYS and the admin API.
        let counted = self.rt.view().counters().link_handshake_failures.load(Relaxed);
        assert!(counted >= n, "{}: {counted} failures counted for $SYS", self.id);
    }
}

/// Whether `m` is a route of `node`'s.
fn route_of(node: NodeId, m: &ClusterIn) -> bool {
    matches!(m, ClusterIn::Route { node: n, .. } if *n == node)
}

/// A message published on `from`'s shard 1 for `to` arrives there.
fn publish(from: &Node, to: &Node, topic: &str) {
    let msg = message(topic, b"over TLS");
    let tx = from.rt.tx();
    tx.send(ShardId(1), ClusterOut::Publish { nodes: NodeSet(1 << to.id.0), msg: msg.clone() });
    let (got, _) = to.wait_for("Publish", |_, m| match m {
        ClusterIn::Publish { from, msg: got } if got.topic == msg.topic => {
            Some((*from, got.clone()))
        }
        _ => None,
    });
    assert_eq!(got.0, from.id);
    assert_eq!(got.1.payload, msg.payload);
    from.wait_for("Credit", |_, m| {
        matches!(m, ClusterIn::Credit { bytes } if *bytes == mesh_cost(&msg)).then_some(())
    });
}

#[test]
fn two_tls_nodes_exchange_a_filter_and_a_publish() {
    let ca = Ca::new("pair");
    let a = start(1, &[], Some(ca.node(1, &ca)));
    let b = start(2, &[a.addr()], Some(ca.node(2, &ca)));
    a.wait_link(b.id, LinkState::Up);
    b.wait_link(a.id, LinkState::Up);
    add_filter(&a, &b, "sensors/+/temp", 1);
    add_filter(&b, &a, "#", 1);
    publish(&b, &a, "sensors/1/temp");
    publish(&a, &b, "anything");
    assert_eq!(a.rt.tls_handshakes_failed(), 0);
    assert_eq!(b.rt.tls_handshakes_failed(), 0);
}

#[test]
fn a_node_with_another_cas_certificate_never_gets_a_link() {
    let (ca, other) = (Ca::new("good"), Ca::new("other"));
    let a = start(11, &[], Some(ca.node(11, &ca)));
    let b = start(12, &[a.addr()], Some(ca.node(12, &ca)));
    a.wait_link(b.id, LinkState::Up);
    b.wait_link(a.id, LinkState::Up);
    // The intruder knows the cluster's CA certificate (it accepts the good nodes' links)
    // but its own certificate is the other CA's. Gossip is not authenticated: it becomes a
    // member, and every node dials it and is dialled by it.
    let c = start(13, &[a.addr()], Some(other.node(13, &ca)));
    c.rt.tx().send(ShardId(0), ClusterOut::Filter { filter: "#".into(), added: true, seq: 1 });
    a.wait_link(c.id, LinkState::Down);
    b.wait_link(c.id, LinkState::Down);
    // The marker: several handshakes refused each way on every node.
    a.wait_refusals(4);
    b.wait_refusals(4);
    c.wait_refusals(8);
    // Not one byte of a frame crossed a link of the intruder's, ever: no Hello written by it
    // (its writers never saw an accept), none read.
    assert_eq!(c.counters.bytes_out.load(Relaxed), 0, "the intruder wrote a Hello");
    assert_eq!(c.counters.bytes_in.load(Relaxed), 0, "the intruder read a frame");
    let s = c.rt.status().unwrap();
    assert!(s.members.iter().all(|m| m.link != LinkState::Up), "{s:?}");
    // The good nodes keep their links: a filter and a publish still cross both ways, and
    // no route of the intruder's reached either node's shards.
    let mut seen = add_filter(&a, &b, "after/intruder", 2);
    seen.extend(add_filter(&b, &a, "after/intruder/too", 2));
    publish(&a, &b, "after/intruder");
    assert!(!seen.iter().any(|(_, m)| route_of(c.id, m)), "{seen:?}");
    let rest: Vec<_> = a.inbox.try_iter().chain(b.inbox.try_iter()).collect();
    assert!(!rest.iter().any(|(_, m)| route_of(c.id, m)), "{rest:?}");
    a.wait_link(b.id, LinkState::Up);
    b.wait_link(a.id, LinkState::Up);
}

#[test]
fn a_plain_tcp_node_cannot_join_a_tls_node() {
    let ca = Ca::new("plain");
    let a = start(21, &[], Some(ca.node(21, &ca)));
    let p = start(22, &[a.addr()], None);
    p.rt.tx().send(ShardId(0), ClusterOut::Filter { filter: "#".into(), added: true, seq: 1 });
    // Gossip joins them; the TLS node's link to the plain one never comes up.
    a.wait_link(p.id, LinkState::Down);
    // The marker: the TLS node refused several connections each way (its ClientHello is
    // garbage to the plain node's reader; the plain Hello is garbage to its TLS server).
    a.wait_refusals(4);
    assert_eq!(a.counters.bytes_in.load(Relaxed), 0, "the TLS node read a frame");
    assert_eq!(p.counters.bytes_in.load(Relaxed), 0, "the plain node read a frame");
    assert_eq!(a.counters.links_up.load(Relaxed), 0);
    let got: Vec<_> = a.inbox.try_iter().collect();
    assert!(!got.iter().any(|(_, m)| route_of(p.id, m)), "{got:?}");
}

/// SIGHUP's reload of the link TLS files (`TlsReloader`, called by the broker's
/// `Reloader`): a node whose certificate and CA are rotated in place gets links to a node of
/// the new CA once it reloads (new handshakes use the new files); a bad file on reload keeps
/// the old ones and says which file.
#[test]
fn a_reload_rotates_a_nodes_certificate_and_ca_for_new_handshakes() {
    let (old, new) = (Ca::new("rot-old"), Ca::new("rot-new"));
    let a_files = old.node(31, &old);
    let a = start(31, &[], Some(a_files.clone()));
    let b = start(32, &[a.addr()], Some(new.node(32, &new)));
    // Before the rotation no handshake between them can succeed.
    a.wait_refusals(2);
    let reloader = a.rt.tls_reloader().expect("a TLS node has a reloader");
    // A broken key file on reload: refused, naming the file; the old files stay in use.
    let good_key = std::fs::read(&a_files.key).unwrap();
    std::fs::write(&a_files.key, b"not a key").unwrap();
    let e = reloader.reload().unwrap_err();
    assert!(e.contains("node-31.key"), "{e}");
    std::fs::write(&a_files.key, good_key).unwrap();
    // Rotate a's files in place to the new CA, and reload.
    let rotated = new.node(31, &new);
    std::fs::copy(&rotated.cert, &a_files.cert).unwrap();
    std::fs::copy(&rotated.key, &a_files.key).unwrap();
    std::fs::copy(&rotated.ca, &a_files.ca).unwrap();
    reloader.reload().unwrap();
    a.wait_link(b.id, LinkState::Up);
    b.wait_link(a.id, LinkState::Up);
    add_filter(&b, &a, "rotated/#", 1);
    publish(&a, &b, "rotated/ok");
}

/// A measurement, not a check (the TLS twin of `cluster_runtime.rs`'s): `cargo test
/// --release -p shardmq-engine --test cluster_tls -- --ignored --nocapture throughput`.
#[test]
#[ignore]
fn throughput() {
    let ca = Ca::new("throughput");
    let a = start(61, &[], Some(ca.node(61, &ca)));
    let b = start(62, &[a.addr()], Some(ca.node(62, &ca)));
    a.wait_link(b.id, LinkState::Up);
    b.wait_link(a.id, LinkState::Up);
    let n: u64 = 200_000;
    let (secs, cpu) = measure_throughput(&a, &b, n);
    println!(
        "{n} messages of 100 B across one TLS link: {:.0} msg/s, {:.2} µs CPU per message \
         (both nodes)",
        n as f64 / secs,
        cpu * 1e6 / n as f64
    );
}
