//! The load generator: MQTT connections on non-blocking sockets, thousands per thread.
//!
//! Each thread runs one `mio` reactor over its share of the connections ([`ConnSpec`]s of a
//! [`LoadSpec`]). A thread reads every readable socket into one 64 KiB buffer (a short read
//! ends the batch: with edge-triggered epoll a new arrival raises a new event), parses whole
//! frames in place and keeps only a partial tail per connection. Outgoing bytes are queued
//! per connection and written once per reactor turn, so a publisher sends many PUBLISHes and a
//! subscriber many acknowledgements per `write`.
//!
//! Phases, driven by the coordinator through [`Control`]:
//! 1. setup: connect (bounded concurrency), CONNECT/CONNACK, SUBSCRIBE/SUBACK;
//! 2. publish from `start_ns` to `measure_end_ns` (warm-up, then the measured window),
//!    at a fixed rate (open loop) or as fast as an end-to-end window allows (max rate);
//! 3. drain: until every expected message arrived, nothing arrived for `quiet_ms`, or
//!    `drain_end_ns`; then DISCONNECT and close.
//!
//! Deferred subscribers (the retained scenario) SUBSCRIBE only once every publisher is done.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::{Deserialize, Serialize};
use shardmq_codec::{ProtocolVersion, QoS};
use socket2::{Domain, Protocol, Socket, Type};

use crate::payload::Header;
use crate::sys::monotonic_ns;
use crate::track::{histogram_add_pairs, histogram_to_pairs, new_histogram, Pair};
use crate::wire::{self, kind, PublishTemplate};

/// What one connection does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Role {
    /// Publishes to `topic` (or `topic/{seq}` when `topic_per_message`).
    Publisher {
        /// Unique in the run, `0..publishers_total`.
        id: u32,
        /// Topic name.
        topic: String,
        /// RETAIN flag.
        retain: bool,
        /// Publish message `seq` to `{topic}/{seq}` (the retained scenario).
        topic_per_message: bool,
    },
    /// Subscribes to `filter`.
    Subscriber {
        /// Delivery group (see [`crate::track`]).
        group: u32,
        /// Topic filter, possibly `$share/...`.
        filter: String,
        /// SUBSCRIBE only once every publisher is done.
        deferred: bool,
    },
    /// Connects and stays idle (the connection scenario).
    Idle,
}

/// One connection to open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnSpec {
    /// MQTT client identifier, unique in the run.
    pub client_id: String,
    /// Source address to bind before connecting (a 127.0.0.x), or the kernel's choice.
    pub source_ip: Option<Ipv4Addr>,
    /// What the connection does.
    pub role: Role,
}

/// Everything a load part needs; serialised to worker processes as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSpec {
    /// Broker address.
    pub broker: SocketAddr,
    /// MQTT protocol level: 3, 4 (3.1.1) or 5.
    pub mqtt_version: u8,
    /// QoS of PUBLISH and SUBSCRIBE.
    pub qos: u8,
    /// Payload size, at least [`crate::payload::HEADER_BYTES`].
    pub payload_bytes: usize,
    /// Messages per second per publisher; 0 means max rate.
    pub rate_per_publisher: f64,
    /// At most this many messages per publisher.
    pub messages_per_publisher: u64,
    /// Max rate only: messages per publisher sent but not yet received by the subscribers
    /// (averaged over the groups that should receive them).
    pub window_messages: u64,
    /// QoS 1/2: unacknowledged PUBLISHes per publisher.
    pub inflight_max: u32,
    /// Groups each publisher's messages should reach.
    pub groups_per_publisher: u64,
    /// Publishers in the whole run (ids are `0..publishers_total`).
    pub publishers_total: u32,
    /// CONNECT keep alive.
    pub keep_alive_secs: u16,
    /// Connections per thread in the TCP or MQTT handshake at once.
    pub connect_concurrency: usize,
    /// Whether the broker owes per-publisher order (false for retained messages).
    pub ordered: bool,
    /// Drain ends after this long without any new message.
    pub quiet_ms: u64,
    /// Reactor threads.
    pub threads: usize,
    /// CPUs to pin the reactor threads to (round robin); empty: no pinning.
    pub harness_cpus: Vec<usize>,
    /// The connections.
    pub conns: Vec<ConnSpec>,
}

/// When things happen, in ns of `CLOCK_MONOTONIC`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Schedule {
    /// Publishing starts (warm-up).
    pub start_ns: u64,
    /// The measured window starts.
    pub measure_start_ns: u64,
    /// The measured window ends and publishers stop.
    pub measure_end_ns: u64,
    /// Hard end of the drain.
    pub drain_end_ns: u64,
}

