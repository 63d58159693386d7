//! A deterministic, seeded multi-shard simulator for the core.
//!
//! N [`ShardCore`]s, an in-memory mesh (one FIFO queue per ordered pair of shards, like the
//! real rings, delivered in a seeded random interleaving across pairs), simulated clients
//! that encode their packets with the codec and decode what the core queued for them, and a
//! fake clock. It plays the io layer's part exactly through `ShardCore`'s public API.
//!
//! The scenarios live in `sim_tests.rs`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shardmq_codec::{
    decode, encode, ByteStr, Connect, Disconnect, Packet, PacketId, Properties, ProtocolVersion,
    PubResp, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe, Will,
};

use crate::core::hash::{Map, Set};
use crate::core::ids::{ConnId, ShardId};
use crate::core::limits::Limits;
use crate::core::mesh::MeshMsg;
use crate::core::shard::{CoreConfig, GlobalStats, IoAction, ShardCore};
use crate::core::ConnInfo;

#[path = "sim_persist.rs"]
mod persist;

/// The simulator's generator (splitmix64), seeded as `seed ^ SEED_MIX`.
pub(crate) use crate::splitmix::Rng;
const SEED_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// A simulated client: its connection, what it received, and whether it answers
/// acknowledgements by itself.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) id: String,
    pub(crate) version: ProtocolVersion,
    pub(crate) shard: usize,
    pub(crate) conn: Option<ConnId>,
    /// Bytes from the broker not yet decoded.
    rx: BytesMut,
    /// Bytes towards the broker not yet decoded (the io layer's read buffer).
    srv_rx: BytesMut,
    /// The broker closed the connection (after writing what was queued).
    pub(crate) closed: bool,
    /// Answer PUBLISH with PUBACK/PUBREC, PUBREL with PUBCOMP, PUBREC with PUBREL.
    pub(crate) auto_ack: bool,
    /// The simulated writer does not drain this connection (a stalled reader).
    pub(crate) stalled: bool,
    /// Application messages received, in order.
    pub(crate) messages: Vec<Publish>,
    /// Every other packet received, in order.
    pub(crate) packets: Vec<Packet>,
    next_pid: u16,
}

impl Client {
    pub(crate) fn next_packet_id(&mut self) -> PacketId {
        self.next_pid = self.next_pid.wrapping_add(1).max(1);
        PacketId::new(self.next_pid).expect("non-zero")
    }

    /// Takes the application messages received so far.
    pub(crate) fn take_messages(&mut self) -> Vec<Publish> {
        std::mem::take(&mut self.messages)
    }

    /// Payloads received so far, as strings, taken.
    pub(crate) fn take_payloads(&mut self) -> Vec<String> {
        self.take_messages()
            .into_iter()
            .map(|p| String::from_utf8(p.payload.to_vec()).expect("utf-8 payload"))
            .collect()
    }

    /// Takes the control packets received so far.
    pub(crate) fn take_packets(&mut self) -> Vec<Packet> {
        std::mem::take(&mut self.packets)
    }
}

/// Options of a simulated CONNECT.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOpts {
    pub(crate) clean_start: bool,
    pub(crate) keep_alive_secs: u16,
    pub(crate) will: Option<Will>,
    pub(crate) properties: Properties,
}

impl Default for ConnectOpts {
    fn default() -> ConnectOpts {
        ConnectOpts {
            clean_start: true,
            keep_alive_secs: 0,
            will: None,
            properties: Properties::default(),
        }
    }
}

