//! One bridge's connection pair: a persistent MQTT 5.0 session at this broker (over
//! loopback, to a plain `mqtt://` listener) and a session at the remote broker, with packets
//! relayed between them.
//!
//! **Packet ids pass through unchanged.** A QoS 1/2 PUBLISH the local broker sends the bridge
//! (id *p* in the local session's server-to-client space) goes to the remote broker with the
//! same id *p* (the remote session's client-to-server space), and every acknowledgement goes
//! back the way it came with the same id; the same holds in the other direction. So the
//! bridge keeps no delivery state of its own:
//! - a message is acknowledged to the local publisher once this broker's log has it (the
//!   bridge's local session is a persistent session like any other), and it leaves the
//!   bridge's queue only when the *remote* broker has acknowledged it (its PUBACK, or PUBCOMP
//!   for QoS 2, is what the bridge passes on);
//! - after a lost link or a crash, the local broker re-sends what is unacknowledged with DUP
//!   set (or PUBREL where PUBREC was seen), in order, and the bridge forwards it with the same
//!   id, so a remote broker that keeps its session discards a QoS 2 duplicate by its id
//!   ([MQTT-4.3.3-10]): exactly once across the bridge.
//!
//! The bridge's own SUBSCRIBEs use ids from the top of the range (65535 down), where a
//! broker's own PUBLISH ids are least likely to be in flight.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shardmq_codec::{
    decode, encode, ByteStr, Connect, Limits, Packet, PacketId, Properties, ProtocolVersion,
    PubResp, Publish, QoS, ReasonCode, RetainHandling, Subscribe, SubscriptionOptions,
};

use super::config::BridgeConfig;
use crate::core::shard::BridgeCounters;

/// How long connecting (TCP and CONNACK) to either broker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest packet the bridge accepts from either broker.
const PACKET_SIZE_MAX_BYTES: u32 = 16 * 1024 * 1024;
/// Bytes read at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Which broker a socket leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Local,
    Remote,
}

/// One side's connection: the socket (written under a lock by whichever reader relays to
/// it), its protocol version and when it last sent or received.
#[derive(Debug)]
struct End {
    side: Side,
    version: ProtocolVersion,
    write: Mutex<TcpStream>,
    last_write: Mutex<Instant>,
    last_read: Mutex<Instant>,
}

impl End {
    fn send(&self, p: &Packet) -> io::Result<()> {
        let mut buf = BytesMut::new();
        encode(p, self.version, &mut buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        self.write.lock().expect("bridge writer").write_all(&buf)?;
        *self.last_write.lock().expect("bridge clock") = Instant::now();
        Ok(())
    }

    /// Sends PINGREQ when nothing was written for half the keep alive; fails when nothing
    /// was read for one and a half.
    fn keep_alive(&self, keep_alive: Duration) -> io::Result<()> {
        let now = Instant::now();
        let read = *self.last_read.lock().expect("bridge clock");
        if now.duration_since(read) > keep_alive + keep_alive / 2 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{:?} broker silent for 1.5 x keep alive", self.side),
            ));
        }
        let wrote = *self.last_write.lock().expect("bridge clock");
        if now.duration_since(wrote) >= keep_alive / 2 {
            self.send(&Packet::PingReq)?;
        }
        Ok(())
    }
}

/// What [`Link::connect`] returns: the link, both sockets, and the bytes each side sent
/// after its CONNACK.
pub(super) struct Connected {
    pub(super) link: Link,
    pub(super) local: TcpStream,
    pub(super) remote: TcpStream,
    pub(super) local_buf: BytesMut,
    pub(super) remote_buf: BytesMut,
}

/// A connected pair, relaying until one side fails or `stop` is raised.
pub(super) struct Link {
    cfg: Arc<BridgeConfig>,
    local: Arc<End>,
    remote: Arc<End>,
    counters: Arc<BridgeCounters>,
    /// QoS 2 PUBLISHes no rule forwarded (answered by the bridge itself), by side of origin.
    unrouted: Mutex<(Vec<u16>, Vec<u16>)>,
}

