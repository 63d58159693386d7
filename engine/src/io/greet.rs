//! The greeting task: a new connection's first moments, before the [`Driver`](super::conn)
//! takes over. It runs the transport handshakes (TLS, the WebSocket upgrade; within the
//! connect timeout, holding one of the shard's `handshakes_per_shard_max` places), reads until
//! the first packet decodes, and then either hands the socket (with its transport state) to
//! the session's home shard or opens the connection in the core here and starts the driver.
//! Refusals at the transport level are answered (alert, HTTP error, close frame), logged once
//! and counted in `$SYS`.

use std::any::Any;
use std::cell::RefCell;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use shardmq_codec::{decode, encode, ConnAck, DecodeError, Packet, ReasonCode};

use crate::core::mesh::MeshMsg;
use crate::core::shard::ShardCore;
use crate::core::{ConnInfo, Transport};

use super::conn::{
    poll_read_into, spawn_driver, take_in, transport_closing, CLOSE_WRITE_TIMEOUT,
    VERSION_BEFORE_CONNECT,
};
use super::listen::Listener;
use super::shard::{PendingConn, ShardIo};
use super::transport::{proxy, Closing, Stage, TransportState};

/// Starts serving a socket accepted by this shard on `listener`.
pub(crate) fn spawn_accepted(shard: &Rc<ShardIo>, stream: TcpStream, listener: &Listener) {
    let _ = stream.set_nodelay(true);
    let info = listener.conn_info(stream.peer_addr().ok());
    let transport = if listener.transport == Transport::Tcp {
        None
    } else {
        if shard.handshakes.get() >= shard.handshakes_max() {
            // A handshake flood: close at once rather than let handshakes pile up.
            shard.count(|c| &c.handshakes_refused_busy);
            tracing::debug!(
                "{}: {} handshakes in progress, closing {:?}",
                shard.id,
                shard.handshakes.get(),
                info.remote
            );
            return;
        }
        let tls = shard.tls_configs.borrow().get(usize::from(listener.index)).cloned().flatten();
        let frame_max = u64::from(shard.codec_limits.packet_size_max_bytes);
        match TransportState::new(tls, listener.ws.clone(), frame_max) {
            Ok(t) => Some(Box::new(RefCell::new(t))),
            Err(e) => {
                tracing::warn!(
                    "{}: cannot start a {} connection: {e}",
                    shard.id,
                    listener.transport
                );
                return;
            }
        }
    };
    let shard = shard.clone();
    let proxy = listener.proxy_protocol;
    glommio::spawn_local(greet(shard, stream, BytesMut::new(), info, transport, proxy, false))
        .detach();
}

/// Starts serving a socket another shard handed over with the bytes it read (after its
/// transport layers) and its transport state.
pub(crate) fn spawn_adopted(
    shard: &Rc<ShardIo>,
    fd: OwnedFd,
    read_buf: Bytes,
    info: ConnInfo,
    transport: Option<Box<dyn Any + Send>>,
) {
    // SAFETY: `fd` is an open TCP socket we own (the Adopt message's duplicate); ownership
    // moves to the stream here.
    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    let transport = match transport.map(|t| t.downcast::<RefCell<TransportState>>()) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => {
            debug_assert!(false, "an Adopt message with a foreign transport state");
            return;
        }
    };
    let shard = shard.clone();
    let buf = BytesMut::from(&read_buf[..]);
    glommio::spawn_local(greet(shard, stream, buf, info, transport, false, true)).detach();
}

/// Holds one of the shard's `handshakes_per_shard_max` places while a connection is in a
/// TLS handshake or WebSocket upgrade.
struct HandshakePlace(Rc<ShardIo>);

impl HandshakePlace {
    fn take(shard: &Rc<ShardIo>) -> HandshakePlace {
        shard.handshakes.set(shard.handshakes.get() + 1);
        HandshakePlace(shard.clone())
    }
}

