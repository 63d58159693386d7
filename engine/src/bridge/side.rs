//! One side of a bridge (this broker or the remote): its socket, buffers, quota and clocks
//! ([`End`]), and opening it ([`open`]: TCP, TLS when asked, CONNECT/CONNACK). `link.rs`
//! relays between two of them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shardmq_codec::{
    decode, encode, ConnAck, Connect, Limits, Packet, ProtocolVersion, Publish, QoS, ReasonCode,
};

use super::tls::{self, Stream};

/// How long connecting (TCP, TLS and CONNACK) to either broker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that cannot finish in this time (the peer stopped reading) ends the link.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest packet the bridge accepts from either broker.
pub(super) const PACKET_SIZE_MAX_BYTES: u32 = 16 * 1024 * 1024;
/// PUBLISHes the bridge may hold for a side over its quota before it gives up the link.
pub(super) const HELD_MAX: usize = 65_536;

/// Which broker a socket leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Local,
    Remote,
}

/// One side's connection and its bookkeeping.
pub(super) struct End {
    pub(super) side: Side,
    pub(super) version: ProtocolVersion,
    pub(super) stream: Stream,
    /// Bytes read and not yet decoded.
    pub(super) rbuf: BytesMut,
    /// Bytes to write at the end of this round (several packets, one write).
    pub(super) wbuf: BytesMut,
    pub(super) last_write: Instant,
    pub(super) last_read: Instant,
    /// Keep alive on this side (the server's, when its CONNACK sets one [MQTT-3.2.2-21]).
    pub(super) keep_alive: Duration,
    /// Unacknowledged QoS 1/2 PUBLISHes sent to this side, and how many it takes.
    pub(super) inflight: usize,
    pub(super) quota: usize,
    /// PUBLISHes waiting for a slot (or for the SUBACK), in order.
    pub(super) held: std::collections::VecDeque<Publish>,
    /// Our SUBSCRIBE to this side is not answered yet.
    pub(super) awaiting_suback: bool,
    /// Ids whose PUBREL the bridge passed on to this side: their PUBCOMPs go back; any other
    /// PUBCOMP answers the bridge's own release of stale ids and is not passed on.
    pub(super) released: std::collections::HashSet<u16>,
    /// The bridge released every id on this side (see the module docs).
    pub(super) releasing: bool,
}

impl End {
    pub(super) fn queue(&mut self, p: &Packet) -> Result<(), String> {
        encode(p, self.version, &mut self.wbuf).map_err(|e| e.to_string())
    }

    pub(super) fn flush(&mut self) -> Result<(), String> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.stream
            .write_all(&self.wbuf)
            .and_then(|()| self.stream.flush())
            .map_err(|e| format!("{:?} broker: {e}", self.side))?;
        self.wbuf.clear();
        self.last_write = Instant::now();
        Ok(())
    }

    /// Sends `p` now, or holds it while this side's quota is used up, an earlier PUBLISH is
    /// held, or our SUBSCRIBE is unanswered.
    pub(super) fn publish(&mut self, p: Publish) -> Result<(), String> {
        let counts = p.qos != QoS::AtMostOnce;
        if self.awaiting_suback || !self.held.is_empty() || (counts && self.inflight >= self.quota)
        {
            if self.held.len() >= HELD_MAX {
                return Err(format!("{:?} broker: more than {HELD_MAX} messages held", self.side));
            }
            self.held.push_back(p);
            return Ok(());
        }
        if counts {
            self.inflight += 1;
        }
        self.queue(&Packet::Publish(p))
    }

    /// A flow towards this side ended: a slot is free; send what was held.
    pub(super) fn slot_freed(&mut self) -> Result<(), String> {
        self.inflight = self.inflight.saturating_sub(1);
        self.send_held()
    }

    pub(super) fn send_held(&mut self) -> Result<(), String> {
        while !self.awaiting_suback {
            let Some(front) = self.held.front() else { break };
            let counts = front.qos != QoS::AtMostOnce;
            if counts && self.inflight >= self.quota {
                break;
            }
            let p = self.held.pop_front().expect("checked");
            if counts {
                self.inflight += 1;
            }
            self.queue(&Packet::Publish(p))?;
        }
        Ok(())
    }

    /// Queues PINGREQ when nothing was written for half the keep alive; fails when nothing
    /// was read for one and a half.
    pub(super) fn keep_alive(&mut self, now: Instant) -> Result<(), String> {
        let keep_alive = self.keep_alive;
        if now.duration_since(self.last_read) > keep_alive + keep_alive / 2 {
            return Err(format!("{:?} broker silent for 1.5 x keep alive", self.side));
        }
        if now.duration_since(self.last_write) >= keep_alive / 2 && self.wbuf.is_empty() {
            self.queue(&Packet::PingReq)?;
        }
        Ok(())
    }
}

