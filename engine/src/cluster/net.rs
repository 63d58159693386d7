//! The cluster's sockets: the UDP socket membership gossips on and the TCP listener peers
//! dial, both bound to `--cluster-listen` (one port), the UDP receive thread, the accept
//! thread and one reader thread per incoming link.
//!
//! With link TLS a reader first runs the server handshake (`tls.rs`), requiring a client
//! certificate from the cluster CA; a failed handshake closes the connection (logged).
//! A reader cuts frames with `wire::split_frame` (the declared length is checked against
//! `FRAME_SIZE_MAX_BYTES` before the body is buffered) and hands them to the main loop in
//! order; a malformed frame, a read error or the peer closing ends that connection only.
//! What readers and the UDP thread hand over but the main loop has not yet handled is
//! bounded ([`InboundBudget`]): past it a reader stops reading (TCP pushes back on the peer)
//! and datagrams are dropped.

use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use socket2::{Domain, Protocol, Socket, Type};

use super::runtime::Event;
use super::stream::InStream;
use super::tls::NodeTls;
use super::wire;

/// Bytes of frames and datagrams handed to the main loop and not yet handled.
pub const INBOUND_BYTES_MAX: usize = 64 << 20;
/// Largest datagram read (foca's packets are far smaller).
pub const DATAGRAM_BYTES_MAX: usize = 64 * 1024;
/// Time a new connection has to send its first frame.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Incoming connections open at once (a peer has one; the rest are dialled twice during a
/// reconnect, or strangers).
pub const INCOMING_MAX: usize = 2 * crate::core::cluster::NodeSet::CAPACITY + 16;
/// Idle time before a link's first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Time between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How often the UDP thread looks at the stop flag.
const UDP_POLL: Duration = Duration::from_millis(200);
/// Bytes a reader asks the kernel for at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Room past the inbound bound kept for gossip datagrams (each at most 64 KiB; foca's are a
/// few hundred bytes).
const GOSSIP_RESERVE_BYTES: usize = 1024 * 1024;

/// Bounds what readers have handed to the main loop: `acquire` waits while past the bound.
#[derive(Debug)]
pub(crate) struct InboundBudget {
    used: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

impl InboundBudget {
    pub(crate) fn new(max: usize) -> InboundBudget {
        InboundBudget { used: Mutex::new(0), freed: Condvar::new(), max }
    }

    /// Waits until `n` bytes fit (one item always fits when nothing is outstanding), unless
    /// `stop` is set; false when stopped.
    fn acquire(&self, n: usize, stop: &AtomicBool) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used > 0 && *used + n > self.max {
            if stop.load(Relaxed) {
                return false;
            }
            used = self.freed.wait_timeout(used, UDP_POLL).unwrap_or_else(|e| e.into_inner()).0;
        }
        *used += n;
        true
    }

    /// For a gossip datagram: never waits, and may go [`GOSSIP_RESERVE_BYTES`] past the
    /// bound, so that membership keeps working while link frames fill the budget (a node
    /// whose subscribers hold other nodes' messages back, `ClusterOut::Handled`).
    fn try_acquire(&self, n: usize) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if *used > 0 && *used + n > self.max + GOSSIP_RESERVE_BYTES {
            return false;
        }
        *used += n;
        true
    }

    /// The main loop handled `n` bytes.
    pub(crate) fn release(&self, n: usize) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(n);
        self.freed.notify_all();
    }
}

/// What the network threads share with the runtime.
#[derive(Debug)]
pub(crate) struct NetShared {
    pub(crate) events: Sender<Event>,
    pub(crate) budget: InboundBudget,
    pub(crate) stop: AtomicBool,
    /// Incoming connections open now (bounded by [`INCOMING_MAX`]).
    pub(crate) incoming: AtomicU64,
    next_conn: AtomicU64,
    readers: Mutex<Vec<JoinHandle<()>>>,
    /// Link TLS: readers are servers. `None`: plain TCP.
    tls: Option<Arc<NodeTls>>,
    /// Datagrams dropped for a missing or bad gossip tag (`gossip_auth.rs`).
    pub(crate) gossip_rejected: AtomicU64,
}

impl NetShared {
    pub(crate) fn new(events: Sender<Event>, tls: Option<Arc<NodeTls>>) -> NetShared {
        NetShared {
            events,
            budget: InboundBudget::new(INBOUND_BYTES_MAX),
            stop: AtomicBool::new(false),
            incoming: AtomicU64::new(0),
            next_conn: AtomicU64::new(1),
            readers: Mutex::new(Vec::new()),
            tls,
            gossip_rejected: AtomicU64::new(0),
        }
    }

