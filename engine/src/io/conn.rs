//! The connection driver: one task per socket that reads, decodes, calls the core, and writes
//! what the core queued. Reading and writing happen in the same task (one future polls both),
//! so a client that is slow to read never stops us from reading its acknowledgements.
//!
//! Memory per idle connection: the task (this future), a [`ConnSlot`], a map entry, glommio's
//! socket state and the kernel's socket buffers. There is no read buffer while idle: every
//! connection of a shard reads into the shard's scratch buffer and copies what arrived into
//! its own `BytesMut`, which is released whenever it has been fully decoded.

use std::future::Future as _;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use shardmq_codec::{decode, DecodeError, Packet, ProtocolVersion};

use crate::core::mesh::MeshMsg;
use crate::core::shard::{ConnId, ShardCore};

use super::shard::{ConnSlot, ShardIo};

/// How long a closing connection may take to write what is queued before it is dropped.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The version passed to the decoder before CONNECT (CONNECT decodes by its own level).
const VERSION_BEFORE_CONNECT: ProtocolVersion = ProtocolVersion::V3_1_1;

/// Starts the driver for a socket accepted by this shard.
pub(crate) fn spawn_accepted(shard: &Rc<ShardIo>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    spawn(shard, stream, BytesMut::new(), false);
}

/// Starts the driver for a socket another shard handed over with the bytes it read.
pub(crate) fn spawn_adopted(shard: &Rc<ShardIo>, fd: i32, read_buf: Bytes) {
    // SAFETY: `fd` is an open socket descriptor owned by the Adopt message (a dup made by
    // the sending shard, which closed its own copy); ownership moves to the stream here.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    spawn(shard, stream, BytesMut::from(&read_buf[..]), true);
}

fn spawn(shard: &Rc<ShardIo>, stream: TcpStream, buf: BytesMut, adopted: bool) {
    shard.live_conns.set(shard.live_conns.get() + 1);
    let shard = shard.clone();
    glommio::spawn_local(async move {
        drive(&shard, stream, buf, adopted).await;
        shard.live_conns.set(shard.live_conns.get() - 1);
    })
    .detach();
}

/// The first packet of a connection, and the bytes to hand over with it.
struct First {
    /// The decoded packet or why it did not decode.
    packet: Result<Packet, DecodeError>,
    /// Everything read so far, starting with the first packet (for a handoff).
    read: BytesMut,
    /// What follows the first packet.
    rest: BytesMut,
}

async fn drive(shard: &Rc<ShardIo>, mut stream: TcpStream, buf: BytesMut, adopted: bool) {
    // Boxed so that its state (the connect timer, the read) is freed once CONNECT is in,
    // rather than sized into the future every idle connection keeps.
    let Some(first) = Box::pin(first_packet(shard, &mut stream, buf)).await else { return };

    // A CONNECT for a session homed on another shard: move the socket there.
    if !adopted && shard.shard_count() > 1 {
        if let Ok(Packet::Connect(c)) = &first.packet {
            let home = ShardCore::home_shard(c.client_id.as_bytes(), shard.shard_count());
            if !c.client_id.is_empty() && home != shard.id {
                // SAFETY: dup of a descriptor we own; the copy is owned by the Adopt message.
                let fd = unsafe { libc::dup(stream.as_raw_fd()) };
                if fd >= 0 {
                    drop(stream);
                    shard.send_mesh(home, MeshMsg::Adopt { fd, read_buf: first.read.freeze() });
                    return;
                }
                tracing::warn!(
                    "dup failed ({}); serving the connection here",
                    io::Error::last_os_error()
                );
            }
        }
    }

    let opened = shard.with_core(|core, now| {
        let conn = core.open_connection(now)?;
        Some(conn)
    });
    let Some(conn) = opened else { return };
    let slot = shard.register(conn);
    shard.with_core(|core, now| match first.packet {
        Ok(p) => core.handle_packet(conn, p, now),
        Err(e) => core.handle_decode_error(conn, e, now),
    });
    Driver { shard, conn, slot: &slot, stream, buf: first.rest, out: Vec::new(), out_pos: 0 }
        .run()
        .await;
    shard.unregister(conn);
}

