//! Crash test: the `shardmq` binary as a child process is killed with SIGKILL while
//! publishers send QoS 1 and QoS 2 messages to two offline persistent sessions, then restarted
//! on the same data directory (issue 5, design §6).
//!
//! The contract checked: every message whose PUBACK (QoS 1) or PUBREC/PUBCOMP (QoS 2) the
//! publisher received reaches every subscriber after the restart, and no QoS 2 message reaches
//! a subscriber twice. QoS 1 messages may arrive twice; messages that were never acknowledged
//! may or may not arrive.
//!
//! Each seed runs two crash rounds on 2 shards: subscribers homed on shard 0 (3.1.1,
//! clean session off) and shard 1 (5.0, session expiry), publishers homed on both shards.
//! Round 1: publish, SIGKILL at a seeded moment (after a seeded number of acknowledgements,
//! plus a seeded delay). Restart. The subscribers reconnect, take their queues (completing
//! every QoS 2 flow) and go offline again. Round 2: new publishers publish, SIGKILL again.
//! Restart and let the subscribers collect the rest: what they already received must not
//! come again at QoS 2 (the broker must remember their acknowledgements across the crash).
//! The moment of the kill is chosen by message count and delay; nothing asserts a time.
//!
//! Data directories live under cargo's `CARGO_TARGET_TMPDIR` (the target directory), not
//! `/tmp`, which may be tmpfs (no `O_DIRECT`). A failed seed leaves its directory there and
//! names it; set `SHARDMQ_CRASH_KEEP=1` to keep every directory, `SHARDMQ_CRASH_ROUNDS=N` for
//! another number of crash rounds per seed, `SHARDMQ_CRASH_SNAPSHOT=1` to copy the data
//! directory as each kill left it.

mod common;
#[path = "common/crash_kit.rs"]
mod crash_kit;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use common::{id_on_shard, within, V4, V5};
use crash_kit::{data_dir, Broker, Rng};
use rumqttc::v5::mqttbytes::v5::Packet as P5;
use rumqttc::QoS;
use shardmq_codec::{decode, encode, ByteStr, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Messages per publisher per round (at most: the kill comes first, after at most
/// `KILL_AFTER_MAX` acknowledgements, so the publishers are still busy when it lands).
const MESSAGES_PER_PUBLISHER: u64 = 1000;
/// The kill comes after a seeded number of acknowledgements in this range (per round).
const KILL_AFTER_MIN: u64 = 50;
const KILL_AFTER_MAX: u64 = 600;
/// Unacknowledged PUBLISHes per publisher (below the broker's default `inflight_in_max`, 64).
const INFLIGHT: u16 = 48;
/// After the last expected message, how long the subscribers wait for duplicates.
const QUIET: Duration = Duration::from_millis(1500);

/// A message: (publisher index, sequence number).
type Key = (u32, u64);

/// What the publishers know: which messages the broker acknowledged.
#[derive(Default, Clone)]
struct Acks {
    /// QoS of every message handed to the client.
    qos: HashMap<Key, QoS>,
    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) received: the contract of the brief.
    completed: BTreeSet<Key>,
    /// PUBREC received (QoS 2): the broker owns the message; the publisher may not resend
    /// the PUBLISH [MQTT-4.3.3-x], so it must survive too.
    received: BTreeSet<Key>,
}

impl Acks {
    /// Every message the broker acknowledged (PUBACK, PUBREC or PUBCOMP).
    fn expected(&self) -> BTreeSet<Key> {
        self.completed.union(&self.received).copied().collect()
    }
}

fn topic(run: &str, publisher: u32) -> String {
    format!("crash/{run}/p{publisher}")
}

fn payload(seq: u64, qos: QoS) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.push(qos as u8);
    p
}

