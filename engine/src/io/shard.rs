//! One shard's io state: its core, the io side of its connections, its end of the mesh, and
//! the function that turns the core's outputs into io ([`ShardIo::drain`]).

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::ServerConfig;

use crate::core::cluster::ClusterOut;
use crate::core::ids::{ConnId, ShardId};
use crate::core::mesh::MeshMsg;
use crate::core::shard::{IoAction, ShardCore, ShardCounters};

use super::cluster::ClusterLine;
use super::flush::{FlushQueue, PendingTx};
use super::idle::IdlePoller;
use super::mesh::MeshIo;
use super::signal::{Signal, WakerSlot};
use super::transport::TransportState;

/// Bytes of the shard-wide read buffer every connection reads into before copying what it
/// got into its own (initially empty) buffer: idle connections hold no read buffer.
pub(crate) const READ_SCRATCH_BYTES: usize = 64 * 1024;

/// A v5 DISCONNECT with reason 0x8B Server shutting down and an empty property list. The
/// explicit property length (allowed to be omitted by §3.14.2.2.1) is there because some
/// clients (rumqttc 0.25) cannot parse the 1-byte form.
pub(crate) const DISCONNECT_SHUTTING_DOWN_V5: &[u8] = &[0xE0, 0x02, 0x8B, 0x00];

/// The io side of one open connection, shared between the connection's task,
/// [`ShardIo::drain`] and the shard's writer (`flush.rs`). Shard-local.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    /// The connection in the core.
    pub(crate) conn: ConnId,
    /// The socket (valid while `gone` is false): owned by the connection's task, or by this
    /// slot while the connection sleeps (`idle.rs`; a duplicate, so the number changes).
    fd: Cell<RawFd>,
    /// Queued in the shard's writer (`FlushQueue`).
    pub(crate) flush: Cell<bool>,
    /// The socket did not take everything: the connection's task writes (waiting for
    /// writability) until the queue is empty, and the shard's writer leaves it alone.
    pub(crate) blocked: Cell<bool>,
    /// The connection's task ended; the descriptor is closed.
    pub(crate) gone: Cell<bool>,
    /// Write what is pending, then close; stop reading and ignore further packets.
    pub(crate) close: Cell<bool>,
    /// Frames to write before anything else the core queues later (taken from the core when
    /// it asked to close the connection, and the shutdown DISCONNECT).
    pub(crate) pending: PendingTx,
    /// The connection task is parked because reading is paused.
    pub(crate) parked: Cell<bool>,
    /// Its last read returned bytes: the shard's writer asks it to read again between
    /// batches (`flush.rs`).
    pub(crate) hot: Cell<bool>,
    /// Read now, directly, without waiting for glommio's readiness poll.
    pub(crate) poke: Cell<bool>,
    /// Direct reads in a row that found nothing (a hot connection cools down after a few).
    pub(crate) poke_misses: Cell<u8>,
    /// Read bytes since the last idle sweep (`idle.rs`).
    pub(crate) active: Cell<bool>,
    /// The idle sweep asks the connection's task to go to sleep.
    pub(crate) sleep: Cell<bool>,
    /// No task: the socket waits in the shard's idle poller (`idle.rs`).
    asleep: Cell<bool>,
    /// Listed for the idle task to wake.
    pub(crate) wake_requested: Cell<bool>,
    /// Going to sleep failed (descriptors or epoll watches exhausted): it stays awake rather
    /// than retry every sweep.
    pub(crate) sleepless: Cell<bool>,
    waker: WakerSlot,
    /// TLS / WebSocket layers (`transport/`); `None` for plain TCP, whose bytes go straight
    /// from the core's queue to the socket.
    pub(crate) transport: Option<Box<RefCell<TransportState>>>,
}

impl ConnSlot {
    /// Registers the connection task's waker.
    pub(crate) fn set_waker(&self, w: &Waker) {
        self.waker.set(w);
    }

