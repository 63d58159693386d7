//! Crash test with *online* subscribers (issue 10): publishers with persistent sessions send
//! QoS 1 and QoS 2 messages to subscribers with persistent sessions that are connected and
//! acknowledging, the `shardmq` binary is killed with SIGKILL at a seeded moment, restarted
//! on the same data directory, and every client reconnects and carries on as MQTT requires:
//! a publisher resends what was not completed (PUBLISH with DUP, or PUBREL after PUBREC), a
//! subscriber keeps its session state (the packet ids it answered PUBREC for and has not
//! seen PUBREL for yet).
//!
//! Both sides speak the codec themselves, so the subscriber counts what is on the wire: a
//! QoS 2 PUBLISH whose packet id the subscriber answered PUBREC for and has not seen PUBREL
//! for is a resend (not a delivery, [MQTT-4.3.3-9]); any other PUBLISH is a delivery. The
//! contract checked after the last restart, once every publisher's final marker message
//! arrived (a marker is published only after all of its publisher's messages completed, and
//! one publisher's messages reach a subscriber in order):
//! - every message arrived (every publisher completed all of them);
//! - no QoS 2 message whose copies are all on its publisher's shard arrived twice (with
//!   copies on other shards a narrow window remains, ARCHITECTURE.md "Known window": such
//!   duplicates are printed, not failed);
//! - the broker never sent a PUBLISH with a packet id the subscriber was still holding for
//!   another message (it would take the new message for a resend of the old one: lost).
//!
//! Each seed runs `KILLS` crash rounds on 2 shards, a 5.0 subscriber (session expiry 300)
//! and a 3.1.1 subscriber (clean session off) homed on different shards, publishers on
//! both. After each restart the subscribers or the publishers reconnect first (seeded).
//! Nothing asserts a time: the kill comes after a seeded number of completions plus a
//! seeded delay, and the end is the markers' arrival.

mod common;
#[path = "common/crash_kit.rs"]
mod crash_kit;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{id_on_shard, within, Raw};
use crash_kit::{data_dir, Broker, Rng};
use shardmq_codec::{
    decode, encode, ByteStr, Packet, PacketId, Properties, ProtocolVersion, PubResp, Publish, QoS,
    ReasonCode,
};
use shardmq_engine::core::shard::ShardCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Messages per publisher (the marker comes after them).
const MESSAGES: u64 = 400;
/// Publishers per shard.
const PUBLISHERS_PER_SHARD: u32 = 2;
/// Unacknowledged PUBLISHes per publisher (below the broker's `inflight_in_max`, 64).
const INFLIGHT: usize = 24;
/// Crash rounds per seed.
const KILLS: u32 = 2;

/// A message: (publisher index, sequence number). Sequence `MESSAGES` is the marker.
type Key = (u32, u64);

fn topic(run: &str, publisher: u32) -> String {
    format!("online/{run}/p{publisher}")
}

