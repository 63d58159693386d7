//! The connection driver: reads, decodes, calls the core, and writes what the core queued.
//!
//! A connection lives in two tasks, one after the other:
//! 1. the *greeting* task (`greet.rs`) runs the transport handshakes and reads until the
//!    first packet decodes (or the connect timeout passes), then either hands the socket to
//!    the session's home shard or opens the connection in the core here and spawns
//! 2. the [`Driver`], a hand-written future that reads and writes in the same task (so a
//!    client slow to read never stops us from reading its acknowledgements) until the
//!    socket closes.
//!
//! Memory per idle connection is the point of this shape: the long-lived task is just the
//! `Driver` struct (no async state machine around it), there is no read buffer while idle
//! (every connection of a shard reads into the shard's scratch buffer and copies what
//! arrived into its own `BytesMut`, released once decoded), and the connect timeout is a
//! shard-wide FIFO swept by the timer task rather than one timer per connection. The rest is
//! glommio's per-socket state, a [`ConnSlot`] and its entry in the shard's slot vector, and the
//! core's state. A connection idle for a second or two drops glommio's part and its task
//! (`idle.rs`).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use shardmq_codec::{decode, ProtocolVersion};

use crate::core::ids::ConnId;

use super::flush::{with_front_queue, write_out, Wrote, POKE_MISSES_MAX};
use super::shard::{ConnSlot, ShardIo};
use super::transport::{Closing, Ingest, TransportState};

/// How long a closing connection may take to write what is queued before it is dropped.
pub(super) const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The version passed to the decoder before CONNECT (CONNECT decodes by its own level).
pub(super) const VERSION_BEFORE_CONNECT: ProtocolVersion = ProtocolVersion::V3_1_1;

/// Starts the task of an open connection (a new one, or one waking from sleep: `idle.rs`)
/// with the bytes read and not yet decoded.
pub(crate) fn spawn_driver(
    shard: &Rc<ShardIo>,
    slot: Rc<ConnSlot>,
    stream: TcpStream,
    buf: BytesMut,
) {
    let driver =
        Driver { shard: shard.clone(), conn: slot.conn, slot, stream, buf, close_timer: None };
    glommio::spawn_local(driver).detach();
}

/// Reads once into the shard's scratch buffer and appends what arrived (through the
/// transport, if any) to `buf`.
pub(super) fn poll_read_into(
    cx: &mut Context<'_>,
    shard: &ShardIo,
    stream: &mut TcpStream,
    transport: Option<&RefCell<TransportState>>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut scratch = shard.scratch.borrow_mut();
    match Pin::new(stream).poll_read(cx, &mut scratch[..]) {
        Poll::Ready(Ok(n)) => {
            shard.bytes_in.set(shard.bytes_in.get() + n as u64);
            Poll::Ready(take_in(transport, &scratch[..n], buf))
        }
        other => other,
    }
}

/// Appends bytes read from the socket to `buf`, through the transport if there is one.
/// `Ok(0)` means the stream ended; an `Err` carrying a [`Closing`] means the transport
/// refused and wants its answer written before the close ([`transport_closing`]).
pub(super) fn take_in(
    transport: Option<&RefCell<TransportState>>,
    raw: &[u8],
    buf: &mut BytesMut,
) -> io::Result<usize> {
    let Some(t) = transport else {
        buf.extend_from_slice(raw);
        return Ok(raw.len());
    };
    if raw.is_empty() {
        return Ok(0);
    }
    let before = buf.len();
    match t.borrow_mut().ingest(raw, buf) {
        Ingest::Ok => Ok(raw.len()),
        // A clean end (TLS close_notify); bytes that came with it are still handled.
        Ingest::Eof if buf.len() > before => Ok(raw.len()),
        Ingest::Eof => Ok(0),
        Ingest::Close(closing) => Err(io::Error::other(closing)),
    }
}

/// The transport refusal an error from [`take_in`] carries, if it is one.
pub(super) fn transport_closing(e: io::Error) -> Option<Closing> {
    e.into_inner()?.downcast::<Closing>().ok().map(|c| *c)
}

/// One non-blocking `recv` into the shard's scratch buffer, appended to `buf` (through the
/// transport, if any); `None` when nothing is there.
fn read_direct(
    shard: &ShardIo,
    fd: i32,
    transport: Option<&RefCell<TransportState>>,
    buf: &mut BytesMut,
) -> Option<io::Result<usize>> {
    let mut scratch = shard.scratch.borrow_mut();
    // SAFETY: `scratch` is a writable buffer of the given length; `fd` is the socket of the
    // connection task calling this (open while the task lives).
    let n =
        unsafe { libc::recv(fd, scratch.as_mut_ptr().cast(), scratch.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
            _ => Some(Err(e)),
        };
    }
    let n = n as usize;
    shard.bytes_in.set(shard.bytes_in.get() + n as u64);
    Some(take_in(transport, &scratch[..n], buf))
}