/// Reads until the first packet decodes, the socket closes, or the connect timeout passes.
async fn first_packet(shard: &ShardIo, stream: &mut TcpStream, mut buf: BytesMut) -> Option<First> {
    let deadline = Instant::now() + shard.connect_timeout;
    loop {
        if !buf.is_empty() {
            let mut rest = buf.clone();
            match decode(&mut rest, &shard.codec_limits, VERSION_BEFORE_CONNECT) {
                Ok(Some(p)) => return Some(First { packet: Ok(p), read: buf, rest }),
                Ok(None) => {}
                Err(e) => return Some(First { packet: Err(e), read: buf, rest: BytesMut::new() }),
            }
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        let read = futures_lite::future::or(
            async { Some(read_into(shard, stream, &mut buf).await) },
            async {
                Timer::new(left).await;
                None
            },
        )
        .await;
        match read {
            Some(Ok(n)) if n > 0 => {}
            // EOF, error, or no CONNECT in time [MQTT-3.1.4-1 is the server's right to close]:
            // close silently.
            _ => return None,
        }
    }
}

/// Reads once into the shard's scratch buffer and appends what arrived to `buf`.
async fn read_into(
    shard: &ShardIo,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_into(cx, shard, stream, buf)).await
}

fn poll_read_into(
    cx: &mut Context<'_>,
    shard: &ShardIo,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut scratch = shard.scratch.borrow_mut();
    match Pin::new(stream).poll_read(cx, &mut scratch[..]) {
        Poll::Ready(Ok(n)) => {
            buf.extend_from_slice(&scratch[..n]);
            Poll::Ready(Ok(n))
        }
        other => other,
    }
}

/// What woke the connection task.
enum Event {
    /// Bytes arrived.
    Read,
    /// The peer closed or the socket failed.
    Gone,
    /// A close the core (or shutdown) asked for is done: everything was written, or the
    /// write timed out.
    Closed,
}

struct Driver<'a> {
    shard: &'a Rc<ShardIo>,
    conn: ConnId,
    slot: &'a Rc<ConnSlot>,
    stream: TcpStream,
    /// Bytes read and not yet decoded.
    buf: BytesMut,
    /// Chunks being written, and how far.
    out: Vec<Bytes>,
    out_pos: usize,
}

impl Driver<'_> {
    async fn run(mut self) {
        let mut close_timer: Option<Timer> = None;
        loop {
            self.decode_all();
            let ev = std::future::poll_fn(|cx| self.poll_event(cx, &mut close_timer)).await;
            match ev {
                Event::Read => {
                    // Let other connections run if this one keeps the shard busy.
                    glommio::yield_if_needed().await;
                }
                Event::Gone => {
                    if !self.slot.close.get() {
                        self.shard.with_core(|core, now| core.handle_closed(self.conn, now));
                    }
                    return;
                }
                Event::Closed => {
                    let _ = self.stream.shutdown(std::net::Shutdown::Write).await;
                    return;
                }
            }
        }
    }

    /// Decodes and handles every whole packet in the buffer.
    fn decode_all(&mut self) {
        while !self.slot.close.get() && !self.buf.is_empty() {
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

    /// Writes what is queued, then reads; `Pending` when neither can make progress.
    fn poll_event(&mut self, cx: &mut Context<'_>, close_timer: &mut Option<Timer>) -> Poll<Event> {
        // Writer.
        loop {
            if self.out_pos == self.out.len() {
                self.out.clear();
                self.out_pos = 0;
                self.out.append(&mut self.slot.pending.borrow_mut());
                if self.out.is_empty() && self.slot.flush.replace(false) {
                    if let Some(tx) = self.shard.core.borrow_mut().tx(self.conn) {
                        tx.take_all(&mut self.out);
                    }
                }
                if self.out.is_empty() {
                    break;
                }
            }
            let chunk = &mut self.out[self.out_pos];
            match Pin::new(&mut self.stream).poll_write(cx, chunk) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    if n == chunk.len() {
                        self.out[self.out_pos] = Bytes::new();
                        self.out_pos += 1;
                    } else {
                        chunk.advance(n);
                    }
                }
                Poll::Ready(_) => {
                    return Poll::Ready(if self.slot.close.get() {
                        Event::Closed
                    } else {
                        Event::Gone
                    })
                }
                Poll::Pending => break,
            }
        }
        let idle_out = self.out_pos == self.out.len();
        if self.slot.close.get() {
            if idle_out && !self.slot.flush.get() && self.slot.pending.borrow().is_empty() {
                return Poll::Ready(Event::Closed);
            }
            let timer = close_timer.get_or_insert_with(|| Timer::new(CLOSE_WRITE_TIMEOUT));
            if Pin::new(timer).poll(cx).is_ready() {
                return Poll::Ready(Event::Closed);
            }
            self.slot.set_waker(cx.waker());
            return Poll::Pending;
        }
        // Reader (also while the socket is too full to take more: keep reading meanwhile).
        self.slot.set_waker(cx.waker());
        if self.shard.core.borrow().reading_paused() {
            self.shard.park(self.slot);
            return Poll::Pending;
        }
        match poll_read_into(cx, self.shard, &mut self.stream, &mut self.buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Event::Gone),
            Poll::Ready(Ok(_)) => Poll::Ready(Event::Read),
            Poll::Pending => Poll::Pending,
        }
    }
}
