//! The cluster runtime: the threads and sockets that drive the sans-IO [`NodeMachine`].
//!
//! Plain std threads, outside the shards:
//! - the **main loop** (`shardmq-cluster`) owns the machine. One mpsc channel feeds it every
//!   input (shards' [`ClusterOut`], datagrams, accepted connections and their frames, links
//!   up and down, credit); it waits with `recv_timeout` until the machine's next deadline,
//!   handles what arrived, then carries out the machine's effects. Messages for the shards
//!   are batched: one `ShardSink::send` per shard per turn.
//! - the **UDP thread** receives membership datagrams on the socket bound to
//!   `--cluster-listen`; the main loop sends from the same socket.
//! - the **accept thread** and one **reader thread** per incoming link (`net.rs`).
//! - one **writer thread** per outgoing link (`link.rs`).
//!
//! With link TLS (`tls.rs`) writers are TLS clients and readers TLS servers; the files are
//! read here, before anything is bound, so a bad one stops start-up.
//!
//! The source address rule: every datagram leaves from the socket bound to the listen
//! address and every outgoing link binds the listen IP (port 0) before `connect`, so a peer
//! (or a partition test's proxy) can tell nodes apart by source IP.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::gossip_auth::GossipKey;
use super::link::{CreditGuard, CreditPool, Link, LinkContext};
use super::net::{self, NetShared};
use super::node::{ClusterStatus, Effect, NodeMachine, NodeSettings};
use super::tls::NodeTls;
use super::wire;
use crate::config::ClusterSettings;
use crate::core::cluster::{ClusterCounters, ClusterIn, ClusterOut, ClusterTx, NodeId, ShardSink};
use crate::core::ids::ShardId;

/// Longest the main loop sleeps when the machine has no deadline.
const IDLE_WAIT: Duration = Duration::from_secs(1);
#[path = "runtime_inbound.rs"]
mod inbound;

/// How often the main loop looks at the shards' pause bits while it keeps messages back.
const DEFERRED_POLL: Duration = Duration::from_millis(2);
/// Most events handled before the machine's effects are carried out.
const EVENTS_PER_TURN_MAX: usize = 1024;
/// Longest `stop` waits for the threads (then leaves the rest to end on their own).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest [`ClusterView::status`] waits for the main loop.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// An input of the main loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// From a shard.
    Shard(ShardId, ClusterOut),
    /// A membership datagram.
    Datagram(Vec<u8>),
    /// An incoming connection (before any of its frames).
    Accepted { conn: u64, peer: SocketAddr, stream: TcpStream },
    /// A frame read on incoming connection `conn` (without its length prefix).
    Frame {
        /// The incoming connection.
        conn: u64,
        /// The frame's bytes (kind and body).
        frame: Bytes,
        /// The frame, decoded once on the reader thread (`None` for the Hello, which the
        /// machine checks itself).
        decoded: Option<wire::Frame>,
    },
    /// Incoming connection `conn` ended.
    Closed { conn: u64 },
    /// The outgoing link to a node (the writer named by the serial) is up: Hello written.
    LinkUp(NodeId, u64),
    /// That link's connection ended.
    LinkDown(NodeId, u64),
    /// Some shard has credit pending (`CreditPool`).
    Credit,
    /// `ClusterView::status` asks.
    Status(mpsc::SyncSender<ClusterStatus>),
    /// Leave the cluster and end.
    Stop,
}

/// The running cluster runtime of one node. [`ClusterRuntime::stop`] leaves the cluster.
#[derive(Debug)]
pub struct ClusterRuntime {
    events: Sender<Event>,
    net: Arc<NetShared>,
    view: ClusterView,
    local_addr: SocketAddr,
    main: Option<JoinHandle<()>>,
    udp: Option<JoinHandle<()>>,
    accept: Option<JoinHandle<()>>,
    tls: Option<Arc<NodeTls>>,
}

/// What the shards' io layers hold: `send` queues on the main loop's channel, never blocks.
#[derive(Debug, Clone)]
struct Tx(Sender<Event>);

impl ClusterTx for Tx {
    fn send(&self, shard: ShardId, msg: ClusterOut) {
        // After stop the runtime is gone; a shard still shutting down loses nothing that
        // matters (the node has left the cluster).
        let _ = self.0.send(Event::Shard(shard, msg));
    }
}

