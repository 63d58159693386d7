//! Outgoing node links: one writer thread per peer node, fed by a queue bounded in bytes.
//!
//! The writer dials the peer from this node's listen IP (the source address rule in
//! `runtime.rs`), with link TLS runs the client handshake (`tls.rs`), writes the Hello
//! frame, tells the main loop the link is up, then writes whatever is queued. A failed or
//! stalled write ([`WRITE_TIMEOUT`]) ends the connection: the queue is emptied (its
//! messages counted as dropped), the main loop hears the link is down, and the writer dials
//! again after a back-off, until the link is hung up.
//!
//! Credit: a published message's frame is queued on several links with one [`CreditGuard`]
//! shared between them; when the last link has written or dropped it the guard's `Drop`
//! adds its cost to the shard's pending credit ([`CreditPool`]), which the main loop hands
//! to the shard as `ClusterIn::Credit`. So every message is credited exactly once.

use std::collections::VecDeque;
use std::io::{IoSlice, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use socket2::{Domain, Protocol, Socket, Type};

use super::runtime::Event;
use super::stream::OutStream;
use super::tls::NodeTls;
use crate::core::cluster::{ClusterCounters, NodeId};
use crate::core::ids::ShardId;

/// A write that makes no progress for this long ends the link.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a dial may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First wait before dialling again after a failure; doubled up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between dials.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often an idle link checks that its peer has not closed it (the peer never writes on
/// it, so nothing else would tell until the next write).
pub const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Most frames written in one vectored write.
const BATCH_FRAMES_MAX: usize = 256;

/// Per-shard credit not yet handed back, shared by the main loop and every guard.
#[derive(Debug)]
pub(crate) struct CreditPool {
    pending: Vec<AtomicU64>,
    /// True while the main loop has been told (one `Event::Credit` until it collects).
    flagged: AtomicBool,
    events: Sender<Event>,
}

impl CreditPool {
    pub(crate) fn new(shard_count: u16, events: Sender<Event>) -> CreditPool {
        CreditPool {
            pending: (0..shard_count.max(1)).map(|_| AtomicU64::new(0)).collect(),
            flagged: AtomicBool::new(false),
            events,
        }
    }

    fn add(&self, shard: ShardId, bytes: u64) {
        let slot = usize::from(shard.0) % self.pending.len();
        self.pending[slot].fetch_add(bytes, Relaxed);
        if !self.flagged.swap(true, Relaxed) {
            // The main loop may be gone at shutdown; the credit does not matter then.
            let _ = self.events.send(Event::Credit);
        }
    }

    /// Takes every shard's pending credit (called by the main loop on `Event::Credit`).
    pub(crate) fn collect(&self, mut each: impl FnMut(ShardId, u64)) {
        self.flagged.store(false, Relaxed);
        for (i, p) in self.pending.iter().enumerate() {
            let bytes = p.swap(0, Relaxed);
            if bytes > 0 {
                each(ShardId(i as u16), bytes);
            }
        }
    }
}

/// Credits `cost` bytes to `shard` when the last clone is dropped.
#[derive(Debug)]
pub(crate) struct CreditGuard {
    pub(crate) pool: Arc<CreditPool>,
    pub(crate) shard: ShardId,
    pub(crate) cost: u64,
}

impl Drop for CreditGuard {
    fn drop(&mut self) {
        self.pool.add(self.shard, self.cost);
    }
}

/// One queued frame; `credit` is set for a published message.
#[derive(Debug)]
struct Item {
    frame: Bytes,
    credit: Option<Arc<CreditGuard>>,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Item>,
    bytes: usize,
    /// A connection is up and its Hello written: frames are accepted.
    connected: bool,
    /// The link was hung up: the writer writes what is queued and ends.
    closed: bool,
    /// A control frame could not be queued: the writer drops the connection (the peer
    /// state is re-synchronised when it comes back).
    reset: bool,
}

/// The queue between the main loop and one writer thread, bounded in bytes.
#[derive(Debug)]
pub(crate) struct LinkQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
    bytes_max: usize,
}