/// Opens TCP to `addr` and completes CONNECT/CONNACK.
fn open(
    addr: &str,
    connect: &Connect,
    bridge_bit: bool,
) -> Result<(TcpStream, BytesMut, shardmq_codec::ConnAck), String> {
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut s =
        TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut buf = BytesMut::new();
    encode(&Packet::Connect(Box::new(connect.clone())), connect.protocol, &mut buf)
        .map_err(|e| e.to_string())?;
    if bridge_bit {
        // 3.1.1 with Mosquitto's `try_private`: protocol level | 0x80 announces a bridge.
        // The level follows the fixed header and the protocol name (00 04 'M' 'Q' 'T' 'T').
        let len_bytes = buf[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
        buf[1 + len_bytes + 6] |= 0x80;
    }
    s.write_all(&buf).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(CONNECT_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut rbuf = BytesMut::new();
    let limits = Limits { packet_size_max_bytes: PACKET_SIZE_MAX_BYTES };
    loop {
        match decode(&mut rbuf, &limits, connect.protocol) {
            Ok(Some(Packet::ConnAck(ack))) => {
                if ack.reason != ReasonCode::SUCCESS {
                    return Err(format!("{addr}: CONNACK refused: {:?}", ack.reason));
                }
                return Ok((s, rbuf, ack));
            }
            Ok(Some(other)) => {
                return Err(format!("{addr}: {:?} before CONNACK", other.packet_type()))
            }
            Ok(None) => {}
            Err(e) => return Err(format!("{addr}: {e}")),
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("{addr}: closed before CONNACK")),
            Ok(n) => rbuf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("{addr}: waiting for CONNACK: {e}")),
        }
    }
}