/// A cheap, thread-safe view of the runtime for the admin API: its status and counters.
#[derive(Debug, Clone)]
pub struct ClusterView {
    node: NodeId,
    events: Sender<Event>,
    counters: Arc<ClusterCounters>,
}

impl ClusterView {
    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node
    }
    /// The runtime's counters.
    pub fn counters(&self) -> &ClusterCounters {
        &self.counters
    }
    /// Members and links as the main loop sees them now; `None` when it does not answer
    /// within [`STATUS_TIMEOUT`] (stopped or stuck).
    pub fn status(&self) -> Option<ClusterStatus> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.events.send(Event::Status(tx)).ok()?;
        rx.recv_timeout(STATUS_TIMEOUT).ok()
    }
}

/// Binds `settings.listen` (TCP and UDP, one port) and starts the threads; the node joins
/// the cluster through `settings.seeds`. With port 0 (tests) the kernel picks the port and
/// the advertised address takes it: see [`ClusterRuntime::local_addr`].
pub fn start(
    settings: ClusterSettings,
    sink: Arc<dyn ShardSink>,
    counters: Arc<ClusterCounters>,
    started_at: Instant,
    shard_count: u16,
) -> io::Result<ClusterRuntime> {
    let tls = match &settings.tls {
        Some(files) => Some(Arc::new(NodeTls::load(files).map_err(io::Error::other)?)),
        None => None,
    };
    if let Some(t) = &tls {
        t.count_in(counters.clone());
    }
    let gossip_key = match &settings.gossip_key_file {
        Some(path) => Some(GossipKey::load(path).map_err(io::Error::other)?),
        None => None,
    };
    let (listener, udp) = net::bind(settings.listen)?;
    let local_addr = listener.local_addr()?;
    let mut advertise = settings.advertise;
    if advertise.port() == 0 {
        advertise.set_port(local_addr.port());
    }
    let (events, inbox) = mpsc::channel();
    let net = Arc::new(NetShared::new(events.clone(), tls.clone()));
    counters.node_id.store(u64::from(settings.node_id.0), Relaxed);
    let boot_id = boot_id();
    let mut seed = [0u8; 8];
    let rng_seed = match getrandom::getrandom(&mut seed) {
        Ok(()) => u64::from_le_bytes(seed),
        Err(_) => boot_id ^ 0x9e37_79b9_7f4a_7c15,
    };
    let machine = NodeMachine::new(
        NodeSettings {
            id: settings.node_id,
            advertise,
            seeds: settings.seeds.clone(),
            shard_count,
            boot_id,
            rng_seed,
            started_at,
            counters: counters.clone(),
        },
        Instant::now(),
    );
    let main_loop = MainLoop {
        machine,
        inbox,
        udp: udp.try_clone()?,
        sink,
        credit: Arc::new(CreditPool::new(shard_count, events.clone())),
        link_ctx: LinkContext {
            listen: local_addr,
            events: events.clone(),
            counters: counters.clone(),
            queue_bytes_max: settings.link_queue_bytes_max,
            write_timeout: super::link::WRITE_TIMEOUT,
            tls: tls.clone(),
        },
        net: net.clone(),
        links: HashMap::new(),
        link_serial: 0,
        retired: Vec::new(),
        incoming: HashMap::new(),
        batches: vec![Vec::new(); usize::from(shard_count.max(1))],
        inbound: vec![VecDeque::new(); usize::from(shard_count.max(1))],
        deferred: (0..shard_count.max(1)).map(|_| VecDeque::new()).collect(),
        counters: counters.clone(),
        gossip_key: gossip_key.clone(),
        stopping: false,
    };
    let udp_thread = net::spawn_udp(udp, net.clone(), gossip_key)?;
    let accept = net::spawn_accept(listener, net.clone())?;
    let main = std::thread::Builder::new()
        .name("shardmq-cluster".into())
        .spawn(move || main_loop.run())?;
    tracing::info!(
        "cluster: node {} listening on {local_addr} (advertised {advertise}), seeds {:?}, \
         links {}",
        settings.node_id.0,
        settings.seeds,
        if tls.is_some() { "over mutual TLS" } else { "over plain TCP" }
    );
    let view = ClusterView { node: settings.node_id, events: events.clone(), counters };
    Ok(ClusterRuntime {
        events,
        net,
        view,
        local_addr,
        main: Some(main),
        udp: Some(udp_thread),
        accept: Some(accept),
        tls,
    })
}