impl Drop for HandshakePlace {
    fn drop(&mut self) {
        self.0.handshakes.set(self.0.handshakes.get() - 1);
    }
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

/// The greeting task: runs the transport handshakes, waits for the first packet, then hands
/// off or starts the [`Driver`].
async fn greet(
    shard: Rc<ShardIo>,
    mut stream: TcpStream,
    buf: BytesMut,
    mut info: ConnInfo,
    transport: Option<Box<RefCell<TransportState>>>,
    proxy: bool,
    adopted: bool,
) {
    let first = first_packet(&shard, &mut stream, buf, transport.as_deref(), &mut info, proxy);
    let first = first.await;
    let Some(first) = first else { return };
    if let Some(t) = &transport {
        info.cert_subject_cn = t.borrow().peer_cn();
    }
    info.bridge = shardmq_codec::peek_connect_bridge(&first.read);

    // A CONNECT for a session homed on another shard: move the socket there.
    if !adopted && shard.shard_count() > 1 {
        if let Ok(Packet::Connect(c)) = &first.packet {
            let home = ShardCore::home_shard(c.client_id.as_bytes(), shard.shard_count());
            if !c.client_id.is_empty() && home != shard.id {
                // SAFETY: `stream` owns this open descriptor and outlives the borrow.
                let ours = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
                // A duplicate owned by the message: however the message is dropped, it closes.
                match ours.try_clone_to_owned() {
                    Ok(fd) => {
                        drop(stream);
                        let read_buf = first.read.freeze();
                        // The transport state (a TLS session, WebSocket framing) moves with
                        // the socket; everything it owed the socket was sent already.
                        let transport = transport.map(|t| t as Box<dyn Any + Send>);
                        let msg = MeshMsg::Adopt { fd, read_buf, info, transport };
                        shard.send_mesh(home, msg);
                        return;
                    }
                    Err(err) => {
                        tracing::warn!("dup failed ({err}); serving the connection on {}", shard.id)
                    }
                }
            }
        }
    }

    let Some(conn) = shard.with_core(|core, now| core.open_connection(info, now)) else {
        refuse_busy(stream, &first.packet, transport.as_deref()).await;
        return;
    };
    let slot = shard.register(conn, stream.as_raw_fd(), transport);
    shard.with_core(|core, now| match first.packet {
        Ok(p) => core.handle_packet(conn, p, now),
        Err(e) => core.handle_decode_error(conn, e, now),
    });
    spawn_driver(&shard, slot, stream, first.rest);
}

/// The shard already holds `connections_per_shard_max` connections: a CONNECT is answered
/// with CONNACK 0x89 Server busy (3.1/3.1.1: return code 3, Server unavailable) and the
/// socket closed (5.0 §3.2.2.2, [MQTT-3.2.2-7]); anything else is just closed.
async fn refuse_busy(
    mut stream: TcpStream,
    first: &Result<Packet, DecodeError>,
    transport: Option<&RefCell<TransportState>>,
) {
    let Ok(Packet::Connect(c)) = first else { return };
    let ack = ConnAck { session_present: false, reason: ReasonCode::SERVER_BUSY, properties: None };
    let mut out = BytesMut::new();
    if encode(&Packet::ConnAck(ack), c.protocol, &mut out).is_err() {
        return;
    }
    let wire = match transport {
        Some(t) => {
            let mut t = t.borrow_mut();
            t.wrap(&[std::io::IoSlice::new(&out)]);
            let wire = t.out().to_vec();
            t.consume(wire.len());
            wire
        }
        None => out.to_vec(),
    };
    let write = async {
        let _ = futures_lite::AsyncWriteExt::write_all(&mut stream, &wire).await;
        let _ = futures_lite::AsyncWriteExt::flush(&mut stream).await;
    };
    let _ = glommio::timer::timeout(CLOSE_WRITE_TIMEOUT, async {
        write.await;
        Ok(())
    })
    .await;
}

/// Reads until the first packet decodes, the socket closes, or the connect timeout passes
/// (then the connection is closed silently). With a transport, its handshakes happen here
/// first (within the same timeout), holding one of the shard's handshake places.
async fn first_packet(
    shard: &Rc<ShardIo>,
    stream: &mut TcpStream,
    mut buf: BytesMut,
    transport: Option<&RefCell<TransportState>>,
    info: &mut ConnInfo,
    proxy: bool,
) -> Option<First> {
    let pending = Rc::new(PendingConn::default());
    shard.watch_connect_deadline(Instant::now() + shard.connect_timeout, &pending);
    // Bytes read with the PROXY header that belong to what follows it.
    let mut early = Vec::new();
    if proxy {
        match read_proxy_header(shard, stream, &pending).await {
            Ok((source, rest)) => {
                if source.is_some() {
                    info.remote = source;
                }
                early = rest;
            }
            Err(why) => {
                tracing::warn!("{}: PROXY header from {}: {why}", shard.id, remote(info));
                return None;
            }
        }
    }
    let info: &ConnInfo = info;
    let mut place =
        transport.filter(|t| t.borrow().handshaking()).map(|_| HandshakePlace::take(shard));
    let mut progress = transport.map(|t| Progress::of(&t.borrow())).unwrap_or_default();
    loop {
        if !buf.is_empty() {
            let mut rest = buf.clone();
            match decode(&mut rest, &shard.connect_limits, VERSION_BEFORE_CONNECT) {
                Ok(Some(p)) => return Some(First { packet: Ok(p), read: buf, rest }),
                Ok(None) => {}
                Err(e) => return Some(First { packet: Err(e), read: buf, rest: BytesMut::new() }),
            }
        }
        // What the transport owes the client (handshake messages, the HTTP answer) goes
        // out before more is read.
        if let Some(t) = transport {
            if !send_owed(shard, stream, t, &pending).await {
                progress.count_failure(shard, info, "the client stopped reading");
                return None;
            }
        }
        let read = if early.is_empty() {
            std::future::poll_fn(|cx| {
                if pending.expired.get() || shard.stop.is_fired() {
                    return Poll::Ready(None);
                }
                pending.waker.set(cx.waker());
                poll_read_into(cx, shard, stream, transport, &mut buf).map(Some)
            })
            .await
        } else {
            Some(take_in(transport, &std::mem::take(&mut early), &mut buf))
        };
        match read {
            Some(Ok(n)) if n > 0 => {}
            Some(Err(e)) => {
                if let Some(closing) = transport_closing(e) {
                    progress.count_closing(shard, info, &closing);
                    if let Some(t) = transport {
                        // The alert or HTTP answer, then the close.
                        if send_owed(shard, stream, t, &pending).await {
                            // SAFETY: shutdown(2) on the socket `stream` owns.
                            unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
                        }
                    }
                } else {
                    progress.count_failure(shard, info, "connection error");
                }
                return None;
            }
            // EOF, shutdown, or no first packet in time.
            _ => {
                progress.count_failure(shard, info, "closed or timed out during the handshake");
                return None;
            }
        }
        if let Some(t) = transport {
            progress.advance(shard, &t.borrow());
            if place.is_some() && !t.borrow().handshaking() {
                place = None;
            }
        }
    }
}

/// Which handshakes of a connection's transport are done, to count each once.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    tls_pending: bool,
    ws_pending: bool,
}

