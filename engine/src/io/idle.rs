//! Idle connections without a task: one epoll instance per shard watches their sockets.
//!
//! Why: memory per idle connection is a target (≤ 1 KB, issue 4), and glommio's per-socket
//! state is most of what an idle connection costs: every `TcpStream` arms a readiness poll
//! whose source (a `Source` in an `Rc<RefCell>`, its `SourceType` enum alone ~250 B) lives as
//! long as the stream, plus the connection task that owns the stream (`perf/notes/
//! 2026-11-23-fanout-2.md` has the breakdown: ~770 B). glommio 0.9 has no public way to wait
//! for readability of a descriptor without a stream, so a connection that has read nothing
//! for a while is put to *sleep*:
//!
//! - its [`Driver`](super::conn) ends, and its glommio stream is dropped, after the socket
//!   was duplicated (`F_DUPFD_CLOEXEC`; the duplicate keeps the connection open and is what
//!   [`ConnSlot::fd`] names from then on, owned by the slot while it sleeps);
//! - the duplicate is registered with the shard's epoll instance (`EPOLLONESHOT`, level
//!   triggered, so bytes that arrived before the registration report at once);
//! - one task per shard ([`idle_task`]) waits for the epoll descriptor to become readable:
//!   it wraps a duplicate of it in a glommio `UnixStream`, whose constructor arms an io_uring
//!   `POLL_ADD` on it. The first `poll_read` finds that poll pending and returns `Pending`;
//!   once the poll completes, the next one tries a `recv`, which fails on an epoll
//!   descriptor (`ENOTSOCK`), and that `Ready` is the signal. A wake-up costs a `dup`, a
//!   `close`, an `epoll_wait` and a fresh poll: idle connections wake rarely;
//! - a sleeping connection wakes when its socket is readable (bytes, FIN, error) or when the
//!   shard needs its task ([`ShardIo::wake`]: its socket is full, the core closes it, the
//!   broker shuts down). Waking deregisters the socket and starts a new `Driver` on it.
//!
//! What a sleeping connection keeps: its [`ConnSlot`], its entry in the shard's slot vector, and the core's state
//! (session, connection, queue). The shard's writer sends to it as to any other connection
//! (non-blocking `send` on [`ConnSlot::fd`]), so a subscriber that only receives sleeps
//! while messages flow and wakes only if its socket fills up.
//!
//! When: every [`SWEEP_INTERVAL`] the task looks at every connection; one that has read
//! nothing since the previous sweep, and has nothing to write, no partial packet, and is not
//! closing, is asked to sleep (its task checks again and goes to sleep when next polled).
//! So a connection sleeps one to two intervals after its last read.
//!
//! Shard-local: one [`IdlePoller`] per shard, in its [`ShardIo`].

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::AsyncRead;
use glommio::net::{TcpStream, UnixStream};
use glommio::timer::Timer;

use crate::core::ids::ConnId;

use super::shard::{ConnSlot, ShardIo};
use super::signal::WakerSlot;

/// How often connections are looked at: one that read nothing for a whole interval goes to
/// sleep. Short enough that a storm of connections that then idle is cheap within seconds,
/// long enough that a client talking every second or so keeps its task.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Events taken from the epoll instance per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 64;

/// The shard's epoll instance for sleeping connections, and the ones to wake for the shard.
/// Shard-local.
#[derive(Debug)]
pub(crate) struct IdlePoller {
    epoll: OwnedFd,
    /// Sleeping connections the shard needs awake (their task is started by [`idle_task`]).
    wake: RefCell<Vec<Rc<ConnSlot>>>,
    /// Connections that fell asleep, and that woke, since the last sweep.
    slept: Cell<u32>,
    woke: Cell<u32>,
    /// Connections asleep now.
    asleep: Cell<u64>,
    waker: WakerSlot,
}