/// What woke the driver.
enum Event {
    /// Bytes arrived.
    Read,
    /// The peer closed or the socket failed.
    Gone,
    /// The transport refused (a bad WebSocket frame, a TLS error, a close frame): its
    /// answer is written, then the socket closed.
    Refused(Closing),
    /// A close the core (or shutdown) asked for is done: everything was written, or the
    /// write timed out.
    Closed,
}

/// One open connection: a future that runs until the socket closes. Shard-local.
struct Driver {
    shard: Rc<ShardIo>,
    conn: ConnId,
    slot: Rc<ConnSlot>,
    stream: TcpStream,
    /// Bytes read and not yet decoded.
    buf: BytesMut,
    /// Bounds how long a closing connection may take to flush.
    close_timer: Option<Timer>,
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            this.decode_all();
            match this.poll_event(cx) {
                Poll::Pending => {
                    if this.slot.sleep.get() && this.fall_asleep() {
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Event::Read) => {
                    if glommio::executor().need_preempt() {
                        // Let other tasks run; what was read is decoded when polled again.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Poll::Ready(Event::Gone) => {
                    if !this.slot.close.get() {
                        this.shard.with_core(|core, now| core.handle_closed(this.conn, now));
                    }
                    return Poll::Ready(());
                }
                Poll::Ready(Event::Refused(closing)) => {
                    let info = this.shard.core.borrow().conn_info(this.conn).cloned();
                    if let Some(info) = info {
                        super::greet::count_closing(&this.shard, &info, &closing);
                    }
                    if !this.slot.close.get() {
                        // Like a socket closing without DISCONNECT (the will is published);
                        // then the transport's answer is written and the socket closed.
                        this.shard.with_core(|core, now| core.handle_closed(this.conn, now));
                        this.slot.close.set(true);
                    }
                }
                Poll::Ready(Event::Closed) => {
                    // SAFETY: shutdown(2) on the socket this driver owns; a FIN after what
                    // was written (the descriptor is closed when the stream drops).
                    unsafe { libc::shutdown(this.stream.as_raw_fd(), libc::SHUT_WR) };
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.slot.is_asleep() {
            // The connection lives on without a task; the slot holds its socket.
            return;
        }
        // Before the stream (and its descriptor) is dropped: the shard's writer must not
        // send on a descriptor number that may be reused.
        self.slot.gone.set(true);
        self.shard.unregister(self.conn);
    }
}

impl Driver {
    /// The idle sweep asked this connection to sleep: if it still has nothing going on,
    /// its socket moves to the shard's idle poller and this task ends (`idle.rs`). `true`
    /// when it did.
    fn fall_asleep(&mut self) -> bool {
        let slot = &self.slot;
        slot.sleep.set(false);
        if slot.active.get()
            || slot.blocked.get()
            || slot.close.get()
            || slot.parked.get()
            || !self.buf.is_empty()
            || self.close_timer.is_some()
            || self.shard.stop.is_fired()
            || slot.transport.as_ref().is_some_and(|t| !t.borrow().out_is_empty())
        {
            return false;
        }
        match self.shard.idle.sleep(slot, self.stream.as_raw_fd()) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("{}: connection stays awake: {e}", self.shard.id);
                slot.sleepless.set(true);
                false
            }
        }
    }

    /// True when the next packet in the buffer is a PUBLISH and the shard takes none now
    /// (back-pressure, `core/delivery/tx_budget.rs`): it stays in the buffer and the socket is not
    /// read until publishing resumes. Packets before it are handled; packets after it wait
    /// with it (TCP is one ordered stream).
    fn publish_held(&self) -> bool {
        const PUBLISH: u8 = 3;
        self.buf.first().is_some_and(|b| b >> 4 == PUBLISH)
            && self.shard.core.borrow().publishing_paused()
    }

    /// Decodes and handles every whole packet in the buffer (up to a held PUBLISH).
    fn decode_all(&mut self) {
        while !self.slot.close.get() && !self.buf.is_empty() {
            if self.publish_held() {
                return;
            }
            let version = self
                .shard
                .core
                .borrow()
                .protocol_version(self.conn)
                .unwrap_or(VERSION_BEFORE_CONNECT);
            match decode(&mut self.buf, &self.shard.codec_limits, version) {
                Ok(Some(p)) => {
                    self.shard.with_core(|core, now| core.handle_packet(self.conn, p, now))
                }
                Ok(None) => break,
                Err(e) => {
                    self.buf = BytesMut::new();
                    self.shard.with_core(|core, now| core.handle_decode_error(self.conn, e, now));
                }
            }
        }
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            // Release the buffer (decoded payloads keep their own slices of it alive).
            self.buf = BytesMut::new();
        }
    }