impl LinkQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The main loop's handle on one outgoing link.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) addr: SocketAddr,
    /// Names this writer among the links to the same node (events of older ones are stale).
    pub(crate) serial: u64,
    queue: Arc<LinkQueue>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<ClusterCounters>,
}

/// What a writer thread needs besides its queue.
#[derive(Debug, Clone)]
pub(crate) struct LinkContext {
    /// This node's listen address: outgoing links bind its IP (port 0) before `connect`.
    pub(crate) listen: SocketAddr,
    pub(crate) events: Sender<Event>,
    pub(crate) counters: Arc<ClusterCounters>,
    pub(crate) queue_bytes_max: usize,
    /// [`WRITE_TIMEOUT`] (shorter in tests).
    pub(crate) write_timeout: Duration,
    /// Link TLS: the writer is the client. `None`: plain TCP.
    pub(crate) tls: Option<Arc<NodeTls>>,
}

impl Link {
    /// Starts the writer thread of a link to `node` at `addr`, opening with `hello`.
    pub(crate) fn open(
        ctx: &LinkContext,
        node: NodeId,
        addr: SocketAddr,
        serial: u64,
        hello: Bytes,
    ) -> std::io::Result<Link> {
        let queue = Arc::new(LinkQueue {
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
            bytes_max: ctx.queue_bytes_max,
        });
        let writer = Writer { ctx: ctx.clone(), node, addr, serial, hello, queue: queue.clone() };
        let thread = std::thread::Builder::new()
            .name(format!("shardmq-cluster-out-{}", node.0))
            .spawn(move || writer.run())?;
        Ok(Link { addr, serial, queue, thread: Some(thread), counters: ctx.counters.clone() })
    }

    /// Queues a control frame. One that does not fit resets the connection.
    pub(crate) fn send(&self, frame: Bytes) {
        let mut q = self.queue.lock();
        if !q.connected || q.closed {
            return;
        }
        if q.bytes + frame.len() > self.queue.bytes_max.saturating_mul(2) {
            q.reset = true;
        } else {
            q.bytes += frame.len();
            q.items.push_back(Item { frame, credit: None });
        }
        self.queue.ready.notify_one();
    }

    /// Queues a published message's frame; false (counted as dropped) when the link is
    /// down or its queue full.
    pub(crate) fn publish(&self, frame: Bytes, credit: &Arc<CreditGuard>) -> bool {
        let mut q = self.queue.lock();
        if !q.connected || q.closed || q.bytes + frame.len() > self.queue.bytes_max {
            let full = q.connected && !q.closed;
            drop(q);
            self.counters.messages_dropped.fetch_add(1, Relaxed);
            if full {
                self.counters.messages_dropped_queue_full.fetch_add(1, Relaxed);
            }
            return false;
        }
        q.bytes += frame.len();
        q.items.push_back(Item { frame, credit: Some(credit.clone()) });
        self.queue.ready.notify_one();
        true
    }

    /// Hangs up: the writer writes what is queued (within its write timeout) and ends.
    /// Returns the thread to join.
    pub(crate) fn hang_up(mut self) -> Option<JoinHandle<()>> {
        let mut q = self.queue.lock();
        q.closed = true;
        self.queue.ready.notify_all();
        drop(q);
        self.thread.take()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let mut q = self.queue.lock();
        q.closed = true;
        self.queue.ready.notify_all();
    }
}

struct Writer {
    ctx: LinkContext,
    node: NodeId,
    addr: SocketAddr,
    serial: u64,
    hello: Bytes,
    queue: Arc<LinkQueue>,
}