impl Link {
    /// Connects to the remote broker at `addr`, then to this broker at `local_addr`, and
    /// subscribes on both sides.
    pub(super) fn connect(
        cfg: Arc<BridgeConfig>,
        local_addr: SocketAddr,
        addr: &str,
        counters: Arc<BridgeCounters>,
        sockets: &Mutex<Vec<TcpStream>>,
    ) -> Result<Connected, String> {
        let v5 = cfg.protocol == ProtocolVersion::V5;
        let mut props = Properties::default();
        if v5 {
            props.session_expiry_interval_secs = Some(cfg.session_expiry_secs);
            props.receive_maximum = Some(cfg.inflight_max);
        }
        let remote_connect = Connect {
            protocol: cfg.protocol,
            clean_start: cfg.clean_start,
            keep_alive_secs: cfg.keepalive_secs,
            client_id: ByteStr::from(cfg.client_id.as_str()),
            will: None,
            username: cfg.username.as_deref().map(ByteStr::from),
            password: cfg.password.as_ref().map(|p| Bytes::from(p.clone().into_bytes())),
            properties: props,
        };
        let bridge_bit = !v5 && cfg.try_private;
        let (remote, remote_buf, ack) = open(addr, &remote_connect, bridge_bit)?;
        // Never more unacknowledged messages into the remote broker than it takes.
        let out_inflight = ack
            .properties
            .as_ref()
            .and_then(|p| p.receive_maximum)
            .map_or(cfg.inflight_max, |rm| rm.min(cfg.inflight_max));

        let local_connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start: false,
            keep_alive_secs: cfg.keepalive_secs,
            client_id: ByteStr::from(cfg.local_client_id.as_str()),
            will: None,
            username: cfg.local_username.as_deref().map(ByteStr::from),
            password: cfg.local_password.as_ref().map(|p| Bytes::from(p.clone().into_bytes())),
            properties: Properties {
                // The broker caps it at its session_expiry_max_secs.
                session_expiry_interval_secs: Some(u32::MAX),
                receive_maximum: Some(out_inflight),
                ..Properties::default()
            },
        };
        let local_addr = local_addr.to_string();
        let (local, local_buf, _) = open(&local_addr, &local_connect, false)?;
        for s in [&remote, &local] {
            if let Ok(c) = s.try_clone() {
                sockets.lock().expect("bridge sockets").push(c);
            }
        }
        let end = |side, version, s: &TcpStream| -> Result<Arc<End>, String> {
            let now = Instant::now();
            Ok(Arc::new(End {
                side,
                version,
                write: Mutex::new(s.try_clone().map_err(|e| e.to_string())?),
                last_write: Mutex::new(now),
                last_read: Mutex::new(now),
            }))
        };
        let link = Link {
            local: end(Side::Local, ProtocolVersion::V5, &local)?,
            remote: end(Side::Remote, cfg.protocol, &remote)?,
            cfg,
            counters,
            unrouted: Mutex::new((Vec::new(), Vec::new())),
        };
        link.subscribe().map_err(|e| format!("subscribing: {e}"))?;
        Ok(Connected { link, local, remote, local_buf, remote_buf })
    }

    /// SUBSCRIBE locally to the outgoing rules' filters and remotely to the incoming ones.
    /// No Local keeps what the bridge publishes on one side from coming back to it there;
    /// Retain As Published keeps retain flags as the publisher set them; retained messages
    /// are sent only for a new subscription (not again at every reconnect).
    fn subscribe(&self) -> io::Result<()> {
        let opts = |qos| SubscriptionOptions {
            qos,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::SendIfNew,
        };
        let local: Vec<(ByteStr, SubscriptionOptions)> = self
            .cfg
            .topics
            .iter()
            .filter(|r| r.direction.outgoing())
            .map(|r| (ByteStr::from(r.local_filter().as_str()), opts(r.qos)))
            .collect();
        let remote: Vec<(ByteStr, SubscriptionOptions)> = self
            .cfg
            .topics
            .iter()
            .filter(|r| r.direction.incoming())
            .map(|r| (ByteStr::from(r.remote_filter().as_str()), opts(r.qos)))
            .collect();
        for (end, filters) in [(&self.local, local), (&self.remote, remote)] {
            if filters.is_empty() {
                continue;
            }
            let id = PacketId::new(u16::MAX).expect("non-zero");
            end.send(&Packet::Subscribe(Subscribe { packet_id: id, filters, properties: None }))?;
        }
        Ok(())
    }

    /// Relays until either side closes or fails, or `stop` is raised. `local_buf` and
    /// `remote_buf` hold bytes read after each CONNACK.
    pub(super) fn run(
        self: Arc<Self>,
        local: TcpStream,
        remote: TcpStream,
        local_buf: BytesMut,
        remote_buf: BytesMut,
        stop: &AtomicBool,
    ) -> String {
        self.counters.connected.store(1, Ordering::Relaxed);
        let other = {
            let link = self.clone();
            let remote2 = remote.try_clone();
            std::thread::Builder::new().name(format!("bridge-{}-in", self.cfg.name)).spawn(
                move || match remote2 {
                    Ok(r) => link.read_loop(Side::Remote, r, remote_buf, stop_never()),
                    Err(e) => e.to_string(),
                },
            )
        };
        let why = self.read_loop(Side::Local, local.try_clone().expect("clone"), local_buf, stop);
        // Either side ending ends both.
        let _ = local.shutdown(std::net::Shutdown::Both);
        let _ = remote.shutdown(std::net::Shutdown::Both);
        let why_in = match other {
            Ok(h) => h.join().unwrap_or_else(|_| "remote reader panicked".into()),
            Err(e) => e.to_string(),
        };
        self.counters.connected.store(0, Ordering::Relaxed);
        if stop.load(Ordering::Relaxed) {
            "stopped".into()
        } else if why.contains("shut down") || why.contains("closed") {
            why_in
        } else {
            why
        }
    }

    /// Reads packets from `side` and relays them until the socket ends.
    fn read_loop(
        &self,
        side: Side,
        mut s: TcpStream,
        mut buf: BytesMut,
        stop: &AtomicBool,
    ) -> String {
        let keep_alive = Duration::from_secs(u64::from(self.cfg.keepalive_secs));
        let _ = s.set_read_timeout(Some((keep_alive / 4).max(Duration::from_millis(200))));
        let version = match side {
            Side::Local => ProtocolVersion::V5,
            Side::Remote => self.cfg.protocol,
        };
        let limits = Limits { packet_size_max_bytes: PACKET_SIZE_MAX_BYTES };
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        let mine = match side {
            Side::Local => &self.local,
            Side::Remote => &self.remote,
        };
        loop {
            loop {
                match decode(&mut buf, &limits, version) {
                    Ok(Some(p)) => {
                        if let Err(e) = self.relay(side, p) {
                            return e;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return format!("{side:?} broker sent a bad packet: {e}"),
                }
            }
            if stop.load(Ordering::Relaxed) {
                return "stopped".into();
            }
            for end in [&self.local, &self.remote] {
                if let Err(e) = end.keep_alive(keep_alive) {
                    return e.to_string();
                }
            }
            match s.read(&mut chunk) {
                Ok(0) => return format!("{side:?} broker closed the connection"),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    *mine.last_read.lock().expect("bridge clock") = Instant::now();
                }
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) => return format!("{side:?} broker: {e}"),
            }
        }
    }

    /// Handles one packet from `from`.
    fn relay(&self, from: Side, p: Packet) -> Result<(), String> {
        let (src, dst) = match from {
            Side::Local => (&self.local, &self.remote),
            Side::Remote => (&self.remote, &self.local),
        };
        let io = |r: io::Result<()>| r.map_err(|e| format!("{:?} broker: {e}", dst.side));
        match p {
            Packet::Publish(publish) => {
                let rule_topic = self.cfg.topics.iter().find_map(|r| match from {
                    Side::Local => r.to_remote(publish.topic.as_str()),
                    Side::Remote => r.to_local(publish.topic.as_str()),
                });
                let Some(topic) = rule_topic else {
                    // Matched a filter but no rule maps it (overlapping prefixes): answer it
                    // here so the sender's flow completes.
                    return self.answer_unrouted(from, &publish).map_err(|e| e.to_string());
                };
                let properties = (dst.version == ProtocolVersion::V5)
                    .then(|| {
                        publish.properties.map(|mut p| {
                            p.topic_alias = None;
                            p.subscription_identifiers.clear();
                            p
                        })
                    })
                    .flatten();
                let fwd = Publish {
                    dup: publish.dup,
                    qos: publish.qos,
                    retain: publish.retain,
                    topic: ByteStr::from(topic.as_str()),
                    packet_id: publish.packet_id,
                    payload: publish.payload,
                    properties,
                };
                io(dst.send(&Packet::Publish(fwd)))?;
                let n = match from {
                    Side::Local => &self.counters.forwarded_out,
                    Side::Remote => &self.counters.forwarded_in,
                };
                n.fetch_add(1, Ordering::Relaxed);
            }
            Packet::PubAck(r) => io(dst.send(&Packet::PubAck(ack(r, dst.version))))?,
            Packet::PubRec(r) => io(dst.send(&Packet::PubRec(ack(r, dst.version))))?,
            Packet::PubRel(r) => {
                if self.take_unrouted(from, r.packet_id.get()) {
                    let done = PubResp {
                        packet_id: r.packet_id,
                        reason: ReasonCode::SUCCESS,
                        properties: None,
                    };
                    io(src.send(&Packet::PubComp(done)))?;
                } else {
                    io(dst.send(&Packet::PubRel(ack(r, dst.version))))?;
                }
            }
            Packet::PubComp(r) => io(dst.send(&Packet::PubComp(ack(r, dst.version))))?,
            Packet::SubAck(a) => {
                for code in a.reasons.iter().filter(|c| c.is_error()) {
                    tracing::warn!(
                        "bridge {}: the {:?} broker refused a subscription: {code:?}",
                        self.cfg.name,
                        from
                    );
                }
            }
            Packet::PingResp | Packet::UnsubAck(_) => {}
            Packet::PingReq => src.send(&Packet::PingResp).map_err(|e| e.to_string())?,
            Packet::Disconnect(d) => {
                return Err(format!("{from:?} broker sent DISCONNECT {:?}", d.reason));
            }
            other => {
                return Err(format!("{from:?} broker sent {:?}", other.packet_type()));
            }
        }
        Ok(())
    }

    /// Acknowledges a PUBLISH from `from` that no rule forwards.
    fn answer_unrouted(&self, from: Side, p: &Publish) -> io::Result<()> {
        let src = match from {
            Side::Local => &self.local,
            Side::Remote => &self.remote,
        };
        let Some(id) = p.packet_id else { return Ok(()) };
        let resp = PubResp { packet_id: id, reason: ReasonCode::SUCCESS, properties: None };
        match p.qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => src.send(&Packet::PubAck(resp)),
            QoS::ExactlyOnce => {
                let mut u = self.unrouted.lock().expect("bridge unrouted");
                let list = match from {
                    Side::Local => &mut u.0,
                    Side::Remote => &mut u.1,
                };
                if !list.contains(&id.get()) {
                    list.push(id.get());
                }
                drop(u);
                src.send(&Packet::PubRec(resp))
            }
        }
    }

    fn take_unrouted(&self, from: Side, id: u16) -> bool {
        let mut u = self.unrouted.lock().expect("bridge unrouted");
        let list = match from {
            Side::Local => &mut u.0,
            Side::Remote => &mut u.1,
        };
        match list.iter().position(|x| *x == id) {
            Some(i) => {
                list.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

/// An acknowledgement passed on: the same id; 3.1.1 carries no reason code or properties.
fn ack(r: PubResp, to: ProtocolVersion) -> PubResp {
    if to == ProtocolVersion::V5 {
        PubResp { properties: None, ..r }
    } else {
        PubResp { packet_id: r.packet_id, reason: ReasonCode::SUCCESS, properties: None }
    }
}

/// The remote reader stops when its socket is shut down by the local reader (or fails).
fn stop_never() -> &'static AtomicBool {
    static NEVER: AtomicBool = AtomicBool::new(false);
    &NEVER
}