    /// Writes until the queue is empty or the socket is full (then glommio wakes this task
    /// when it is writable). `Err` when the socket failed.
    fn poll_write_all(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        loop {
            match write_out(&self.shard, &self.slot) {
                Wrote::All => return Poll::Ready(Ok(())),
                Wrote::Failed => return Poll::Ready(Err(())),
                Wrote::Blocked => {}
            }
            // Full: one write through glommio, which registers for writability if the
            // socket still takes nothing.
            let stream = &mut self.stream;
            if let Some(t) = self.slot.transport.as_deref() {
                let mut t = t.borrow_mut();
                let poll = Pin::new(stream).poll_write(cx, t.out());
                match poll {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        t.consume(n);
                        self.shard.bytes_out.set(self.shard.bytes_out.get() + n as u64);
                        continue;
                    }
                    Poll::Ready(_) => return Poll::Ready(Err(())),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let poll = with_front_queue(&self.shard, &self.slot, |q| {
                let poll = Pin::new(stream).poll_write(cx, q.front());
                if let Poll::Ready(Ok(n)) = poll {
                    q.consume(n);
                    self.shard.bytes_out.set(self.shard.bytes_out.get() + n as u64);
                }
                poll
            });
            match poll {
                Poll::Ready(Ok(n)) if n > 0 => {}
                Poll::Ready(_) => return Poll::Ready(Err(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Writes what the shard's writer handed over (or what a closing connection has
    /// queued), then reads; `Pending` when neither can make progress.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        // Writer: only while the socket is full, or closing; otherwise the shard's writer
        // (`flush.rs`) sends this connection's queue.
        let closing = self.slot.close.get();
        if self.slot.blocked.get() || closing {
            let wrote = self.poll_write_all(cx);
            // What went out may let paused publishers resume (`core/delivery/tx_budget.rs`).
            self.shard.relieve();
            match wrote {
                Poll::Ready(Ok(())) => self.slot.blocked.set(false),
                Poll::Ready(Err(())) => {
                    return Poll::Ready(if closing { Event::Closed } else { Event::Gone });
                }
                Poll::Pending => self.slot.blocked.set(true),
            }
        }
        if closing {
            if !self.slot.blocked.get() {
                // Everything is written (`poll_write_all` empties the pending bytes and
                // the core's queue). A transport ends its own way first: the WebSocket
                // close frame and TLS close_notify go out before the FIN.
                if self.slot.transport.as_ref().is_some_and(|t| t.borrow_mut().finish()) {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                return Poll::Ready(Event::Closed);
            }
            let timer = self.close_timer.get_or_insert_with(|| Timer::new(CLOSE_WRITE_TIMEOUT));
            if Pin::new(timer).poll(cx).is_ready() {
                return Poll::Ready(Event::Closed);
            }
            self.slot.set_waker(cx.waker());
            return Poll::Pending;
        }
        // Reader (also while the socket is too full to take more: keep reading meanwhile).
        self.slot.set_waker(cx.waker());
        if self.publish_held() {
            self.shard.park(&self.slot);
            return Poll::Pending;
        }
        let slot = self.slot.clone();
        let transport = slot.transport.as_deref();
        let read = if self.slot.poke.replace(false) {
            // The shard's writer asks for a read between its batches: a direct `recv`,
            // since glommio's readiness poll is only reaped when the reactor runs.
            match read_direct(&self.shard, self.slot.fd(), transport, &mut self.buf) {
                Some(r) => Poll::Ready(r),
                None => {
                    let misses = self.slot.poke_misses.get() + 1;
                    self.slot.poke_misses.set(misses);
                    if misses >= POKE_MISSES_MAX {
                        self.slot.hot.set(false);
                    }
                    // Through glommio as well, so its readiness poll is (re)armed.
                    poll_read_into(cx, &self.shard, &mut self.stream, transport, &mut self.buf)
                }
            }
        } else {
            poll_read_into(cx, &self.shard, &mut self.stream, transport, &mut self.buf)
        };
        if let Some(t) = transport {
            if !t.borrow().out_is_empty() {
                // A pong or close frame to send: the shard's writer sends it.
                self.shard.flush.push(&self.slot);
            }
        }
        match read {
            Poll::Ready(Err(e)) => match transport_closing(e) {
                Some(closing) => Poll::Ready(Event::Refused(closing)),
                None => Poll::Ready(Event::Gone),
            },
            Poll::Ready(Ok(0)) => Poll::Ready(Event::Gone),
            Poll::Ready(Ok(_)) => {
                self.slot.active.set(true);
                self.slot.poke_misses.set(0);
                self.shard.flush.mark_hot(&self.slot);
                Poll::Ready(Event::Read)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory per idle connection is a target (≤ 1 KB, issue 4): these are the io layer's
    /// per-connection structs. A failure here means a struct grew; if that is deliberate,
    /// raise the bound and record why in the perf notes (`perf/notes/2026-11-23-fanout-2.md`
    /// has the breakdown).
    #[test]
    fn per_connection_io_structs_stay_small() {
        // The glommio stream alone is 120 bytes of it.
        assert!(std::mem::size_of::<Driver>() <= 184, "Driver: {}", std::mem::size_of::<Driver>());
        assert!(
            // +8 bytes: the boxed transport state (`None` for plain TCP).
            std::mem::size_of::<ConnSlot>() <= 72,
            "ConnSlot: {}",
            std::mem::size_of::<ConnSlot>()
        );
    }
}