    /// Wakes the connection task. A sleeping connection has none: callers that may meet one
    /// use [`ShardIo::wake`], which starts a task instead.
    pub(crate) fn wake(&self) {
        debug_assert!(!self.is_asleep(), "a wake for a sleeping connection would be lost");
        self.waker.wake();
    }

    /// The socket's descriptor.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd.get()
    }

    /// Whether the connection sleeps (has no task).
    pub(crate) fn is_asleep(&self) -> bool {
        self.asleep.get()
    }

    /// The connection's task ends; the slot owns `fd` (the socket's duplicate) until
    /// [`ConnSlot::wake_up`].
    pub(super) fn fall_asleep(&self, fd: RawFd) {
        self.fd.set(fd);
        self.asleep.set(true);
        self.sleep.set(false);
        // Off the writer's hot list (pruned at its next pass), no direct read pending.
        self.hot.set(false);
        self.poke.set(false);
        // The ended task's waker would keep its allocation alive.
        self.waker.clear();
    }

    /// Hands the socket to a new task.
    pub(super) fn wake_up(&self) -> RawFd {
        self.asleep.set(false);
        self.active.set(true);
        // The new task's first poll reads directly: glommio's fresh stream only arms its
        // readiness poll, which would cost a reactor cycle when bytes are already there.
        self.poke.set(true);
        self.fd.get()
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if self.asleep.get() {
            // A sleeping connection's socket is the slot's (the shard is going away).
            // SAFETY: owned by this slot while asleep, and nothing else closes it.
            unsafe { libc::close(self.fd.get()) };
        }
    }
}

/// Open connections' slots, indexed like the core's connection table (the low 32 bits of a
/// [`ConnId`] are its index there): 8 bytes per index where a map entry took ~37.
#[derive(Debug, Default)]
struct ConnSlots {
    by_index: Vec<Option<Rc<ConnSlot>>>,
    /// Slots whose index the core reused while their task still runs: a closing connection
    /// may take up to `CLOSE_WRITE_TIMEOUT` to write, longer than the core keeps its index.
    /// Still counted (shutdown waits for them); nothing is routed to them any more.
    displaced: Vec<Rc<ConnSlot>>,
    len: usize,
}

impl ConnSlots {
    fn index(conn: ConnId) -> usize {
        (conn.0 & u64::from(u32::MAX)) as usize
    }

    fn insert(&mut self, slot: Rc<ConnSlot>) {
        let i = Self::index(slot.conn);
        if i >= self.by_index.len() {
            self.by_index.resize(i + 1, None);
        }
        if let Some(old) = self.by_index[i].replace(slot) {
            self.displaced.push(old);
        }
        self.len += 1;
    }

    fn remove(&mut self, conn: ConnId) {
        let i = Self::index(conn);
        if let Some(entry) = self.by_index.get_mut(i) {
            if entry.as_ref().is_some_and(|s| s.conn == conn) {
                *entry = None;
                self.len -= 1;
                return;
            }
        }
        if let Some(k) = self.displaced.iter().position(|s| s.conn == conn) {
            self.displaced.swap_remove(k);
            self.len -= 1;
        }
    }

    fn get(&self, conn: ConnId) -> Option<&Rc<ConnSlot>> {
        self.by_index.get(Self::index(conn))?.as_ref().filter(|s| s.conn == conn)
    }

    /// Every slot, displaced ones included.
    fn iter(&self) -> impl Iterator<Item = &Rc<ConnSlot>> {
        self.by_index.iter().flatten().chain(&self.displaced)
    }
}

/// A connection waiting for its first packet; the timer task marks it expired at its
/// connect deadline. Shard-local.
#[derive(Debug, Default)]
pub(crate) struct PendingConn {
    /// The connect deadline passed: the greeting task closes the socket.
    pub(crate) expired: Cell<bool>,
    /// The greeting task.
    pub(crate) waker: WakerSlot,
}

