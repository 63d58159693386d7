//! One run of a scenario against one broker: start the load parts, set up, warm up, measure,
//! drain, and turn what the parts saw into a [`RunResult`]. The scenarios themselves are
//! described in [`crate::spec`].

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Duration;

use anyhow::{bail, Result};

use crate::broker::Broker;
use crate::load::{LoadSpec, Part, PartResult, Schedule};
use crate::parts::{sum, Handle, Progress};
use crate::report::{LossSpread, RunResult};
pub use crate::spec::{build_spec, Kind, Pace, Params, Settings, CONNS_PER_WORKER_MAX};
use crate::sys::{monotonic_ns, proc_run_delay_ns, self_cpu_us, system_busy_us};
use crate::track::{histogram_add_pairs, integrity, new_histogram, Latency};
use crate::worker::RemotePart;

/// TLS and WebSocket connections in their handshakes at once, over the whole run, at most.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 128;

/// How long setup (connect + subscribe) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs scenario `p` against `broker`.
pub fn run(p: &Params, broker: &mut Broker, s: &Settings) -> Result<RunResult> {
    let mut spec = build_spec(p, broker.addr, s)?;
    spec.subscriber_broker = broker.subscribers_at;
    spec.subscriber_brokers.clone_from(&broker.subscribers_spread);
    spec.transport = broker.client.clone();
    let total_conns = spec.conns.len();
    let mut progress = Progress::new(format!("[{}] {}", broker.name, p.label()), s.quiet);
    let rss_idle = broker.rss_kib();
    let cpu_setup0 = broker.cpu_us();

    // Start the parts: worker processes for large connection counts, else threads here.
    let workers = match p.kind {
        Kind::Retained => 1,
        _ if p.workers > 0 => p.workers,
        _ => (total_conns as u32).div_ceil(CONNS_PER_WORKER_MAX),
    };
    if workers > 1 && p.kind != Kind::Conn && p.pace() == Pace::Max {
        // The max-rate window counts receipts across every part: one process only.
        bail!(
            "{total_conns} connections need {workers} worker processes, which max rate cannot \
             span: use --rate N or --rate flood"
        );
    }
    if spec.transport.kind != crate::transport::Transport::Tcp {
        // Handshakes in flight over every part and thread stay under what a broker lets
        // wait (shardmq: `handshakes_per_shard_max`, 256 by default; one more is reset).
        let parts = workers.max(1) as usize * spec.threads.max(1);
        spec.connect_concurrency =
            spec.connect_concurrency.min(HANDSHAKES_IN_FLIGHT_MAX / parts).max(1);
    }
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
    // Memory right after the last connection is ready, before any idle housekeeping.
    let rss_connected = broker.rss_kib();
    let mut peak = RssPeak::new(broker.pid);

    // Connection storm: let the broker settle, then read its memory with every connection open.
    let mut rss_loaded = None;
    if p.kind == Kind::Conn {
        let settle_end = monotonic_ns() + (p.settle_secs * 1e9) as u64;
        while monotonic_ns() < settle_end {
            progress.tick("settle", &handles, total_conns);
            peak.sample();
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
        drain_end_ns: measure_end_ns + (drain_secs(p) * 1e9) as u64,
    };
    for h in &mut handles {
        h.set_schedule(&schedule)?;
    }

    let all_finished =
        |hs: &[Handle]| hs.iter().all(|h| h.ctl().finished_threads.load(Relaxed) >= h.threads());
    let wait_until = |ns: u64, phase: &str, hs: &[Handle], pr: &mut Progress, pk: &mut RssPeak| {
        while monotonic_ns() < ns && !all_finished(hs) {
            pr.tick(phase, hs, total_conns);
            pk.sample();
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let sent_now = |hs: &[Handle]| sum(hs, |c| c.sent.load(Relaxed));
    let (mut sent0, mut sent1) = (0, None);
    let mut ended_early = false;
    // Run-queue delay of the broker and of this process, at the window's start and end.
    let waits =
        |b: &Broker| (b.pid.and_then(proc_run_delay_ns), proc_run_delay_ns(std::process::id()));
    let (mut wait0, mut wait1) = ((None, None), None);
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
                wait0 = waits(broker);
            }
            progress.tick(if cpu0.is_some() { "replay" } else { "store" }, &handles, total_conns);
            peak.sample();
            std::thread::sleep(Duration::from_millis(1));
        }
        (cpu1, hcpu1, t1, sys1) =
            (broker.cpu_us(), self_cpu_us(), monotonic_ns(), system_busy_us());
    } else {
        wait_until(measure_start_ns, "warm-up", &handles, &mut progress, &mut peak);
        ended_early = all_finished(&handles);
        (cpu0, hcpu0, t0, sys0) =
            (broker.cpu_us(), self_cpu_us(), monotonic_ns(), system_busy_us());
        wait0 = waits(broker);
        sent0 = sent_now(&handles);
        wait_until(measure_end_ns, "measure", &handles, &mut progress, &mut peak);
        if !all_finished(&handles) {
            (cpu1, hcpu1, t1, sys1) =
                (broker.cpu_us(), self_cpu_us(), monotonic_ns(), system_busy_us());
            wait1 = Some(waits(broker));
            sent1 = Some(sent_now(&handles));
        }
    }
    while !all_finished(&handles) {
        progress.tick("drain", &handles, total_conns);
        peak.sample();
        std::thread::sleep(Duration::from_millis(5));
    }
    // The broker's own high-water mark covers the moments between samples.
    peak.sample();
    let rss_peak = peak.max_kib.max(broker.rss_peak_kib()).filter(|&k| k > 0);
    progress.done();
    if t1 == 0 {
        // Everything ended before the window did (a --messages cap): measure to here.
        (cpu1, hcpu1, t1, sys1) =
            (broker.cpu_us(), self_cpu_us(), monotonic_ns(), system_busy_us());
    }
    let sent1 = sent1.unwrap_or_else(|| sent_now(&handles));
    let wait1 = wait1.unwrap_or_else(|| waits(broker));
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
    let loss_by_subscriber = match p.kind {
        // Every subscriber should have received every message of the one publisher.
        Kind::Fanout => {
            Some(loss_spread(&part.pairs, &vec![sent_by_id(&sent_by, 0); p.count as usize]))
        }
        // Subscriber i should have received publisher i's messages.
        Kind::P2p => Some(loss_spread(
            &part.pairs,
            &(0..p.count).map(|i| sent_by_id(&sent_by, i)).collect::<Vec<_>>(),
        )),
        _ => None,
    };
    let mut hist = new_histogram();
    histogram_add_pairs(&mut hist, &part.latency_ns);
    let window_us = (t1.saturating_sub(t0) / 1000).max(1);
    let wait_percent = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1000.0 * 100.0 / window_us as f64),
        _ => None,
    };
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
        broker_rss_kib_peak: rss_peak,
        broker_wait_percent: wait_percent(wait0.0, wait1.0),
        harness_wait_percent: wait_percent(wait0.1, wait1.1),
        loss_by_subscriber,
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
    let per_conn = |kib: Option<u64>| match (rss_idle, kib) {
        (Some(a), Some(b)) if part.connected > 0 => {
            Some((b as f64 - a as f64) * 1024.0 / part.connected as f64)
        }
        _ => None,
    };
    match p.kind {
        Kind::Conn => {
            r.broker_rss_kib_connected = rss_connected;
            r.broker_rss_bytes_per_conn_connected = per_conn(rss_connected);
            r.broker_rss_kib_loaded = rss_loaded;
            r.broker_rss_bytes_per_conn = per_conn(rss_loaded);
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
            r.sent_per_sec = sent1.saturating_sub(sent0) as f64 / r.window_secs;
            r.broker_rss_kib_connected = rss_connected;
            r.broker_rss_kib_loaded = broker.rss_kib();
            // Subscribed and receiving: memory per connection at the end of the window.
            r.broker_rss_bytes_per_conn = per_conn(r.broker_rss_kib_loaded);
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

/// Samples the broker's RSS every 20 ms or so; keeps the highest.
struct RssPeak {
    pid: Option<u32>,
    max_kib: Option<u64>,
    next_ns: u64,
}

impl RssPeak {
    fn new(pid: Option<u32>) -> RssPeak {
        RssPeak { pid, max_kib: None, next_ns: 0 }
    }

    fn sample(&mut self) {
        let now = monotonic_ns();
        if now < self.next_ns {
            return;
        }
        self.next_ns = now + 20_000_000;
        if let Some(kib) = self.pid.and_then(|p| crate::sys::proc_rss_kib(p).ok()) {
            self.max_kib = self.max_kib.max(Some(kib));
        }
    }
}

/// Messages publisher `id` sent (0 when it never connected).
fn sent_by_id(sent_by: &[(u32, u64)], id: u32) -> u64 {
    sent_by.iter().find(|&&(p, _)| p == id).map_or(0, |&(_, n)| n)
}

/// Loss per subscriber: `expected[g]` is what group (subscriber) `g` should have received.
fn loss_spread(pairs: &[crate::track::Pair], expected: &[u64]) -> LossSpread {
    let mut distinct = vec![0u64; expected.len()];
    for p in pairs {
        if let Some(d) = distinct.get_mut(p.group as usize) {
            *d += p.seen.len() + p.untracked;
        }
    }
    let mut lost: Vec<u64> =
        expected.iter().zip(&distinct).map(|(e, d)| e.saturating_sub(*d)).collect();
    lost.sort_unstable();
    LossSpread {
        subscribers: lost.len() as u64,
        with_loss: lost.iter().filter(|&&l| l > 0).count() as u64,
        lost_median: lost.get(lost.len() / 2).copied().unwrap_or(0),
        lost_max: lost.last().copied().unwrap_or(0),
    }
}

/// Longest wait after the window for what was sent to arrive. A flooding publisher leaves
/// its socket buffers and the broker's full (several MB on loopback: tens of thousands of
/// small messages, each a copy per subscriber), which the broker has accepted and owes;
/// the run ends as soon as deliveries stop, so only a broker that is still delivering (or
/// stuck) uses the longer bound. What is not delivered by then counts as lost.
fn drain_secs(p: &Params) -> f64 {
    if p.flood {
        p.drain_secs.max(FLOOD_DRAIN_SECS_MIN)
    } else {
        p.drain_secs
    }
}

/// See [`drain_secs`].
const FLOOD_DRAIN_SECS_MIN: f64 = 30.0;