fn parse_key(run: &str, topic: &str, payload: &[u8]) -> Key {
    let publisher = topic
        .strip_prefix(&format!("online/{run}/p"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected topic {topic:?}"));
    assert_eq!(payload.len(), 8, "payload of {topic}: {payload:?}");
    (publisher, u64::from_be_bytes(payload.try_into().expect("8 bytes")))
}

fn resp(id: PacketId) -> PubResp {
    PubResp { packet_id: id, reason: ReasonCode::SUCCESS, properties: None }
}

/// A connection speaking the codec, with the read half's buffer.
struct Wire {
    stream: TcpStream,
    rx: BytesMut,
    v: ProtocolVersion,
}

impl Wire {
    /// Connects with a persistent session (`clean`: only the first time); returns the
    /// connection and Session Present, or `None` if the broker is gone.
    async fn connect(
        addr: SocketAddr,
        id: &str,
        v: ProtocolVersion,
        clean: bool,
    ) -> Option<(Wire, bool)> {
        let stream = within("connect", TcpStream::connect(addr)).await.ok()?;
        stream.set_nodelay(true).ok();
        let mut w = Wire { stream, rx: BytesMut::new(), v };
        let mut connect = Raw::connect_packet(id, v, clean);
        if let (Packet::Connect(c), true) = (&mut connect, v == ProtocolVersion::V5) {
            c.properties =
                Properties { session_expiry_interval_secs: Some(300), ..Default::default() };
        }
        if !w.send(&[connect]).await {
            return None;
        }
        match within("CONNACK", w.recv()).await {
            Some(Packet::ConnAck(a)) => {
                assert_eq!(a.reason.0, 0, "{id} refused");
                Some((w, a.session_present))
            }
            None => None,
            other => panic!("{id}: expected CONNACK, got {other:?}"),
        }
    }

    /// Writes packets; false if the connection is gone.
    async fn send(&mut self, packets: &[Packet]) -> bool {
        let mut out = BytesMut::new();
        for p in packets {
            encode(p, self.v, &mut out).expect("encodable");
        }
        self.stream.write_all(&out).await.is_ok()
    }

    /// The next packet, `None` once the connection is closed (no time limit: a subscriber
    /// may wait while nothing is published).
    async fn recv(&mut self) -> Option<Packet> {
        let limits = shardmq_codec::Limits { packet_size_max_bytes: 1 << 20 };
        loop {
            match decode(&mut self.rx, &limits, self.v) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => panic!("the broker sent undecodable bytes: {e}"),
            }
            match self.stream.read_buf(&mut self.rx).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// A publisher's session state (kept across connections, as MQTT requires).
#[derive(Default)]
struct PubState {
    /// The next sequence number to publish (message `seq` has packet id `seq + 1`, never
    /// reused: every acknowledgement names one message).
    next: u64,
    /// Unacknowledged messages in send order: seq → (QoS, PUBREC received).
    inflight: BTreeMap<u64, (QoS, bool)>,
    /// PUBACK/PUBCOMP received (per connection too, for the kill moment).
    completed: u64,
    /// QoS of every message handed out.
    qos: HashMap<u64, QoS>,
}

/// One connection of publisher `index`: resends what is not completed, then publishes until
/// the marker completes or the connection breaks. Returns true when everything completed.
async fn publish(
    addr: SocketAddr,
    run: &str,
    index: u32,
    id: &str,
    state: &Mutex<PubState>,
    rng: &mut Rng,
) -> bool {
    let v = ProtocolVersion::V3_1_1;
    // The session is durable once anything was acknowledged (CONNACK does not wait).
    let acked = {
        let s = state.lock().unwrap();
        s.completed > 0 || s.inflight.values().any(|(_, rec)| *rec)
    };
    // Clean session 0: a persistent session (3.1.1).
    let Some((mut w, present)) = Wire::connect(addr, id, v, false).await else { return false };
    assert!(!acked || present, "publisher {id}: its persistent session was lost");
    let topic = ByteStr::from(topic(run, index).as_str());
    let packet = |seq: u64, qos: QoS, dup: bool| {
        Packet::Publish(Publish {
            dup,
            qos,
            retain: false,
            topic: topic.clone(),
            packet_id: PacketId::new(seq as u16 + 1),
            payload: Bytes::copy_from_slice(&seq.to_be_bytes()),
            properties: None,
        })
    };
    // Resend in the original order [MQTT-4.4.0-1].
    let resend: Vec<Packet> = state
        .lock()
        .unwrap()
        .inflight
        .iter()
        .map(|(&seq, &(qos, rec))| {
            if rec {
                Packet::PubRel(resp(PacketId::new(seq as u16 + 1).unwrap()))
            } else {
                packet(seq, qos, true)
            }
        })
        .collect();
    if !w.send(&resend).await {
        return false;
    }
    loop {
        let mut out = Vec::new();
        {
            let mut s = state.lock().unwrap();
            while s.inflight.len() < INFLIGHT && s.next < MESSAGES {
                let qos = if rng.next_u64().is_multiple_of(2) {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                let seq = s.next;
                s.next += 1;
                s.qos.insert(seq, qos);
                s.inflight.insert(seq, (qos, false));
                out.push(packet(seq, qos, false));
            }
            if s.next == MESSAGES && s.inflight.is_empty() {
                // Everything completed: the marker, at QoS 2.
                s.next += 1;
                s.qos.insert(MESSAGES, QoS::ExactlyOnce);
                s.inflight.insert(MESSAGES, (QoS::ExactlyOnce, false));
                out.push(packet(MESSAGES, QoS::ExactlyOnce, false));
            }
            if s.next > MESSAGES && s.inflight.is_empty() {
                return true;
            }
        }
        if !w.send(&out).await {
            return false;
        }
        let Some(p) = w.recv().await else { return false };
        let rel = {
            let mut s = state.lock().unwrap();
            let seq = |r: &PubResp| u64::from(r.packet_id.get()) - 1;
            match p {
                Packet::PubAck(r) | Packet::PubComp(r) => {
                    assert!(s.inflight.remove(&seq(&r)).is_some(), "{id}: unexpected {r:?}");
                    s.completed += 1;
                    None
                }
                Packet::PubRec(r) => {
                    let seq = seq(&r);
                    match s.inflight.get_mut(&seq) {
                        Some((QoS::ExactlyOnce, rec)) => *rec = true,
                        other => panic!("{id}: PUBREC for {seq} in state {other:?}"),
                    }
                    Some(Packet::PubRel(resp(r.packet_id)))
                }
                other => panic!("publisher {id}: unexpected {other:?}"),
            }
        };
        if let Some(rel) = rel {
            if !w.send(&[rel]).await {
                return false;
            }
        }
    }
}

/// A subscriber's session state (kept across connections, as MQTT requires).
#[derive(Default)]
struct SubState {
    /// QoS 2 packet ids answered with PUBREC, PUBREL not received yet, and their message.
    held: HashMap<u16, Key>,
    /// Deliveries per message.
    got: HashMap<Key, u32>,
    /// QoS of each delivery received (the broker's downgrade would show here).
    violations: Vec<String>,
    markers: u32,
}

/// One connection of a subscriber: takes PUBLISHes (Method B of [MQTT-4.3.3]) until the
/// connection breaks.
async fn subscribe(
    addr: SocketAddr,
    run: &str,
    id: &str,
    v: ProtocolVersion,
    state: &Mutex<SubState>,
) {
    let Some((mut w, present)) = Wire::connect(addr, id, v, false).await else { return };
    assert!(present, "subscriber {id}: its persistent session was lost");
    while let Some(p) = w.recv().await {
        let answer = {
            let mut s = state.lock().unwrap();
            match p {
                Packet::Publish(p) => {
                    let key = parse_key(run, &p.topic, &p.payload);
                    let id = p.packet_id;
                    match (p.qos, id) {
                        (QoS::ExactlyOnce, Some(pid)) => {
                            match s.held.get(&pid.get()) {
                                Some(k) if *k == key => {}
                                Some(k) => {
                                    let k = *k;
                                    s.violations.push(format!(
                                        "PUBLISH of {key:?} with packet id {pid}, still held for {k:?} (no PUBREL yet)"
                                    ));
                                }
                                None => {
                                    s.held.insert(pid.get(), key);
                                    *s.got.entry(key).or_default() += 1;
                                    s.markers += u32::from(key.1 == MESSAGES);
                                }
                            }
                            Packet::PubRec(resp(pid))
                        }
                        (QoS::AtLeastOnce, Some(pid)) => {
                            *s.got.entry(key).or_default() += 1;
                            Packet::PubAck(resp(pid))
                        }
                        _ => panic!("{id:?}: PUBLISH at {:?} for a QoS 2 subscription", p.qos),
                    }
                }
                Packet::PubRel(r) => {
                    s.held.remove(&r.packet_id.get());
                    Packet::PubComp(resp(r.packet_id))
                }
                other => panic!("subscriber {id}: unexpected {other:?}"),
            }
        };
        if !w.send(&[answer]).await {
            return;
        }
    }
}

struct Clients {
    run: String,
    pubs: Vec<(u32, String, Arc<Mutex<PubState>>)>,
    subs: Vec<(String, ProtocolVersion, Arc<Mutex<SubState>>)>,
    /// Per subscriber: the publishers it subscribes to.
    sub_pubs: Vec<Vec<u32>>,
}

impl Clients {
    fn completed(&self) -> u64 {
        self.pubs.iter().map(|(_, _, s)| s.lock().unwrap().completed).sum()
    }

    /// True once every subscriber has the markers of every publisher it subscribes to.
    fn all_markers(&self) -> bool {
        let mut want = self.sub_pubs.iter().map(|p| p.len() as u32);
        self.subs.iter().all(|(_, _, s)| s.lock().unwrap().markers >= want.next().unwrap_or(0))
    }

    /// True once some subscriber has a marker.
    fn any_marker(&self) -> bool {
        self.subs.iter().any(|(_, _, s)| s.lock().unwrap().markers > 0)
    }

    /// Starts every client's connection (subscribers first or publishers first).
    fn spawn(
        &self,
        addr: SocketAddr,
        subs_first: bool,
        rng: &mut Rng,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let spawn_subs = |tasks: &mut Vec<_>| {
            for (id, v, state) in &self.subs {
                let (run, id, v, state) = (self.run.clone(), id.clone(), *v, Arc::clone(state));
                tasks
                    .push(tokio::spawn(async move { subscribe(addr, &run, &id, v, &state).await }));
            }
        };
        if subs_first {
            spawn_subs(&mut tasks);
        }
        for (index, id, state) in &self.pubs {
            let (run, index, id, state) = (self.run.clone(), *index, id.clone(), Arc::clone(state));
            let mut r = Rng::new(rng.next_u64());
            tasks.push(tokio::spawn(async move {
                publish(addr, &run, index, &id, &state, &mut r).await;
            }));
        }
        if !subs_first {
            spawn_subs(&mut tasks);
        }
        tasks
    }
}

async fn online_crash_test(seed: u64, durability: &str) {
    let mut rng = Rng::new(seed);
    let run = format!("o{seed}-{}", std::process::id());
    let dir = data_dir(&run);
    eprintln!(
        "online crash test: seed {seed}, durability {durability}, data dir {}",
        dir.display()
    );
    let sub_shard = (seed % 2) as u16;
    let clients = Clients {
        run: run.clone(),
        pubs: (0..PUBLISHERS_PER_SHARD * 2)
            .map(|i| {
                (i, id_on_shard(&format!("{run}-pub{i}"), (i % 2) as u16, 2), Default::default())
            })
            .collect(),
        subs: vec![
            (
                id_on_shard(&format!("{run}-sub5"), sub_shard, 2),
                ProtocolVersion::V5,
                Default::default(),
            ),
            (
                id_on_shard(&format!("{run}-sub4"), 1 - sub_shard, 2),
                ProtocolVersion::V3_1_1,
                Default::default(),
            ),
        ],
        // The 5.0 subscriber takes every publisher's messages; the 3.1.1 one only those of
        // publishers on its shard, so the messages of publishers on the 5.0 subscriber's
        // shard have no copy on another shard.
        sub_pubs: vec![
            (0..PUBLISHERS_PER_SHARD * 2).collect(),
            (0..PUBLISHERS_PER_SHARD * 2).filter(|i| i % 2 != u32::from(sub_shard)).collect(),
        ],
    };
    let mut broker = Broker::start(&dir, durability).await;
    // The subscribers' sessions and subscriptions exist before anything is published.
    for ((id, v, _), pubs) in clients.subs.iter().zip(&clients.sub_pubs) {
        // (3.1.1: clean session 0 is what makes it persistent.)
        let clean = *v == ProtocolVersion::V5;
        let (mut w, _) = Wire::connect(broker.addr, id, *v, clean).await.expect("CONNACK");
        for &i in pubs {
            let filter = topic(&run, i);
            assert!(w.send(&[Raw::subscribe_packet(&filter, QoS::ExactlyOnce)]).await);
            match within("SUBACK", w.recv()).await {
                Some(Packet::SubAck(_)) => {}
                other => panic!("{id}: expected SUBACK, got {other:?}"),
            }
        }
        let disconnect = Packet::Disconnect(shardmq_codec::Disconnect {
            reason: ReasonCode::SUCCESS,
            properties: None,
        });
        assert!(w.send(&[disconnect]).await);
        assert!(within("the broker to close", w.recv()).await.is_none());
    }
    let mut tasks = clients.spawn(broker.addr, true, &mut rng);
    for round in 0..KILLS {
        let kill_after = clients.completed() + rng.range(30, 600);
        let kill_delay = Duration::from_millis(rng.range(0, 5));
        within("the kill moment (completions)", async {
            while clients.completed() < kill_after && !clients.any_marker() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        tokio::time::sleep(kill_delay).await;
        broker.kill9().await;
        for t in tasks.drain(..) {
            within("the clients to notice the kill", t).await.expect("client task");
        }
        eprintln!(
            "online crash test: seed {seed}: kill {round} after {} completions",
            clients.completed()
        );
        broker = Broker::start(&dir, durability).await;
        tasks = clients.spawn(broker.addr, rng.next_u64().is_multiple_of(2), &mut rng);
    }
    within("every subscriber to receive every publisher's marker", async {
        while !clients.all_markers() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    broker.kill9().await;
    for t in tasks {
        within("the clients to notice the end", t).await.expect("client task");
    }
    for ((id, v, state), pubs) in clients.subs.iter().zip(&clients.sub_pubs) {
        let s = state.lock().unwrap();
        let who = format!("seed {seed}: {v:?} subscriber {id}");
        assert!(s.violations.is_empty(), "{who}: {:?}", s.violations);
        let home = |id: &str| ShardCore::home_shard(id.as_bytes(), 2);
        for (index, pub_id, p) in clients.pubs.iter().filter(|(i, _, _)| pubs.contains(i)) {
            let p = p.lock().unwrap();
            // Its messages have copies on this subscriber's shard only.
            let one_shard = home(pub_id) == home(id) && *index % 2 == u32::from(sub_shard);
            let missing: Vec<(u64, QoS)> = (0..=MESSAGES)
                .filter(|q| !s.got.contains_key(&(*index, *q)))
                .map(|q| (q, p.qos[&q]))
                .collect();
            assert!(
                missing.is_empty(),
                "{who}: from publisher {index}, never arrived: {missing:?}"
            );
            let twice: Vec<u64> = (0..=MESSAGES)
                .filter(|q| p.qos[q] == QoS::ExactlyOnce && s.got[&(*index, *q)] > 1)
                .collect();
            if one_shard {
                assert!(
                    twice.is_empty(),
                    "{who}: from publisher {index} (one shard), QoS 2 arrived twice: {twice:?}"
                );
            } else if !twice.is_empty() {
                // The known window across shards (ARCHITECTURE.md, "Known window").
                eprintln!("{who}: from publisher {index} (copies on 2 shards): twice: {twice:?}");
            }
        }
    }
    if std::env::var_os("SHARDMQ_CRASH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

macro_rules! online_seeds {
    ($($name:ident: $seeds:expr, $durability:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for seed in $seeds {
                online_crash_test(seed, $durability).await;
            }
        }
    )*};
}

online_seeds! {
    online_kill9_sync: 1..=8, "sync";
    online_kill9_batch: 9..=12, "batch:20";
}