fn parse_key(run: &str, topic: &str, payload: &[u8]) -> Key {
    let publisher = topic
        .strip_prefix(&format!("crash/{run}/p"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected topic {topic:?}"));
    assert_eq!(payload.len(), 9, "payload of {topic}: {payload:?}");
    (publisher, u64::from_be_bytes(payload[..8].try_into().expect("8 bytes")))
}

/// One publisher, speaking the codec itself: message `seq` is sent with packet id `seq + 1`,
/// never reused on the connection, so every acknowledgement names exactly one message.
/// (rumqttc is not used here: it reuses a QoS 2 packet id as soon as PUBREC arrives, before
/// PUBCOMP, which makes acknowledgements ambiguous and can make a broker drop the new message
/// as a duplicate.) Publishes `MESSAGES_PER_PUBLISHER` messages of seeded QoS with at most
/// `INFLIGHT` unacknowledged, and records every acknowledgement until the connection breaks
/// (the kill) or all are done.
async fn publish(
    addr: SocketAddr,
    run: String,
    id: String,
    index: u32,
    seed: u64,
    acks: Arc<Mutex<Acks>>,
) {
    use shardmq_codec::{PacketId, ProtocolVersion, Publish};
    let v = ProtocolVersion::V3_1_1;
    let mut stream = within("publisher connect", TcpStream::connect(addr)).await.expect("connect");
    stream.set_nodelay(true).ok();
    let mut rx = BytesMut::new();
    let mut out = BytesMut::new();
    encode(&common::Raw::connect_packet(&id, v, true), v, &mut out).expect("CONNECT");
    stream.write_all(&out).await.expect("CONNECT written");
    match read_packet(&mut stream, &mut rx, v).await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason.0, 0, "{id} refused"),
        other => panic!("{id}: expected CONNACK, got {other:?}"),
    }
    let mut rng = Rng::new(seed);
    let topic = ByteStr::from(topic(&run, index).as_str());
    let (mut next, mut inflight, mut done) = (0u64, 0u16, 0u64);
    let mut ended = "all acknowledged".to_string();
    while done < MESSAGES_PER_PUBLISHER {
        out.clear();
        while inflight < INFLIGHT && next < MESSAGES_PER_PUBLISHER {
            let qos =
                if rng.next_u64().is_multiple_of(2) { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
            let p = Packet::Publish(Publish {
                dup: false,
                qos: if qos == QoS::AtLeastOnce {
                    shardmq_codec::QoS::AtLeastOnce
                } else {
                    shardmq_codec::QoS::ExactlyOnce
                },
                retain: false,
                topic: topic.clone(),
                packet_id: PacketId::new(next as u16 + 1),
                payload: payload(next, qos).into(),
                properties: None,
            });
            encode(&p, v, &mut out).expect("PUBLISH");
            acks.lock().unwrap().qos.insert((index, next), qos);
            next += 1;
            inflight += 1;
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            ended = "write failed".into();
            break;
        }
        let Some(packet) = read_packet(&mut stream, &mut rx, v).await else {
            ended = "closed".into();
            break;
        };
        let key = |r: &shardmq_codec::PubResp| (index, u64::from(r.packet_id.get()) - 1);
        match packet {
            Packet::PubAck(r) | Packet::PubComp(r) => {
                acks.lock().unwrap().completed.insert(key(&r));
                inflight -= 1;
                done += 1;
            }
            Packet::PubRec(r) => {
                acks.lock().unwrap().received.insert(key(&r));
                let rel = Packet::PubRel(shardmq_codec::PubResp {
                    packet_id: r.packet_id,
                    reason: shardmq_codec::ReasonCode::SUCCESS,
                    properties: None,
                });
                out.clear();
                encode(&rel, v, &mut out).expect("PUBREL");
                if stream.write_all(&out).await.is_err() {
                    ended = "write failed".into();
                    break;
                }
            }
            other => panic!("publisher {id}: unexpected {other:?}"),
        }
    }
    if done < MESSAGES_PER_PUBLISHER {
        // Expected after the kill; anything else is worth seeing in the output.
        eprintln!("crash test: publisher {id} stopped after {done} acknowledgements: {ended}");
    }
}

/// The next packet from the broker, or `None` once the connection is closed.
async fn read_packet(
    stream: &mut TcpStream,
    rx: &mut BytesMut,
    v: shardmq_codec::ProtocolVersion,
) -> Option<Packet> {
    let limits = shardmq_codec::Limits { packet_size_max_bytes: 1 << 20 };
    loop {
        match decode(rx, &limits, v) {
            Ok(Some(p)) => return Some(p),
            Ok(None) => {}
            Err(e) => panic!("the broker sent undecodable bytes: {e}"),
        }
        match within("a packet from the broker", stream.read_buf(rx)).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// One round: publishers homed on shards 0 and 1 publish until the broker is SIGKILLed after
/// a seeded number of acknowledgements and a seeded delay.
async fn crash_round(
    broker: Broker,
    run: &str,
    round: u32,
    rng: &mut Rng,
    acks: &Arc<Mutex<Acks>>,
) {
    let before = acks.lock().unwrap().completed.len();
    let kill_after = before + rng.range(KILL_AFTER_MIN, KILL_AFTER_MAX) as usize;
    let kill_delay = Duration::from_millis(rng.range(0, 5));
    let mut tasks = Vec::new();
    for shard in 0..2u16 {
        let index = round * 2 + u32::from(shard);
        let id = id_on_shard(&format!("{run}-pub{index}"), shard, 2);
        let (acks, run) = (Arc::clone(acks), run.to_string());
        tasks.push(tokio::spawn(publish(broker.addr, run, id, index, rng.next_u64(), acks)));
    }
    within("the kill moment (acknowledgements)", async {
        loop {
            let n = acks.lock().unwrap().completed.len();
            if n >= kill_after || tasks.iter().all(|t| t.is_finished()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    tokio::time::sleep(kill_delay).await;
    broker.kill9().await;
    for t in tasks {
        within("the publisher to notice the kill", t).await.expect("publisher task");
    }
}

/// A subscriber's persistent-session options.
fn v4_persistent(o: &mut rumqttc::MqttOptions) {
    o.set_clean_session(false);
}

fn v5_persistent(o: &mut rumqttc::v5::MqttOptions) {
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(3600));
}

/// Sends a 5.0 DISCONNECT (normal; the session stays, it has an expiry interval).
async fn v5_disconnect(mut c: V5) {
    let _ = c.client.disconnect().await;
    let _ = within("DISCONNECT written", async {
        while let Some(Ok(ev)) = c.events.recv().await {
            if let rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect) = ev {
                return;
            }
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.kill();
}

/// Receipts per message of one subscriber.
type Receipts = HashMap<Key, u32>;

/// Collects PUBLISHes until every key of `expected` arrived, then until `QUIET` passes
/// without any (duplicates would show up there).
async fn collect_v4(c: &mut V4, run: &str, acks: &Acks, got: &mut Receipts) {
    let expected = &acks.expected();
    while expected.iter().any(|k| !got.contains_key(k)) {
        let Some(p) = c.publish_within(common::WAIT).await else {
            missing("3.1.1 subscriber", acks, got)
        };
        *got.entry(parse_key(run, &p.topic, &p.payload)).or_default() += 1;
    }
    while let Some(p) = c.publish_within(QUIET).await {
        *got.entry(parse_key(run, &p.topic, &p.payload)).or_default() += 1;
    }
}

/// Fails naming the acknowledged messages that never arrived, with how each was acknowledged.
fn missing(who: &str, acks: &Acks, got: &Receipts) -> ! {
    let expected = acks.expected();
    let missing: Vec<String> = expected
        .iter()
        .filter(|k| !got.contains_key(k))
        .map(|k| {
            let how = match (acks.qos[k], acks.completed.contains(k)) {
                (QoS::AtLeastOnce, _) => "QoS 1 PUBACK",
                (_, true) => "QoS 2 PUBCOMP",
                (_, false) => "QoS 2 PUBREC only",
            };
            format!("{k:?} {how}")
        })
        .collect();
    panic!(
        "{who}: {} acknowledged messages (of {}) never arrived (received {} distinct): {:?}",
        missing.len(),
        expected.len(),
        got.len(),
        &missing[..missing.len().min(20)]
    )
}

async fn next_v5_publish(
    c: &mut V5,
    timeout: Duration,
) -> Option<rumqttc::v5::mqttbytes::v5::Publish> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, c.events.recv()).await {
            Err(_) => return None,
            Ok(Some(Ok(rumqttc::v5::Event::Incoming(P5::Publish(p))))) => return Some(p),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("5.0 subscriber: connection failed: {e}"),
            Ok(None) => panic!("5.0 subscriber: event loop ended"),
        }
    }
}

async fn collect_v5(c: &mut V5, run: &str, acks: &Acks, got: &mut Receipts) {
    let expected = &acks.expected();
    while expected.iter().any(|k| !got.contains_key(k)) {
        let Some(p) = next_v5_publish(c, common::WAIT).await else {
            missing("5.0 subscriber", acks, got)
        };
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        *got.entry(parse_key(run, &topic, &p.payload)).or_default() += 1;
    }
    while let Some(p) = next_v5_publish(c, QUIET).await {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        *got.entry(parse_key(run, &topic, &p.payload)).or_default() += 1;
    }
}

/// The two subscribers, their ids and everything they received so far (over every
/// connection: a QoS 2 message must not arrive twice even across sessions' reconnects).
struct Subscribers {
    run: String,
    v4_id: String,
    v5_id: String,
    got_v4: Receipts,
    got_v5: Receipts,
}

impl Subscribers {
    /// Both sessions reconnect and take their queues: everything acknowledged so far must
    /// arrive, then nothing more for `QUIET`. With `offline_after`, they disconnect again
    /// (the broker must remember what they acknowledged across the next crash).
    async fn drain(&mut self, addr: SocketAddr, acks: &Acks, offline_after: bool) {
        let mut s4 = V4::connect(addr, &self.v4_id, v4_persistent).await;
        collect_v4(&mut s4, &self.run, acks, &mut self.got_v4).await;
        let mut s5 = V5::connect(addr, &self.v5_id, v5_persistent).await;
        collect_v5(&mut s5, &self.run, acks, &mut self.got_v5).await;
        if offline_after {
            s4.disconnect().await;
            v5_disconnect(s5).await;
        } else {
            s4.kill();
            s5.kill();
        }
    }
}

/// Checks one subscriber's receipts against what the publishers know.
fn check(who: &str, got: &Receipts, acks: &Acks) {
    let lost: Vec<&Key> = acks.completed.iter().filter(|k| !got.contains_key(k)).collect();
    assert!(
        lost.is_empty(),
        "{who}: {} messages acknowledged with PUBACK/PUBCOMP were lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let lost: Vec<&Key> = acks.received.iter().filter(|k| !got.contains_key(k)).collect();
    assert!(
        lost.is_empty(),
        "{who}: {} QoS 2 messages the broker answered with PUBREC were lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let mut twice: Vec<(&Key, &u32)> = got
        .iter()
        .filter(|(k, n)| **n > 1 && acks.qos.get(*k) == Some(&QoS::ExactlyOnce))
        .collect();
    twice.sort();
    assert!(twice.is_empty(), "{who}: QoS 2 messages delivered more than once: {twice:?}");
    let unknown: Vec<&Key> = got.keys().filter(|k| !acks.qos.contains_key(k)).collect();
    assert!(unknown.is_empty(), "{who}: messages nobody published: {unknown:?}");
}

/// Crash rounds per seed: `SHARDMQ_CRASH_ROUNDS`, default 2 (a debugging knob).
fn rounds() -> u32 {
    std::env::var("SHARDMQ_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2).max(1)
}

/// With `SHARDMQ_CRASH_SNAPSHOT=1`, copies the data directory as the kill left it (before
/// recovery touches it) to `{dir}.killed-{n}`: a debugging aid.
fn snapshot(dir: &Path, n: u32) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("snapshot dir");
        for e in std::fs::read_dir(from).expect("read_dir").flatten() {
            let target = to.join(e.file_name());
            if e.path().is_dir() {
                copy(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).expect("copy");
            }
        }
    }
    if std::env::var_os("SHARDMQ_CRASH_SNAPSHOT").is_some() {
        copy(dir, &dir.with_extension(format!("killed-{n}")));
    }
}

async fn crash_test(seed: u64, durability: &str) {
    let mut rng = Rng::new(seed);
    let run = format!("s{seed}-{}", std::process::id());
    let dir = data_dir(&run);
    eprintln!("crash test: seed {seed}, durability {durability}, data dir {}", dir.display());
    let filter = format!("crash/{run}/#");
    let sub4_id = id_on_shard(&format!("{run}-sub4"), 0, 2);
    let sub5_id = id_on_shard(&format!("{run}-sub5"), 1, 2);

    // The persistent sessions subscribe, then go offline.
    let broker = Broker::start(&dir, durability).await;
    let mut s4 = V4::connect(broker.addr, &sub4_id, v4_persistent).await;
    s4.subscribe(&filter, QoS::ExactlyOnce).await;
    s4.disconnect().await;
    let mut s5 = V5::connect(broker.addr, &sub5_id, v5_persistent).await;
    s5.subscribe(&filter, rumqttc::v5::mqttbytes::QoS::ExactlyOnce).await;
    v5_disconnect(s5).await;

    let mut subs = Subscribers {
        run: run.clone(),
        v4_id: sub4_id,
        v5_id: sub5_id,
        got_v4: Receipts::new(),
        got_v5: Receipts::new(),
    };
    let acks = Arc::new(Mutex::new(Acks::default()));
    crash_round(broker, &run, 0, &mut rng, &acks).await;
    for round in 1..rounds() {
        snapshot(&dir, round);
        let broker = Broker::start(&dir, durability).await;
        // The subscribers come back for what is queued, then go offline again.
        let so_far = acks.lock().unwrap().clone();
        subs.drain(broker.addr, &so_far, true).await;
        crash_round(broker, &run, round, &mut rng, &acks).await;
    }

    snapshot(&dir, rounds());
    let broker = Broker::start(&dir, durability).await;
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    eprintln!(
        "crash test: seed {seed}: {} messages handed to the clients, {} PUBACK/PUBCOMP, {} PUBREC",
        acks.qos.len(),
        acks.completed.len(),
        acks.received.len()
    );
    subs.drain(broker.addr, &acks, false).await;
    check(&format!("seed {seed}: 3.1.1 subscriber on shard 0"), &subs.got_v4, &acks);
    check(&format!("seed {seed}: 5.0 subscriber on shard 1"), &subs.got_v5, &acks);
    broker.kill9().await;
    if std::env::var_os("SHARDMQ_CRASH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

macro_rules! crash_seeds {
    ($($name:ident: $seed:expr, $durability:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            crash_test($seed, $durability).await;
        }
    )*};
}

// `sync` is the contract. `batch:<ms>` acknowledges only after an fdatasync too (it waits up
// to <ms> to share it), so the same guarantee holds. `none` acknowledges at append: a kill
// may lose acknowledged messages by design, so it is not tested here.
crash_seeds! {
    kill9_sync_seed_1: 1, "sync";
    kill9_sync_seed_2: 2, "sync";
    kill9_sync_seed_3: 3, "sync";
    kill9_sync_seed_4: 4, "sync";
    kill9_batch_seed_5: 5, "batch:20";
    kill9_batch_seed_6: 6, "batch:20";
}