/// Everything one shard runs: the sans-IO core and the io around it.
///
/// Shard-local: one per shard, shared by `Rc` between that shard's tasks. The core is only
/// borrowed between awaits, never across one.
#[derive(Debug)]
pub(crate) struct ShardIo {
    /// This shard.
    pub(crate) id: ShardId,
    /// The core.
    pub(crate) core: RefCell<ShardCore>,
    /// Decoder limits (from the core's limits).
    pub(crate) codec_limits: shardmq_codec::Limits,
    /// Decoder limits for a connection's first packet: `connect_packet_size_max_bytes`, so
    /// a client that has not connected cannot make the shard buffer a large packet.
    pub(crate) connect_limits: shardmq_codec::Limits,
    /// How long a new connection may take to send its first packet.
    pub(crate) connect_timeout: Duration,
    /// Open connections (those the core knows).
    conns: RefCell<ConnSlots>,
    /// Connections waiting for reading to resume.
    parked: RefCell<Vec<Rc<ConnSlot>>>,
    /// The read buffer every connection of this shard reads into.
    pub(crate) scratch: RefCell<Box<[u8]>>,
    /// The shard's writer queue (`flush.rs`).
    pub(crate) flush: FlushQueue,
    /// Sleeping connections' sockets (`idle.rs`).
    pub(crate) idle: IdlePoller,
    /// Bytes read from and written to this shard's sockets since start (exported to the
    /// shard's `$SYS` counters every idle sweep).
    pub(crate) bytes_in: Cell<u64>,
    pub(crate) bytes_out: Cell<u64>,
    /// Reloads applied (`control.rs`).
    pub(crate) reloads: Cell<u64>,
    /// This shard's end of the mesh (absent with one shard).
    pub(crate) mesh: OnceCell<Rc<MeshIo>>,
    /// This shard's log (absent with `--in-memory`).
    pub(crate) log: OnceCell<Rc<super::persist::LogIo>>,
    mesh_out: RefCell<Vec<(ShardId, MeshMsg)>>,
    /// The node's cluster runtime (absent for a single node).
    pub(crate) cluster: OnceCell<ClusterLine>,
    cluster_out: RefCell<Vec<ClusterOut>>,
    /// Graceful shutdown has begun.
    pub(crate) stop: Signal,
    /// Connections waiting for their first packet, by deadline. Deadlines are pushed in
    /// increasing order (one timeout for all), so this is a FIFO.
    connect_deadlines: RefCell<VecDeque<(Instant, Weak<PendingConn>)>>,
    /// When the timer task will next wake by itself.
    timer_at: Cell<Option<Instant>>,
    /// Set to wake the timer task early.
    timer_kick: Cell<bool>,
    timer_waker: WakerSlot,
    /// This shard's TLS server configuration of each listener (by listener index; `None`
    /// for listeners without TLS). Built on this shard: its own session cache and ticket
    /// keys. A reload replaces entries; connections keep the configuration they started
    /// with.
    pub(crate) tls_configs: RefCell<Vec<Option<Arc<ServerConfig>>>>,
    /// TLS handshakes and WebSocket upgrades in progress (`handshakes_per_shard_max`).
    pub(crate) handshakes: Cell<u32>,
}

