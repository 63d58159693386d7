//! Link TLS on one writer (`link.rs`) against a peer played by the test with
//! [`NodeTls::accept`]: the write timeout and the idle check over TLS, close_notify on a
//! hang-up, and a writer whose certificate the peer refuses. Certificates are made here with
//! rcgen; nothing is read from the repository.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

use super::super::link::{CreditGuard, CreditPool, Link, LinkContext, WRITE_TIMEOUT};
use super::super::runtime::Event;
use super::*;
use crate::core::cluster::{ClusterCounters, NodeId};
use crate::core::ids::ShardId;

/// A CA in a fresh directory, issuing node certificates as PEM files.
struct Ca {
    dir: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let dir = std::env::temp_dir().join(format!(
            "shardmq-link-tls-{name}-{}-{:?}",
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

    /// A node certificate signed by this CA, trusting `trust`'s CA.
    fn node(&self, name: &str, trust: &Ca) -> NodeTls {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![name.to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let files = ClusterTls {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
            ca: trust.dir.join("ca.pem"),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        NodeTls::load(&files).unwrap()
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn context(tls: NodeTls, write_timeout: Duration) -> (LinkContext, Receiver<Event>) {
    let (events, rx) = std::sync::mpsc::channel();
    let ctx = LinkContext {
        listen: "127.0.0.1:0".parse().unwrap(),
        events,
        counters: Arc::new(ClusterCounters::default()),
        queue_bytes_max: 1 << 20,
        write_timeout,
        tls: Some(Arc::new(tls)),
    };
    (ctx, rx)
}

/// The next event that `pick` takes, within a generous failure guard.
fn wait<T>(rx: &Receiver<Event>, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = rx.recv_timeout(left).expect("the awaited event");
        if let Some(t) = pick(ev) {
            return t;
        }
    }
}

/// Accepts one connection on `listener` as the TLS peer `tls`.
fn accept(listener: &TcpListener, tls: &NodeTls) -> std::io::Result<ServerStream> {
    let (tcp, peer) = listener.accept().unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tls.accept(tcp, peer)
}

#[test]
fn a_stalled_tls_link_is_closed_by_the_write_timeout() {
    let ca = Ca::new("stall");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (ctx, rx) = context(ca.node("writer", &ca), Duration::from_millis(300));
    let pool = Arc::new(CreditPool::new(1, ctx.events.clone()));
    let link =
        Link::open(&ctx, NodeId(6), listener.local_addr().unwrap(), 9, Bytes::new()).unwrap();
    // The peer completes the handshake and its accept, then never reads.
    let _peer = accept(&listener, &ca.node("reader", &ca)).unwrap();
    wait(&rx, |ev| matches!(ev, Event::LinkUp(NodeId(6), 9)).then_some(()));
    let frame = Bytes::from(vec![7u8; 64 * 1024]);
    let guard = Arc::new(CreditGuard { pool: pool.clone(), shard: ShardId(0), cost: 1 });
    // Publish until the writer gives up: the kernel's buffers fill, then rustls's, then the
    // queue; the stalled socket write passes its timeout and the link goes down.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = 0u64;
    loop {
        assert!(Instant::now() < deadline, "the stalled TLS link stays up");
        if !link.publish(frame.clone(), &guard) {
            refused += 1;
        }
        let wait_ms = if refused > 0 { 50 } else { 0 };
        if let Ok(Event::LinkDown(NodeId(6), 9)) = rx.recv_timeout(Duration::from_millis(wait_ms)) {
            break;
        }
    }
    assert!(refused >= 1, "the queue filled before the link went down");
    drop(link);
}

#[test]
fn an_idle_tls_link_closed_by_its_peer_goes_down_and_a_hang_up_says_close_notify() {
    let ca = Ca::new("idle");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (ctx, rx) = context(ca.node("writer", &ca), WRITE_TIMEOUT);
    let reader = ca.node("reader", &ca);
    let hello = Bytes::from_static(b"HELLO");
    let link = Link::open(&ctx, NodeId(7), listener.local_addr().unwrap(), 3, hello).unwrap();
    let mut peer = accept(&listener, &reader).unwrap();
    wait(&rx, |ev| matches!(ev, Event::LinkUp(NodeId(7), 3)).then_some(()));
    let mut got = [0u8; 5];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HELLO", "the Hello travels inside TLS");
    // Nothing is queued: only the idle check, reading TLS records, can notice.
    drop(peer);
    wait(&rx, |ev| matches!(ev, Event::LinkDown(NodeId(7), 3)).then_some(()));
    let mut again = accept(&listener, &reader).unwrap();
    wait(&rx, |ev| matches!(ev, Event::LinkUp(NodeId(7), 3)).then_some(()));
    again.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HELLO", "a new connection starts with the Hello again");
    link.hang_up().unwrap().join().unwrap();
    // A hang-up ends the stream with close_notify: a clean end of stream, not an error.
    assert_eq!(again.read(&mut got).unwrap(), 0);
    assert_eq!(ctx.tls.as_ref().unwrap().handshakes_failed(), 0);
    assert_eq!(reader.handshakes_failed(), 0);
}

#[test]
fn a_writer_whose_certificate_is_refused_never_reports_its_link_up() {
    let (good, other) = (Ca::new("good"), Ca::new("other"));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // The writer trusts the good CA (so it accepts the reader), but its own certificate is
    // the other CA's: with TLS 1.3 its handshake ends before the reader refuses it.
    let (ctx, rx) = context(other.node("intruder", &good), WRITE_TIMEOUT);
    let reader = good.node("reader", &good);
    let link = Link::open(&ctx, NodeId(8), listener.local_addr().unwrap(), 1, "HI".into()).unwrap();
    for _ in 0..3 {
        let e = accept(&listener, &reader).expect_err("a certificate from another CA");
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    }
    let writer = ctx.tls.as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while writer.handshakes_failed() < 3 {
        assert!(Instant::now() < deadline, "the writer does not see its refusals");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(reader.handshakes_failed(), 3);
    // Every event the writer will ever send is in the channel once its thread has ended.
    link.hang_up().unwrap().join().unwrap();
    let events: Vec<Event> = rx.try_iter().collect();
    assert!(
        !events.iter().any(|e| matches!(e, Event::LinkUp(..) | Event::LinkDown(..))),
        "{events:?}"
    );
    assert_eq!(ctx.counters.bytes_out.load(std::sync::atomic::Ordering::Relaxed), 0, "a Hello");
}

#[test]
fn bad_files_are_refused_by_name_when_loaded() {
    let ca = Ca::new("files");
    let _ = ca.node("one", &ca);
    let _ = ca.node("two", &ca);
    let files = |cert: &str, key: &str, ca_file: PathBuf| ClusterTls {
        cert: ca.dir.join(cert),
        key: ca.dir.join(key),
        ca: ca_file,
    };
    let e = NodeTls::load(&files("none.pem", "one.key", ca.dir.join("ca.pem"))).unwrap_err();
    assert!(e.contains("none.pem"), "{e}");
    let e = NodeTls::load(&files("one.pem", "one.pem", ca.dir.join("ca.pem"))).unwrap_err();
    assert!(e.contains("one.pem: no usable private key"), "{e}");
    let e = NodeTls::load(&files("one.pem", "one.key", ca.dir.join("one.key"))).unwrap_err();
    assert!(e.contains("one.key: no CA certificate found"), "{e}");
    // A key that is not the certificate's.
    let e = NodeTls::load(&files("one.pem", "two.key", ca.dir.join("ca.pem"))).unwrap_err();
    assert!(e.contains("one.pem") && e.contains("two.key"), "{e}");
}
