//! One bridge's connection pair: a persistent MQTT 5.0 session at this broker (over
//! loopback, to a plain `mqtt://` listener) and a session at the remote broker (TCP or TLS,
//! either one optionally under WebSocket),
//! with packets relayed between them by one thread that polls both sockets.
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
//!   ([MQTT-4.3.3-10]): exactly once across the bridge (unless the remote's Maximum QoS is
//!   below 2: then at least once, or at most once for 0).
//!
//! Three rules keep the pass-through sound:
//! - **Quotas.** Each side gets no more unacknowledged QoS 1/2 PUBLISHes than its CONNACK's
//!   Receive Maximum (a 3.1.1 remote: `inflight_max`); beyond it the bridge holds them, in
//!   order, until an acknowledgement frees a slot (bounded: `side::HELD_MAX`).
//! - **The SUBSCRIBE id.** The bridge's own SUBSCRIBE uses id 65535; until its SUBACK arrives
//!   nothing new is sent to that side, so no passed-through PUBLISH can carry the same id
//!   [MQTT-2.2.1-3].
//! - **A side that lost its session.** When one side answers CONNACK without its session
//!   and the other with it, the surviving side may still hold QoS 2 ids of the lost one's
//!   packet-id space (received, awaiting PUBREL) that the new session will reuse for new
//!   messages, which would then be dropped as duplicates. The bridge releases them first: a
//!   PUBREL for every id to the surviving side (answered PUBCOMP, 5.0 reason 0x92 for ids it
//!   does not hold), whose PUBCOMPs it does not pass on.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shardmq_codec::{
    decode, ByteStr, Connect, Limits, Packet, PacketId, Properties, ProtocolVersion, PubResp,
    Publish, QoS, ReasonCode, RetainHandling, Subscribe, SubscriptionOptions,
};

use super::config::BridgeConfig;
use super::side::{open, End, OpenError, Side, PACKET_SIZE_MAX_BYTES};
use super::tls;
use crate::core::shard::BridgeCounters;

/// Bytes read at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// The packet id of the bridge's own SUBSCRIBE on each side.
const SUBSCRIBE_ID: u16 = u16::MAX;
/// Longest poll, so that a stop request is noticed.
const POLL_MAX: Duration = Duration::from_millis(250);

/// A connected pair.
pub(super) struct Link {
    cfg: Arc<BridgeConfig>,
    local: End,
    remote: End,
    counters: Arc<BridgeCounters>,
    /// QoS 2 PUBLISHes no rule forwarded (answered by the bridge itself), by side of origin.
    unrouted: (Vec<u16>, Vec<u16>),
    /// What the remote broker accepts from the bridge (its 5.0 CONNACK: Maximum QoS and
    /// Retain Available; a 3.1.1 broker takes everything).
    remote_accepts: Accepts,
    /// Ids of local QoS 2 PUBLISHes sent to the remote as QoS 1 (its Maximum QoS is 1): the
    /// remote's PUBACK becomes PUBREC towards this broker.
    downgraded: std::collections::HashSet<u16>,
}

/// What a server said it accepts in its CONNACK [MQTT-3.2.2-9..14].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Accepts {
    pub(super) qos_max: QoS,
    pub(super) retain: bool,
}

