//! The scenarios, and one run of a scenario against one broker.
//!
//! | scenario | connections | what it shows |
//! |---|---|---|
//! | `fanout` | 1 publisher → N subscribers of one topic | routing one message to many sessions |
//! | `fanin` | N publishers (one topic each) → 1 subscriber on `+` | wildcard matching, one hot session |
//! | `p2p` | N pairs, one topic per pair | the per-message path at QoS 1 / 2 |
//! | `shared` | 1 publisher → `$share/g/...` group of N | shared subscriptions: each message once |
//! | `conn` | N idle connections (worker processes, many source addresses) | connect rate, memory per connection |
//! | `retained` | N retained topics, then one `#` subscriber | retained store and wildcard replay |

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Duration;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::load::{ConnSpec, LoadSpec, Part, PartResult, Role, Schedule};
use crate::parts::{sum, Handle, Progress};
use crate::report::RunResult;
use crate::sys::{monotonic_ns, self_cpu_us, system_busy_us};
use crate::track::{histogram_add_pairs, integrity, new_histogram, Latency};
use crate::worker::RemotePart;

/// Which scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// 1 → N.
    Fanout,
    /// N → 1 on a wildcard.
    Fanin,
    /// N pairs.
    P2p,
    /// 1 → a shared-subscription group.
    Shared,
    /// A connection storm.
    Conn,
    /// Retained topics, then `#`.
    Retained,
}

impl Kind {
    /// The scenario's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fanout => "fanout",
            Kind::Fanin => "fanin",
            Kind::P2p => "p2p",
            Kind::Shared => "shared",
            Kind::Conn => "conn",
            Kind::Retained => "retained",
        }
    }
}

/// A scenario's parameters; `count` is subscribers, publishers, pairs, members, connections
/// or topics depending on the kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    /// Which scenario.
    pub kind: Kind,
    /// Subscribers (fanout), publishers (fanin), pairs (p2p), members (shared),
    /// connections (conn) or topics (retained).
    pub count: u32,
    /// QoS of PUBLISH and SUBSCRIBE.
    pub qos: u8,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Messages per second per publisher; 0 means max rate.
    pub rate: f64,
    /// At most this many messages per publisher.
    pub messages: u64,
    /// Warm-up before the measured window.
    pub warmup_secs: f64,
    /// The measured window.
    pub duration_secs: f64,
    /// Longest wait for stragglers after the window.
    pub drain_secs: f64,
    /// Max rate: end-to-end window per publisher in messages (0: automatic).
    pub window: u64,
    /// QoS 1/2: unacknowledged PUBLISHes per publisher.
    pub inflight: u32,
    /// Worker processes (conn; 0: one per 7,500 connections).
    pub workers: u32,
    /// Source addresses 127.0.0.2, 127.0.0.3, ... (0: the kernel's choice).
    pub source_ips: u32,
    /// Connections per thread in the handshake at once.
    pub connect_concurrency: usize,
    /// conn: how long the connections idle before the broker's memory is read.
    pub settle_secs: f64,
}

impl Params {
    /// Defaults for `kind` with `count`.
    pub fn new(kind: Kind, count: u32) -> Params {
        Params {
            kind,
            count,
            qos: if kind == Kind::Retained { 1 } else { 0 },
            payload_bytes: 64,
            rate: 0.0,
            messages: 10_000_000,
            warmup_secs: 1.0,
            // conn: how long every connection is held open.
            duration_secs: if kind == Kind::Conn { 2.0 } else { 5.0 },
            drain_secs: 5.0,
            window: 0,
            inflight: 64,
            workers: 0,
            source_ips: if kind == Kind::Conn { 4 } else { 0 },
            connect_concurrency: 256,
            // Longer than any broker's idle housekeeping: shardmq puts a connection that
            // read nothing for 1–2 s to sleep and returns the freed pages at the next
            // one-second sweep (`engine/src/io/idle.rs`): up to ~3 s.
            settle_secs: 5.0,
        }
    }