/// The simulated broker: shards, mesh, clients, clock.
#[derive(Debug)]
pub(crate) struct Sim {
    pub(crate) rng: Rng,
    pub(crate) now: Instant,
    pub(crate) shards: Vec<ShardCore>,
    /// `rings[from * n + to]`: FIFO per ordered pair.
    rings: Vec<VecDeque<MeshMsg>>,
    /// Pairs whose delivery is held back (to observe the SUBACK gate).
    pub(crate) paused: Set<(usize, usize)>,
    pub(crate) clients: Vec<Client>,
    owners: Map<(usize, ConnId), usize>,
    pub(crate) stats: Arc<GlobalStats>,
    /// `MeshMsg::Publish` messages sent between shards so far.
    pub(crate) mesh_publishes: usize,
    codec_limits: shardmq_codec::Limits,
    /// With persistence: each shard's log, as the live state its records fold into
    /// (`Sim::enable_persistence`).
    pub(crate) logs: Option<Vec<crate::log::state::LogState>>,
    /// Per shard: batches appended but not durable yet (`Sim::hold_durability`); a crash
    /// loses them.
    held: Vec<Option<Vec<crate::core::persist::LogBatch>>>,
}

impl Sim {
    pub(crate) fn new(shard_count: u16, seed: u64) -> Sim {
        Sim::with_limits(shard_count, seed, Limits::default())
    }

    pub(crate) fn with_limits(shard_count: u16, seed: u64, limits: Limits) -> Sim {
        Sim::with_cluster(shard_count, seed, limits, None)
    }

    /// A simulated node of a cluster (`core/cluster/`): the test plays the runtime.
    pub(crate) fn with_cluster(
        shard_count: u16,
        seed: u64,
        limits: Limits,
        cluster: Option<crate::core::cluster::ClusterCore>,
    ) -> Sim {
        limits.validate().expect("valid limits");
        let now = Instant::now();
        let stats = Arc::new(GlobalStats::new(shard_count));
        let config = CoreConfig {
            limits: limits.clone(),
            shard_count,
            sys_interval_secs: 10,
            stats: stats.clone(),
            started_at: now,
            auth: crate::core::auth::AuthConfig::default(),
            fault_panic_topic: None,
            hash_keys: crate::core::hash::HashKeys::from_seed(seed),
            cluster,
        };
        let shards = (0..shard_count).map(|i| ShardCore::new(ShardId(i), config.clone())).collect();
        let n = usize::from(shard_count);
        Sim {
            rng: Rng::new(seed ^ SEED_MIX),
            now,
            shards,
            rings: (0..n * n).map(|_| VecDeque::new()).collect(),
            paused: Set::default(),
            clients: Vec::new(),
            owners: Map::default(),
            stats,
            mesh_publishes: 0,
            codec_limits: shardmq_codec::Limits {
                packet_size_max_bytes: limits.packet_size_max_bytes,
            },
            logs: None,
            held: (0..n).map(|_| None).collect(),
        }
    }

    fn n(&self) -> usize {
        self.shards.len()
    }

    /// Client `c` reads again: what its connection's queue holds is delivered now.
    pub(crate) fn unstall(&mut self, c: usize) {
        self.clients[c].stalled = false;
        let conns: Vec<(usize, ConnId)> =
            self.owners.iter().filter(|(_, o)| **o == c).map(|(k, _)| *k).collect();
        for (s, conn) in conns {
            let mut out = Vec::new();
            if let Some(tx) = self.shards[s].tx(conn) {
                tx.take_all(&mut out);
            }
            for b in out {
                self.clients[c].rx.extend_from_slice(&b);
            }
        }
    }

    /// The home shard of a client id.
    pub(crate) fn home(&self, client_id: &str) -> usize {
        usize::from(ShardCore::home_shard(client_id.as_bytes(), self.n() as u16).0)
    }

    /// A client id whose home is `shard`, starting from `prefix`.
    pub(crate) fn id_on(&self, prefix: &str, shard: usize) -> String {
        (0..).map(|i| format!("{prefix}-{i}")).find(|id| self.home(id) == shard).expect("found")
    }