impl Accepts {
    fn from_connack(p: &Properties) -> Accepts {
        let qos_max = match p.maximum_qos {
            Some(0) => QoS::AtMostOnce,
            Some(1) => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        Accepts { qos_max, retain: p.retain_available != Some(0) }
    }
}

impl Link {
    /// Connects to the remote broker at `addr`, then to this broker at `local_addr`, and
    /// subscribes on both sides.
    pub(super) fn connect(
        cfg: Arc<BridgeConfig>,
        local_addr: SocketAddr,
        addr: &str,
        client_tls: Option<&tls::ClientTls>,
        counters: Arc<BridgeCounters>,
        sockets: &Mutex<Vec<TcpStream>>,
        stop: &AtomicBool,
    ) -> Result<Link, String> {
        let v5 = cfg.protocol == ProtocolVersion::V5;
        let mut props = Properties::default();
        if v5 {
            props.session_expiry_interval_secs = Some(cfg.session_expiry_secs);
            props.receive_maximum = Some(cfg.inflight_max);
            // The remote must not send what the bridge cannot decode (it drops such a message
            // instead [MQTT-3.1.2-25]); otherwise the link would end and repeat on it.
            props.maximum_packet_size = Some(PACKET_SIZE_MAX_BYTES);
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
        let refused = |addr: &str, r: ReasonCode| format!("{addr}: CONNACK refused: 0x{:02X}", r.0);
        let bridge_bit = !v5 && cfg.try_private;
        let opened = open(addr, client_tls, cfg.websocket, &remote_connect, bridge_bit, sockets);
        let (remote, remote_buf, ack) = match opened {
            Ok(o) => o,
            // A 3.1.1 broker that does not know the bridge bit refuses the level: connect as
            // an ordinary client (as Mosquitto does), where a `both` rule may echo.
            Err(OpenError::Refused(ReasonCode::UNSUPPORTED_PROTOCOL_VERSION)) if bridge_bit => {
                tracing::warn!(
                    "bridge {}: {addr} refuses the bridge bit (try_private); connecting as an \
                     ordinary client, so a `both` rule may send messages back",
                    cfg.name
                );
                if stop.load(Ordering::Relaxed) {
                    return Err("stopped".into());
                }
                open(addr, client_tls, cfg.websocket, &remote_connect, false, sockets).map_err(
                    |e| match e {
                        OpenError::Refused(r) => refused(addr, r),
                        OpenError::Other(s) => s,
                    },
                )?
            }
            Err(OpenError::Refused(r)) => return Err(refused(addr, r)),
            Err(OpenError::Other(s)) => return Err(s),
        };
        if stop.load(Ordering::Relaxed) {
            return Err("stopped".into());
        }
        let remote_props = ack.properties.as_deref().cloned().unwrap_or_default();
        // Never more unacknowledged messages into the remote broker than it takes.
        let remote_quota =
            remote_props.receive_maximum.map_or(cfg.inflight_max, |rm| rm.min(cfg.inflight_max));
        let remote_accepts = Accepts::from_connack(&remote_props);
        if remote_accepts.qos_max != QoS::ExactlyOnce || !remote_accepts.retain {
            tracing::info!(
                "bridge {}: {addr} accepts at most QoS {} and {} retained messages: outgoing \
                 messages are downgraded to match",
                cfg.name,
                remote_accepts.qos_max as u8,
                if remote_accepts.retain { "takes" } else { "no" }
            );
        }

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
                receive_maximum: Some(remote_quota),
                maximum_packet_size: Some(PACKET_SIZE_MAX_BYTES),
                ..Properties::default()
            },
        };
        let (local, local_buf, local_ack) =
            open(&local_addr.to_string(), None, false, &local_connect, false, sockets).map_err(
                |e| match e {
                    OpenError::Refused(r) => refused("this broker", r),
                    OpenError::Other(s) => s,
                },
            )?;
        let local_props = local_ack.properties.as_deref().cloned().unwrap_or_default();
        let now = Instant::now();
        let keep_alive = |props: &Properties| {
            let secs = props.server_keep_alive_secs.unwrap_or(cfg.keepalive_secs);
            Duration::from_secs(u64::from(secs.max(1)))
        };
        let end = |side, version, stream, rbuf, props: &Properties, quota: u16| End {
            side,
            version,
            stream,
            rbuf,
            wbuf: BytesMut::new(),
            last_write: now,
            last_read: now,
            keep_alive: keep_alive(props),
            inflight: 0,
            quota: usize::from(quota.max(1)),
            held: Default::default(),
            awaiting_suback: false,
            released: Default::default(),
            releasing: false,
        };
        let local_quota = local_props.receive_maximum.unwrap_or(u16::MAX);
        let mut link = Link {
            local: end(
                Side::Local,
                ProtocolVersion::V5,
                local,
                local_buf,
                &local_props,
                local_quota,
            ),
            remote: end(
                Side::Remote,
                cfg.protocol,
                remote,
                remote_buf,
                &remote_props,
                remote_quota,
            ),
            cfg,
            counters,
            unrouted: (Vec::new(), Vec::new()),
            remote_accepts,
            downgraded: Default::default(),
        };
        // A side that kept its session while the other lost its own: release the lost one's
        // stale QoS 2 ids there (module docs).
        match (local_ack.session_present, ack.session_present) {
            (true, false) => link.release_all(Side::Local)?,
            (false, true) => link.release_all(Side::Remote)?,
            _ => {}
        }
        link.subscribe()?;
        Ok(link)
    }