impl Progress {
    fn of(t: &TransportState) -> Progress {
        Progress { tls_pending: !t.tls_established(), ws_pending: t.ws_upgrading() }
    }

    /// Counts the handshakes that completed since the last look.
    fn advance(&mut self, shard: &ShardIo, t: &TransportState) {
        if self.tls_pending && t.tls_established() {
            self.tls_pending = false;
            shard.count(|c| &c.tls_handshakes);
        }
        if self.ws_pending && !t.ws_upgrading() {
            self.ws_pending = false;
            shard.count(|c| &c.ws_upgrades);
        }
    }

    /// A handshake in progress was abandoned (timeout, EOF, the client stopped reading):
    /// one log line and its counter.
    fn count_failure(&self, shard: &ShardIo, info: &ConnInfo, why: &str) {
        if self.tls_pending {
            shard.count(|c| &c.tls_handshake_failures);
            tracing::info!("{}: TLS handshake with {} failed: {why}", shard.id, remote(info));
        } else if self.ws_pending {
            shard.count(|c| &c.ws_failures);
            tracing::info!("{}: WebSocket upgrade from {} failed: {why}", shard.id, remote(info));
        }
    }

    /// A transport layer refused the connection: one log line and its counter.
    fn count_closing(&self, shard: &ShardIo, info: &ConnInfo, closing: &Closing) {
        let why = closing.reason.as_deref().unwrap_or("closed by the client");
        match closing.stage {
            Stage::TlsHandshake => {
                shard.count(|c| &c.tls_handshake_failures);
                tracing::warn!("{}: TLS handshake with {} refused: {why}", shard.id, remote(info));
            }
            Stage::Tls => {
                tracing::info!("{}: TLS error from {}: {why}", shard.id, remote(info));
            }
            Stage::WsHandshake => {
                shard.count(|c| &c.ws_failures);
                tracing::info!(
                    "{}: WebSocket upgrade from {} refused: {why}",
                    shard.id,
                    remote(info)
                );
            }
            Stage::Ws => {
                if closing.reason.is_some() {
                    shard.count(|c| &c.ws_failures);
                    tracing::info!("{}: WebSocket from {} closed: {why}", shard.id, remote(info));
                }
            }
        }
    }
}