    /// The reader threads started so far (to join at stop).
    pub(crate) fn take_readers(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.readers.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Binds the TCP listener and the UDP socket on `listen`, the same port for both. With port
/// 0 (tests) the UDP socket takes the port the kernel gave the listener.
pub(crate) fn bind(listen: SocketAddr) -> std::io::Result<(TcpListener, UdpSocket)> {
    let mut last = None;
    for _ in 0..16 {
        let tcp = Socket::new(Domain::for_address(listen), Type::STREAM, Some(Protocol::TCP))?;
        tcp.set_reuse_address(true)?;
        tcp.bind(&listen.into())?;
        tcp.listen(128)?;
        let tcp: TcpListener = tcp.into();
        let at = tcp.local_addr()?;
        let udp = Socket::new(Domain::for_address(at), Type::DGRAM, Some(Protocol::UDP))?;
        match udp.bind(&at.into()) {
            Ok(()) => return Ok((tcp, udp.into())),
            // Port 0 gave a TCP port whose UDP twin is taken: try another.
            Err(e) if listen.port() == 0 && e.kind() == ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ErrorKind::AddrInUse.into()))
}

/// Receives datagrams until stopped.
pub(crate) fn spawn_udp(
    socket: UdpSocket,
    net: Arc<NetShared>,
    key: Option<super::gossip_auth::GossipKey>,
) -> std::io::Result<JoinHandle<()>> {
    socket.set_read_timeout(Some(UDP_POLL))?;
    std::thread::Builder::new().name("shardmq-cluster-udp".into()).spawn(move || {
        let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
        while !net.stop.load(Relaxed) {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let data = match &key {
                        Some(k) => match k.open(&buf[..n]) {
                            Some(d) => d,
                            None => {
                                // Not signed with the cluster's key: foca never sees it.
                                tracing::debug!("cluster: unauthenticated datagram from {from}");
                                net.gossip_rejected.fetch_add(1, Relaxed);
                                continue;
                            }
                        },
                        None => &buf[..n],
                    };
                    if data.is_empty() || !net.budget.try_acquire(data.len()) {
                        continue;
                    }
                    if net.events.send(Event::Datagram(data.to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // E.g. ECONNREFUSED reported for an earlier send to a dead peer: not ours.
                Err(e) => tracing::debug!("cluster: udp receive: {e}"),
            }
        }
    })
}

/// Accepts incoming links until stopped (`wake` connects to it to end a blocking accept).
pub(crate) fn spawn_accept(
    listener: TcpListener,
    net: Arc<NetShared>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("shardmq-cluster-accept".into()).spawn(move || loop {
        let (stream, peer) = match listener.accept() {
            Ok(a) => a,
            Err(e) => {
                if net.stop.load(Relaxed) {
                    return;
                }
                // Typically EMFILE: wait a little rather than spin.
                tracing::warn!("cluster: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if net.stop.load(Relaxed) {
            return;
        }
        if net.incoming.load(Relaxed) >= INCOMING_MAX as u64 {
            tracing::warn!("cluster: refused a link from {peer}: {INCOMING_MAX} already open");
            continue;
        }
        if let Err(e) = start_reader(stream, peer, &net) {
            tracing::warn!("cluster: cannot serve a link from {peer}: {e}");
        }
    })
}

/// TCP keepalive on a node link, so a peer that vanished without closing (a netsplit, a
/// host gone) ends the connection within about [`KEEPALIVE_IDLE`] + 3 × [`KEEPALIVE_INTERVAL`]
/// even when nothing is written on it.
pub(crate) fn keepalive(stream: &TcpStream) -> std::io::Result<()> {
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(3);
    socket2::SockRef::from(stream).set_tcp_keepalive(&ka)
}

/// Ends a blocking `accept` at stop by connecting to the listener.
pub(crate) fn wake(listener_addr: SocketAddr) {
    let mut to = listener_addr;
    if to.ip().is_unspecified() {
        to.set_ip(match to {
            SocketAddr::V4(_) => [127, 0, 0, 1].into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let _ = TcpStream::connect_timeout(&to, Duration::from_secs(1));
}

fn start_reader(stream: TcpStream, peer: SocketAddr, net: &Arc<NetShared>) -> std::io::Result<()> {
    // The TLS handshake and the Hello must come within this; past the Hello, none.
    stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
    // A reader writes only a TLS handshake, its accept and alerts.
    stream.set_write_timeout(Some(super::link::WRITE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    keepalive(&stream)?;
    let conn = net.next_conn.fetch_add(1, Relaxed);
    let handle = stream.try_clone()?;
    net.incoming.fetch_add(1, Relaxed);
    // The main loop hears of the connection before any of its frames (same channel).
    if net.events.send(Event::Accepted { conn, peer, stream: handle }).is_err() {
        net.incoming.fetch_sub(1, Relaxed);
        return Ok(());
    }
    let reader_net = net.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("shardmq-cluster-in-{conn}"))
        .spawn(move || read_link(stream, peer, conn, &reader_net));
    match spawned {
        Ok(t) => {
            let mut readers = net.readers.lock().unwrap_or_else(|e| e.into_inner());
            readers.retain(|t| !t.is_finished());
            readers.push(t);
            Ok(())
        }
        Err(e) => {
            net.incoming.fetch_sub(1, Relaxed);
            let _ = net.events.send(Event::Closed { conn });
            Err(e)
        }
    }
}

fn read_link(stream: TcpStream, peer: SocketAddr, conn: u64, net: &NetShared) {
    let mut stream = match &net.tls {
        None => InStream::Plain(stream),
        Some(tls) => match tls.accept(stream, peer) {
            Ok(s) => InStream::Tls(Box::new(s)),
            Err(_) => {
                // Logged and closed by `accept`; this peer never gets a link.
                net.incoming.fetch_sub(1, Relaxed);
                let _ = net.events.send(Event::Closed { conn });
                return;
            }
        },
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut first = true;
    let why: String = 'conn: loop {
        // Every whole frame buffered goes to the main loop, in order.
        loop {
            match wire::split_frame(&mut buf) {
                Ok(Some(frame)) => {
                    // The machine drops a frame it cannot decode; the link that sent it
                    // is closed here (checked on this thread, off the main loop). A Hello
                    // comes first and only first.
                    let decoded = match wire::decode(&frame) {
                        Ok(f) if matches!(f, wire::Frame::Hello { .. }) != first => {
                            break 'conn format!("malformed frame: {}", wire::WireError::NotHello);
                        }
                        // Decoded once, here: the main loop takes the frame as it is.
                        Ok(f) => (!first).then_some(f),
                        Err(e) => break 'conn format!("malformed frame: {e}"),
                    };
                    if first {
                        first = false;
                        // Past the Hello, a link may be quiet as long as it likes.
                        let _ = stream.tcp().set_read_timeout(None);
                    }
                    if !net.budget.acquire(frame.len(), &net.stop) {
                        break 'conn "stopping".into();
                    }
                    if net.events.send(Event::Frame { conn, frame, decoded }).is_err() {
                        break 'conn "stopping".into();
                    }
                }
                Ok(None) => break,
                Err(e) => break 'conn format!("malformed frame: {e}"),
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        let start = buf.len();
        buf.resize(buf.capacity(), 0);
        match stream.read(&mut buf[start..]) {
            Ok(0) => {
                buf.truncate(start);
                break "closed by the peer".into();
            }
            Ok(n) => buf.truncate(start + n),
            Err(e) if e.kind() == ErrorKind::Interrupted => buf.truncate(start),
            Err(e) => {
                buf.truncate(start);
                break if first && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                    "no Hello in time".into()
                } else {
                    e.to_string()
                };
            }
        }
    };
    if !net.stop.load(Relaxed) {
        tracing::info!("cluster: link from {peer} ended: {why}");
    }
    let _ = stream.tcp().shutdown(Shutdown::Both);
    net.incoming.fetch_sub(1, Relaxed);
    let _ = net.events.send(Event::Closed { conn });
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    /// Link frames fill the budget (a node holding other nodes' credit); gossip datagrams
    /// still get in, within their reserve, and frames wait.
    #[test]
    fn gossip_gets_in_while_frames_fill_the_budget() {
        let b = InboundBudget::new(1000);
        let stop = AtomicBool::new(false);
        assert!(b.acquire(1000, &stop));
        assert!(b.try_acquire(500), "a datagram past the frames' bound");
        assert!(!b.try_acquire(GOSSIP_RESERVE_BYTES), "but not past its reserve");
        stop.store(true, Relaxed);
        assert!(!b.acquire(1, &stop), "a frame waits (until stopped)");
        b.release(1500);
        assert!(b.try_acquire(10));
    }
}
