//! The control plane: typed requests from threads outside the shards (the main thread on
//! SIGHUP, the admin HTTP thread) to one shard or to every shard, each with a reply.
//!
//! Per shard: a channel (`std::sync::mpsc`, written by any thread, read only by that shard)
//! and a doorbell (a socket pair; the sender writes one byte after queueing a request). The
//! shard's control task awaits the doorbell on its own executor like any socket, then drains
//! the channel and answers each request with a `tokio` oneshot (usable from async code and,
//! with `blocking_recv`, from a plain thread). Shards share nothing here: each has its own
//! channel, and a request is handled between two awaits like any other event, so it holds
//! the shard only for as long as the handler runs (handlers are O(1) or bounded by a page
//! size).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::{mpsc, Arc};

use futures_lite::AsyncReadExt;
use glommio::net::UnixStream;
use tokio::sync::oneshot;

use crate::core::admin::clients::{ClientDetail, ClientQuery, ClientSummary, KickOutcome};
use crate::core::admin::topics::{AdminPublish, RetainedRow, SubscriptionRow};
use crate::core::admin::CoreStats;
use crate::core::cluster::{ClusterIn, ShardSink};
use crate::core::ids::ShardId;
use crate::log::file::LogStats;
use crate::reload::Reload;

use super::shard::ShardIo;

/// Doorbell bytes read at once (several requests queued together ring several times).
const BELL_READ_BYTES: usize = 64;

/// A request for a shard.
#[derive(Debug, Clone)]
pub enum ControlMsg {
    /// Apply a reload (`reload.rs`). Replies [`ControlReply::Done`].
    Reload(Arc<Reload>),
    /// Is the shard serving? Replies [`ControlReply::Done`].
    Ping,
    /// The shard's counters. Replies [`ControlReply::Stats`].
    Stats,
    /// A page of the shard's clients. Replies [`ControlReply::Clients`].
    ListClients(ClientQuery),
    /// One client (send to its home shard). Replies [`ControlReply::Client`].
    GetClient(String),
    /// Disconnect a client (its home shard). Replies [`ControlReply::Kicked`].
    Kick {
        /// The client.
        client_id: String,
        /// End its session too.
        discard_session: bool,
    },
    /// The shard's subscriptions with a filter starting with `prefix`, after the (client
    /// id, filter) pair `after`. Replies [`ControlReply::Subscriptions`].
    ListSubscriptions {
        /// Filter prefix.
        prefix: Option<String>,
        /// The previous page's last row.
        after: Option<(String, String)>,
        /// Most rows.
        limit: usize,
    },
    /// The shard's subscriptions matching a topic. Replies [`ControlReply::Subscriptions`].
    Subscribers {
        /// The topic name.
        topic: String,
        /// Most rows.
        limit: usize,
    },
    /// Retained messages by topic prefix, of the topics the shard owns. Replies
    /// [`ControlReply::Retained`].
    ListRetained {
        /// Topic prefix.
        prefix: Option<String>,
        /// The previous page's last topic.
        after: Option<String>,
        /// Most rows.
        limit: usize,
    },
    /// One retained message, with its payload. Replies [`ControlReply::Retained`].
    GetRetained(String),
    /// Clear a retained message (send to the topic's owner,
    /// `ShardCore::home_shard(topic)`). Replies [`ControlReply::Cleared`].
    ClearRetained(String),
    /// Publish a message from the broker. Replies [`ControlReply::Done`].
    Publish(Box<AdminPublish>),
    /// Messages from the node's cluster runtime, in order (`core/cluster/`). Replies
    /// [`ControlReply::Done`] (the runtime does not wait for it).
    Cluster(Vec<ClusterIn>),
    /// The running bridges changed (admin API): their counters, for `$SYS`. Replies
    /// [`ControlReply::Done`].
    Bridges(Vec<Arc<crate::core::shard::BridgeCounters>>),
}