fn remote(info: &ConnInfo) -> String {
    info.remote.map_or_else(|| "an unknown address".to_owned(), |a| a.to_string())
}

/// Reads until the PROXY protocol header is complete (within the connect deadline): the
/// source address it names (`None`: a LOCAL or UNKNOWN header) and the bytes after it.
async fn read_proxy_header(
    shard: &ShardIo,
    stream: &mut TcpStream,
    pending: &PendingConn,
) -> Result<(Option<std::net::SocketAddr>, Vec<u8>), String> {
    let mut raw = Vec::new();
    loop {
        match proxy::parse(&raw) {
            Ok(Some(h)) => return Ok((h.source, raw.split_off(h.len))),
            Ok(None) => {}
            Err(why) => return Err(why.to_owned()),
        }
        let n = std::future::poll_fn(|cx| {
            if pending.expired.get() || shard.stop.is_fired() {
                return Poll::Ready(None);
            }
            pending.waker.set(cx.waker());
            let mut scratch = shard.scratch.borrow_mut();
            Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]).map(|r| {
                let n = r.ok()?;
                shard.bytes_in.set(shard.bytes_in.get() + n as u64);
                raw.extend_from_slice(&scratch[..n]);
                Some(n)
            })
        })
        .await;
        match n {
            Some(n) if n > 0 => {}
            _ => return Err("closed or timed out before the header was complete".to_owned()),
        }
    }
}

/// Writes everything the transport owes the socket, while the connect deadline has not
/// passed. `false` when it could not.
async fn send_owed(
    shard: &ShardIo,
    stream: &mut TcpStream,
    t: &RefCell<TransportState>,
    pending: &PendingConn,
) -> bool {
    std::future::poll_fn(|cx| loop {
        let mut t = t.borrow_mut();
        if t.out_is_empty() {
            return Poll::Ready(true);
        }
        if pending.expired.get() || shard.stop.is_fired() {
            return Poll::Ready(false);
        }
        pending.waker.set(cx.waker());
        match Pin::new(&mut *stream).poll_write(cx, t.out()) {
            Poll::Ready(Ok(n)) if n > 0 => {
                t.consume(n);
                shard.bytes_out.set(shard.bytes_out.get() + n as u64);
            }
            Poll::Ready(_) => return Poll::Ready(false),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

/// A transport refusal on an established connection (a bad WebSocket frame, a TLS error, a
/// close frame): one log line and its counter, like a refusal during the greeting.
pub(super) fn count_closing(shard: &ShardIo, info: &ConnInfo, closing: &Closing) {
    Progress::default().count_closing(shard, info, closing);
}
