//! This shard's end of the cross-shard mesh: one bounded SPSC ring per ordered pair of shards
//! (glommio `channel_mesh`). Sending never blocks the reactor: a message for a full ring waits
//! in a per-peer outbox that a retry task pushes as the ring drains; the outbox size is
//! reported to the core, which pauses reading from sockets past its limit.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::Poll;

use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::{GlommioError, ResourceType};

use crate::core::ids::ShardId;
use crate::core::mesh::MeshMsg;

use super::shard::ShardIo;
use super::signal::WakerSlot;

/// Messages a retry task pushes before it reports the backlog to the core.
const RETRY_REPORT_EVERY: usize = 64;

/// The sending side of this shard's mesh. Shard-local.
#[derive(Debug)]
pub(crate) struct MeshIo {
    senders: Senders<MeshMsg>,
    peers: Vec<Peer>,
    backlog: Cell<usize>,
    backlog_reported: Cell<usize>,
}

#[derive(Debug, Default)]
struct Peer {
    outbox: RefCell<VecDeque<MeshMsg>>,
    /// The retry task holds a message it is waiting to push.
    busy: Cell<bool>,
    retry_waker: WakerSlot,
}

impl MeshIo {
    pub(crate) fn new(senders: Senders<MeshMsg>) -> MeshIo {
        let n = senders.nr_consumers();
        MeshIo {
            senders,
            peers: (0..n).map(|_| Peer::default()).collect(),
            backlog: Cell::new(0),
            backlog_reported: Cell::new(0),
        }
    }

    /// Messages waiting in outboxes.
    pub(crate) fn backlog(&self) -> usize {
        self.backlog.get()
    }

    pub(crate) fn backlog_reported(&self) -> usize {
        self.backlog_reported.get()
    }

    pub(crate) fn set_backlog_reported(&self, n: usize) {
        self.backlog_reported.set(n);
    }

    /// Pushes `msg` onto the ring to `to`, or into its outbox if the ring is full (or older
    /// messages already wait: order per destination is kept).
    pub(crate) fn send(&self, to: ShardId, msg: MeshMsg) {
        let i = usize::from(to.0);
        let Some(peer) = self.peers.get(i) else {
            debug_assert!(false, "message for unknown shard {to}");
            return drop(msg);
        };
        if peer.busy.get() || !peer.outbox.borrow().is_empty() {
            peer.outbox.borrow_mut().push_back(msg);
            self.backlog.set(self.backlog.get() + 1);
            return;
        }
        match self.senders.try_send_to(i, msg) {
            Ok(()) => {}
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                peer.outbox.borrow_mut().push_back(msg);
                self.backlog.set(self.backlog.get() + 1);
                peer.retry_waker.wake();
            }
            // The peer is gone: dropping the message closes an adopted socket.
            Err(GlommioError::Closed(ResourceType::Channel(msg))) => drop(msg),
            Err(e) => {
                // Only a send to ourselves or to a shard outside the mesh gets here: a bug.
                debug_assert!(false, "mesh send to {to} failed: {e}");
                tracing::error!("mesh send to {to} failed: {e}");
            }
        }
    }
}

/// Pushes the outbox of `peer` onto its ring as room appears. One task per peer.
pub(crate) async fn retry_task(shard: Rc<ShardIo>, mesh: Rc<MeshIo>, peer_idx: usize) {
    let peer = &mesh.peers[peer_idx];
    loop {
        // Wait for something to retry.
        let stopped = std::future::poll_fn(|cx| {
            if !peer.outbox.borrow().is_empty() {
                return Poll::Ready(false);
            }
            if shard.stop.is_fired() {
                return Poll::Ready(true);
            }
            peer.retry_waker.set(cx.waker());
            Poll::Pending
        })
        .await;
        if stopped {
            return;
        }
        let mut pushed = 0;
        loop {
            let Some(msg) = peer.outbox.borrow_mut().pop_front() else { break };
            peer.busy.set(true);
            let res = mesh.senders.send_to(peer_idx, msg).await;
            peer.busy.set(false);
            mesh.backlog.set(mesh.backlog.get() - 1);
            // A message the closed ring returns is dropped (closing an adopted socket).
            drop(res);
            pushed += 1;
            if pushed % RETRY_REPORT_EVERY == 0 {
                report_backlog(&shard, &mesh);
            }
        }
        report_backlog(&shard, &mesh);
    }
}

fn report_backlog(shard: &ShardIo, mesh: &MeshIo) {
    let backlog = mesh.backlog();
    if backlog != mesh.backlog_reported() {
        mesh.set_backlog_reported(backlog);
        shard.with_core(|core, _| core.set_mesh_backlog(backlog));
    }
}

/// Receives from `peer` until it goes away: adopts handed-off sockets and passes every
/// other message to the core. One task per peer.
pub(crate) async fn receive_task(
    shard: Rc<ShardIo>,
    receivers: Rc<Receivers<MeshMsg>>,
    peer: usize,
) {
    let from = ShardId(peer as u16);
    loop {
        let msg = match receivers.recv_from(peer).await {
            Ok(Some(msg)) => msg,
            _ => return,
        };
        match msg {
            MeshMsg::Adopt { fd, read_buf, info, transport } => {
                if shard.stop.is_fired() {
                    continue; // `fd` is dropped: the socket closes.
                }
                super::greet::spawn_adopted(&shard, fd, read_buf, info, transport);
            }
            // Shutdown is driven by the broker-wide stop flag; the message is only a nudge.
            MeshMsg::Shutdown => {}
            msg => shard.with_core(|core, now| core.handle_mesh(from, msg, now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use bytes::Bytes;

    use crate::core::mesh::MeshMsg;

    #[test]
    fn a_dropped_adopt_message_closes_its_socket() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        // Only a bound on a hang: a socket left open fails the read instead.
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let msg = MeshMsg::Adopt {
            fd: ours.into(),
            read_buf: Bytes::from_static(b"\x10"),
            info: crate::core::ConnInfo::default(),
            transport: None,
        };
        drop(msg);
        let mut byte = [0u8; 1];
        assert_eq!(peer.read(&mut byte).unwrap(), 0, "EOF: the last descriptor was closed");
    }
}