/// A shard's answer.
#[derive(Debug)]
pub enum ControlReply {
    /// The request was carried out.
    Done,
    /// The shard's counters.
    Stats(Box<ShardStats>),
    /// A page of clients.
    Clients(Vec<ClientSummary>),
    /// One client, if its session is here.
    Client(Option<Box<ClientDetail>>),
    /// What kicking did.
    Kicked(KickOutcome),
    /// Subscription rows.
    Subscriptions(Vec<SubscriptionRow>),
    /// Retained rows.
    Retained(Vec<RetainedRow>),
    /// Whether there was a retained message to clear.
    Cleared(bool),
}

/// One shard's counters and sizes, copied in one go (O(1): a few dozen integers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// The shard.
    pub shard: u16,
    /// The core's counters.
    pub core: CoreStats,
    /// Connections asleep (no task; the socket in the shard's idle poller).
    pub clients_sleeping: u64,
    /// Bytes read from and written to this shard's sockets.
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Messages for other shards waiting for room on a full mesh ring.
    pub mesh_outbox_messages: u64,
    /// Reloads applied.
    pub reloads: u64,
    /// TLS handshakes completed and failed, WebSocket upgrades accepted and failed,
    /// connections refused while too many handshakes were in progress (the io layer's
    /// counters, `$SYS`'s source).
    pub tls_handshakes: u64,
    pub tls_handshake_failures: u64,
    pub ws_upgrades: u64,
    pub ws_failures: u64,
    pub handshakes_refused_busy: u64,
    /// Bridges (shard 0 reports them; empty elsewhere).
    pub bridges: Vec<BridgeStats>,
    /// The shard's log (`None` with `--in-memory`).
    pub log: Option<LogSnapshot>,
}

/// One bridge's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Its name.
    pub name: String,
    /// 1 while both links are up.
    pub connected: u64,
    /// Messages forwarded to and from the remote broker.
    pub forwarded_out: u64,
    pub forwarded_in: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
}

/// A shard log's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogSnapshot {
    /// The writer's counters (bytes written, fsyncs and their latency, compactions).
    pub stats: LogStats,
    /// Bytes of segment files on disk.
    pub disk_bytes: u64,
}

/// Why a request got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlError {
    /// The shard is stopping or gone.
    ShardGone(ShardId),
    /// No such shard.
    NoSuchShard(ShardId),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::ShardGone(s) => write!(f, "{s} is stopping or gone"),
            ControlError::NoSuchShard(s) => write!(f, "no {s}"),
        }
    }
}

impl std::error::Error for ControlError {}

/// A pending reply.
pub type ReplyRx = oneshot::Receiver<ControlReply>;

#[derive(Debug)]
struct Envelope {
    msg: ControlMsg,
    reply: oneshot::Sender<ControlReply>,
}

#[derive(Debug)]
struct ShardLine {
    tx: mpsc::Sender<Envelope>,
    /// Our end of the doorbell (non-blocking).
    bell: StdUnixStream,
}

/// The sending side of the control plane: cheap to clone, usable from any thread outside
/// the shards.
#[derive(Debug, Clone)]
pub struct Control {
    lines: Arc<[ShardLine]>,
}

/// One shard's receiving side, moved into its thread.
#[derive(Debug)]
pub(crate) struct ControlEnd {
    rx: mpsc::Receiver<Envelope>,
    bell: OwnedFd,
}

/// Makes the control plane for `shards` shards: the sending side and one receiving side per
/// shard (index = shard id).
pub(crate) fn control_plane(shards: u16) -> io::Result<(Control, Vec<ControlEnd>)> {
    let mut lines = Vec::with_capacity(usize::from(shards));
    let mut ends = Vec::with_capacity(usize::from(shards));
    for _ in 0..shards {
        let (tx, rx) = mpsc::channel();
        let (ours, theirs) = StdUnixStream::pair()?;
        ours.set_nonblocking(true)?;
        lines.push(ShardLine { tx, bell: ours });
        ends.push(ControlEnd { rx, bell: theirs.into() });
    }
    Ok((Control { lines: lines.into() }, ends))
}

impl Control {
    /// Number of shards.
    pub fn shard_count(&self) -> u16 {
        self.lines.len() as u16
    }

