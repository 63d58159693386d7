//! `shardmq-bench cluster`: cross-node fan-out on one machine. One publisher on node 1 at a
//! fixed rate (or `--rate flood`), N subscribers of its topic spread round robin over the nodes (by delivery
//! group: subscriber i on node `i % nodes`), against the same scenario on one node without a
//! cluster. Every node gets the same `--broker-cpus` (with the default `1`, each node is one
//! shard pinned to CPU 1, so three nodes share the core one node has; the harness is on CPU
//! 0). The figures:
//! - broker CPU per delivered message, summed over the nodes (`/proc/PID/stat` utime + stime
//!   of each), and the ratio of the medians (no ratio when a run lost messages, as in
//!   `compare`);
//! - what crossed the node links per published message: the change of every node's
//!   `bytes_out` and `messages_out` (`GET /api/v1/cluster`) over the whole run divided by the
//!   messages published (route and keep-alive frames of the run included), and the bytes per
//!   copy while messages flowed (counters sampled every 250 ms: set-up and idle traffic
//!   left out);
//! - the time a node joining a cluster that holds `--join-subscriptions` filters takes to see
//!   the members and to hold every route ([`crate::cluster_join`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::broker::{Broker, BrokerKind, BrokerOptions};
use crate::cluster_join::{self, JoinRun};
use crate::report::{Report, RunResult, ScenarioReport};
use crate::scenario::{self, Kind, Params, Settings};
use crate::spec::Pace;
use crate::table;

/// How long a cluster may take to form (every node alive, links up) before a run fails.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// What `cluster` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Nodes of the cluster (the publisher is on the first).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Subscribers of the one topic, spread round robin over the nodes.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: u32,
    /// Messages per second of the publisher (100: 100,000 deliveries a second with the
    /// default 1,000 subscribers, well inside one core for one node), `max` (closed loop) or
    /// `flood` (unthrottled: the publisher writes as fast as TCP takes, so the node links'
    /// windows and the receiving nodes' budgets decide what gets through).
    #[arg(long, default_value = "100")]
    pub rate: String,
    /// QoS of the PUBLISHes and the subscriptions.
    #[arg(long, default_value_t = 0)]
    pub qos: u8,
    /// Payload size in bytes (at least 20).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Warm-up before the measured window (seconds).
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// The measured window (seconds).
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Longest wait for late messages after the window (seconds).
    #[arg(long, default_value_t = 5.0)]
    pub drain_secs: f64,
    /// Distinct filters subscribed on node 1 of a two-node cluster before a third node joins
    /// (0: no join measurement).
    #[arg(long, default_value_t = 100_000)]
    pub join_subscriptions: u32,
    /// Only the join measurement.
    #[arg(long)]
    pub join_only: bool,
}

/// What crossed the node links in one cluster run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LinkRun {
    /// Which repetition.
    pub repeat: u32,
    /// Nodes.
    pub nodes: u16,
    /// Messages the publisher sent over the whole run.
    pub published: u64,
    /// Sum over the nodes of the change of `bytes_out`.
    pub bytes_out: u64,
    /// Sum over the nodes of the change of `messages_out`.
    pub messages_out: u64,
    /// Sum over the nodes of the change of `messages_dropped`.
    pub messages_dropped: u64,
    /// `bytes_out / published`.
    pub bytes_per_published: f64,
    /// `messages_out / published` (nodes other than the publisher's with a subscriber: the
    /// expected value is `nodes - 1`).
    pub copies_per_published: f64,
    /// Link bytes per message copy while messages flowed: the change of `bytes_out` over the
    /// change of `messages_out` between the samples (every 250 ms) at 10 % and 90 % of the
    /// run's copies, so set-up (routes) and idle traffic are left out.
    pub bytes_per_copy_marginal: Option<f64>,
}

/// The JSON `cluster --json` writes: a report as every command's (`shardmq-bench show`
/// reads it), plus the link and join figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterReport {
    /// The fan-out runs (one node and the cluster, interleaved) as in every report.
    #[serde(flatten)]
    pub report: Report,
    /// Link traffic of each cluster run.
    pub links: Vec<LinkRun>,
    /// The join measurements.
    pub join: Vec<JoinRun>,
}