/// Shared between the coordinator and the reactor threads of one process (or mirrored from
/// a worker's progress lines). Counters are updated in batches, once per reactor turn.
#[derive(Debug, Default)]
pub struct Control {
    /// Set once by the coordinator when every part is set up.
    pub schedule: OnceLock<Schedule>,
    /// Stop now (an error elsewhere).
    pub abort: AtomicBool,
    /// Connections through CONNACK (and SUBACK unless deferred).
    pub connected: AtomicU64,
    /// Connections that failed.
    pub failed: AtomicU64,
    /// Threads whose every connection is connected or failed.
    pub setup_threads_done: AtomicUsize,
    /// PUBLISHes written.
    pub sent: AtomicU64,
    /// PUBLISHes received.
    pub received: AtomicU64,
    /// PUBLISHes received that were new to their (publisher, subscriber) stream.
    pub received_new: AtomicU64,
    /// Publishers done (stopped, acknowledged, and for QoS 0 answered a PINGREQ).
    pub publishers_done: AtomicU64,
    /// Final message counts of the publishers that are done.
    pub sent_final: AtomicU64,
    /// Receipts per publisher id (the max-rate window).
    pub delivered_by_publisher: Vec<AtomicU64>,
    /// When the first deferred SUBSCRIBE was written (0: not yet).
    pub deferred_subscribe_ns: AtomicU64,
    /// Last time anything was received or a deferred SUBSCRIBE was sent.
    pub last_progress_ns: AtomicU64,
    /// Threads that finished.
    pub finished_threads: AtomicUsize,
}

impl Control {
    /// A control block for `publishers_total` publishers.
    pub fn new(publishers_total: u32) -> Control {
        Control {
            delivered_by_publisher: (0..publishers_total).map(|_| AtomicU64::new(0)).collect(),
            ..Control::default()
        }
    }
}

/// What a part (a set of threads in one process) measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartResult {
    /// Connections through the handshake.
    pub connected: u64,
    /// Connections that failed.
    pub failed: u64,
    /// The first few errors.
    pub errors: Vec<String>,
    /// First connect attempt, ns.
    pub setup_first_ns: u64,
    /// Last connection ready, ns.
    pub setup_last_ns: u64,
    /// (publisher id, messages sent).
    pub sent_by_publisher: Vec<(u32, u64)>,
    /// Every (publisher, subscriber) stream.
    pub pairs: Vec<Pair>,
    /// Latency histogram (ns) as (value, count).
    pub latency_ns: Vec<(u64, u64)>,
    /// First receipt, ns (0: none).
    pub first_receipt_ns: u64,
    /// Last receipt, ns.
    pub last_receipt_ns: u64,
    /// Max rate: times a stalled window was written off (messages presumed lost).
    pub window_write_offs: u64,
    /// Fixed rate: worst delay of a send behind its schedule, in the measured window, ns.
    pub publish_lag_ns_max: u64,
    /// Connections the broker closed during the run.
    pub closed_by_broker: u64,
    /// This process's CPU time in the measured window, µs (filled by the part's owner).
    pub cpu_us_window: u64,
    /// Reactor threads.
    pub threads: usize,
}

impl PartResult {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: PartResult) {
        let min_nz = |a: u64, b: u64| match (a, b) {
            (0, x) | (x, 0) => x,
            (a, b) => a.min(b),
        };
        self.connected += other.connected;
        self.failed += other.failed;
        self.errors.extend(other.errors);
        self.errors.truncate(8);
        self.setup_first_ns = min_nz(self.setup_first_ns, other.setup_first_ns);
        self.setup_last_ns = self.setup_last_ns.max(other.setup_last_ns);
        self.sent_by_publisher.extend(other.sent_by_publisher);
        self.pairs.extend(other.pairs);
        let mut h = new_histogram();
        histogram_add_pairs(&mut h, &self.latency_ns);
        histogram_add_pairs(&mut h, &other.latency_ns);
        self.latency_ns = histogram_to_pairs(&h);
        self.first_receipt_ns = min_nz(self.first_receipt_ns, other.first_receipt_ns);
        self.last_receipt_ns = self.last_receipt_ns.max(other.last_receipt_ns);
        self.window_write_offs += other.window_write_offs;
        self.publish_lag_ns_max = self.publish_lag_ns_max.max(other.publish_lag_ns_max);
        self.closed_by_broker += other.closed_by_broker;
        self.cpu_us_window += other.cpu_us_window;
        self.threads += other.threads;
    }
}

/// A running part: reactor threads in this process.
#[derive(Debug)]
pub struct Part {
    /// The shared control block.
    pub ctl: Arc<Control>,
    threads: Vec<JoinHandle<Result<PartResult>>>,
}