    /// Sends PUBREL for every packet id to `side` (see the module docs).
    fn release_all(&mut self, side: Side) -> Result<(), String> {
        tracing::info!(
            "bridge {}: the {:?} broker kept its session and the other did not: releasing \
             stale QoS 2 packet ids there",
            self.cfg.name,
            side
        );
        let end = match side {
            Side::Local => &mut self.local,
            Side::Remote => &mut self.remote,
        };
        end.releasing = true;
        // Every id but our SUBSCRIBE's, which is sent right after.
        for id in 1..SUBSCRIBE_ID {
            let id = PacketId::new(id).expect("non-zero");
            let rel = PubResp { packet_id: id, reason: ReasonCode::SUCCESS, properties: None };
            end.queue(&Packet::PubRel(rel))?;
        }
        end.flush()
    }

    /// SUBSCRIBE locally to the outgoing rules' filters and remotely to the incoming ones.
    /// No Local keeps what the bridge publishes on one side from coming back to it there;
    /// Retain As Published keeps retain flags as the publisher set them; retained messages
    /// are sent only for a new subscription (not again at every reconnect).
    fn subscribe(&mut self) -> Result<(), String> {
        let opts = |qos| SubscriptionOptions {
            qos,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::SendIfNew,
        };
        // Locally, no more than the remote takes: this broker then delivers outgoing messages
        // at that QoS already (the subscription's maximum [MQTT-3.8.4-8]).
        let qos_max = self.remote_accepts.qos_max;
        let pick = |outgoing: bool| -> Vec<(ByteStr, SubscriptionOptions)> {
            self.cfg
                .topics
                .iter()
                .filter(|r| if outgoing { r.direction.outgoing() } else { r.direction.incoming() })
                .map(|r| {
                    let f = if outgoing { r.local_filter() } else { r.remote_filter() };
                    let qos = if outgoing { r.qos.min(qos_max) } else { r.qos };
                    (ByteStr::from(f.as_str()), opts(qos))
                })
                .collect()
        };
        let (local, remote) = (pick(true), pick(false));
        let id = PacketId::new(SUBSCRIBE_ID).expect("non-zero");
        for (end, filters) in [(&mut self.local, local), (&mut self.remote, remote)] {
            if !filters.is_empty() {
                end.queue(&Packet::Subscribe(Subscribe {
                    packet_id: id,
                    filters,
                    properties: None,
                }))?;
                end.flush()?;
                // Nothing new goes to this side before the SUBACK: no passed-through PUBLISH
                // may carry our SUBSCRIBE's id while it is in use [MQTT-2.2.1-3].
                end.awaiting_suback = true;
            }
        }
        Ok(())
    }

    /// Relays until either side closes or fails, or `stop` is raised; returns why it ended.
    pub(super) fn run(mut self, stop: &AtomicBool) -> String {
        self.counters.connected.store(1, Ordering::Relaxed);
        let why = self.relay_loop(stop);
        self.counters.connected.store(0, Ordering::Relaxed);
        if stop.load(Ordering::Relaxed) {
            "stopped".into()
        } else {
            why
        }
    }