/// One node of a cluster started here.
#[derive(Debug)]
pub struct Node {
    /// Its id (`--node-id`).
    pub id: u16,
    /// The broker process.
    pub broker: Broker,
    /// Its admin HTTP listener.
    pub http: SocketAddr,
}

impl Node {
    /// `GET /api/v1/cluster`, parsed.
    pub fn status(&self) -> Result<Value> {
        http_get_json(self.http, "/api/v1/cluster")
    }

    /// One of the `counters` of `GET /api/v1/cluster`.
    pub fn counter(&self, name: &str) -> Result<u64> {
        let st = self.status()?;
        st["counters"][name].as_u64().ok_or_else(|| anyhow!("no counter {name} in {st}"))
    }
}

/// Addresses for `n` nodes' cluster listeners: 127.0.0.1 and a port free for TCP and UDP.
pub fn cluster_addrs(n: u16) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    while out.len() < usize::from(n) {
        let port = crate::broker::free_port()?;
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            out.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    Ok(out)
}

/// Starts node `id` (1-based) listening on `addrs[id - 1]`, seeded with every address.
pub fn start_node(id: u16, addrs: &[SocketAddr], base: &BrokerOptions) -> Result<Node> {
    let http = SocketAddr::from(([127, 0, 0, 1], crate::broker::free_port()?));
    let seeds: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let mut opts = base.clone();
    opts.shardmq_args.extend([
        "--node-id".into(),
        id.to_string(),
        "--cluster-listen".into(),
        addrs[usize::from(id) - 1].to_string(),
        "--cluster-seeds".into(),
        seeds.join(","),
        "--http".into(),
        http.to_string(),
    ]);
    let mut broker = Broker::start(BrokerKind::Shardmq, &opts)?;
    broker.name = format!("node{id}");
    Ok(Node { id, broker, http })
}

/// True when `status` shows exactly the nodes `ids` alive, with links up to the others.
pub fn view_is(status: &Value, me: u16, ids: &[u16]) -> bool {
    let Some(members) = status["members"].as_array() else { return false };
    let alive: Vec<u64> = members
        .iter()
        .filter(|m| m["state"] == "alive")
        .filter_map(|m| m["node_id"].as_u64())
        .collect();
    alive.len() == ids.len()
        && ids.iter().all(|&id| {
            members.iter().any(|m| {
                m["node_id"].as_u64() == Some(u64::from(id))
                    && m["state"] == "alive"
                    && m["link"] == if id == me { "self" } else { "up" }
            })
        })
}