impl ClusterRuntime {
    /// What every shard's io layer holds to reach the runtime.
    pub fn tx(&self) -> Arc<dyn ClusterTx> {
        Arc::new(Tx(self.events.clone()))
    }

    /// The admin API's view (status and counters), cheap to clone.
    pub fn view(&self) -> ClusterView {
        self.view.clone()
    }

    /// Members and links now (`None` if the main loop does not answer in time).
    pub fn status(&self) -> Option<ClusterStatus> {
        self.view.status()
    }

    /// Membership datagrams dropped for a missing or bad gossip tag so far.
    pub fn gossip_rejected(&self) -> u64 {
        self.net.gossip_rejected.load(Relaxed)
    }

    /// Link TLS handshakes that failed so far, as client and as server (0 without TLS).
    pub fn tls_handshakes_failed(&self) -> u64 {
        self.tls.as_ref().map_or(0, |t| t.handshakes_failed())
    }

    /// Reloads the link TLS files (`None` without `--cluster-tls-*`).
    pub fn tls_reloader(&self) -> Option<super::TlsReloader> {
        self.tls.clone().map(super::TlsReloader)
    }

    /// The address the node links and gossip are bound to (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Leaves the cluster (peers hear it at once rather than by failure detection), closes
    /// every link and joins the threads, waiting at most about [`STOP_TIMEOUT`].
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(main) = self.main.take() else { return };
        let _ = self.events.send(Event::Stop);
        let deadline = Instant::now() + STOP_TIMEOUT;
        join_by(main, deadline, "main loop");
        self.net.stop.store(true, Relaxed);
        net::wake(self.local_addr);
        for t in [self.udp.take(), self.accept.take()].into_iter().flatten() {
            join_by(t, deadline, "socket thread");
        }
        for t in self.net.take_readers() {
            join_by(t, deadline, "link reader");
        }
    }
}