    fn relay_loop(&mut self, stop: &AtomicBool) -> String {
        let limits = Limits { packet_size_max_bytes: PACKET_SIZE_MAX_BYTES };
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        for end in [&mut self.local, &mut self.remote] {
            // Reads wait in poll(2); the socket itself must not block a read that poll said
            // is ready but TLS needs more of (the rest of a record comes soon after).
            let _ = end.stream.tcp().set_read_timeout(Some(POLL_MAX));
        }
        loop {
            // Everything decodable, relayed; then one write per side.
            for side in [Side::Local, Side::Remote] {
                loop {
                    let end = match side {
                        Side::Local => &mut self.local,
                        Side::Remote => &mut self.remote,
                    };
                    match decode(&mut end.rbuf, &limits, end.version) {
                        Ok(Some(p)) => {
                            if let Err(e) = self.relay(side, p) {
                                return e;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return format!("{side:?} broker sent a bad packet: {e}"),
                    }
                }
            }
            if stop.load(Ordering::Relaxed) {
                return "stopped".into();
            }
            let now = Instant::now();
            for end in [&mut self.local, &mut self.remote] {
                if let Err(e) = end.keep_alive(now).and_then(|()| end.flush()) {
                    return e;
                }
            }
            // Plaintext TLS already decrypted is read without waiting.
            let (l_ready, r_ready) = match crate::io::poll::readable2(
                self.local.stream.tcp().as_raw_fd(),
                self.remote.stream.tcp().as_raw_fd(),
                self.local.stream.buffered(),
                self.remote.stream.buffered(),
                POLL_MAX,
            ) {
                Ok(r) => r,
                Err(e) => return format!("poll: {e}"),
            };
            for (ready, end) in [(l_ready, &mut self.local), (r_ready, &mut self.remote)] {
                if !ready {
                    continue;
                }
                match end.stream.read(&mut chunk) {
                    Ok(0) => return format!("{:?} broker closed the connection", end.side),
                    Ok(n) => {
                        end.rbuf.extend_from_slice(&chunk[..n]);
                        end.last_read = Instant::now();
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return format!("{:?} broker: {e}", end.side),
                }
            }
        }
    }

    /// Handles one packet from `from`.
    fn relay(&mut self, from: Side, p: Packet) -> Result<(), String> {
        let (src, dst) = match from {
            Side::Local => (&mut self.local, &mut self.remote),
            Side::Remote => (&mut self.remote, &mut self.local),
        };
        match p {
            Packet::Publish(publish) => {
                let topic = self.cfg.topics.iter().find_map(|r| match from {
                    Side::Local => r.to_remote(publish.topic.as_str()),
                    Side::Remote => r.to_local(publish.topic.as_str()),
                });
                let Some(topic) = topic else {
                    // Matched a filter but no rule maps it (overlapping prefixes, or a
                    // subscription left from an earlier configuration): answer it here so
                    // the sender's flow completes, and count it.
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return answer_unrouted(src, &mut self.unrouted, from, &publish);
                };
                let properties = if dst.version == ProtocolVersion::V5 {
                    publish.properties.map(|mut p| {
                        p.topic_alias = None;
                        p.subscription_identifiers.clear();
                        p
                    })
                } else {
                    None
                };
                let mut out = Publish {
                    dup: publish.dup,
                    qos: publish.qos,
                    retain: publish.retain,
                    topic: ByteStr::from(topic.as_str()),
                    packet_id: publish.packet_id,
                    payload: publish.payload,
                    properties,
                };
                if from == Side::Local {
                    // Queued before the subscription's QoS was capped: keep to what the
                    // remote said it accepts.
                    downgrade(&mut out, self.remote_accepts, src, &mut self.unrouted.0)?;
                    if out.qos == QoS::AtLeastOnce && publish.qos == QoS::ExactlyOnce {
                        if let Some(id) = out.packet_id {
                            self.downgraded.insert(id.get());
                        }
                    }
                }
                dst.publish(out)?;
                let n = match from {
                    Side::Local => &self.counters.forwarded_out,
                    Side::Remote => &self.counters.forwarded_in,
                };
                n.fetch_add(1, Ordering::Relaxed);
            }
            // Acknowledgements from `from` end flows towards `from` (free its slots) and go
            // back to `dst`, where the PUBLISH came from.
            Packet::PubAck(r) => {
                src.slot_freed()?;
                refused_ack(&self.counters, &self.cfg.name, &r, dst.version);
                if from == Side::Remote && self.downgraded.remove(&r.packet_id.get()) {
                    // A local QoS 2 message the remote took at QoS 1: its PUBACK ends the
                    // remote flow; this broker's flow goes on with PUBREC, and the bridge
                    // answers the PUBREL itself (a refusal ends the flow at the PUBREC).
                    let id = r.packet_id.get();
                    if !r.reason.is_error() && !self.unrouted.0.contains(&id) {
                        self.unrouted.0.push(id);
                    }
                    dst.queue(&Packet::PubRec(ack(r, dst.version)))?;
                } else {
                    dst.queue(&Packet::PubAck(ack(r, dst.version)))?;
                }
            }
            Packet::PubRec(r) => {
                if r.reason.is_error() {
                    src.slot_freed()?;
                }
                refused_ack(&self.counters, &self.cfg.name, &r, dst.version);
                dst.queue(&Packet::PubRec(ack(r, dst.version)))?;
            }
            Packet::PubRel(r) => {
                let list = match from {
                    Side::Local => &mut self.unrouted.0,
                    Side::Remote => &mut self.unrouted.1,
                };
                // A remote below QoS 2 holds no QoS 2 flow of ours: a PUBREL from this
                // broker then belongs to a message lowered on an earlier link (its PUBREC
                // was given there); the bridge ends it, as on the link that lowered it.
                let lowered = from == Side::Local && self.remote_accepts.qos_max < QoS::ExactlyOnce;
                let ours = list.iter().position(|x| *x == r.packet_id.get());
                if let Some(i) = ours {
                    list.swap_remove(i);
                }
                if ours.is_some() || lowered {
                    let done = PubResp {
                        packet_id: r.packet_id,
                        reason: ReasonCode::SUCCESS,
                        properties: None,
                    };
                    src.queue(&Packet::PubComp(done))?;
                } else {
                    dst.released.insert(r.packet_id.get());
                    dst.queue(&Packet::PubRel(ack(r, dst.version)))?;
                }
            }
            Packet::PubComp(r) => {
                let passed_on = src.released.remove(&r.packet_id.get());
                if passed_on || !src.releasing {
                    src.slot_freed()?;
                    dst.queue(&Packet::PubComp(ack(r, dst.version)))?;
                }
                // Otherwise it answers the bridge's own release of a stale id: not passed on.
            }
            Packet::SubAck(a) => {
                for code in a.reasons.iter().filter(|c| c.is_error()) {
                    tracing::warn!(
                        "bridge {}: the {from:?} broker refused a subscription: 0x{:02X}",
                        self.cfg.name,
                        code.0
                    );
                }
                src.awaiting_suback = false;
                src.send_held()?;
            }
            Packet::PingResp | Packet::UnsubAck(_) => {}
            Packet::PingReq => src.queue(&Packet::PingResp)?,
            Packet::Disconnect(d) => {
                return Err(format!("{from:?} broker sent DISCONNECT 0x{:02X}", d.reason.0));
            }
            other => return Err(format!("{from:?} broker sent {:?}", other.packet_type())),
        }
        Ok(())
    }
}

/// Keeps a PUBLISH for the remote within what its CONNACK accepts: retain cleared when
/// Retain Available is 0 [MQTT-3.2.2-14]; QoS lowered to its Maximum QoS [MQTT-3.2.2-11]
/// (a message lowered to QoS 0 is acknowledged to this broker here, as the remote never will).
fn downgrade(
    p: &mut Publish,
    accepts: Accepts,
    local: &mut End,
    local_unrouted: &mut Vec<u16>,
) -> Result<(), String> {
    if p.retain && !accepts.retain {
        p.retain = false;
    }
    if p.qos <= accepts.qos_max {
        return Ok(());
    }
    if accepts.qos_max == QoS::AtMostOnce {
        let mut unrouted = (std::mem::take(local_unrouted), Vec::new());
        answer_unrouted(local, &mut unrouted, Side::Local, p)?;
        *local_unrouted = unrouted.0;
        p.packet_id = None;
        p.dup = false; // [MQTT-3.3.1-2]
    }
    p.qos = accepts.qos_max;
    Ok(())
}

/// A 5.0 refusal (0x80 and above) passed to a 3.1.1 peer becomes a plain acknowledgement:
/// that peer then drops the message. Counted and logged, so it is not silent.
fn refused_ack(counters: &BridgeCounters, name: &str, r: &PubResp, to: ProtocolVersion) {
    if r.reason.is_error() && to != ProtocolVersion::V5 {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            "bridge {name}: message {} refused with 0x{:02X}; the 3.1.1 peer gets a plain ack",
            r.packet_id.get(),
            r.reason.0
        );
    }
}

/// Acknowledges a PUBLISH from `from` that no rule forwards.
fn answer_unrouted(
    src: &mut End,
    unrouted: &mut (Vec<u16>, Vec<u16>),
    from: Side,
    p: &Publish,
) -> Result<(), String> {
    let Some(id) = p.packet_id else { return Ok(()) };
    let resp = PubResp { packet_id: id, reason: ReasonCode::SUCCESS, properties: None };
    match p.qos {
        QoS::AtMostOnce => Ok(()),
        QoS::AtLeastOnce => src.queue(&Packet::PubAck(resp)),
        QoS::ExactlyOnce => {
            let list = match from {
                Side::Local => &mut unrouted.0,
                Side::Remote => &mut unrouted.1,
            };
            if !list.contains(&id.get()) {
                list.push(id.get());
            }
            src.queue(&Packet::PubRec(resp))
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