impl IdlePoller {
    pub(crate) fn new() -> io::Result<IdlePoller> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(IdlePoller {
            epoll,
            wake: RefCell::new(Vec::new()),
            slept: Cell::new(0),
            woke: Cell::new(0),
            asleep: Cell::new(0),
            waker: WakerSlot::default(),
        })
    }

    /// Connections asleep now.
    pub(crate) fn asleep_count(&self) -> u64 {
        self.asleep.get()
    }

    /// Moves a connection's socket here: duplicates `stream_fd` (the caller then drops the
    /// glommio stream, closing the original) and registers the duplicate. On error nothing
    /// changed and the connection stays awake.
    pub(crate) fn sleep(&self, slot: &ConnSlot, stream_fd: RawFd) -> io::Result<()> {
        // SAFETY: `stream_fd` is the open socket of the caller's stream.
        let fd = unsafe { libc::fcntl(stream_fd, libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: slot.conn.0,
        };
        // SAFETY: `fd` is the duplicate just made; `ev` is a valid event.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0
        {
            let e = io::Error::last_os_error();
            // SAFETY: the duplicate is ours and not registered.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        slot.fall_asleep(fd);
        self.slept.set(self.slept.get() + 1);
        self.asleep.set(self.asleep.get() + 1);
        Ok(())
    }

    /// Asks [`idle_task`] to wake a sleeping connection.
    pub(crate) fn request_wake(&self, slot: &Rc<ConnSlot>) {
        if !slot.wake_requested.replace(true) {
            self.wake.borrow_mut().push(slot.clone());
            self.waker.wake();
        }
    }

    /// Takes a sleeping connection's socket back: deregisters it and returns it as a
    /// glommio stream (which arms its own readiness poll).
    fn take(&self, slot: &ConnSlot) -> TcpStream {
        let fd = slot.wake_up();
        self.asleep.set(self.asleep.get() - 1);
        self.woke.set(self.woke.get() + 1);
        // SAFETY: `fd` is registered here (or was: a failed delete leaves nothing to undo,
        // since closing the descriptor deregisters it).
        unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut())
        };
        // SAFETY: the slot owned `fd` while asleep and handed it over (`wake_up`).
        unsafe { TcpStream::from_raw_fd(fd) }
    }

    /// Connections whose sockets became ready, appended to `out`.
    fn ready(&self, out: &mut Vec<ConnId>) {
        // SAFETY: epoll_event is plain data; zeroed is a valid value.
        let mut events: [libc::epoll_event; EVENTS_PER_WAIT] = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: `events` has room for EVENTS_PER_WAIT entries; timeout 0 never blocks.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS_PER_WAIT as i32,
                    0,
                )
            };
            if n <= 0 {
                return;
            }
            out.extend(events[..n as usize].iter().map(|e| ConnId(e.u64)));
            if (n as usize) < EVENTS_PER_WAIT {
                return;
            }
        }
    }

    /// A glommio stream on a duplicate of the epoll descriptor: its first `poll_read`
    /// registers for readability (see the module docs).
    fn waiter(&self) -> io::Result<UnixStream> {
        // SAFETY: duplicating a descriptor we own.
        let fd = unsafe { libc::fcntl(self.epoll.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor; ownership moves to the stream.
        Ok(unsafe { UnixStream::from_raw_fd(fd) })
    }
}

/// What woke the idle task.
enum Wake {
    /// Sleeping sockets are ready.
    Ready,
    /// The shard asked for sleeping connections.
    Requested,
    /// Time to look for connections to put to sleep.
    Sweep,
}

/// Wakes sleeping connections and puts idle ones to sleep. Runs until the shard's executor
/// stops (also during shutdown: closing connections are woken to write and close).
pub(crate) async fn idle_task(shard: Rc<ShardIo>) {
    let idle = &shard.idle;
    let mut waiter: Option<UnixStream> = None;
    let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
    let mut sweep_timer = Timer::new(SWEEP_INTERVAL);
    let mut ready = Vec::new();
    let mut warned = false;
    loop {
        if waiter.is_none() {
            match idle.waiter() {
                Ok(w) => {
                    waiter = Some(w);
                    warned = false;
                }
                Err(e) => {
                    // Descriptors exhausted: sleeping sockets are looked at every sweep
                    // until a waiter can be made again.
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!("{}: cannot watch idle connections: {e}", shard.id);
                    }
                }
            }
        }
        let woke = std::future::poll_fn(|cx| {
            if !idle.wake.borrow().is_empty() {
                return Poll::Ready(Wake::Requested);
            }
            if let Some(w) = waiter.as_mut() {
                let mut none = [0u8; 0];
                if Pin::new(w).poll_read(cx, &mut none).is_ready() {
                    return Poll::Ready(Wake::Ready);
                }
            }
            if Pin::new(&mut sweep_timer).poll(cx).is_ready() {
                return Poll::Ready(Wake::Sweep);
            }
            idle.waker.set(cx.waker());
            Poll::Pending
        })
        .await;
        match woke {
            Wake::Requested => {
                let slots = std::mem::take(&mut *idle.wake.borrow_mut());
                for slot in slots {
                    slot.wake_requested.set(false);
                    if slot.is_asleep() {
                        let stream = idle.take(&slot);
                        super::conn::spawn_driver(&shard, slot, stream, BytesMut::new());
                    }
                }
            }
            Wake::Ready => {
                waiter = None;
                wake_ready(&shard, &mut ready);
            }
            Wake::Sweep => {
                if waiter.is_none() {
                    // No waiter (descriptors ran out): look at the sockets now and then.
                    wake_ready(&shard, &mut ready);
                }
                if idle.slept.replace(0) > idle.woke.replace(0) {
                    // More connections fell asleep than woke since the last sweep: their
                    // tasks and glommio sources are freed by now (a source only once the
                    // reactor reaped its cancelled poll), so give the pages back rather than
                    // keep them resident while the shard idles. (Where connections sleep and
                    // wake about as often, the pages would be faulted back in: keep them.)
                    super::alloc::collect_freed();
                }
                if !shard.stop.is_fired() {
                    shard.sweep_idle();
                    shard.compact_connect_deadlines();
                }
                let core = shard.core.borrow();
                let counters = &core.config().stats.shards[usize::from(shard.id.0)];
                counters.clients_sleeping.store(idle.asleep.get(), Ordering::Relaxed);
                counters.bytes_received.store(shard.bytes_in.get(), Ordering::Relaxed);
                counters.bytes_sent.store(shard.bytes_out.get(), Ordering::Relaxed);
                let now = Instant::now();
                next_sweep = (next_sweep + SWEEP_INTERVAL).max(now + SWEEP_INTERVAL / 2);
                sweep_timer = Timer::new(next_sweep - now);
            }
        }
    }
}

/// Starts a task for every sleeping connection whose socket is ready.
fn wake_ready(shard: &Rc<ShardIo>, ready: &mut Vec<ConnId>) {
    shard.idle.ready(ready);
    for conn in ready.drain(..) {
        if let Some(slot) = shard.slot(conn).filter(|s| s.is_asleep()) {
            let stream = shard.idle.take(&slot);
            super::conn::spawn_driver(shard, slot, stream, BytesMut::new());
        }
    }
}