impl Drop for ClusterRuntime {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Joins `t` if it ends before `deadline`; otherwise leaves it to end on its own.
fn join_by(t: JoinHandle<()>, deadline: Instant, what: &str) {
    while !t.is_finished() {
        if Instant::now() >= deadline {
            tracing::warn!("cluster: a {what} thread did not end in time; not waiting for it");
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = t.join();
}

/// This start's boot id: the wall clock in ns, so a restarted node's is larger than its
/// previous start's (peers let the newer incarnation replace the older by it).
fn boot_id() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    t.map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An incoming connection, as the main loop knows it.
#[derive(Debug)]
struct Incoming {
    peer: SocketAddr,
    /// Set once its Hello was accepted.
    node: Option<NodeId>,
    /// A clone, to close it from the main loop.
    stream: TcpStream,
}

struct MainLoop {
    machine: NodeMachine,
    inbox: Receiver<Event>,
    /// The UDP socket bound to the listen address (a clone of the receive thread's).
    udp: UdpSocket,
    sink: Arc<dyn ShardSink>,
    credit: Arc<CreditPool>,
    link_ctx: LinkContext,
    net: Arc<NetShared>,
    links: HashMap<NodeId, Link>,
    link_serial: u64,
    /// Writers of hung-up links, finishing what was queued (joined at stop).
    retired: Vec<JoinHandle<()>>,
    incoming: HashMap<u64, Incoming>,
    /// Messages for each shard gathered during one turn.
    batches: Vec<Vec<ClusterIn>>,
    /// The cluster's gossip key: datagrams sent are sealed with it (`gossip_auth.rs`).
    gossip_key: Option<GossipKey>,
    /// Per shard: the frame sizes of the peers' messages handed to it and not yet handled
    /// (`ClusterOut::Handled`), in order; they hold their share of the inbound budget.
    inbound: Vec<VecDeque<usize>>,
    /// Per shard: the peers' messages for it kept back, in order, while its subscribers hold
    /// publishers back (`ClusterCounters::shards_paused`); they hold their share of the
    /// inbound budget, so past it the links stop reading and TCP pushes back on the peers.
    deferred: Vec<VecDeque<(u64, Bytes, Option<wire::Frame>)>>,
    /// The shards' pause bits (`ClusterCounters::shards_paused`).
    counters: Arc<ClusterCounters>,
    stopping: bool,
}

impl MainLoop {
    fn run(mut self) {
        loop {
            let now = Instant::now();
            let wait = self
                .machine
                .next_deadline()
                .map_or(IDLE_WAIT, |d| d.saturating_duration_since(now));
            // Messages kept back for a paused shard: look again soon (the shard shows its
            // pause ending in a shared bit, not by an event).
            let idle =
                if self.deferred.iter().any(|d| !d.is_empty()) { DEFERRED_POLL } else { IDLE_WAIT };
            let first = match self.inbox.recv_timeout(wait.min(idle)) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if let Some(ev) = first {
                self.handle(ev);
                for _ in 1..EVENTS_PER_TURN_MAX {
                    match self.inbox.try_recv() {
                        Ok(ev) => self.handle(ev),
                        Err(_) => break,
                    }
                }
            }
            let now = Instant::now();
            self.hand_deferred(now);
            if self.machine.next_deadline().is_some_and(|d| d <= now) {
                self.machine.handle_timer(now);
            }
            self.apply_effects();
            self.flush_batches();
            if self.stopping {
                return self.finish();
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        let now = Instant::now();
        match ev {
            Event::Shard(shard, ClusterOut::Handled { messages }) => {
                // The shard took these messages: their frames leave the inbound budget.
                if let Some(q) = self.inbound.get_mut(usize::from(shard.0)) {
                    let n = usize::try_from(messages).unwrap_or(usize::MAX).min(q.len());
                    let bytes: usize = q.drain(..n).sum();
                    self.net.budget.release(bytes);
                }
            }
            Event::Shard(shard, msg) => self.machine.handle_shard(shard, msg, now),
            Event::Datagram(data) => {
                self.machine.handle_datagram(&data, now);
                self.net.budget.release(data.len());
            }
            Event::Accepted { conn, peer, stream } => {
                self.incoming.insert(conn, Incoming { peer, node: None, stream });
            }
            Event::Frame { conn, frame, decoded } => {
                let shard = match &decoded {
                    Some(wire::Frame::Publish { origin_shard, .. })
                    | Some(wire::Frame::PublishShared { origin_shard, .. }) => {
                        Some(usize::from(*origin_shard) % self.inbound.len())
                    }
                    _ => None,
                };
                // A message for a shard whose subscribers hold publishers back, or that is
                // behind, waits here (and so does every later one for it, to keep order).
                if let Some(s) = shard {
                    if self.must_wait(s) || !self.deferred[s].is_empty() {
                        self.deferred[s].push_back((conn, frame, decoded));
                        return;
                    }
                }
                self.hand(conn, frame, decoded, shard, now);
            }
            Event::Closed { conn } => {
                self.incoming.remove(&conn);
            }
            Event::LinkUp(node, serial) => {
                if self.links.get(&node).is_some_and(|l| l.serial == serial) {
                    tracing::info!("cluster: link to {node} up");
                    self.machine.link_up(node, now);
                }
            }
            Event::LinkDown(node, serial) => {
                if self.links.get(&node).is_some_and(|l| l.serial == serial) {
                    self.machine.link_down(node, now);
                }
            }
            Event::Credit => {
                let batches = &mut self.batches;
                self.credit.collect(|shard, bytes| {
                    let i = usize::from(shard.0) % batches.len();
                    batches[i].push(ClusterIn::Credit { bytes });
                });
            }
            Event::Status(reply) => {
                let _ = reply.try_send(self.machine.status());
            }
            Event::Stop => {
                self.stopping = true;
                self.machine.leave(now);
            }
        }
    }

    /// A frame on an incoming connection: its Hello first, then the peer's frames. True if
    /// the machine took it as a peer's frame.
    fn frame(
        &mut self,
        conn: u64,
        frame: &[u8],
        decoded: Option<wire::Frame>,
        now: Instant,
    ) -> bool {
        let Some(inc) = self.incoming.get_mut(&conn) else {
            return false; // closed by the main loop already; the reader is ending
        };
        if let Some(node) = inc.node {
            match decoded {
                Some(f) => self.machine.handle_decoded(node, f, frame.len(), now),
                None => self.machine.handle_frame(node, frame, now),
            }
            return true;
        }
        match self.machine.handle_hello(frame) {
            Ok(node) => {
                inc.node = Some(node);
                tracing::info!("cluster: link from {node} at {} up", inc.peer);
                // The peer dialled again: its older connection is dead or dying.
                let older: Vec<u64> = self
                    .incoming
                    .iter()
                    .filter(|(c, i)| **c != conn && i.node == Some(node))
                    .map(|(c, _)| *c)
                    .collect();
                for c in older {
                    self.close_incoming(c, "replaced by a newer link");
                }
            }
            Err(e) => {
                tracing::warn!("cluster: refused a link from {}: {e}", inc.peer);
                self.close_incoming(conn, "bad Hello");
            }
        }
        false
    }

    fn close_incoming(&mut self, conn: u64, why: &str) {
        if let Some(inc) = self.incoming.remove(&conn) {
            tracing::debug!("cluster: closing the link from {}: {why}", inc.peer);
            let _ = inc.stream.shutdown(Shutdown::Both);
        }
    }

    fn apply_effects(&mut self) {
        while let Some(effect) = self.machine.poll_effect() {
            match effect {
                Effect::Datagram { to, mut data } => {
                    if let Some(k) = &self.gossip_key {
                        k.seal(&mut data);
                    }
                    if let Err(e) = self.udp.send_to(&data, to) {
                        tracing::debug!("cluster: datagram to {to}: {e}");
                    }
                }
                Effect::Dial { node, addr } => self.dial(node, addr),
                Effect::Hangup { node } => {
                    if let Some(link) = self.links.remove(&node) {
                        tracing::info!("cluster: hanging up the link to {node}");
                        self.retire(link);
                    }
                }
                Effect::Send { node, frame } => {
                    if let Some(link) = self.links.get(&node) {
                        link.send(frame);
                    }
                }
                Effect::Publish { nodes, frame, shard, cost } => {
                    let guard = Arc::new(CreditGuard { pool: self.credit.clone(), shard, cost });
                    for node in nodes.iter() {
                        match self.links.get(&node) {
                            Some(link) => {
                                link.publish(frame.clone(), &guard);
                            }
                            None => {
                                self.link_ctx.counters.messages_dropped.fetch_add(1, Relaxed);
                            }
                        }
                    }
                    // When no link took it, this was the last clone: credited now.
                    drop(guard);
                }
                Effect::ToShard { shard, msg } => {
                    let i = usize::from(shard.0) % self.batches.len();
                    self.batches[i].push(msg);
                }
            }
        }
    }

    fn dial(&mut self, node: NodeId, addr: SocketAddr) {
        if self.links.get(&node).is_some_and(|l| l.addr == addr) {
            return; // already dialled; its writer keeps reconnecting
        }
        if let Some(old) = self.links.remove(&node) {
            self.retire(old);
        }
        self.link_serial += 1;
        match Link::open(&self.link_ctx, node, addr, self.link_serial, self.machine.hello()) {
            Ok(link) => {
                self.links.insert(node, link);
            }
            Err(e) => tracing::warn!("cluster: cannot start the link to {node}: {e}"),
        }
    }

    /// Hangs `link` up: its writer writes what is queued and ends.
    fn retire(&mut self, link: Link) {
        self.retired.retain(|t| !t.is_finished());
        self.retired.extend(link.hang_up());
    }

    fn flush_batches(&mut self) {
        for (i, batch) in self.batches.iter_mut().enumerate() {
            if !batch.is_empty() {
                self.sink.send(ShardId(i as u16), std::mem::take(batch));
            }
        }
    }

    /// After `leave`: its datagrams and frames are out; close every link and connection.
    fn finish(mut self) {
        let mut writers: Vec<JoinHandle<()>> =
            self.links.drain().filter_map(|(_, l)| l.hang_up()).collect();
        writers.append(&mut self.retired);
        for (_, inc) in self.incoming.drain() {
            let _ = inc.stream.shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + STOP_TIMEOUT / 2;
        for t in writers {
            join_by(t, deadline, "link writer");
        }
    }
}