    /// Adds a client (not yet connected). Its connection will be opened on the client id's
    /// home shard (or shard 0 for an empty id).
    pub(crate) fn client(&mut self, id: &str, version: ProtocolVersion) -> usize {
        let shard = if id.is_empty() { 0 } else { self.home(id) };
        self.clients.push(Client {
            id: id.to_owned(),
            version,
            shard,
            conn: None,
            rx: BytesMut::new(),
            srv_rx: BytesMut::new(),
            closed: false,
            auto_ack: true,
            stalled: false,
            messages: Vec::new(),
            packets: Vec::new(),
            next_pid: 0,
        });
        self.clients.len() - 1
    }

    /// Opens a new connection for client `c` (replacing any previous one, which is left
    /// as it is: use `drop_conn` first to simulate a socket close).
    pub(crate) fn open(&mut self, c: usize) {
        self.open_with(c, ConnInfo::default());
    }

    /// Like [`Sim::open`], with the connection's network identity (listener, transport,
    /// certificate subject).
    pub(crate) fn open_with(&mut self, c: usize, info: ConnInfo) {
        let shard = self.clients[c].shard;
        let conn = self.shards[shard].open_connection(info, self.now).expect("connection accepted");
        self.owners.insert((shard, conn), c);
        let cl = &mut self.clients[c];
        cl.conn = Some(conn);
        cl.closed = false;
        cl.rx.clear();
        cl.srv_rx.clear();
    }

    /// Opens a connection and sends CONNECT; returns the CONNACK.
    pub(crate) fn connect_with(&mut self, c: usize, opts: ConnectOpts) -> shardmq_codec::ConnAck {
        self.open(c);
        let cl = &self.clients[c];
        let connect = Connect {
            protocol: cl.version,
            clean_start: opts.clean_start,
            keep_alive_secs: opts.keep_alive_secs,
            client_id: ByteStr::from(cl.id.as_str()),
            will: opts.will,
            username: None,
            password: None,
            properties: opts.properties,
        };
        self.send(c, &Packet::Connect(Box::new(connect)));
        self.run();
        let packets = &mut self.clients[c].packets;
        let i = packets
            .iter()
            .position(|p| matches!(p, Packet::ConnAck(_)))
            .unwrap_or_else(|| panic!("no CONNACK for client {c}: {packets:?}"));
        match packets.remove(i) {
            Packet::ConnAck(a) => a,
            _ => unreachable!(),
        }
    }

    /// Connects with a clean session and no keep alive; asserts success.
    pub(crate) fn connect(&mut self, c: usize) {
        let ack = self.connect_with(c, ConnectOpts::default());
        assert_eq!(ack.reason, ReasonCode::SUCCESS, "client {c} CONNACK");
    }

    /// Encodes `packet` in the client's version and feeds it to its shard, as the io layer
    /// would: through the decoder.
    pub(crate) fn send(&mut self, c: usize, packet: &Packet) {
        let mut buf = BytesMut::new();
        encode(packet, self.clients[c].version, &mut buf).expect("client packet encodes");
        self.send_raw(c, &buf);
    }

    /// Feeds raw bytes from client `c` to its shard.
    pub(crate) fn send_raw(&mut self, c: usize, bytes: &[u8]) {
        let cl = &mut self.clients[c];
        let Some(conn) = cl.conn else { return };
        if cl.closed {
            return;
        }
        cl.srv_rx.extend_from_slice(bytes);
        let shard = cl.shard;
        loop {
            let core = &mut self.shards[shard];
            let version = core.protocol_version(conn).unwrap_or(ProtocolVersion::V3_1_1);
            let cl = &mut self.clients[c];
            if cl.closed || cl.conn != Some(conn) {
                return;
            }
            match decode(&mut cl.srv_rx, &self.codec_limits, version) {
                Ok(Some(p)) => core.handle_packet(conn, p, self.now),
                Ok(None) => return,
                Err(e) => {
                    core.handle_decode_error(conn, e, self.now);
                    cl.srv_rx.clear();
                    return;
                }
            }
            self.drain_shard(shard);
        }
    }