impl ShardIo {
    pub(crate) fn new(core: ShardCore) -> std::io::Result<ShardIo> {
        let limits = &core.config().limits;
        let codec_limits =
            shardmq_codec::Limits { packet_size_max_bytes: limits.packet_size_max_bytes };
        let connect_limits = shardmq_codec::Limits {
            packet_size_max_bytes: limits
                .packet_size_max_bytes
                .min(limits.connect_packet_size_max_bytes),
        };
        let connect_timeout = Duration::from_secs(limits.connect_timeout_secs.into());
        Ok(ShardIo {
            id: core.shard_id(),
            core: RefCell::new(core),
            codec_limits,
            connect_limits,
            connect_timeout,
            conns: RefCell::new(ConnSlots::default()),
            parked: RefCell::new(Vec::new()),
            scratch: RefCell::new(vec![0u8; READ_SCRATCH_BYTES].into_boxed_slice()),
            flush: FlushQueue::default(),
            idle: IdlePoller::new()?,
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            reloads: Cell::new(0),
            mesh: OnceCell::new(),
            log: OnceCell::new(),
            mesh_out: RefCell::new(Vec::new()),
            cluster: OnceCell::new(),
            cluster_out: RefCell::new(Vec::new()),
            stop: Signal::default(),
            connect_deadlines: RefCell::new(VecDeque::new()),
            timer_at: Cell::new(None),
            timer_kick: Cell::new(false),
            timer_waker: WakerSlot::default(),
            tls_configs: RefCell::new(Vec::new()),
            handshakes: Cell::new(0),
        })
    }

    /// Adds one to a counter of this shard's `$SYS` slot (rare events: handshakes).
    pub(crate) fn count(&self, counter: impl FnOnce(&ShardCounters) -> &AtomicU64) {
        let core = self.core.borrow();
        let slot = &core.config().stats.shards[usize::from(self.id.0)];
        counter(slot).fetch_add(1, Ordering::Relaxed);
    }

    /// `handshakes_per_shard_max`.
    pub(crate) fn handshakes_max(&self) -> u32 {
        self.core.borrow().config().limits.handshakes_per_shard_max
    }

    pub(crate) fn shard_count(&self) -> u16 {
        self.core.borrow().config().shard_count
    }

    /// Registers the io side of a connection the core just opened.
    pub(crate) fn register(
        &self,
        conn: ConnId,
        fd: RawFd,
        transport: Option<Box<RefCell<TransportState>>>,
    ) -> Rc<ConnSlot> {
        let slot = Rc::new(ConnSlot {
            conn,
            fd: Cell::new(fd),
            flush: Cell::new(false),
            blocked: Cell::new(false),
            gone: Cell::new(false),
            close: Cell::new(false),
            pending: PendingTx::default(),
            parked: Cell::new(false),
            hot: Cell::new(false),
            poke: Cell::new(false),
            poke_misses: Cell::new(0),
            active: Cell::new(true),
            sleep: Cell::new(false),
            asleep: Cell::new(false),
            wake_requested: Cell::new(false),
            sleepless: Cell::new(false),
            waker: WakerSlot::default(),
            transport,
        });
        self.conns.borrow_mut().insert(slot.clone());
        slot
    }

    /// Forgets a connection whose task ended.
    pub(crate) fn unregister(&self, conn: ConnId) {
        self.conns.borrow_mut().remove(conn);
    }

    /// Open connections.
    pub(crate) fn conn_count(&self) -> usize {
        self.conns.borrow().len
    }

    /// The io side of an open connection.
    pub(crate) fn slot(&self, conn: ConnId) -> Option<Rc<ConnSlot>> {
        self.conns.borrow().get(conn).cloned()
    }

    /// Wakes a connection's task, or has the idle task start one if it sleeps.
    pub(crate) fn wake(&self, slot: &Rc<ConnSlot>) {
        if slot.is_asleep() {
            self.idle.request_wake(slot);
        } else {
            slot.wake();
        }
    }

    /// Forgets the connect deadlines of connections that sent their first packet (their
    /// entries would otherwise wait for the deadline, `connect_timeout_secs` after
    /// connecting, each keeping its `PendingConn` allocated). Called by the idle sweep.
    pub(crate) fn compact_connect_deadlines(&self) {
        let mut q = self.connect_deadlines.borrow_mut();
        if q.is_empty() {
            return;
        }
        q.retain(|(_, pending)| pending.strong_count() > 0);
        if q.capacity() > 64 && q.capacity() > 4 * q.len() {
            q.shrink_to_fit();
        }
    }

