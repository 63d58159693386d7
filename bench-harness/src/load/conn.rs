//! The connection state machine: connect, CONNACK/SUBACK handshake, reading frames, queued writes.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use anyhow::{Context, Result};
use mio::net::TcpStream;
use mio::{Interest, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::link::Link;
use super::publisher::PubState;
use super::reactor::{Reactor, TX_BACKLOG_MAX_BYTES};
use super::subscriber::SubState;
use crate::sys::monotonic_ns;
use crate::wire::{self, kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    NotStarted,
    Connecting,
    AwaitConnAck,
    AwaitSubAck,
    Ready,
    Closed,
}

#[derive(Debug)]
pub(super) enum RoleState {
    Pub(Box<PubState>),
    Sub(SubState),
    Idle,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) spec: usize,
    pub(super) stream: Option<TcpStream>,
    pub(super) state: State,
    pub(super) rx: Vec<u8>,
    pub(super) tx: Vec<u8>,
    pub(super) tx_pos: usize,
    pub(super) dirty: bool,
    pub(super) last_tx_ns: u64,
    pub(super) role: RoleState,
    /// TLS and/or WebSocket between the socket and the MQTT bytes (`None`: plain TCP).
    pub(super) link: Option<Box<Link>>,
}

impl Reactor<'_> {
    pub(super) fn start_connections(&mut self) {
        while self.handshaking < self.spec.connect_concurrency.max(1)
            && self.next_to_start < self.conns.len()
        {
            let i = self.next_to_start;
            self.next_to_start += 1;
            if self.st.setup_first_ns == 0 {
                self.st.setup_first_ns = self.ctx.now_ns;
            }
            match self.open(i) {
                Ok(()) => self.handshaking += 1,
                Err(e) => self.fail(i, format!("connect: {e:#}")),
            }
        }
    }

    pub(super) fn open(&mut self, i: usize) -> Result<()> {
        let spec = &self.spec.conns[self.conns[i].spec];
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        sock.set_nonblocking(true)?;
        sock.set_tcp_nodelay(true)?;
        if let Some(ip) = spec.source_ip {
            // Port 0: the kernel picks an ephemeral port unique for this source address, so
            // one address gives about 28,000 connections (ip_local_port_range).
            sock.bind(&SocketAddr::from((ip, 0)).into()).with_context(|| format!("bind {ip}"))?;
        }
        let spread = &self.spec.subscriber_brokers;
        let to = match (&spec.role, self.spec.subscriber_broker) {
            (crate::load::Role::Subscriber { group, .. }, _) if !spread.is_empty() => {
                spread[*group as usize % spread.len()]
            }
            (crate::load::Role::Subscriber { .. }, Some(other)) => other,
            _ => self.spec.broker,
        };
        match sock.connect(&to.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => {}
            Err(e) => return Err(e.into()),
        }
        let link = Link::new(&self.spec.transport, self.tls.as_ref(), to)?.map(Box::new);
        let mut stream = TcpStream::from_std(std::net::TcpStream::from(sock));
        self.poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let c = &mut self.conns[i];
        c.stream = Some(stream);
        c.link = link;
        c.state = State::Connecting;
        Ok(())
    }

    pub(super) fn on_connect_event(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(stream) = c.stream.as_ref() else { return };
        if let Ok(Some(e)) | Err(e) = stream.take_error() {
            let msg = format!("connect: {e}");
            return self.fail(i, msg);
        }
        match stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => {
                let msg = format!("connect: {e}");
                return self.fail(i, msg);
            }
        }
        let spec = &self.spec.conns[c.spec];
        match wire::connect(&spec.client_id, self.ctx.version, self.spec.keep_alive_secs) {
            Ok(bytes) => {
                c.tx.extend_from_slice(&bytes);
                c.state = State::AwaitConnAck;
                self.mark_dirty(i);
            }
            Err(e) => self.fail(i, format!("{e:#}")),
        }
    }

    /// A connection failed during setup or broke later.
    pub(super) fn fail(&mut self, i: usize, msg: String) {
        let c = &mut self.conns[i];
        let was = c.state;
        if was == State::Closed {
            return;
        }
        c.state = State::Closed;
        let role = match &c.role {
            RoleState::Pub(_) => "publisher",
            RoleState::Sub(_) => "subscriber",
            RoleState::Idle => "idle connection",
        };
        let msg = format!("{role} {}: {msg}", self.spec.conns[c.spec].client_id);
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if let RoleState::Pub(p) = &mut c.role {
            if !p.done {
                p.done = true;
                p.stopped = true;
                self.ctl.sent_final.fetch_add(p.next_seq, Relaxed);
                self.ctl.last_progress_ns.fetch_max(self.ctx.now_ns, Relaxed);
                self.ctl.publishers_done.fetch_add(1, SeqCst);
            }
        }
        match was {
            State::Ready => self.st.closed_by_broker += 1,
            _ => {
                self.st.failed += 1;
                self.failed_total += 1;
                self.handshaking -= (was != State::NotStarted) as usize;
                self.settled += 1;
            }
        }
        self.st.error(msg);
    }

    pub(super) fn became_ready(&mut self, i: usize) {
        self.conns[i].state = State::Ready;
        self.st.connected += 1;
        self.connected_total += 1;
        self.handshaking -= 1;
        self.settled += 1;
        self.st.setup_last_ns = self.ctx.now_ns;
    }

    pub(super) fn on_readable(&mut self, i: usize, rbuf: &mut [u8]) {
        if self.conns[i].link.is_some() {
            return self.on_readable_link(i, rbuf);
        }
        loop {
            let c = &mut self.conns[i];
            let Some(stream) = c.stream.as_mut() else { return };
            let n = match stream.read(rbuf) {
                Ok(0) => return self.fail(i, "closed by the broker".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(i, format!("read: {e}")),
            };
            self.ctx.now_ns = monotonic_ns();
            if let Err(e) = self.feed(i, &rbuf[..n]) {
                return self.fail(i, e);
            }
            if n < rbuf.len() {
                // A short read drained the socket; a later arrival raises a new edge.
                return;
            }
        }
    }

    /// [`Reactor::on_readable`] through TLS and/or WebSocket: read until the socket is
    /// drained (a TLS record or a WebSocket frame may end anywhere), then write whatever the
    /// layers owe the broker (handshake messages, a pong) or now let through (MQTT bytes
    /// queued during a handshake).
    fn on_readable_link(&mut self, i: usize, rbuf: &mut [u8]) {
        loop {
            let c = &mut self.conns[i];
            let (Some(stream), Some(link)) = (c.stream.as_mut(), c.link.as_mut()) else { return };
            let r = link.read(stream, rbuf);
            if link.wants_write() || c.tx_pos < c.tx.len() {
                self.mark_dirty(i);
            }
            let n = match r {
                Ok(0) => return self.fail(i, "closed by the broker".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(i, format!("read: {e}")),
            };
            self.ctx.now_ns = monotonic_ns();
            if let Err(e) = self.feed(i, &rbuf[..n]) {
                return self.fail(i, e);
            }
        }
    }

    /// Handles the MQTT bytes `data` read on connection `i`: whole frames in place, a partial
    /// tail kept in the connection's `rx`.
    fn feed(&mut self, i: usize, data: &[u8]) -> Result<(), String> {
        if self.conns[i].rx.is_empty() {
            let used = self.process(i, data)?;
            self.conns[i].rx.extend_from_slice(&data[used..]);
            Ok(())
        } else {
            let mut rx = std::mem::take(&mut self.conns[i].rx);
            rx.extend_from_slice(data);
            let r = self.process(i, &rx).map(|used| {
                rx.drain(..used);
            });
            self.conns[i].rx = rx;
            r
        }
    }

    /// Handles every whole frame of `buf`; returns the bytes consumed.
    pub(super) fn process(&mut self, i: usize, buf: &[u8]) -> Result<usize, String> {
        let mut pos = 0;
        while let Some((len, body)) = wire::split_frame(&buf[pos..]).map_err(|e| e.to_string())? {
            let frame = &buf[pos..pos + len];
            self.on_frame(i, frame, &frame[body..])?;
            pos += len;
        }
        Ok(pos)
    }

    pub(super) fn on_frame(&mut self, i: usize, frame: &[u8], body: &[u8]) -> Result<(), String> {
        let ptype = frame[0] >> 4;
        let state = self.conns[i].state;
        match (state, ptype) {
            (State::AwaitConnAck, _) => {
                let p =
                    wire::decode_frame(frame, self.ctx.version).map_err(|e| format!("{e:#}"))?;
                wire::check_connack(&p).map_err(|e| format!("{e:#}"))?;
                if let (RoleState::Pub(pb), Some(rm)) =
                    (&mut self.conns[i].role, wire::receive_maximum(&p))
                {
                    pb.inflight_max = pb.inflight_max.min(u32::from(rm)).max(1);
                }
                let sub = match &self.conns[i].role {
                    RoleState::Sub(s) if !s.deferred => Some(s.filter.clone()),
                    _ => None,
                };
                match sub {
                    Some(filter) => {
                        self.send_subscribe(i, &filter)?;
                        self.conns[i].state = State::AwaitSubAck;
                    }
                    None => self.became_ready(i),
                }
            }
            (_, kind::SUBACK) => {
                let p =
                    wire::decode_frame(frame, self.ctx.version).map_err(|e| format!("{e:#}"))?;
                wire::check_suback(&p).map_err(|e| format!("{e:#}"))?;
                if state == State::AwaitSubAck {
                    self.became_ready(i);
                }
            }
            (_, kind::PUBLISH) => self.on_publish(i, frame[0], body)?,
            (_, kind::PUBACK) | (_, kind::PUBCOMP) => self.on_pub_done(i),
            (_, kind::PUBREC) => {
                let id = wire::ack_packet_id(body).map_err(|e| e.to_string())?;
                if body.len() > 2 && body[2] >= 0x80 {
                    // A refused QoS 2 message ends its flow here [MQTT-4.3.3].
                    self.on_pub_done(i);
                } else {
                    self.queue(i, &wire::ack(kind::PUBREL, id));
                }
            }
            (_, kind::PUBREL) => {
                let id = wire::ack_packet_id(body).map_err(|e| e.to_string())?;
                self.queue(i, &wire::ack(kind::PUBCOMP, id));
            }
            (_, kind::PINGRESP) => {
                if let RoleState::Pub(p) = &mut self.conns[i].role {
                    p.ping_outstanding = false;
                }
            }
            (_, kind::DISCONNECT) => return Err("DISCONNECT from the broker".into()),
            (_, other) => return Err(format!("unexpected packet type {other}")),
        }
        Ok(())
    }

    pub(super) fn queue(&mut self, i: usize, bytes: &[u8]) {
        self.conns[i].tx.extend_from_slice(bytes);
        self.mark_dirty(i);
    }

    pub(super) fn mark_dirty(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(i);
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            self.conns[i].dirty = false;
            if let Err(e) = self.flush(i) {
                self.fail(i, format!("write: {e}"));
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    pub(super) fn flush(&mut self, i: usize) -> io::Result<()> {
        let now = self.ctx.now_ns;
        let c = &mut self.conns[i];
        let Some(stream) = c.stream.as_mut() else { return Ok(()) };
        if matches!(c.state, State::Connecting | State::NotStarted | State::Closed) {
            return Ok(());
        }
        if let Some(link) = c.link.as_mut() {
            // MQTT bytes into the layers (as much as they take), the layers' bytes out.
            loop {
                let took = link.accept(&c.tx[c.tx_pos..]);
                c.tx_pos += took;
                link.write_out(stream)?;
                if took > 0 {
                    c.last_tx_ns = now;
                }
                if took == 0 || link.wants_write() {
                    break;
                }
            }
        }
        while c.link.is_none() && c.tx_pos < c.tx.len() {
            match stream.write(&c.tx[c.tx_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    c.tx_pos += n;
                    c.last_tx_ns = now;
                }
                // The socket is full: the next writable edge marks the connection dirty.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if c.tx_pos == c.tx.len() {
            c.tx.clear();
            c.tx_pos = 0;
        } else if c.tx_pos > TX_BACKLOG_MAX_BYTES {
            c.tx.drain(..c.tx_pos);
            c.tx_pos = 0;
        }
        Ok(())
    }

    pub(super) fn keep_alive(&mut self, idle_ns: u64) {
        let now = self.ctx.now_ns;
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if c.state == State::Ready && now.saturating_sub(c.last_tx_ns) >= idle_ns {
                self.queue(i, &wire::PINGREQ);
            }
        }
    }
}