impl Part {
    /// Starts `spec.threads` reactor threads over `spec.conns`.
    pub fn start(spec: LoadSpec) -> Result<Part> {
        let spec = Arc::new(spec);
        let ctl = Arc::new(Control::new(spec.publishers_total));
        let threads = spec.threads.max(1);
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let mine: Vec<usize> = (t..spec.conns.len()).step_by(threads).collect();
            let (spec, ctl) = (Arc::clone(&spec), Arc::clone(&ctl));
            let cpu = (!spec.harness_cpus.is_empty())
                .then(|| spec.harness_cpus[t % spec.harness_cpus.len()]);
            let h = std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || {
                    if let Some(id) = cpu {
                        core_affinity::set_for_current(core_affinity::CoreId { id });
                    }
                    let r = Reactor::new(&spec, &ctl, mine).and_then(|mut r| r.run());
                    if r.is_err() {
                        ctl.abort.store(true, Relaxed);
                    }
                    ctl.finished_threads.fetch_add(1, Relaxed);
                    r
                })
                .context("spawning a load thread")?;
            handles.push(h);
        }
        Ok(Part { ctl, threads: handles })
    }

    /// Number of reactor threads.
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// Waits for every thread and merges their results.
    pub fn join(self) -> Result<PartResult> {
        let mut out = PartResult::default();
        let mut first_err = None;
        for h in self.threads {
            match h.join() {
                Ok(Ok(r)) => out.merge(r),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some(anyhow!("a load thread panicked"))),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

/// Reading buffer per thread.
const READ_BUF_BYTES: usize = 64 * 1024;
/// A publisher stops generating while this much is queued unwritten.
const TX_BACKLOG_MAX_BYTES: usize = 256 * 1024;
/// PUBLISHes generated per publisher per reactor turn.
const BURST_MAX: u64 = 512;
/// A max-rate window that has not moved for this long is written off.
const WINDOW_STALL_NS: u64 = 1_000_000_000;
/// Errors kept per thread.
const ERRORS_KEPT: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotStarted,
    Connecting,
    AwaitConnAck,
    AwaitSubAck,
    Ready,
    Closed,
}

#[derive(Debug)]
struct PubState {
    id: u32,
    template: PublishTemplate,
    topic: String,
    retain: bool,
    topic_per_message: bool,
    next_seq: u64,
    next_packet_id: u16,
    inflight: u32,
    /// `--inflight`, lowered to the broker's Receive Maximum (5.0 CONNACK).
    inflight_max: u32,
    stopped: bool,
    ping_outstanding: bool,
    done: bool,
    written_off: u64,
    blocked_since_ns: u64,
    blocked_delivered: u64,
}

impl PubState {
    fn take_packet_id(&mut self) -> u16 {
        let id = self.next_packet_id;
        self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
        id
    }
}

#[derive(Debug)]
struct SubState {
    group: u32,
    filter: String,
    deferred: bool,
    subscribed: bool,
    pairs: Vec<Pair>,
    index: HashMap<u32, usize>,
    last: usize,
}

#[derive(Debug)]
enum RoleState {
    Pub(Box<PubState>),
    Sub(SubState),
    Idle,
}

#[derive(Debug)]
struct Conn {
    spec: usize,
    stream: Option<TcpStream>,
    state: State,
    rx: Vec<u8>,
    tx: Vec<u8>,
    tx_pos: usize,
    dirty: bool,
    last_tx_ns: u64,
    role: RoleState,
}

/// Counters a thread accumulates and publishes to [`Control`] once per turn.
#[derive(Debug)]
struct Stats {
    hist: Histogram<u64>,
    delivered: Vec<u64>,
    touched: Vec<u32>,
    received: u64,
    received_new: u64,
    sent: u64,
    connected: u64,
    failed: u64,
    errors: Vec<String>,
    setup_first_ns: u64,
    setup_last_ns: u64,
    first_receipt_ns: u64,
    last_receipt_ns: u64,
    window_write_offs: u64,
    publish_lag_ns_max: u64,
    closed_by_broker: u64,
}

impl Stats {
    fn error(&mut self, msg: String) {
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(msg);
        }
    }
}

/// Immutable per-turn context.
#[derive(Debug, Clone, Copy)]
struct Ctx {
    version: ProtocolVersion,
    v5: bool,
    qos: QoS,
    ordered: bool,
    schedule: Option<Schedule>,
    now_ns: u64,
}

struct Reactor<'a> {
    spec: &'a LoadSpec,
    ctl: &'a Control,
    poll: Poll,
    conns: Vec<Conn>,
    publishers: Vec<usize>,
    deferred: Vec<usize>,
    next_to_start: usize,
    handshaking: usize,
    settled: usize,
    setup_reported: bool,
    connected_total: u64,
    failed_total: u64,
    dirty: Vec<usize>,
    st: Stats,
    ctx: Ctx,
}