    /// The client's socket closes without DISCONNECT (the io layer reports it).
    pub(crate) fn drop_conn(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        if let Some(conn) = cl.conn.take() {
            self.owners.remove(&(cl.shard, conn));
            if !cl.closed {
                self.shards[cl.shard].handle_closed(conn, self.now);
            }
        }
        cl.closed = true;
    }

    /// Sends DISCONNECT (normal) and runs.
    pub(crate) fn disconnect(&mut self, c: usize, reason: ReasonCode) {
        self.send(c, &Packet::Disconnect(Disconnect { reason, properties: None }));
        self.run();
    }

    /// SUBSCRIBE; runs until idle; returns the SUBACK's reason codes (panics if none).
    pub(crate) fn subscribe(&mut self, c: usize, filters: &[(&str, QoS)]) -> Vec<ReasonCode> {
        let filters = filters
            .iter()
            .map(|(f, q)| {
                (ByteStr::from(*f), SubscriptionOptions { qos: *q, ..Default::default() })
            })
            .collect();
        let packet_id = self.clients[c].next_packet_id();
        self.send(c, &Packet::Subscribe(Subscribe { packet_id, filters, properties: None }));
        self.run();
        self.take_suback(c, packet_id).expect("SUBACK")
    }

    /// Removes and returns the SUBACK for `packet_id`, if received.
    pub(crate) fn take_suback(&mut self, c: usize, packet_id: PacketId) -> Option<Vec<ReasonCode>> {
        let packets = &mut self.clients[c].packets;
        let i = packets
            .iter()
            .position(|p| matches!(p, Packet::SubAck(s) if s.packet_id == packet_id))?;
        match packets.remove(i) {
            Packet::SubAck(s) => Some(s.reasons),
            _ => unreachable!(),
        }
    }

    /// UNSUBSCRIBE; runs until idle.
    pub(crate) fn unsubscribe(&mut self, c: usize, filters: &[&str]) {
        let filters = filters.iter().map(|f| ByteStr::from(*f)).collect();
        let packet_id = self.clients[c].next_packet_id();
        self.send(c, &Packet::Unsubscribe(Unsubscribe { packet_id, filters, properties: None }));
        self.run();
    }

    /// PUBLISH from client `c` (not run: call [`Sim::run`]).
    pub(crate) fn publish(&mut self, c: usize, topic: &str, payload: &str, qos: QoS, retain: bool) {
        self.publish_props(c, topic, payload, qos, retain, Properties::default());
    }