    /// Queues `msg` for `shard` and rings its doorbell; await (or `blocking_recv`) the
    /// returned receiver for the reply (it errs if the shard stops first).
    pub fn send(&self, shard: ShardId, msg: ControlMsg) -> Result<ReplyRx, ControlError> {
        let line = self.lines.get(usize::from(shard.0)).ok_or(ControlError::NoSuchShard(shard))?;
        let (reply, rx) = oneshot::channel();
        line.tx.send(Envelope { msg, reply }).map_err(|_| ControlError::ShardGone(shard))?;
        ring(&line.bell).map_err(|_| ControlError::ShardGone(shard))?;
        Ok(rx)
    }

    /// Sends one request to every shard (`make(shard)` builds each) and returns the pending
    /// replies in shard order.
    pub fn send_all(
        &self,
        mut make: impl FnMut(ShardId) -> ControlMsg,
    ) -> Vec<Result<ReplyRx, ControlError>> {
        (0..self.shard_count()).map(|i| self.send(ShardId(i), make(ShardId(i)))).collect()
    }

    /// Asks `shard` and awaits its reply.
    pub async fn ask(&self, shard: ShardId, msg: ControlMsg) -> Result<ControlReply, ControlError> {
        self.send(shard, msg)?.await.map_err(|_| ControlError::ShardGone(shard))
    }

    /// Asks every shard and awaits every reply (shard order).
    pub async fn ask_all(
        &self,
        make: impl FnMut(ShardId) -> ControlMsg,
    ) -> Vec<Result<ControlReply, ControlError>> {
        let pending = self.send_all(make);
        let mut out = Vec::with_capacity(pending.len());
        for (i, p) in pending.into_iter().enumerate() {
            let shard = ShardId(i as u16);
            out.push(match p {
                Ok(rx) => rx.await.map_err(|_| ControlError::ShardGone(shard)),
                Err(e) => Err(e),
            });
        }
        out
    }
}

