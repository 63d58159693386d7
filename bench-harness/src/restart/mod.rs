//! The `restart` scenario: how long a broker takes to come back with N stored messages.
//!
//! 1. Start the broker with a fresh data directory. A persistent session (3.1.1 clean session
//!    off, or 5.0 clean start off with a session expiry) subscribes to `prefix/#` at QoS 1 and
//!    disconnects.
//! 2. Publishers (the load generator, max rate, QoS 1) fill its offline queue with N messages,
//!    every one acknowledged.
//! 3. Stop the broker: shardmq with SIGKILL by default (a crash: only the log survives), or
//!    SIGTERM with `--stop term`; Mosquitto always with SIGTERM, because it writes its
//!    persistence file only at a clean exit and every `autosave_interval` (a SIGKILL would lose
//!    every message stored since the last snapshot). Measure the data directory.
//! 4. Start it again on the same data directory and measure from the spawn: until it accepts
//!    TCP connections, until the session's CONNACK, until its first queued message, until all
//!    N arrived (each acknowledged at once). Loss and duplicates are counted per message.
//!
//! Times here are measurements for the report, never assertions.

use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

mod report;
mod session;

pub use report::{main, table, RestartReport};
pub use session::dir_bytes;
use session::Session;

use crate::broker::{Broker, BrokerKind, BrokerOptions, BrokerSpec};
use crate::load::{ConnSpec, LoadSpec, Part, Role, Schedule};
use crate::payload::Header;
use crate::sys::monotonic_ns;
use crate::wire::{self, kind};

/// The scenario's parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestartParams {
    /// Messages stored in the offline session before the restart.
    pub messages: u64,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Publishers filling the queue (more publishers: more records per group commit).
    pub publishers: u32,
    /// Unacknowledged PUBLISHes per publisher.
    pub inflight: u32,
    /// Stop shardmq with SIGKILL (true) or SIGTERM.
    pub kill: bool,
    /// Longest fill, and longest replay (seconds).
    pub timeout_secs: f64,
    /// MQTT protocol level.
    pub mqtt_version: u8,
}

/// One broker's restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestartResult {
    /// Broker name (with its persistence variant).
    pub broker: String,
    /// Durability mode as reported by the harness.
    pub durability: String,
    /// The command line of the restarted broker.
    pub broker_command: String,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// How the broker was stopped: `SIGKILL` or `SIGTERM`.
    pub stop: String,
    /// Messages acknowledged to the publishers (stored in the session).
    pub stored: u64,
    /// Fill: first connect to the last acknowledgement.
    pub fill_secs: f64,
    /// Fill rate, acknowledged messages per second.
    pub fill_per_sec: f64,
    /// Broker CPU per stored message during the fill, µs.
    pub fill_broker_cpu_us_per_msg: Option<f64>,
    /// Data directory after the stop: bytes allocated on disk (like `du`).
    pub data_bytes: u64,
    /// Data directory after the stop: sum of file lengths.
    pub data_bytes_apparent: u64,
    /// From the stop signal to the process's exit.
    pub exit_secs: f64,
    /// From the spawn of the new process until it accepted a TCP connection.
    pub listen_secs: f64,
    /// From the spawn until the resumed session's CONNACK.
    pub connack_secs: f64,
    /// The CONNACK's Session Present flag.
    pub session_present: bool,
    /// From the spawn until the first queued message arrived.
    pub first_message_secs: Option<f64>,
    /// From the spawn until every stored message arrived (None: some never did).
    pub all_messages_secs: Option<f64>,
    /// Distinct stored messages received after the restart.
    pub received: u64,
    /// Stored messages that never arrived.
    pub lost: u64,
    /// Receipts of a message already received.
    pub duplicates: u64,
    /// Distinct messages per second, first message to last.
    pub replay_per_sec: f64,
    /// Broker CPU from the spawn to the CONNACK (recovery), µs.
    pub recovery_broker_cpu_us: Option<u64>,
    /// Broker RSS once the session was resumed (before the replay), KiB.
    pub rss_kib_recovered: Option<u64>,
}