impl Writer {
    fn run(self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if self.queue.lock().closed {
                return;
            }
            match self.connect() {
                Ok(mut stream) => {
                    backoff = BACKOFF_MIN;
                    let why = self.serve(&mut stream);
                    stream.close(why.is_ok());
                    let dropped = {
                        let mut q = self.queue.lock();
                        q.connected = false;
                        q.reset = false;
                        q.bytes = 0;
                        std::mem::take(&mut q.items)
                    };
                    let lost = dropped.iter().filter(|i| i.credit.is_some()).count();
                    self.ctx.counters.messages_dropped.fetch_add(lost as u64, Relaxed);
                    drop(dropped);
                    let _ = self.ctx.events.send(Event::LinkDown(self.node, self.serial));
                    match why {
                        Ok(()) => return, // hung up, queue written
                        Err(e) => tracing::info!(
                            "cluster: link to {} at {} lost: {e}",
                            self.node,
                            self.addr
                        ),
                    }
                }
                Err(e) => {
                    tracing::debug!("cluster: cannot reach {} at {}: {e}", self.node, self.addr)
                }
            }
            // Wait before dialling again; a hang-up cuts the wait short.
            let q = self.queue.lock();
            let (q, _) = self
                .queue
                .ready
                .wait_timeout_while(q, backoff, |q| !q.closed)
                .unwrap_or_else(|e| e.into_inner());
            if q.closed {
                return;
            }
            drop(q);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Dials from the listen IP (port 0), runs the TLS handshake if any, writes the Hello.
    fn connect(&self) -> std::io::Result<OutStream> {
        let socket =
            Socket::new(Domain::for_address(self.addr), Type::STREAM, Some(Protocol::TCP))?;
        // The source address rule: peers (and partition tests) tell nodes apart by source IP.
        socket.bind(&SocketAddr::new(self.ctx.listen.ip(), 0).into())?;
        socket.connect_timeout(&self.addr.into(), CONNECT_TIMEOUT)?;
        let tcp: TcpStream = socket.into();
        tcp.set_nodelay(true)?;
        super::net::keepalive(&tcp)?;
        tcp.set_write_timeout(Some(self.ctx.write_timeout))?;
        let mut stream = match &self.ctx.tls {
            None => OutStream::Plain(tcp),
            // Up only once the peer accepted this node's certificate.
            Some(tls) => OutStream::Tls(Box::new(tls.connect(tcp, self.addr, CONNECT_TIMEOUT)?)),
        };
        stream.write_all(&self.hello)?;
        // The machine counts the frames it makes; the Hello is made here.
        self.ctx.counters.bytes_out.fetch_add(self.hello.len() as u64, Relaxed);
        let mut q = self.queue.lock();
        q.connected = true;
        drop(q);
        let _ = self.ctx.events.send(Event::LinkUp(self.node, self.serial));
        Ok(stream)
    }

    /// Writes queued frames until the link is hung up (`Ok`, after writing what is queued)
    /// or a write fails.
    fn serve(&self, stream: &mut OutStream) -> std::io::Result<()> {
        let mut batch: Vec<Item> = Vec::with_capacity(BATCH_FRAMES_MAX);
        loop {
            {
                let mut q = self.queue.lock();
                while q.items.is_empty() && !q.closed && !q.reset {
                    let (next, waited) = self
                        .queue
                        .ready
                        .wait_timeout(q, IDLE_CHECK)
                        .unwrap_or_else(|e| e.into_inner());
                    q = next;
                    if waited.timed_out() && q.items.is_empty() {
                        drop(q);
                        stream.peer_still_there()?;
                        q = self.queue.lock();
                    }
                }
                if q.reset {
                    return Err(std::io::Error::other("queue overflow, re-synchronising"));
                }
                if q.items.is_empty() {
                    return Ok(()); // closed and written
                }
                let n = q.items.len().min(BATCH_FRAMES_MAX);
                batch.extend(q.items.drain(..n));
                let bytes: usize = batch.iter().map(|i| i.frame.len()).sum();
                q.bytes -= bytes;
            }
            if let Err(e) = write_frames(&mut *stream, &batch) {
                // Counted as sent by the machine; some of it never left.
                let lost = batch.iter().filter(|i| i.credit.is_some()).count();
                self.ctx.counters.messages_dropped.fetch_add(lost as u64, Relaxed);
                return Err(e);
            }
            // Dropping the items drops their credit guards' clones.
            batch.clear();
        }
    }
}

/// Writes every frame of `batch`, vectored (the frames' `Bytes` are not copied), going on
/// after partial writes (a blocking socket returns one when its write timeout passes).
fn write_frames(mut out: impl Write, batch: &[Item]) -> std::io::Result<()> {
    let (mut first, mut offset) = (0usize, 0usize);
    while first < batch.len() {
        let slices: Vec<IoSlice<'_>> = batch[first..]
            .iter()
            .enumerate()
            .map(|(i, item)| IoSlice::new(if i == 0 { &item.frame[offset..] } else { &item.frame }))
            .collect();
        let mut n = match out.write_vectored(&slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // Skip what was written: whole frames, then part of one.
        while first < batch.len() && n >= batch[first].frame.len() - offset {
            n -= batch[first].frame.len() - offset;
            first += 1;
            offset = 0;
        }
        offset += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::Receiver;

    /// Takes at most `step` bytes per call, across buffers, like a socket under pressure.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            self.calls += 1;
            let mut left = self.step + self.calls % 3; // vary where writes end
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn context(queue_bytes_max: usize, write_timeout: Duration) -> (LinkContext, Receiver<Event>) {
        let (events, rx) = std::sync::mpsc::channel();
        let ctx = LinkContext {
            listen: "127.0.0.1:0".parse().unwrap(),
            events,
            counters: Arc::new(ClusterCounters::default()),
            queue_bytes_max,
            write_timeout,
            tls: None,
        };
        (ctx, rx)
    }

    /// The next event that `pick` takes, within a generous failure guard.
    fn wait<T>(rx: &Receiver<Event>, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ev = rx.recv_timeout(left).expect("the awaited event");
            if let Some(t) = pick(ev) {
                return t;
            }
        }
    }

    /// Every shard's pending credit, summed.
    fn credited(pool: &CreditPool) -> u64 {
        let mut total = 0;
        pool.collect(|_, b| total += b);
        total
    }

    #[test]
    fn a_message_for_a_link_that_is_down_is_dropped_counted_and_credited_once() {
        // A port nobody listens on: the writer keeps failing to dial.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (ctx, rx) = context(1 << 20, WRITE_TIMEOUT);
        let pool = Arc::new(CreditPool::new(2, ctx.events.clone()));
        let link = Link::open(&ctx, NodeId(5), addr, 1, Bytes::from_static(b"hello")).unwrap();
        let guard = Arc::new(CreditGuard { pool: pool.clone(), shard: ShardId(1), cost: 77 });
        assert!(!link.publish(Bytes::from_static(b"frame"), &guard));
        assert_eq!(ctx.counters.messages_dropped.load(Relaxed), 1);
        assert_eq!(ctx.counters.messages_dropped_queue_full.load(Relaxed), 0, "link down");
        assert_eq!(credited(&pool), 0, "not before the last holder lets go");
        drop(guard);
        wait(&rx, |ev| matches!(ev, Event::Credit).then_some(()));
        let mut got = Vec::new();
        pool.collect(|shard, bytes| got.push((shard, bytes)));
        assert_eq!(got, vec![(ShardId(1), 77)]);
        assert_eq!(credited(&pool), 0, "once");
        link.hang_up().unwrap().join().unwrap();
    }

    #[test]
    fn a_stalled_link_is_closed_and_everything_it_held_is_credited_once() {
        // A peer that accepts and never reads: the kernel's buffers fill, then the queue.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (ctx, rx) = context(1 << 20, Duration::from_millis(300));
        let pool = Arc::new(CreditPool::new(1, ctx.events.clone()));
        let link =
            Link::open(&ctx, NodeId(6), listener.local_addr().unwrap(), 9, Bytes::new()).unwrap();
        let (_peer, _) = listener.accept().unwrap();
        wait(&rx, |ev| matches!(ev, Event::LinkUp(NodeId(6), 9)).then_some(()));
        let frame = Bytes::from(vec![7u8; 64 * 1024]);
        let guard = Arc::new(CreditGuard { pool: pool.clone(), shard: ShardId(0), cost: 1 });
        // Publish until the writer gives up: the kernel's buffers fill, then the queue (a
        // publish is refused), then the stalled write passes its timeout and the link goes
        // down. Between publishes, wait a little for that marker.
        let (mut accepted, mut refused) = (0u64, 0u64);
        let mut told = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert!(std::time::Instant::now() < deadline, "the stalled link stays up");
            if link.publish(frame.clone(), &guard) {
                accepted += 1;
            } else {
                refused += 1;
            }
            assert!(accepted < 100_000, "the queue is unbounded");
            match rx.recv_timeout(Duration::from_millis(if refused > 0 { 50 } else { 0 })) {
                Ok(Event::LinkDown(NodeId(6), 9)) => break,
                Ok(Event::Credit) => told = true,
                Ok(_) | Err(_) => {}
            }
        }
        assert!(refused >= 1, "the queue filled before the link went down");
        assert!(accepted * 64 * 1024 > 1 << 20);
        // Every queued copy was dropped with the connection; the test's clone is the last.
        assert!(!told && credited(&pool) == 0, "credited before every copy was let go");
        drop(guard);
        assert_eq!(credited(&pool), 1, "credited once");
        assert!(ctx.counters.messages_dropped.load(Relaxed) > refused, "queued copies count");
        // The refusals were for a full queue, the copies lost with the connection for a link
        // down (`$SYS/broker/cluster/messages/dropped/{queue_full,link_down}`).
        // (The last refusals may have met the link already down.)
        let full = ctx.counters.messages_dropped_queue_full.load(Relaxed);
        assert!(full >= 1 && full <= refused, "{full} of {refused} refusals for a full queue");
        drop(link);
    }

    #[test]
    fn an_idle_link_closed_by_its_peer_goes_down_and_is_dialled_again() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (ctx, rx) = context(1 << 20, WRITE_TIMEOUT);
        let hello = Bytes::from_static(b"HELLO");
        let link = Link::open(&ctx, NodeId(7), listener.local_addr().unwrap(), 3, hello).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        wait(&rx, |ev| matches!(ev, Event::LinkUp(NodeId(7), 3)).then_some(()));
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut peer, &mut got).unwrap();
        assert_eq!(&got, b"HELLO");
        // Nothing is queued: only the idle check can notice the peer is gone.
        drop(peer);
        wait(&rx, |ev| matches!(ev, Event::LinkDown(NodeId(7), 3)).then_some(()));
        let (mut again, _) = listener.accept().unwrap();
        wait(&rx, |ev| matches!(ev, Event::LinkUp(NodeId(7), 3)).then_some(()));
        std::io::Read::read_exact(&mut again, &mut got).unwrap();
        assert_eq!(&got, b"HELLO", "a new connection starts with the Hello again");
        link.hang_up().unwrap().join().unwrap();
    }

    #[test]
    fn partial_writes_go_on_where_they_stopped() {
        let batch: Vec<Item> = (0..200usize)
            .map(|i| {
                let len = 1 + (i * 7919) % 300;
                Item { frame: Bytes::from(vec![(i % 251) as u8; len]), credit: None }
            })
            .collect();
        let want: Vec<u8> = batch.iter().flat_map(|i| i.frame.iter().copied()).collect();
        for step in [1, 7, 64, 1000, want.len()] {
            let mut t = Trickle { got: Vec::new(), step, calls: 0 };
            write_frames(&mut t, &batch).unwrap();
            assert!(t.got == want, "step {step}: the bytes differ");
        }
    }
}
