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

use crate::core::ids::ShardId;
use crate::reload::Reload;

use super::shard::ShardIo;

/// Doorbell bytes read at once (several requests queued together ring several times).
const BELL_READ_BYTES: usize = 64;

/// A request for a shard.
#[derive(Debug)]
pub enum ControlMsg {
    /// Apply a reload (`reload.rs`). Replies [`ControlReply::Done`].
    Reload(Arc<Reload>),
    /// Is the shard serving? Replies [`ControlReply::Done`].
    Ping,
}

/// A shard's answer.
#[derive(Debug)]
pub enum ControlReply {
    /// The request was carried out.
    Done,
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
        ControlMsg::Reload(reload) => {
            apply_reload(shard, &reload);
            ControlReply::Done
        }
    }
}

/// Applies a reload on this shard. The process-wide parts (the log filter) were applied by
/// the thread that built it (`reload::Reloader`); what each shard owns is swapped here.
fn apply_reload(shard: &ShardIo, reload: &Reload) {
    shard.reloads.set(shard.reloads.get() + 1);
    super::listen::apply_tls_reload(shard, &reload.tls);
    tracing::info!(shard = shard.id.0, generation = reload.generation, "reload applied");
}