/// Writes one doorbell byte. A full socket buffer is fine: unread bytes already wake the
/// shard, which drains every queued request.
fn ring(bell: &StdUnixStream) -> io::Result<()> {
    // SAFETY: a valid socket for the duration of the call and a one-byte buffer we own.
    // MSG_NOSIGNAL: a shard that is gone must not raise SIGPIPE in the sender.
    let n = unsafe {
        libc::send(
            bell.as_raw_fd(),
            [1u8].as_ptr().cast(),
            1,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(())
    } else {
        Err(e)
    }
}

/// The shard's control task: waits for the doorbell, then answers every queued request.
/// Ends at shutdown or when every sender is gone.
pub(crate) async fn control_task(shard: Rc<ShardIo>, end: ControlEnd) {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: an open socket we own; ownership moves to the stream.
    let mut bell = unsafe { UnixStream::from_raw_fd(end.bell.into_raw_fd()) };
    let mut buf = [0u8; BELL_READ_BYTES];
    loop {
        match shard.stop.unless_fired(bell.read(&mut buf)).await {
            None | Some(Ok(0)) | Some(Err(_)) => return,
            Some(Ok(_)) => {}
        }
        while let Ok(env) = end.rx.try_recv() {
            let reply = handle(&shard, env.msg);
            // The asker may have given up: nothing to do then.
            let _ = env.reply.send(reply);
        }
    }
}

/// Answers one request on the shard.
fn handle(shard: &ShardIo, msg: ControlMsg) -> ControlReply {
    match msg {
        ControlMsg::Ping => ControlReply::Done,
        ControlMsg::Stats => ControlReply::Stats(Box::new(stats(shard))),
        ControlMsg::ListClients(q) => {
            ControlReply::Clients(shard.core.borrow().admin_list_clients(&q))
        }
        ControlMsg::GetClient(id) => {
            ControlReply::Client(shard.core.borrow().admin_client(&id).map(Box::new))
        }
        ControlMsg::Kick { client_id, discard_session } => ControlReply::Kicked(
            shard.with_core(|core, now| core.admin_kick(&client_id, discard_session, now)),
        ),
        ControlMsg::ListSubscriptions { prefix, after, limit } => ControlReply::Subscriptions(
            shard.core.borrow().admin_subscriptions(prefix.as_deref(), after.as_ref(), limit),
        ),
        ControlMsg::Subscribers { topic, limit } => {
            ControlReply::Subscriptions(shard.core.borrow().admin_subscribers(&topic, limit))
        }
        ControlMsg::ListRetained { prefix, after, limit } => ControlReply::Retained(
            shard.core.borrow().admin_retained(prefix.as_deref(), after.as_deref(), limit),
        ),
        ControlMsg::GetRetained(topic) => ControlReply::Retained(
            shard.core.borrow().admin_retained_one(&topic).into_iter().collect(),
        ),
        ControlMsg::ClearRetained(topic) => {
            ControlReply::Cleared(shard.with_core(|core, _| core.admin_clear_retained(&topic)))
        }
        ControlMsg::Publish(p) => {
            shard.with_core(|core, now| core.admin_publish(*p, now));
            ControlReply::Done
        }
        ControlMsg::Reload(reload) => {
            apply_reload(shard, &reload);
            ControlReply::Done
        }
        ControlMsg::Bridges(list) => {
            shard.with_core(|core, now| core.set_bridges(list, now));
            ControlReply::Done
        }
        ControlMsg::Cluster(msgs) => {
            shard.with_core(|core, now| {
                for m in msgs {
                    core.handle_cluster(m, now);
                }
            });
            ControlReply::Done
        }
    }
}

/// The cluster runtime reaches the shards through the control plane: one request per batch.
impl ShardSink for Control {
    fn send(&self, shard: ShardId, msgs: Vec<ClusterIn>) {
        if msgs.is_empty() {
            return;
        }
        if let Err(e) = Control::send(self, shard, ControlMsg::Cluster(msgs)) {
            // Only at shutdown: the shard is gone, and so is what the messages were for.
            tracing::debug!(%e, "cluster messages for a shard that is gone");
        }
    }

    fn shard_count(&self) -> u16 {
        Control::shard_count(self)
    }
}

fn stats(shard: &ShardIo) -> ShardStats {
    use std::sync::atomic::Ordering::Relaxed;
    let core = shard.core.borrow();
    let global = &core.config().stats;
    let io = &global.shards[usize::from(shard.id.0)];
    let bridges = if shard.id.0 == 0 {
        core.bridges
            .iter()
            .map(|b| BridgeStats {
                name: b.name.clone(),
                connected: b.connected.load(Relaxed),
                forwarded_out: b.forwarded_out.load(Relaxed),
                forwarded_in: b.forwarded_in.load(Relaxed),
                connect_failures: b.connect_failures.load(Relaxed),
            })
            .collect()
    } else {
        Vec::new()
    };
    ShardStats {
        tls_handshakes: io.tls_handshakes.load(Relaxed),
        tls_handshake_failures: io.tls_handshake_failures.load(Relaxed),
        ws_upgrades: io.ws_upgrades.load(Relaxed),
        ws_failures: io.ws_failures.load(Relaxed),
        handshakes_refused_busy: io.handshakes_refused_busy.load(Relaxed),
        bridges,
        shard: shard.id.0,
        core: core.core_stats(),
        clients_sleeping: shard.idle.asleep_count(),
        bytes_received: shard.bytes_in.get(),
        bytes_sent: shard.bytes_out.get(),
        mesh_outbox_messages: shard.mesh.get().map_or(0, |m| m.backlog() as u64),
        reloads: shard.reloads.get(),
        log: shard
            .log
            .get()
            .and_then(|l| l.stats())
            .map(|(stats, disk_bytes)| LogSnapshot { stats, disk_bytes }),
    }
}

/// Applies a reload on this shard. The process-wide parts (the log filter) were applied by
/// the thread that built it (`reload::Reloader`); what each shard owns is swapped here.
fn apply_reload(shard: &ShardIo, reload: &Reload) {
    shard.reloads.set(shard.reloads.get() + 1);
    shard.core.borrow_mut().apply_auth_reload(&reload.auth);
    super::listen::apply_tls_reload(shard, &reload.tls);
    tracing::info!(shard = shard.id.0, generation = reload.generation, "reload applied");
}