    /// PUBLISH with properties from client `c` (not run: call [`Sim::run`]).
    pub(crate) fn publish_props(
        &mut self,
        c: usize,
        topic: &str,
        payload: &str,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.clients[c].next_packet_id());
        let p = Publish {
            dup: false,
            qos,
            retain,
            topic: ByteStr::from(topic),
            packet_id,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            properties: (!properties.is_empty()).then(|| Box::new(properties)),
        };
        self.send(c, &Packet::Publish(p));
    }

    /// Moves shard `s`'s outputs: queued bytes to clients, mesh messages to the rings.
    fn drain_shard(&mut self, s: usize) -> bool {
        let mut progress = false;
        if self.logs.is_some() {
            // As the io layer does: append the batch, report it durable (or hold it).
            while let Some(batch) = self.shards[s].drain_log() {
                match self.held[s].as_mut() {
                    Some(held) => held.push(batch),
                    None => self.make_durable(s, batch),
                }
                progress = true;
            }
        }
        while let Some(action) = self.shards[s].poll_action() {
            progress = true;
            let (conn, close) = match action {
                IoAction::Flush(conn) => (conn, false),
                IoAction::Close(conn) => (conn, true),
            };
            let owner = self.owners.get(&(s, conn)).copied();
            if owner.is_some_and(|c| self.clients[c].stalled) && !close {
                continue;
            }
            let mut out = Vec::new();
            if let Some(tx) = self.shards[s].tx(conn) {
                tx.take_all(&mut out);
            }
            if let Some(c) = owner {
                let cl = &mut self.clients[c];
                for b in out {
                    cl.rx.extend_from_slice(&b);
                }
                if close {
                    cl.closed = true;
                    self.owners.remove(&(s, conn));
                }
            }
        }
        let mut out = Vec::new();
        self.shards[s].drain_mesh_out(&mut out);
        for (to, msg) in out {
            assert_ne!(usize::from(to.0), s, "a shard sends itself a mesh message");
            progress = true;
            if matches!(msg, MeshMsg::Publish(_)) {
                self.mesh_publishes += 1;
            }
            let n = self.n();
            self.rings[s * n + usize::from(to.0)].push_back(msg);
        }
        progress
    }

    /// Decodes what client `c` received and answers acknowledgements if `auto_ack`.
    fn process_client(&mut self, c: usize) -> bool {
        let mut replies = Vec::new();
        let cl = &mut self.clients[c];
        let mut progress = false;
        loop {
            match decode(
                &mut cl.rx,
                &shardmq_codec::Limits { packet_size_max_bytes: u32::MAX },
                cl.version,
            ) {
                Ok(Some(p)) => {
                    progress = true;
                    match p {
                        Packet::Publish(p) => {
                            if cl.auto_ack {
                                if let Some(id) = p.packet_id {
                                    let r = resp(id);
                                    replies.push(match p.qos {
                                        QoS::AtLeastOnce => Packet::PubAck(r),
                                        _ => Packet::PubRec(r),
                                    });
                                }
                            }
                            cl.messages.push(p);
                        }
                        Packet::PubRel(r) if cl.auto_ack => {
                            replies.push(Packet::PubComp(resp(r.packet_id)));
                            cl.packets.push(Packet::PubRel(r));
                        }
                        Packet::PubRec(r) if cl.auto_ack => {
                            replies.push(Packet::PubRel(resp(r.packet_id)));
                            cl.packets.push(Packet::PubRec(r));
                        }
                        other => cl.packets.push(other),
                    }
                }
                Ok(None) => break,
                Err(e) => panic!("client {c} cannot decode the broker's bytes: {e}"),
            }
        }
        for r in replies {
            self.send(c, &r);
        }
        progress
    }

    /// Runs until nothing moves: shard outputs, client replies, mesh messages (one at a time
    /// from a random non-empty, unpaused ring).
    pub(crate) fn run(&mut self) {
        for _ in 0..10_000_000 {
            let mut progress = false;
            let n = self.n();
            let start = self.rng.index(n);
            for i in 0..n {
                progress |= self.drain_shard((start + i) % n);
            }
            for c in 0..self.clients.len() {
                progress |= self.process_client(c);
            }
            let ready: Vec<usize> = (0..n * n)
                .filter(|&i| !self.rings[i].is_empty() && !self.paused.contains(&(i / n, i % n)))
                .collect();
            if !ready.is_empty() {
                let i = ready[self.rng.index(ready.len())];
                let msg = self.rings[i].pop_front().expect("non-empty");
                self.shards[i % n].handle_mesh(ShardId((i / n) as u16), msg, self.now);
                progress = true;
            }
            if !progress {
                return;
            }
        }
        panic!("the simulation does not settle");
    }

    /// Advances the fake clock by `d`, firing every deadline on the way.
    pub(crate) fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        loop {
            let next = self.shards.iter().filter_map(ShardCore::next_deadline).min();
            match next {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    for s in 0..self.n() {
                        if self.shards[s].next_deadline().is_some_and(|t| t <= self.now) {
                            self.shards[s].handle_tick(self.now);
                        }
                    }
                    self.run();
                }
                _ => break,
            }
        }
        self.now = target;
        self.run();
    }

    /// Messages held in the rings (for assertions about the mesh).
    pub(crate) fn ring_len(&self, from: usize, to: usize) -> usize {
        self.rings[from * self.n() + to].len()
    }
}

fn resp(packet_id: PacketId) -> PubResp {
    PubResp { packet_id, reason: ReasonCode::SUCCESS, properties: None }
}