    /// A one-line description, e.g. `fanout 1→1000 qos0 64B max-rate`.
    pub fn label(&self) -> String {
        let n = self.count;
        let shape = match self.kind {
            Kind::Fanout => format!("fanout 1→{n}"),
            Kind::Fanin => format!("fanin {n}→1"),
            Kind::P2p => format!("p2p {n} pairs"),
            Kind::Shared => format!("shared 1→group of {n}"),
            Kind::Conn => return format!("conn {n} connections"),
            Kind::Retained => format!("retained {n} topics then #"),
        };
        let rate = if self.rate > 0.0 {
            format!("{}/s per publisher", self.rate)
        } else {
            "max-rate".into()
        };
        if self.kind == Kind::Retained {
            return format!("{shape} qos{} {}B", self.qos, self.payload_bytes);
        }
        format!("{shape} qos{} {}B {rate}", self.qos, self.payload_bytes)
    }
}

/// Settings shared by every run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// MQTT protocol level.
    pub mqtt_version: u8,
    /// Reactor threads per process.
    pub threads: usize,
    /// CPUs for the harness threads.
    pub harness_cpus: Vec<usize>,
    /// No progress line.
    pub quiet: bool,
}

/// Connections per worker process: well under the 20,000 open files of one process.
pub const CONNS_PER_WORKER_MAX: u32 = 7_500;
/// How long setup (connect + subscribe) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

fn nonce() -> String {
    format!("{:x}{:x}", std::process::id(), monotonic_ns() & 0xFFFF_FFFF)
}

/// Builds the connection list for `p`.
pub fn build_spec(p: &Params, broker: std::net::SocketAddr, s: &Settings) -> Result<LoadSpec> {
    if p.count == 0 {
        bail!("{}: the count must be at least 1", p.kind.name());
    }
    let run = nonce();
    let prefix = format!("shardmq-bench/{run}");
    let cid = |role: &str, i: u32| format!("bench-{run}-{role}{i}");
    let sub =
        |group: u32, filter: String, deferred: bool| Role::Subscriber { group, filter, deferred };
    let publisher = |id: u32, topic: String| Role::Publisher {
        id,
        topic,
        retain: false,
        topic_per_message: false,
    };
    let mut conns = Vec::new();
    let (publishers, groups): (u32, u64) = match p.kind {
        Kind::Fanout => {
            let topic = format!("{prefix}/fanout");
            for i in 0..p.count {
                conns.push((cid("s", i), sub(i, topic.clone(), false)));
            }
            conns.push((cid("p", 0), publisher(0, topic)));
            (1, u64::from(p.count))
        }
        Kind::Fanin => {
            conns.push((cid("s", 0), sub(0, format!("{prefix}/fanin/+"), false)));
            for i in 0..p.count {
                conns.push((cid("p", i), publisher(i, format!("{prefix}/fanin/{i}"))));
            }
            (p.count, 1)
        }
        Kind::P2p => {
            for i in 0..p.count {
                conns.push((cid("s", i), sub(i, format!("{prefix}/p2p/{i}"), false)));
            }
            for i in 0..p.count {
                conns.push((cid("p", i), publisher(i, format!("{prefix}/p2p/{i}"))));
            }
            (p.count, 1)
        }
        Kind::Shared => {
            let topic = format!("{prefix}/shared");
            for i in 0..p.count {
                conns.push((cid("s", i), sub(0, format!("$share/g/{topic}"), false)));
            }
            conns.push((cid("p", 0), publisher(0, topic)));
            (1, 1)
        }
        Kind::Conn => {
            for i in 0..p.count {
                conns.push((cid("c", i), Role::Idle));
            }
            (0, 0)
        }
        Kind::Retained => {
            let topic = format!("{prefix}/retained");
            conns.push((cid("s", 0), sub(0, format!("{topic}/#"), true)));
            conns.push((
                cid("p", 0),
                Role::Publisher { id: 0, topic, retain: true, topic_per_message: true },
            ));
            (1, 1)
        }
    };
    let conns = conns
        .into_iter()
        .enumerate()
        .map(|(i, (client_id, role))| ConnSpec {
            client_id,
            source_ip: (p.source_ips > 0)
                .then(|| Ipv4Addr::new(127, 0, 0, 2 + (i as u32 % p.source_ips.min(250)) as u8)),
            role,
        })
        .collect();
    let messages = if p.kind == Kind::Retained { u64::from(p.count) } else { p.messages.max(1) };
    let window = match (p.kind, p.window) {
        // Nobody receives while the retained topics are published: no end-to-end window.
        (Kind::Retained, _) => u64::MAX,
        // Automatic: about 20,000 deliveries in flight over all publishers, at least 8 each.
        (_, 0) => (20_000 / (groups.max(1) * u64::from(publishers.max(1)))).max(8),
        (_, w) => w,
    };
    Ok(LoadSpec {
        broker,
        mqtt_version: s.mqtt_version,
        qos: p.qos,
        payload_bytes: p.payload_bytes,
        rate_per_publisher: if p.kind == Kind::Retained { 0.0 } else { p.rate },
        messages_per_publisher: messages,
        window_messages: window,
        inflight_max: p.inflight.clamp(1, 30_000),
        groups_per_publisher: groups,
        publishers_total: publishers,
        keep_alive_secs: 60,
        connect_concurrency: p.connect_concurrency.max(1),
        ordered: p.kind != Kind::Retained,
        quiet_ms: 500,
        threads: s.threads.max(1),
        harness_cpus: s.harness_cpus.clone(),
        conns,
    })
}