/// Waits until every node in `nodes` sees exactly `ids`; returns when the last one did.
pub fn wait_view(nodes: &mut [Node], ids: &[u16], timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    for n in nodes.iter_mut() {
        loop {
            let st = n.status();
            if st.as_ref().is_ok_and(|s| view_is(s, n.id, ids)) {
                break;
            }
            if !n.broker.is_running() {
                bail!("{} exited{}", n.broker.name, n.broker.log_tail());
            }
            if Instant::now() > deadline {
                bail!("{} did not see nodes {ids:?} within {timeout:?}: {st:?}", n.broker.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(Instant::now())
}

/// Starts `n` nodes and waits until they form one cluster.
pub fn start_cluster(n: u16, base: &BrokerOptions) -> Result<Vec<Node>> {
    let addrs = cluster_addrs(n)?;
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(start_node(id, &addrs, base)?);
    }
    let ids: Vec<u16> = (1..=n).collect();
    wait_view(&mut nodes, &ids, FORM_TIMEOUT)?;
    Ok(nodes)
}

/// A plain HTTP/1.0 GET (the admin API answers with a Content-Length body) parsed as JSON.
pub fn http_get_json(addr: SocketAddr, path: &str) -> Result<Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no HTTP header"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    serde_json::from_str(body).with_context(|| format!("GET {path}: {body}"))
}

/// Runs the fan-out on one node and on the cluster `repeat` times, interleaved, then the
/// join measurement `repeat` times; prints the tables and writes `json`.
pub fn command(
    a: &ClusterArgs,
    base: &BrokerOptions,
    (broker_cpus, harness_cpus): (&str, &str),
    settings: &Settings,
    repeat: u32,
    json: Option<&std::path::Path>,
) -> Result<()> {
    if a.nodes < 2 || a.nodes > 64 {
        bail!("--nodes must be 2 to 64");
    }
    crate::wire::qos(a.qos)?;
    let mut params = Params::new(Kind::Fanout, a.subscribers.max(1));
    params.qos = a.qos;
    params.payload_bytes = a.payload_bytes;
    Pace::parse(&a.rate).map_err(|e| anyhow!(e))?.apply(&mut params);
    params.warmup_secs = a.warmup_secs;
    params.duration_secs = a.duration_secs;
    params.drain_secs = a.drain_secs;
    let mut sr = ScenarioReport {
        scenario: "cluster".into(),
        label: format!("cluster fan-out over {} nodes: {}", a.nodes, params.label()),
        params: params.clone(),
        results: Vec::new(),
    };
    let mut links = Vec::new();
    let mut report = Report::new(broker_cpus, harness_cpus, settings.mqtt_version);
    report.repeat = repeat;
    let mut join = Vec::new();
    let write = |sr: &ScenarioReport, links: &[LinkRun], join: &[JoinRun]| -> Result<()> {
        if let Some(path) = json {
            let mut report = report.clone();
            report.scenarios = vec![sr.clone()];
            let out = ClusterReport { report, links: links.to_vec(), join: join.to_vec() };
            std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
        }
        Ok(())
    };
    for round in 0..repeat {
        if a.join_only {
            break;
        }
        for nodes in [1, a.nodes] {
            let name = if nodes == 1 {
                "shardmq-1node".to_string()
            } else {
                format!("shardmq-{nodes}nodes")
            };
            let (mut r, link) = match run_fanout(&params, nodes, base, settings) {
                Ok(x) => x,
                Err(e) => (RunResult::failed(&name, format!("{e:#}")), None),
            };
            r.broker.clone_from(&name);
            r.repeat = round;
            if let Some(e) = &r.error {
                eprintln!("{name} run {}: {e}", round + 1);
            }
            sr.results.push(r);
            if let Some(mut l) = link {
                l.repeat = round;
                links.push(l);
            }
        }
        write(&sr, &links, &join)?;
    }
    if !a.join_only {
        print(&table::table(&sr));
        print(&links_table(&links));
    }
    if a.join_subscriptions > 0 {
        for round in 0..repeat {
            match cluster_join::run(a.join_subscriptions, base) {
                Ok(mut j) => {
                    j.repeat = round;
                    join.push(j);
                }
                Err(e) => eprintln!("join run {}: {e:#}", round + 1),
            }
            write(&sr, &links, &join)?;
        }
        print(&cluster_join::table(&join));
    }
    if let Some(path) = json {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes()).and_then(|_| o.flush());
}

/// One fan-out run on `nodes` nodes (1: a plain broker, no cluster flags).
fn run_fanout(
    params: &Params,
    nodes: u16,
    base: &BrokerOptions,
    settings: &Settings,
) -> Result<(RunResult, Option<LinkRun>)> {
    let mut opts = base.clone();
    opts.connections_max = u64::from(params.count) + 100;
    if nodes == 1 {
        let mut b = Broker::start(BrokerKind::Shardmq, &opts)?;
        let r = scenario::run(params, &mut b, settings);
        b.stop();
        return Ok((r?, None));
    }
    let mut cluster = start_cluster(nodes, &opts)?;
    let before = counters(&cluster)?;
    let spread: Vec<SocketAddr> = cluster.iter().map(|n| n.broker.addr).collect();
    let others: Vec<u32> = cluster[1..].iter().filter_map(|n| n.broker.pid).collect();
    cluster[0].broker.subscribers_spread = spread;
    cluster[0].broker.extra_pids = others;
    let sampler = Sampler::start(cluster.iter().map(|n| n.http).collect());
    let result = scenario::run(params, &mut cluster[0].broker, settings);
    let samples = sampler.stop();
    let after = counters(&cluster);
    let mut dead = Vec::new();
    for n in &mut cluster {
        if !n.broker.is_running() {
            dead.push(format!("{} exited{}", n.broker.name, n.broker.log_tail()));
        }
        n.broker.stop();
    }
    let mut r = result?;
    if let Some(d) = dead.first() {
        r.error = Some(d.clone());
    }
    let after = after?;
    let delta = |i: usize| after[i].saturating_sub(before[i]);
    let published = r.sent.max(1);
    let link = LinkRun {
        repeat: 0,
        nodes,
        published: r.sent,
        bytes_out: delta(0),
        messages_out: delta(1),
        messages_dropped: delta(2),
        bytes_per_published: delta(0) as f64 / published as f64,
        copies_per_published: delta(1) as f64 / published as f64,
        bytes_per_copy_marginal: marginal(&samples),
    };
    Ok((r, Some(link)))
}

/// Polls the nodes' link counters every 250 ms on a thread of its own.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<[u64; 3]>>,
}

impl Sampler {
    fn start(https: Vec<SocketAddr>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(c) = counters_at(&https) {
                    out.push(c);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            out
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> Vec<[u64; 3]> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Bytes per copy between the samples at 10 % and 90 % of the copies (see [`LinkRun`]).
fn marginal(samples: &[[u64; 3]]) -> Option<f64> {
    let (first, last) = (samples.first()?, samples.last()?);
    let total = last[1].saturating_sub(first[1]);
    let from = samples.iter().find(|s| s[1] - first[1] >= total / 10)?;
    let to = samples.iter().rev().find(|s| s[1] - first[1] <= total * 9 / 10)?;
    let copies = to[1].checked_sub(from[1]).filter(|&c| c > 0)?;
    Some(to[0].saturating_sub(from[0]) as f64 / copies as f64)
}

/// Sums over the nodes of bytes_out, messages_out, messages_dropped.
fn counters(nodes: &[Node]) -> Result<[u64; 3]> {
    counters_at(&nodes.iter().map(|n| n.http).collect::<Vec<_>>())
}

fn counters_at(https: &[SocketAddr]) -> Result<[u64; 3]> {
    let mut sum = [0u64; 3];
    for &http in https {
        let st = http_get_json(http, "/api/v1/cluster")?;
        for (i, name) in ["bytes_out", "messages_out", "messages_dropped"].iter().enumerate() {
            sum[i] += st["counters"][name].as_u64().ok_or_else(|| anyhow!("no {name}: {st}"))?;
        }
    }
    Ok(sum)
}

fn links_table(links: &[LinkRun]) -> String {
    let mut out = String::from(
        "\nnode links (whole run, every node's GET /api/v1/cluster counters summed):\n\
         run  published  bytes_out  messages_out  dropped  bytes/published  copies/published  \
         bytes/copy (while flowing)\n",
    );
    for l in links {
        out.push_str(&format!(
            "{:>3}  {:>9}  {:>9}  {:>12}  {:>7}  {:>15.1}  {:>16.3}  {:>26}\n",
            l.repeat + 1,
            l.published,
            l.bytes_out,
            l.messages_out,
            l.messages_dropped,
            l.bytes_per_published,
            l.copies_per_published,
            l.bytes_per_copy_marginal.map_or("-".into(), |b| format!("{b:.1}"))
        ));
    }
    let mut b: Vec<f64> = links.iter().map(|l| l.bytes_per_published).collect();
    b.sort_by(f64::total_cmp);
    if let (Some(lo), Some(hi)) = (b.first(), b.last()) {
        out.push_str(&format!(
            "median bytes/published {:.1} (spread {lo:.1} to {hi:.1}, {} runs)\n",
            b[b.len() / 2],
            b.len()
        ));
    }
    out
}