impl<'a> Reactor<'a> {
    fn new(spec: &'a LoadSpec, ctl: &'a Control, mine: Vec<usize>) -> Result<Reactor<'a>> {
        let version = wire::protocol_version(spec.mqtt_version)?;
        let qos = wire::qos(spec.qos)?;
        let mut conns = Vec::with_capacity(mine.len());
        let mut publishers = Vec::new();
        let mut deferred = Vec::new();
        for (i, &s) in mine.iter().enumerate() {
            let role = match &spec.conns[s].role {
                Role::Publisher { id, topic, retain, topic_per_message } => {
                    publishers.push(i);
                    let template =
                        PublishTemplate::new(topic, qos, *retain, spec.payload_bytes, version)?;
                    RoleState::Pub(Box::new(PubState {
                        id: *id,
                        template,
                        topic: topic.clone(),
                        retain: *retain,
                        topic_per_message: *topic_per_message,
                        next_seq: 0,
                        next_packet_id: 1,
                        inflight: 0,
                        inflight_max: spec.inflight_max.max(1),
                        stopped: false,
                        ping_outstanding: false,
                        done: false,
                        written_off: 0,
                        blocked_since_ns: 0,
                        blocked_delivered: 0,
                    }))
                }
                Role::Subscriber { group, filter, deferred: d } => {
                    if *d {
                        deferred.push(i);
                    }
                    RoleState::Sub(SubState {
                        group: *group,
                        filter: filter.clone(),
                        deferred: *d,
                        subscribed: false,
                        pairs: Vec::new(),
                        index: HashMap::new(),
                        last: 0,
                    })
                }
                Role::Idle => RoleState::Idle,
            };
            conns.push(Conn {
                spec: s,
                stream: None,
                state: State::NotStarted,
                rx: Vec::new(),
                tx: Vec::new(),
                tx_pos: 0,
                dirty: false,
                last_tx_ns: 0,
                role,
            });
        }
        Ok(Reactor {
            spec,
            ctl,
            poll: Poll::new().context("creating the poller")?,
            conns,
            publishers,
            deferred,
            next_to_start: 0,
            handshaking: 0,
            settled: 0,
            setup_reported: false,
            connected_total: 0,
            failed_total: 0,
            dirty: Vec::new(),
            st: Stats {
                hist: new_histogram(),
                delivered: vec![0; spec.publishers_total as usize],
                touched: Vec::new(),
                received: 0,
                received_new: 0,
                sent: 0,
                connected: 0,
                failed: 0,
                errors: Vec::new(),
                setup_first_ns: 0,
                setup_last_ns: 0,
                first_receipt_ns: 0,
                last_receipt_ns: 0,
                window_write_offs: 0,
                publish_lag_ns_max: 0,
                closed_by_broker: 0,
            },
            ctx: Ctx {
                version,
                v5: version.is_v5(),
                qos,
                ordered: spec.ordered,
                schedule: None,
                now_ns: monotonic_ns(),
            },
        })
    }

    fn run(&mut self) -> Result<PartResult> {
        let mut events = Events::with_capacity(1024);
        let mut rbuf = vec![0u8; READ_BUF_BYTES];
        let keep_alive_ns = u64::from(self.spec.keep_alive_secs.max(2)) * 1_000_000_000 / 2;
        let mut next_ping_check_ns = monotonic_ns() + keep_alive_ns;
        loop {
            self.ctx.now_ns = monotonic_ns();
            if self.ctl.abort.load(Relaxed) {
                break;
            }
            if self.ctx.schedule.is_none() {
                self.ctx.schedule = self.ctl.schedule.get().copied();
            }
            self.start_connections();
            let busy = self.publish();
            self.subscribe_deferred()?;
            self.flush_dirty();
            self.publish_counters();
            if !self.setup_reported && self.settled == self.conns.len() {
                self.setup_reported = true;
                self.ctl.setup_threads_done.fetch_add(1, Relaxed);
            }
            if self.finished() {
                break;
            }
            if self.ctx.now_ns >= next_ping_check_ns {
                self.keep_alive(keep_alive_ns);
                next_ping_check_ns = self.ctx.now_ns + keep_alive_ns / 4;
            }
            let timeout = self.poll_timeout(busy);
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("epoll_wait"),
            }
            for ev in events.iter() {
                let i = ev.token().0;
                self.ctx.now_ns = monotonic_ns();
                if self.conns[i].state == State::Connecting {
                    self.on_connect_event(i);
                    continue;
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(i, &mut rbuf);
                }
                if ev.is_writable() && self.conns[i].state != State::Closed {
                    self.mark_dirty(i);
                }
            }
        }
        self.close_all();
        self.publish_counters();
        Ok(self.result())
    }

    fn poll_timeout(&self, busy: bool) -> Duration {
        if busy {
            return Duration::ZERO;
        }
        let Some(s) = self.ctx.schedule else {
            return Duration::from_millis(5);
        };
        let now = self.ctx.now_ns;
        if now < s.start_ns {
            return Duration::from_nanos((s.start_ns - now).min(5_000_000));
        }
        if now < s.measure_end_ns && !self.publishers.is_empty() {
            if self.spec.rate_per_publisher > 0.0 {
                // Wake for the next due message, at most 1 ms away.
                let period_ns = (1e9 / self.spec.rate_per_publisher) as u64;
                return Duration::from_nanos(period_ns.clamp(50_000, 1_000_000));
            }
            return Duration::from_millis(1);
        }
        Duration::from_millis(2)
    }

    fn start_connections(&mut self) {
        while self.handshaking < self.spec.connect_concurrency.max(1)
            && self.next_to_start < self.conns.len()
        {
            let i = self.next_to_start;
            self.next_to_start += 1;
            if self.st.setup_first_ns == 0 {
                self.st.setup_first_ns = self.ctx.now_ns;
            }
            match self.open(i) {
                Ok(()) => self.handshaking += 1,
                Err(e) => self.fail(i, format!("connect: {e:#}")),
            }
        }
    }

    fn open(&mut self, i: usize) -> Result<()> {
        let spec = &self.spec.conns[self.conns[i].spec];
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        sock.set_nonblocking(true)?;
        sock.set_tcp_nodelay(true)?;
        if let Some(ip) = spec.source_ip {
            // Port 0: the kernel picks an ephemeral port unique for this source address, so
            // one address gives about 28,000 connections (ip_local_port_range).
            sock.bind(&SocketAddr::from((ip, 0)).into()).with_context(|| format!("bind {ip}"))?;
        }
        match sock.connect(&self.spec.broker.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => {}
            Err(e) => return Err(e.into()),
        }
        let mut stream = TcpStream::from_std(std::net::TcpStream::from(sock));
        self.poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let c = &mut self.conns[i];
        c.stream = Some(stream);
        c.state = State::Connecting;
        Ok(())
    }

    fn on_connect_event(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(stream) = c.stream.as_ref() else { return };
        if let Ok(Some(e)) | Err(e) = stream.take_error() {
            let msg = format!("connect: {e}");
            return self.fail(i, msg);
        }
        match stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => {
                let msg = format!("connect: {e}");
                return self.fail(i, msg);
            }
        }
        let spec = &self.spec.conns[c.spec];
        match wire::connect(&spec.client_id, self.ctx.version, self.spec.keep_alive_secs) {
            Ok(bytes) => {
                c.tx.extend_from_slice(&bytes);
                c.state = State::AwaitConnAck;
                self.mark_dirty(i);
            }
            Err(e) => self.fail(i, format!("{e:#}")),
        }
    }

    /// A connection failed during setup or broke later.
    fn fail(&mut self, i: usize, msg: String) {
        let c = &mut self.conns[i];
        let was = c.state;
        if was == State::Closed {
            return;
        }
        c.state = State::Closed;
        let role = match &c.role {
            RoleState::Pub(_) => "publisher",
            RoleState::Sub(_) => "subscriber",
            RoleState::Idle => "idle connection",
        };
        let msg = format!("{role} {}: {msg}", self.spec.conns[c.spec].client_id);
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if let RoleState::Pub(p) = &mut c.role {
            if !p.done {
                p.done = true;
                p.stopped = true;
                self.ctl.sent_final.fetch_add(p.next_seq, Relaxed);
                self.ctl.last_progress_ns.fetch_max(self.ctx.now_ns, Relaxed);
                self.ctl.publishers_done.fetch_add(1, SeqCst);
            }
        }
        match was {
            State::Ready => self.st.closed_by_broker += 1,
            _ => {
                self.st.failed += 1;
                self.failed_total += 1;
                self.handshaking -= (was != State::NotStarted) as usize;
                self.settled += 1;
            }
        }
        self.st.error(msg);
    }

    fn became_ready(&mut self, i: usize) {
        self.conns[i].state = State::Ready;
        self.st.connected += 1;
        self.connected_total += 1;
        self.handshaking -= 1;
        self.settled += 1;
        self.st.setup_last_ns = self.ctx.now_ns;
    }

    fn on_readable(&mut self, i: usize, rbuf: &mut [u8]) {
        loop {
            let c = &mut self.conns[i];
            let Some(stream) = c.stream.as_mut() else { return };
            let n = match stream.read(rbuf) {
                Ok(0) => return self.fail(i, "closed by the broker".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(i, format!("read: {e}")),
            };
            self.ctx.now_ns = monotonic_ns();
            let result = if c.rx.is_empty() {
                self.process(i, &rbuf[..n])
                    .map(|used| self.conns[i].rx.extend_from_slice(&rbuf[used..n]))
            } else {
                let mut rx = std::mem::take(&mut self.conns[i].rx);
                rx.extend_from_slice(&rbuf[..n]);
                let r = self.process(i, &rx).map(|used| {
                    rx.drain(..used);
                });
                self.conns[i].rx = rx;
                r
            };
            if let Err(e) = result {
                return self.fail(i, e);
            }
            if n < rbuf.len() {
                // A short read drained the socket; a later arrival raises a new edge.
                return;
            }
        }
    }

    /// Handles every whole frame of `buf`; returns the bytes consumed.
    fn process(&mut self, i: usize, buf: &[u8]) -> Result<usize, String> {
        let mut pos = 0;
        while let Some((len, body)) = wire::split_frame(&buf[pos..]).map_err(|e| e.to_string())? {
            let frame = &buf[pos..pos + len];
            self.on_frame(i, frame, &frame[body..])?;
            pos += len;
        }
        Ok(pos)
    }

    fn on_frame(&mut self, i: usize, frame: &[u8], body: &[u8]) -> Result<(), String> {
        let ptype = frame[0] >> 4;
        let state = self.conns[i].state;
        match (state, ptype) {
            (State::AwaitConnAck, _) => {
                let p =
                    wire::decode_frame(frame, self.ctx.version).map_err(|e| format!("{e:#}"))?;
                wire::check_connack(&p).map_err(|e| format!("{e:#}"))?;
                if let (RoleState::Pub(pb), Some(rm)) =
                    (&mut self.conns[i].role, wire::receive_maximum(&p))
                {
                    pb.inflight_max = pb.inflight_max.min(u32::from(rm)).max(1);
                }
                let sub = match &self.conns[i].role {
                    RoleState::Sub(s) if !s.deferred => Some(s.filter.clone()),
                    _ => None,
                };
                match sub {
                    Some(filter) => {
                        self.send_subscribe(i, &filter)?;
                        self.conns[i].state = State::AwaitSubAck;
                    }
                    None => self.became_ready(i),
                }
            }
            (_, kind::SUBACK) => {
                let p =
                    wire::decode_frame(frame, self.ctx.version).map_err(|e| format!("{e:#}"))?;
                wire::check_suback(&p).map_err(|e| format!("{e:#}"))?;
                if state == State::AwaitSubAck {
                    self.became_ready(i);
                }
            }
            (_, kind::PUBLISH) => self.on_publish(i, frame[0], body)?,
            (_, kind::PUBACK) | (_, kind::PUBCOMP) => self.on_pub_done(i),
            (_, kind::PUBREC) => {
                let id = wire::ack_packet_id(body).map_err(|e| e.to_string())?;
                if body.len() > 2 && body[2] >= 0x80 {
                    // A refused QoS 2 message ends its flow here [MQTT-4.3.3].
                    self.on_pub_done(i);
                } else {
                    self.queue(i, &wire::ack(kind::PUBREL, id));
                }
            }
            (_, kind::PUBREL) => {
                let id = wire::ack_packet_id(body).map_err(|e| e.to_string())?;
                self.queue(i, &wire::ack(kind::PUBCOMP, id));
            }
            (_, kind::PINGRESP) => {
                if let RoleState::Pub(p) = &mut self.conns[i].role {
                    p.ping_outstanding = false;
                }
            }
            (_, kind::DISCONNECT) => return Err("DISCONNECT from the broker".into()),
            (_, other) => return Err(format!("unexpected packet type {other}")),
        }
        Ok(())
    }

    fn on_pub_done(&mut self, i: usize) {
        if let RoleState::Pub(p) = &mut self.conns[i].role {
            p.inflight = p.inflight.saturating_sub(1);
        }
    }

    fn on_publish(&mut self, i: usize, byte0: u8, body: &[u8]) -> Result<(), String> {
        let view = wire::parse_publish(byte0, body, self.ctx.v5).map_err(|e| e.to_string())?;
        match (view.qos, view.packet_id) {
            (1, Some(id)) => self.queue(i, &wire::ack(kind::PUBACK, id)),
            (2, Some(id)) => self.queue(i, &wire::ack(kind::PUBREC, id)),
            _ => {}
        }
        let Some(h) = Header::read(view.payload) else {
            return Err(format!("PUBLISH payload of {} bytes has no header", view.payload.len()));
        };
        let now = self.ctx.now_ns;
        let (in_window, latency_sample) = match self.ctx.schedule {
            Some(s) => (
                now >= s.measure_start_ns && now < s.measure_end_ns,
                h.sent_ns >= s.measure_start_ns && h.sent_ns < s.measure_end_ns,
            ),
            None => (false, false),
        };
        let RoleState::Sub(sub) = &mut self.conns[i].role else {
            return Err("PUBLISH received on a connection that did not subscribe".into());
        };
        let idx = if sub.pairs.get(sub.last).is_some_and(|p| p.publisher == h.publisher) {
            sub.last
        } else {
            let next = sub.pairs.len();
            let group = sub.group;
            let idx = *sub.index.entry(h.publisher).or_insert(next);
            if idx == next {
                sub.pairs.push(Pair::new(h.publisher, group));
            }
            sub.last = idx;
            idx
        };
        let pair = &mut sub.pairs[idx];
        let before = pair.seen.len();
        pair.record(h.seq, in_window, self.ctx.ordered);
        self.st.received_new += (pair.seen.len() > before) as u64;
        self.st.received += 1;
        if let Some(d) = self.st.delivered.get_mut(h.publisher as usize) {
            if *d == 0 {
                self.st.touched.push(h.publisher);
            }
            *d += 1;
        }
        if latency_sample {
            let _ = self.st.hist.record(now.saturating_sub(h.sent_ns).max(1));
        }
        if self.st.first_receipt_ns == 0 {
            self.st.first_receipt_ns = now;
        }
        self.st.last_receipt_ns = now;
        Ok(())
    }

    fn send_subscribe(&mut self, i: usize, filter: &str) -> Result<(), String> {
        let bytes = wire::subscribe(1, filter, self.ctx.qos, self.ctx.version)
            .map_err(|e| format!("{e:#}"))?;
        self.queue(i, &bytes);
        if let RoleState::Sub(s) = &mut self.conns[i].role {
            s.subscribed = true;
        }
        Ok(())
    }

    fn subscribe_deferred(&mut self) -> Result<()> {
        if self.deferred.is_empty()
            || self.ctx.schedule.is_none()
            || self.ctl.publishers_done.load(SeqCst) < u64::from(self.spec.publishers_total)
        {
            return Ok(());
        }
        let now = self.ctx.now_ns;
        for i in std::mem::take(&mut self.deferred) {
            let filter = match &self.conns[i].role {
                RoleState::Sub(s) if !s.subscribed && self.conns[i].state == State::Ready => {
                    s.filter.clone()
                }
                _ => continue,
            };
            self.send_subscribe(i, &filter).map_err(|e| anyhow!(e))?;
            let _ = self.ctl.deferred_subscribe_ns.compare_exchange(0, now, Relaxed, Relaxed);
            self.ctl.last_progress_ns.fetch_max(now, Relaxed);
        }
        Ok(())
    }

    /// Generates due PUBLISHes; returns whether a publisher could send more right away.
    fn publish(&mut self) -> bool {
        let Some(s) = self.ctx.schedule else { return false };
        let now = self.ctx.now_ns;
        if now < s.start_ns {
            return false;
        }
        let rate = self.spec.rate_per_publisher;
        let cap = self.spec.messages_per_publisher;
        let mut busy = false;
        for k in 0..self.publishers.len() {
            let i = self.publishers[k];
            let c = &mut self.conns[i];
            if c.state != State::Ready {
                continue;
            }
            let RoleState::Pub(p) = &mut c.role else { continue };
            if p.done {
                continue;
            }
            if !p.stopped && (now >= s.measure_end_ns || p.next_seq >= cap) {
                p.stopped = true;
                if self.ctx.qos == QoS::AtMostOnce {
                    // QoS 0 has no acknowledgement: a PINGRESP after the last PUBLISH says
                    // the broker has read them all.
                    c.tx.extend_from_slice(&wire::PINGREQ);
                    p.ping_outstanding = true;
                }
            }
            if p.stopped {
                if p.inflight == 0 && !p.ping_outstanding {
                    p.done = true;
                    self.ctl.sent_final.fetch_add(p.next_seq, Relaxed);
                    self.ctl.last_progress_ns.fetch_max(now, Relaxed);
                    self.ctl.publishers_done.fetch_add(1, SeqCst);
                }
                if !c.dirty && c.tx.len() > c.tx_pos {
                    c.dirty = true;
                    self.dirty.push(i);
                }
                continue;
            }
            let mut n = BURST_MAX.min(cap - p.next_seq);
            if rate > 0.0 {
                let due = (((now - s.start_ns) as f64 * rate / 1e9) as u64 + 1).min(cap);
                n = n.min(due.saturating_sub(p.next_seq));
            }
            if c.tx.len() - c.tx_pos > TX_BACKLOG_MAX_BYTES {
                n = 0;
            }
            if self.ctx.qos != QoS::AtMostOnce {
                n = n.min(u64::from(p.inflight_max.saturating_sub(p.inflight)));
            }
            if rate <= 0.0 && n > 0 {
                let delivered = self.ctl.delivered_by_publisher[p.id as usize].load(Relaxed);
                let groups = self.spec.groups_per_publisher.max(1);
                let outstanding = p.next_seq.saturating_sub(p.written_off + delivered / groups);
                let room = self.spec.window_messages.saturating_sub(outstanding);
                if room == 0 {
                    if p.blocked_since_ns == 0 || delivered != p.blocked_delivered {
                        p.blocked_since_ns = now;
                        p.blocked_delivered = delivered;
                    } else if now - p.blocked_since_ns > WINDOW_STALL_NS {
                        // Nothing arrived for a while: those messages are presumed lost
                        // (counted as loss at the end); let the publisher go on.
                        p.written_off += outstanding;
                        p.blocked_since_ns = 0;
                        self.st.window_write_offs += 1;
                    }
                } else {
                    p.blocked_since_ns = 0;
                }
                n = n.min(room);
            }
            if n == 0 {
                continue;
            }
            for _ in 0..n {
                let seq = p.next_seq;
                if rate > 0.0 && now >= s.measure_start_ns {
                    let scheduled = s.start_ns + (seq as f64 * 1e9 / rate) as u64;
                    if scheduled >= s.measure_start_ns {
                        self.st.publish_lag_ns_max =
                            self.st.publish_lag_ns_max.max(now.saturating_sub(scheduled));
                    }
                }
                let packet_id = (self.ctx.qos != QoS::AtMostOnce).then(|| p.take_packet_id());
                let header = Header { seq, publisher: p.id, sent_ns: now };
                if p.topic_per_message {
                    let topic = format!("{}/{seq}", p.topic);
                    match PublishTemplate::new(
                        &topic,
                        self.ctx.qos,
                        p.retain,
                        self.spec.payload_bytes,
                        self.ctx.version,
                    ) {
                        Ok(t) => t.append(&mut c.tx, packet_id, &header),
                        Err(e) => {
                            self.st.error(format!("{e:#}"));
                            self.ctl.abort.store(true, Relaxed);
                            return false;
                        }
                    }
                } else {
                    p.template.append(&mut c.tx, packet_id, &header);
                }
                p.next_seq += 1;
                p.inflight += (packet_id.is_some()) as u32;
            }
            self.st.sent += n;
            busy |= n == BURST_MAX;
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(i);
            }
        }
        busy
    }

    fn queue(&mut self, i: usize, bytes: &[u8]) {
        self.conns[i].tx.extend_from_slice(bytes);
        self.mark_dirty(i);
    }

    fn mark_dirty(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(i);
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            self.conns[i].dirty = false;
            if let Err(e) = self.flush(i) {
                self.fail(i, format!("write: {e}"));
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn flush(&mut self, i: usize) -> io::Result<()> {
        let now = self.ctx.now_ns;
        let c = &mut self.conns[i];
        let Some(stream) = c.stream.as_mut() else { return Ok(()) };
        if matches!(c.state, State::Connecting | State::NotStarted | State::Closed) {
            return Ok(());
        }
        while c.tx_pos < c.tx.len() {
            match stream.write(&c.tx[c.tx_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    c.tx_pos += n;
                    c.last_tx_ns = now;
                }
                // The socket is full: the next writable edge marks the connection dirty.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if c.tx_pos == c.tx.len() {
            c.tx.clear();
            c.tx_pos = 0;
        } else if c.tx_pos > TX_BACKLOG_MAX_BYTES {
            c.tx.drain(..c.tx_pos);
            c.tx_pos = 0;
        }
        Ok(())
    }

    fn keep_alive(&mut self, idle_ns: u64) {
        let now = self.ctx.now_ns;
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if c.state == State::Ready && now.saturating_sub(c.last_tx_ns) >= idle_ns {
                self.queue(i, &wire::PINGREQ);
            }
        }
    }

    /// Publishes this turn's counter deltas to the control block.
    fn publish_counters(&mut self) {
        let st = &mut self.st;
        if st.sent > 0 {
            self.ctl.sent.fetch_add(std::mem::take(&mut st.sent), Relaxed);
        }
        if st.received > 0 {
            self.ctl.received.fetch_add(std::mem::take(&mut st.received), Relaxed);
            self.ctl.received_new.fetch_add(std::mem::take(&mut st.received_new), Relaxed);
            self.ctl.last_progress_ns.fetch_max(self.ctx.now_ns, Relaxed);
        }
        for id in st.touched.drain(..) {
            let d = std::mem::take(&mut st.delivered[id as usize]);
            self.ctl.delivered_by_publisher[id as usize].fetch_add(d, Relaxed);
        }
        if st.connected > 0 {
            self.ctl.connected.fetch_add(std::mem::take(&mut st.connected), Relaxed);
        }
        if st.failed > 0 {
            self.ctl.failed.fetch_add(std::mem::take(&mut st.failed), Relaxed);
        }
    }

    fn finished(&self) -> bool {
        let Some(s) = self.ctx.schedule else { return false };
        let now = self.ctx.now_ns;
        if now >= s.drain_end_ns {
            return true;
        }
        if self.spec.publishers_total == 0 {
            // Idle connections (the connection scenario) are held for the whole window.
            return now >= s.measure_end_ns;
        }
        if self.ctl.publishers_done.load(SeqCst) < u64::from(self.spec.publishers_total) {
            return false;
        }
        let expected = self.ctl.sent_final.load(Relaxed) * self.spec.groups_per_publisher;
        if self.ctl.received_new.load(Relaxed) >= expected && self.deferred.is_empty() {
            return true;
        }
        // Something is missing: wait until nothing has arrived for `quiet_ms`.
        let last = self.ctl.last_progress_ns.load(Relaxed);
        self.deferred.is_empty() && now.saturating_sub(last) > self.spec.quiet_ms * 1_000_000
    }

    fn close_all(&mut self) {
        for i in 0..self.conns.len() {
            if self.conns[i].state == State::Ready {
                self.queue(i, &wire::DISCONNECT);
                let _ = self.flush(i);
            }
            if let Some(mut s) = self.conns[i].stream.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
    }

    fn result(&mut self) -> PartResult {
        let mut sent_by_publisher = Vec::new();
        let mut pairs = Vec::new();
        for c in &mut self.conns {
            match &mut c.role {
                RoleState::Pub(p) => sent_by_publisher.push((p.id, p.next_seq)),
                RoleState::Sub(s) => pairs.append(&mut s.pairs),
                RoleState::Idle => {}
            }
        }
        let st = &self.st;
        PartResult {
            connected: self.connected_total,
            // Connections still in the handshake when the run ended count as failed.
            failed: self.failed_total + (self.conns.len() - self.settled) as u64,
            errors: st.errors.clone(),
            setup_first_ns: st.setup_first_ns,
            setup_last_ns: st.setup_last_ns,
            sent_by_publisher,
            pairs,
            latency_ns: histogram_to_pairs(&st.hist),
            first_receipt_ns: st.first_receipt_ns,
            last_receipt_ns: st.last_receipt_ns,
            window_write_offs: st.window_write_offs,
            publish_lag_ns_max: st.publish_lag_ns_max,
            closed_by_broker: st.closed_by_broker,
            cpu_us_window: 0,
            threads: 1,
        }
    }
}