/// Runs scenario `p` against `broker`.
pub fn run(p: &Params, broker: &mut Broker, s: &Settings) -> Result<RunResult> {
    let spec = build_spec(p, broker.addr, s)?;
    let total_conns = spec.conns.len();
    let mut progress = Progress::new(format!("[{}] {}", broker.name, p.label()), s.quiet);
    let rss_idle = broker.rss_kib();
    let cpu_setup0 = broker.cpu_us();

    // Start the parts: worker processes for large connection counts, else threads here.
    let workers = match p.kind {
        Kind::Conn if p.workers > 0 => p.workers,
        Kind::Conn => p.count.div_ceil(CONNS_PER_WORKER_MAX),
        _ => 1,
    };
    let per_process = total_conns.div_ceil(workers as usize) as u64;
    let limit = crate::sys::open_files_limit();
    if per_process + 64 > limit {
        bail!(
            "{per_process} connections in one process exceed its open-file limit ({limit}): \
             use more --workers (conn) or raise `ulimit -n`"
        );
    }
    let mut handles = Vec::new();
    if workers > 1 {
        let per = total_conns.div_ceil(workers as usize);
        for chunk in spec.conns.chunks(per) {
            let part = LoadSpec { conns: chunk.to_vec(), threads: 1, ..spec.clone() };
            handles.push(Handle::Remote(RemotePart::start(&part)?));
        }
    } else {
        handles.push(Handle::Local(Part::start(spec.clone())?));
    }
    let threads: usize = handles.iter().map(Handle::threads).sum();

    // Setup.
    let setup_deadline = monotonic_ns() + SETUP_TIMEOUT.as_nanos() as u64;
    loop {
        progress.tick("setup", &handles, total_conns);
        let done = handles.iter().map(|h| h.ctl().setup_threads_done.load(Relaxed)).sum::<usize>();
        let finished = handles.iter().any(|h| h.ctl().finished_threads.load(Relaxed) > 0);
        if done >= threads || finished || monotonic_ns() > setup_deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let connected = sum(&handles, |c| c.connected.load(Relaxed));
    let failed = sum(&handles, |c| c.failed.load(Relaxed));
    let setup_incomplete = connected + failed < total_conns as u64;
    if p.kind != Kind::Conn && (failed > 0 || setup_incomplete) {
        for h in &handles {
            h.ctl().abort.store(true, Relaxed);
        }
        let errors = handles
            .into_iter()
            .filter_map(|h| h.join(Duration::from_secs(5)).ok())
            .flat_map(|r| r.errors)
            .take(3)
            .collect::<Vec<_>>();
        progress.done();
        bail!(
            "setup: {connected} of {total_conns} connections ready, {failed} failed{}: {}",
            if setup_incomplete { " (timed out)" } else { "" },
            errors.join("; ")
        );
    }
    let cpu_setup1 = broker.cpu_us();

    // Connection storm: let the broker settle, then read its memory with every connection open.
    let mut rss_loaded = None;
    if p.kind == Kind::Conn {
        let settle_end = monotonic_ns() + (p.settle_secs * 1e9) as u64;
        while monotonic_ns() < settle_end {
            progress.tick("settle", &handles, total_conns);
            std::thread::sleep(Duration::from_millis(20));
        }
        rss_loaded = broker.rss_kib();
    }

    // Schedule: warm-up, measured window, drain.
    let (warmup, duration) = match p.kind {
        Kind::Conn => (0.0, p.duration_secs),
        // For retained the window only bounds the publishing phase (it ends at --count).
        Kind::Retained => (0.0, p.duration_secs.max(10.0)),
        _ => (p.warmup_secs, p.duration_secs),
    };
    let start_ns = monotonic_ns() + 20_000_000;
    let measure_start_ns = start_ns + (warmup * 1e9) as u64;
    let measure_end_ns = measure_start_ns + (duration * 1e9) as u64;
    let schedule = Schedule {
        start_ns,
        measure_start_ns,
        measure_end_ns,
        drain_end_ns: measure_end_ns + (p.drain_secs * 1e9) as u64,
    };
    for h in &mut handles {
        h.set_schedule(&schedule)?;
    }

    let all_finished =
        |hs: &[Handle]| hs.iter().all(|h| h.ctl().finished_threads.load(Relaxed) >= h.threads());
    let wait_until = |ns: u64, phase: &str, hs: &[Handle], pr: &mut Progress| {
        while monotonic_ns() < ns && !all_finished(hs) {
            pr.tick(phase, hs, total_conns);
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let mut ended_early = false;
    let (mut cpu0, mut hcpu0, mut t0, mut sys0) = (None, 0, 0, None);
    let (mut cpu1, mut hcpu1, mut t1, mut sys1) = (None, 0, 0, None);
    if p.kind == Kind::Retained {
        // The window is the replay: from when every retained message is stored (the
        // subscriber subscribes right then) to the last one received.
        while !all_finished(&handles) && monotonic_ns() < schedule.drain_end_ns {
            let ctl = handles[0].ctl();
            if cpu0.is_none() && ctl.publishers_done.load(SeqCst) >= spec.publishers_total as u64 {
                (cpu0, hcpu0, t0, sys0) =
                    (broker.cpu_us(), self_cpu_us(), monotonic_ns(), system_busy_us());
            }
            progress.tick(if cpu0.is_some() { "replay" } else { "store" }, &handles, total_conns);
            std::thread::sleep(Duration::from_millis(1));
        }
        (cpu1, hcpu1, t1, sys1) =
            (broker.cpu_us(), self_cpu_us(), monotonic_ns(), system_busy_us());
    } else {
        wait_until(measure_start_ns, "warm-up", &handles, &mut progress);
        ended_early = all_finished(&handles);
        (cpu0, hcpu0, t0, sys0) =
            (broker.cpu_us(), self_cpu_us(), monotonic_ns(), system_busy_us());
        wait_until(measure_end_ns, "measure", &handles, &mut progress);
        if !all_finished(&handles) {
            (cpu1, hcpu1, t1, sys1) =
                (broker.cpu_us(), self_cpu_us(), monotonic_ns(), system_busy_us());
        }
    }
    while !all_finished(&handles) {
        progress.tick("drain", &handles, total_conns);
        std::thread::sleep(Duration::from_millis(5));
    }
    progress.done();
    if t1 == 0 {
        // Everything ended before the window did (a --messages cap): measure to here.
        (cpu1, hcpu1, t1, sys1) =
            (broker.cpu_us(), self_cpu_us(), monotonic_ns(), system_busy_us());
    }
    let deferred_subscribe_ns = handles[0].ctl().deferred_subscribe_ns.load(Relaxed);

    let mut part = PartResult::default();
    let mut errors = Vec::new();
    for h in handles {
        match h.join(Duration::from_secs(30)) {
            Ok(r) => part.merge(r),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("load: {}", errors.join("; "));
    }
    let broker_alive = broker.is_running();

    // Numbers.
    let mut sent_by = part.sent_by_publisher.clone();
    sent_by.sort_unstable();
    let sent: Vec<u64> = sent_by.iter().map(|&(_, n)| n).collect();
    let mut ig = integrity(&part.pairs, &sent, spec.groups_per_publisher);
    let mut hist = new_histogram();
    histogram_add_pairs(&mut hist, &part.latency_ns);
    let window_us = (t1.saturating_sub(t0) / 1000).max(1);
    let harness_cpu_us = hcpu1.saturating_sub(hcpu0) + part.cpu_us_window;
    let broker_cpu_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let mut r = RunResult {
        broker: broker.name.clone(),
        durability: broker.durability.clone(),
        broker_command: broker.command.clone(),
        connections: part.connected,
        connect_failed: part.failed,
        setup_secs: part.setup_last_ns.saturating_sub(part.setup_first_ns) as f64 / 1e9,
        window_secs: window_us as f64 / 1e6,
        sent: sent.iter().sum(),
        harness_cpu_us,
        harness_threads: threads,
        harness_cpu_percent: harness_cpu_us as f64 * 100.0 / window_us as f64,
        broker_cpu_us,
        broker_cpu_percent: broker_cpu_us.map(|c| c as f64 * 100.0 / window_us as f64),
        latency: Latency::from_histogram(&hist),
        broker_rss_kib_idle: rss_idle,
        window_write_offs: part.window_write_offs,
        publish_lag_ms_max: part.publish_lag_ns_max as f64 / 1e6,
        closed_by_broker: part.closed_by_broker,
        errors: part.errors.clone(),
        ..RunResult::default()
    };
    if let (Some(a), Some(b), Some(bc)) = (sys0, sys1, broker_cpu_us) {
        let other = b.saturating_sub(a).saturating_sub(bc + harness_cpu_us);
        r.other_cpu_percent = Some(other as f64 * 100.0 / window_us as f64);
    }
    r.connect_rate_per_sec =
        if r.setup_secs > 0.0 { part.connected as f64 / r.setup_secs } else { 0.0 };
    // The harness is the bottleneck when its threads were nearly always busy.
    r.harness_bound = r.harness_cpu_percent >= 90.0 * threads as f64;
    match p.kind {
        Kind::Conn => {
            r.broker_rss_kib_loaded = rss_loaded;
            if let (Some(a), Some(b)) = (rss_idle, rss_loaded) {
                if part.connected > 0 {
                    r.broker_rss_bytes_per_conn =
                        Some((b as f64 - a as f64) * 1024.0 / part.connected as f64);
                }
            }
            if let (Some(a), Some(b)) = (cpu_setup0, cpu_setup1) {
                if part.connected > 0 {
                    r.broker_cpu_us_per_conn =
                        Some(b.saturating_sub(a) as f64 / part.connected as f64);
                }
            }
        }
        Kind::Retained => {
            let replay_ns = part.last_receipt_ns.saturating_sub(deferred_subscribe_ns);
            r.retained_secs = (deferred_subscribe_ns > 0 && part.last_receipt_ns > 0)
                .then(|| replay_ns as f64 / 1e9);
            ig.window_receipts = ig.receipts;
            let secs = r.retained_secs.unwrap_or(0.0);
            r.delivered_per_sec = if secs > 0.0 { ig.distinct as f64 / secs } else { 0.0 };
            r.broker_rss_kib_loaded = broker.rss_kib();
            // Publish-to-replay time is not a latency worth a percentile.
            r.latency = Latency::default();
        }
        _ => {
            r.delivered_per_sec = ig.window_receipts as f64 / r.window_secs;
            r.broker_rss_kib_loaded = broker.rss_kib();
        }
    }
    let delivered = ig.window_receipts;
    if delivered > 0 {
        r.broker_cpu_us_per_msg = broker_cpu_us.map(|c| c as f64 / delivered as f64);
        r.harness_cpu_us_per_msg = Some(harness_cpu_us as f64 / delivered as f64);
    }
    r.integrity = ig;
    if r.closed_by_broker > 0 {
        r.error = Some(format!(
            "{} connection(s) closed by the broker during the run ({})",
            r.closed_by_broker,
            r.errors.first().map(String::as_str).unwrap_or("no detail")
        ));
    } else if ended_early {
        r.error = Some(format!(
            "the load ended before the measured window began ({})",
            r.errors.first().map(String::as_str).unwrap_or("no detail")
        ));
    }
    if !broker_alive {
        r.error = Some(format!("{} exited during the run{}", broker.name, broker.log_tail()));
    }
    Ok(r)
}