/// Why [`open`] failed.
pub(super) enum OpenError {
    /// The broker answered CONNACK with this reason.
    Refused(ReasonCode),
    /// Anything else.
    Other(String),
}

impl From<String> for OpenError {
    fn from(s: String) -> OpenError {
        OpenError::Other(s)
    }
}

/// Opens `addr` (`HOST:PORT`, or `HOST:PORT/PATH` for WebSocket: TCP, then TLS when `tls`
/// is given, then WebSocket when `websocket`) and completes CONNECT/CONNACK.
pub(super) fn open(
    addr: &str,
    tls: Option<&tls::ClientTls>,
    websocket: bool,
    connect: &Connect,
    bridge_bit: bool,
    sockets: &Mutex<Vec<TcpStream>>,
) -> Result<(Stream, BytesMut, ConnAck), OpenError> {
    let (addr, path) = match addr.find('/') {
        Some(i) => (&addr[..i], &addr[i..]),
        None => (addr, "/mqtt"),
    };
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let tcp =
        TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(CONNECT_TIMEOUT)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(|e| e.to_string())?;
    if let Ok(c) = tcp.try_clone() {
        // The bridge's stop shuts these down, which ends any blocking read or write.
        sockets.lock().expect("bridge sockets").push(c);
    }
    let mut stream = match tls {
        Some(t) => t.connect(host, tcp).map_err(|e| format!("{addr}: TLS: {e}"))?,
        None => Stream::Plain(tcp),
    };
    if websocket {
        let ws = super::ws::WsStream::connect(stream, addr, path, u64::from(PACKET_SIZE_MAX_BYTES))
            .map_err(|e| format!("{addr}: {e}"))?;
        stream = Stream::Ws(Box::new(ws));
    }
    let mut buf = BytesMut::new();
    encode(&Packet::Connect(Box::new(connect.clone())), connect.protocol, &mut buf)
        .map_err(|e| e.to_string())?;
    if bridge_bit {
        // 3.1.1 with Mosquitto's `try_private`: protocol level | 0x80 announces a bridge.
        // The level follows the fixed header and the protocol name (00 04 'M' 'Q' 'T' 'T').
        let len_bytes = buf[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
        buf[1 + len_bytes + 6] |= 0x80;
    }
    stream.write_all(&buf).and_then(|()| stream.flush()).map_err(|e| format!("{addr}: {e}"))?;
    let mut rbuf = BytesMut::new();
    let limits = Limits { packet_size_max_bytes: PACKET_SIZE_MAX_BYTES };
    let mut chunk = vec![0u8; 4096];
    let started = Instant::now();
    // Still within the connect timeout (a socket's read timeout also reads as WouldBlock).
    let waited = |t: Instant| t.elapsed() < CONNECT_TIMEOUT;
    loop {
        match decode(&mut rbuf, &limits, connect.protocol) {
            Ok(Some(Packet::ConnAck(ack))) => {
                if ack.reason != ReasonCode::SUCCESS {
                    return Err(OpenError::Refused(ack.reason));
                }
                return Ok((stream, rbuf, ack));
            }
            Ok(Some(other)) => {
                return Err(format!("{addr}: {:?} before CONNACK", other.packet_type()).into())
            }
            Ok(None) => {}
            Err(e) => return Err(format!("{addr}: {e}").into()),
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("{addr}: closed before CONNACK").into()),
            Ok(n) => rbuf.extend_from_slice(&chunk[..n]),
            // A WebSocket read that gave only a control frame or part of a frame.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && waited(started) => {}
            Err(e) => return Err(format!("{addr}: waiting for CONNACK: {e}").into()),
        }
    }
}