/// The options one broker gets for this scenario: queues deep enough for N messages.
pub fn options(
    spec: &BrokerSpec,
    base: &BrokerOptions,
    p: &RestartParams,
) -> Result<BrokerOptions> {
    let mut opts = base.clone();
    spec.apply(&mut opts);
    match spec.kind {
        BrokerKind::Rumqttd => bail!("rumqttd keeps sessions in memory only: nothing to restart"),
        BrokerKind::Mosquitto => opts.mosquitto_persistence = true,
        BrokerKind::Shardmq => {}
    }
    let queue = p.messages + 1000;
    opts.queued_messages_max = queue;
    let per_msg = p.payload_bytes as u64 + 256;
    opts.shardmq_limits = vec![
        ("session_queue_messages_max".into(), queue.min(u64::from(u32::MAX))),
        ("session_queue_bytes_max".into(), (queue * per_msg).max(16 << 20)),
    ];
    opts.connections_max = u64::from(p.publishers) + 10;
    // Recovery of N messages happens before the broker listens.
    opts.start_timeout_secs = (p.timeout_secs as u64).max(15);
    Ok(opts)
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// Runs the scenario against one broker (started and stopped here).
pub fn run(
    spec: &BrokerSpec,
    opts: &BrokerOptions,
    p: &RestartParams,
    harness_cpus: &[usize],
    quiet: bool,
) -> Result<RestartResult> {
    let version = wire::protocol_version(p.mqtt_version)?;
    let mut broker = Broker::start(spec.kind, opts)?;
    broker.name = spec.name();
    let kill = p.kill && spec.kind == BrokerKind::Shardmq;
    let mut r = RestartResult {
        broker: broker.name.clone(),
        durability: broker.durability.clone(),
        stop: if kill { "SIGKILL" } else { "SIGTERM" }.into(),
        ..RestartResult::default()
    };
    let nonce = format!("{:x}{:x}", std::process::id(), monotonic_ns() & 0xFFFF_FFFF);
    let prefix = format!("shardmq-bench/{nonce}/restart");
    let session_id = format!("bench-{nonce}-session");

    // 1. The persistent session subscribes and goes offline.
    let (mut s, _) = Session::connect(broker.addr, &session_id, version)?;
    s.subscribe(&format!("{prefix}/#"), version)?;
    s.disconnect();

    // 2. Fill its queue.
    let (stored, fill_secs, fill_cpu) = fill(&broker, p, &prefix, &nonce, harness_cpus, quiet)?;
    r.stored = stored;
    r.fill_secs = fill_secs;
    r.fill_per_sec = stored as f64 / fill_secs.max(1e-9);
    r.fill_broker_cpu_us_per_msg = fill_cpu.map(|c| c as f64 / stored.max(1) as f64);

    // 3. Stop, measure the data directory.
    let t = Instant::now();
    broker.halt(kill)?;
    r.exit_secs = secs(t);
    let data = broker.data_dir().context("no data directory")?;
    (r.data_bytes, r.data_bytes_apparent) = dir_bytes(&data);

    // 4. Restart and resume the session.
    let t0 = Instant::now();
    broker.restart(spec.kind, opts, kill)?;
    r.listen_secs = secs(t0);
    r.broker_command = broker.command.clone();
    let (mut s, present) = Session::connect(broker.addr, &session_id, version)?;
    r.connack_secs = secs(t0);
    r.session_present = present;
    r.recovery_broker_cpu_us = broker.cpu_us();
    r.rss_kib_recovered = broker.rss_kib();
    replay(&mut s, p, stored, t0, &mut r, quiet)?;
    s.disconnect();
    broker.stop();
    if r.lost > 0 && r.error.is_none() {
        r.error = Some(format!("{} of {} stored messages lost across the restart", r.lost, stored));
    }
    Ok(r)
}

/// Fills the session's queue with the load generator; returns (messages acknowledged, fill
/// seconds, broker CPU µs during the fill).
fn fill(
    broker: &Broker,
    p: &RestartParams,
    prefix: &str,
    nonce: &str,
    harness_cpus: &[usize],
    quiet: bool,
) -> Result<(u64, f64, Option<u64>)> {
    let publishers = p.publishers.max(1);
    let per = p.messages.div_ceil(u64::from(publishers)).max(1);
    let conns = (0..publishers)
        .map(|i| ConnSpec {
            client_id: format!("bench-{nonce}-p{i}"),
            source_ip: None,
            role: Role::Publisher {
                id: i,
                topic: format!("{prefix}/{i}"),
                retain: false,
                topic_per_message: false,
            },
        })
        .collect();
    let spec = LoadSpec {
        broker: broker.addr,
        subscriber_broker: None,
        subscriber_brokers: Vec::new(),
        transport: Default::default(),
        mqtt_version: p.mqtt_version,
        qos: 1,
        payload_bytes: p.payload_bytes,
        rate_per_publisher: 0.0,
        flood: false,
        messages_per_publisher: per,
        // Nobody receives during the fill: no end-to-end window.
        window_messages: u64::MAX,
        inflight_max: p.inflight.clamp(1, 30_000),
        groups_per_publisher: 0,
        publishers_total: publishers,
        keep_alive_secs: 60,
        connect_concurrency: 64,
        ordered: true,
        quiet_ms: 500,
        threads: 1,
        harness_cpus: harness_cpus.to_vec(),
        conns,
    };
    let cpu0 = broker.cpu_us();
    let t = Instant::now();
    let part = Part::start(spec)?;
    let now = monotonic_ns();
    let end = now + (p.timeout_secs * 1e9) as u64;
    let _ = part.ctl.schedule.set(Schedule {
        start_ns: now,
        measure_start_ns: now,
        measure_end_ns: end,
        drain_end_ns: end + 5_000_000_000,
    });
    let mut last_print = Instant::now();
    while part.ctl.finished_threads.load(Relaxed) < part.thread_count() {
        if !quiet && last_print.elapsed() > Duration::from_millis(250) {
            last_print = Instant::now();
            let sent = part.ctl.sent.load(Relaxed);
            eprint!(
                "\r\x1b[K[{}] restart: fill | sent {sent} of {}",
                broker.name,
                per * u64::from(publishers)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if !quiet {
        eprint!("\r\x1b[K");
    }
    let fill_secs = secs(t);
    let cpu = broker.cpu_us().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    let result = part.join()?;
    if result.closed_by_broker > 0 || result.failed > 0 {
        bail!("fill: {}", result.errors.join("; "));
    }
    let stored = result.sent_by_publisher.iter().map(|&(_, n)| n).sum();
    Ok((stored, fill_secs, cpu))
}

/// Receives the stored messages, acknowledging each; fills the replay fields of `r`.
fn replay(
    s: &mut Session,
    p: &RestartParams,
    stored: u64,
    t0: Instant,
    r: &mut RestartResult,
    quiet: bool,
) -> Result<()> {
    let publishers = p.publishers.max(1) as usize;
    let per = p.messages.div_ceil(publishers as u64).max(1) as usize;
    let mut seen = vec![vec![0u64; per.div_ceil(64)]; publishers];
    let (mut distinct, mut dups) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs_f64(p.timeout_secs);
    let mut acks = Vec::with_capacity(64 * 1024);
    let mut last_print = Instant::now();
    // Bytes that came with the CONNACK are already in `rx`: handle them before reading.
    // Ten quiet seconds end the replay (a broker that lost messages sends nothing more).
    let mut more = true;
    while more && distinct < stored && Instant::now() < deadline {
        let mut pos = 0;
        while let Some((len, body)) = wire::split_frame(&s.rx[pos..]).map_err(|e| anyhow!(e))? {
            let frame = &s.rx[pos..pos + len];
            pos += len;
            if frame[0] >> 4 != kind::PUBLISH {
                continue;
            }
            let view =
                wire::parse_publish(frame[0], &frame[body..], s.v5).map_err(|e| anyhow!(e))?;
            if let Some(id) = view.packet_id {
                acks.extend_from_slice(&wire::ack(kind::PUBACK, id));
            }
            let h = Header::read(view.payload).context("a payload without the bench header")?;
            let (pi, seq) = (h.publisher as usize, h.seq as usize);
            let word = seen.get_mut(pi).and_then(|w| w.get_mut(seq / 64));
            let word =
                word.with_context(|| format!("message {seq} of publisher {pi}: never sent"))?;
            if *word & (1 << (seq % 64)) != 0 {
                dups += 1;
            } else {
                *word |= 1 << (seq % 64);
                distinct += 1;
            }
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
        }
        s.rx.drain(..pos);
        if !acks.is_empty() {
            s.stream.write_all(&acks)?;
            acks.clear();
        }
        if !quiet && last_print.elapsed() > Duration::from_millis(250) {
            last_print = Instant::now();
            eprint!("\r\x1b[K[{}] restart: replay | received {distinct} of {stored}", r.broker);
        }
        more = distinct >= stored || s.fill(Duration::from_secs(10))?;
    }
    if !quiet {
        eprint!("\r\x1b[K");
    }
    r.received = distinct;
    r.duplicates = dups;
    r.lost = stored.saturating_sub(distinct);
    r.first_message_secs = first.map(|f| (f - t0).as_secs_f64());
    if distinct >= stored {
        r.all_messages_secs = Some((last - t0).as_secs_f64());
    }
    if let Some(f) = first {
        r.replay_per_sec = distinct as f64 / (last - f).as_secs_f64().max(1e-6);
    }
    Ok(())
}