    /// Asks every connection that read nothing since the last sweep, and has nothing else
    /// going on, to go to sleep (`idle.rs`). Whether it is on the writer's hot list does not
    /// matter: that list is only pruned between the writer's batches, so in a quiet shard a
    /// connection stays "hot" long after its last read.
    pub(crate) fn sweep_idle(&self) {
        for slot in self.conns.borrow().iter() {
            if slot.active.replace(false)
                || slot.is_asleep()
                || slot.sleepless.get()
                || slot.gone.get()
                || slot.close.get()
                || slot.blocked.get()
                || slot.parked.get()
            {
                continue;
            }
            slot.sleep.set(true);
            slot.wake();
        }
    }

    /// Has the timer task expire `pending` at `deadline`.
    pub(crate) fn watch_connect_deadline(&self, deadline: Instant, pending: &Rc<PendingConn>) {
        self.connect_deadlines.borrow_mut().push_back((deadline, Rc::downgrade(pending)));
        self.nudge_timer(deadline);
    }

    /// The timer task records when it will wake by itself.
    pub(crate) fn timer_planned(&self, at: Instant) {
        self.timer_at.set(Some(at));
    }

    /// Completes when [`ShardIo::nudge_timer`] asks the timer task to look again.
    pub(crate) fn timer_kicked(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.timer_kick.replace(false) {
                return std::task::Poll::Ready(());
            }
            self.timer_waker.set(cx.waker());
            std::task::Poll::Pending
        })
    }

    /// Wakes the timer task if `deadline` comes before its planned wake-up.
    fn nudge_timer(&self, deadline: Instant) {
        if self.timer_at.get().is_some_and(|at| deadline < at) {
            self.timer_at.set(Some(deadline));
            self.timer_kick.set(true);
            self.timer_waker.wake();
        }
    }

    /// Expires the connections whose connect deadline passed; returns the next deadline.
    pub(crate) fn sweep_connect_deadlines(&self, now: Instant) -> Option<Instant> {
        let mut q = self.connect_deadlines.borrow_mut();
        while let Some((deadline, pending)) = q.front() {
            if *deadline > now {
                return Some(*deadline);
            }
            if let Some(p) = pending.upgrade() {
                p.expired.set(true);
                p.waker.wake();
            }
            q.pop_front();
        }
        if q.capacity() > 64 {
            q.shrink_to_fit();
        }
        None
    }

    /// Parks a connection until reading resumes.
    pub(crate) fn park(&self, slot: &Rc<ConnSlot>) {
        if !slot.parked.replace(true) {
            let mut parked = self.parked.borrow_mut();
            if parked.len() >= 64 && parked.len().is_power_of_two() {
                // A long pause: connections that ended meanwhile need no wake-up.
                parked.retain(|s| !s.gone.get() && !s.close.get());
            }
            parked.push(slot.clone());
            drop(parked);
            // The held PUBLISH counts as received for keep alive (`ShardCore::note_held`).
            self.core.borrow_mut().note_held(slot.conn, Instant::now());
        }
    }

    /// Sends a message to another shard (through the outbox when its ring is full).
    pub(crate) fn send_mesh(&self, to: ShardId, msg: MeshMsg) {
        match self.mesh.get() {
            Some(mesh) => {
                mesh.send(to, msg);
                let backlog = mesh.backlog();
                if backlog > 0 || mesh.backlog_reported() != 0 {
                    mesh.set_backlog_reported(backlog);
                    self.core.borrow_mut().set_mesh_backlog(backlog);
                }
            }
            // Dropping the message closes an adopted socket.
            None => drop(msg),
        }
    }

    /// Carries out everything the core asked for: wakes writers, closes connections, pushes
    /// messages to other shards, and resumes parked readers when reading is allowed again.
    /// Called after every call into the core.
    pub(crate) fn drain(&self) {
        let mut core = self.core.borrow_mut();
        if let Some(log) = self.log.get() {
            // First the log: releasing acknowledgements produces actions and mesh messages
            // (and closing a refused 3.1.1 publisher may produce records: loop).
            let now = Instant::now();
            loop {
                let batch = core.drain_log();
                let appended = batch.is_some();
                if let Some(batch) = batch {
                    log.append(batch, &mut core);
                }
                log.report(&mut core, now);
                if !appended {
                    break;
                }
            }
        }
        {
            let conns = self.conns.borrow();
            while let Some(action) = core.poll_action() {
                match action {
                    IoAction::Flush(c) => {
                        if let Some(slot) = conns.get(c) {
                            self.flush.push(slot);
                        }
                    }
                    IoAction::Close(c) => {
                        if let Some(slot) = conns.get(c) {
                            // The core may forget the connection's queue with its state: take
                            // the bytes now so they are still written before the close.
                            if let Some(tx) = core.tx(c) {
                                slot.pending.append(tx);
                            }
                            slot.close.set(true);
                            self.wake(slot);
                        }
                    }
                }
            }
        }
        core.sync_pressure();
        let mut out = self.mesh_out.borrow_mut();
        core.drain_mesh_out(&mut out);
        if !out.is_empty() {
            match self.mesh.get() {
                Some(mesh) => {
                    for (to, msg) in out.drain(..) {
                        mesh.send(to, msg);
                    }
                    let backlog = mesh.backlog();
                    if backlog != mesh.backlog_reported() {
                        mesh.set_backlog_reported(backlog);
                        core.set_mesh_backlog(backlog);
                    }
                }
                None => out.clear(),
            }
        }
        drop(out);
        let mut out = self.cluster_out.borrow_mut();
        core.drain_cluster_out(&mut out);
        if let Some(line) = self.cluster.get() {
            for msg in out.drain(..) {
                line.0.send(self.id, msg);
            }
        }
        out.clear();
        if let Some(deadline) = core.next_deadline() {
            self.nudge_timer(deadline);
        }
        if !core.publishing_paused() && !self.parked.borrow().is_empty() {
            for slot in self.parked.borrow_mut().drain(..) {
                slot.parked.set(false);
                self.wake(&slot);
            }
        }
    }

    /// After bytes were written: if that moved the shard's back-pressure state (publishing
    /// may resume, or the other shards must hear of a change), acts on it.
    pub(crate) fn relieve(&self) {
        let (dirty, paused) = {
            let core = self.core.borrow();
            (core.pressure_dirty() || core.cluster_pause_dirty(), core.publishing_paused())
        };
        if dirty || (!paused && !self.parked.borrow().is_empty()) {
            self.drain();
        }
    }

    /// Calls `f` with the core and `now`, then drains the core's outputs.
    pub(crate) fn with_core<R>(&self, f: impl FnOnce(&mut ShardCore, Instant) -> R) -> R {
        let r = f(&mut self.core.borrow_mut(), Instant::now());
        self.drain();
        r
    }

    /// Starts a graceful shutdown: stop accepting, and have every connection write what is
    /// queued (plus DISCONNECT 0x8B for 5.0 clients) and close.
    pub(crate) fn begin_shutdown(&self) {
        self.stop.fire();
        let mut core = self.core.borrow_mut();
        for slot in self.conns.borrow().iter() {
            let c = slot.conn;
            if slot.close.get() {
                continue;
            }
            let pending = &slot.pending;
            if let Some(tx) = core.tx(c) {
                pending.append(tx);
            }
            if core.protocol_version(c).is_some_and(|v| v.is_v5()) {
                pending.push_frame(&Bytes::from_static(DISCONNECT_SHUTTING_DOWN_V5));
            }
            slot.close.set(true);
            self.wake(slot);
        }
    }
}
