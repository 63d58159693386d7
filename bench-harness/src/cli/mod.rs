//! Command line: one subcommand per scenario, `compare` for a matrix, hidden `worker`.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::broker::BrokerOptions;
use crate::matrix::{named_matrix, select};
use crate::report::{self, Report};
use crate::restart::{self, RestartParams};
use crate::scenario::{Kind, Pace, Params};
use crate::spec::{Placement, PlacementMode};

mod common;

use crate::{headline, sys, table, tune};
use common::{parse_brokers, run_matrix, usable_cpus, Common};

/// Load generator and side-by-side MQTT broker comparison for shardmq.
#[derive(Debug, Parser)]
#[command(name = "shardmq-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// 1 publisher → N subscribers of one topic.
    Fanout {
        /// Subscribers.
        #[arg(long, default_value_t = 100)]
        subscribers: u32,
        /// shardmq with several shards: put every subscriber's session on the publisher's
        /// shard (`local`) or spread them over every shard (`spread`), by choosing client
        /// ids; the shard count is the number of --broker-cpus (or of usable CPUs with
        /// --no-pin). Unset: ordinary client ids.
        #[arg(long, value_parser = PlacementMode::parse)]
        placement: Option<PlacementMode>,
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        common: Common,
    },
    /// N publishers (a topic each) → 1 subscriber on a `+` wildcard.
    Fanin {
        /// Publishers.
        #[arg(long, default_value_t = 100)]
        publishers: u32,
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        common: Common,
    },
    /// N publisher → subscriber pairs, one topic per pair.
    P2p {
        /// Pairs.
        #[arg(long, default_value_t = 10)]
        pairs: u32,
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        common: Common,
    },
    /// 1 publisher → a `$share/g/...` group: each message to exactly one member.
    Shared {
        /// Group members.
        #[arg(long, alias = "members", default_value_t = 10)]
        subscribers: u32,
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        common: Common,
    },
    /// Connection storm: connect rate, success count, broker memory per connection.
    Conn {
        /// Connections.
        #[arg(long, default_value_t = 15_000)]
        connections: u32,
        /// Worker processes (0: one per 7,500 connections).
        #[arg(long, default_value_t = 0)]
        workers: u32,
        /// Source addresses 127.0.0.2, 127.0.0.3, ... (0: the kernel's choice).
        #[arg(long, default_value_t = 4)]
        source_ips: u32,
        /// Connections per thread in the handshake at once.
        #[arg(long, default_value_t = 256)]
        connect_concurrency: usize,
        /// How long to hold the connections open (seconds).
        #[arg(long, default_value_t = 2.0)]
        duration_secs: f64,
        /// How long the connections idle before the broker's memory is read (seconds).
        #[arg(long, default_value_t = 5.0)]
        settle_secs: f64,
        #[command(flatten)]
        common: Common,
    },
    /// N retained topics, then one subscriber on `#`: time until all are received.
    Retained {
        /// Retained topics.
        #[arg(long, default_value_t = 10_000)]
        topics: u32,
        /// QoS of the retained PUBLISHes and the SUBSCRIBE.
        #[arg(long, default_value_t = 1)]
        qos: u8,
        /// Payload size in bytes (at least 20).
        #[arg(long, default_value_t = 64)]
        payload_bytes: usize,
        /// QoS 1/2: unacknowledged PUBLISHes.
        #[arg(long, default_value_t = 64)]
        inflight: u32,
        #[command(flatten)]
        common: Common,
    },
    /// A matrix of scenarios over several brokers, each run `--repeat` times (default 3),
    /// brokers taking turns (A B C A B C ...); reports medians and spreads, and ratios only
    /// between the medians of brokers whose every run was clean.
    Compare {
        /// `standard` (what scripts/bench.sh runs: fan-out 1→100/1000/5000 at max rate,
        /// fan-out flood 1→100 and 1→1000, 1→1000 at 3,000, 20 and (QoS 1) 5 msg/s,
        /// 1→15,000 at 1 msg/s, fan-in 100→1, p2p QoS 1 and 2 at max rate and at 1,000
        /// msg/s, shared 10, 15,000 idle connections, 10,000 retained), `flood` (the fan-out
        /// shapes only), `smoke` (tiny) or `durability` (p2p 10 pairs QoS 1 and 2: run it
        /// with e.g. `--brokers shardmq@sync,shardmq@batch,shardmq@none,mosquitto@persist`)
        /// or `scaling` (fan-out 1→1000 with subscribers on the publisher's shard, then
        /// spread over every shard: run it with two or more --broker-cpus) or `transports`
        /// (fan-out 1→1000 QoS 0 at 100 and 1,000 msg/s, max rate, flood; 2,000 connections:
        /// run it with `--transports tcp,tls,ws,wss`).
        #[arg(long, default_value = "standard")]
        matrix: String,
        /// Only these rows: comma separated scenario kinds (`fanout,conn`) or parts of row
        /// labels (`1->1000 qos0 64B flood`).
        #[arg(long)]
        only: Option<String>,
        /// Warm-up before each measured window (seconds).
        #[arg(long)]
        warmup_secs: Option<f64>,
        /// Each measured window (seconds).
        #[arg(long)]
        duration_secs: Option<f64>,
        /// Every row's pace: `max`, `flood` or messages per second per publisher.
        #[arg(long, value_parser = Pace::parse)]
        rate: Option<Pace>,
        #[command(flatten)]
        common: Common,
    },
    /// Restart time with N messages stored in an offline persistent session: fill, stop
    /// (shardmq: SIGKILL), restart on the same data, time to CONNACK, first and last message.
    Restart {
        /// Messages to store (QoS 1, acknowledged) before the restart.
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        /// Payload size in bytes (at least 20).
        #[arg(long, alias = "payload", default_value_t = 64)]
        payload_bytes: usize,
        /// Publishers filling the queue.
        #[arg(long, default_value_t = 8)]
        publishers: u32,
        /// Unacknowledged PUBLISHes per publisher.
        #[arg(long, default_value_t = 64)]
        inflight: u32,
        /// How shardmq is stopped: `kill` (SIGKILL, a crash) or `term` (SIGTERM). Mosquitto
        /// is always stopped with SIGTERM (it saves only at exit and every autosave_interval).
        #[arg(long, default_value = "kill")]
        stop: String,
        /// Longest fill and longest replay, each (seconds).
        #[arg(long, default_value_t = 600.0)]
        timeout_secs: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Cross-node fan-out (1 publisher on node 1, subscribers spread over the nodes of a
    /// cluster on this machine) against the same on one node; bytes on the node links per
    /// message; how long a node joining 100,000 subscriptions takes to converge.
    Cluster {
        #[command(flatten)]
        args: crate::cluster::ClusterArgs,
        #[command(flatten)]
        common: Common,
    },
    /// An edge broker bridging `shardmq-bench/#` out to a remote Mosquitto: a publisher on
    /// the edge at a fixed rate, its subscriber on the remote; the edge's CPU per forwarded
    /// message, rate and latency. Edges: shardmq (e.g. shardmq@sync) and mosquitto, taking
    /// turns; the remote runs on the harness's CPUs.
    Bridge {
        /// QoS of the messages and of the bridge's topic rule.
        #[arg(long, default_value_t = 1)]
        qos: u8,
        /// Messages per second.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Payload size in bytes (at least 20).
        #[arg(long, default_value_t = 64)]
        payload_bytes: usize,
        /// Warm-up before the measured window (seconds).
        #[arg(long, default_value_t = 1.0)]
        warmup_secs: f64,
        /// The measured window (seconds).
        #[arg(long, default_value_t = 5.0)]
        duration_secs: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Proposes core layouts for this machine (shard count, CPUs for shards and for the
    /// load generator, pinned or not, SMT siblings, NIC interrupt CPUs), runs a fan-out
    /// against each at max rate and at a fixed rate, `--repeat` times with the layouts
    /// taking turns, and ranks them; prints the winner's flags and config snippet.
    Tune {
        /// Subscribers of the fan-out.
        #[arg(long, default_value_t = 1000)]
        subscribers: u32,
        /// The fixed rate (messages per second) at which p99 latency is measured.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Runs per layout and measurement.
        #[arg(long, default_value_t = 3)]
        repeat: u32,
        /// Warm-up before each measured window (seconds).
        #[arg(long, default_value_t = 1.0)]
        warmup_secs: f64,
        /// Each measured window (seconds).
        #[arg(long, default_value_t = 3.0)]
        duration_secs: f64,
        /// Layouts to try, at most.
        #[arg(long, default_value_t = 6)]
        max_layouts: usize,
        /// Only print the topology and the layouts that would be tried.
        #[arg(long)]
        dry_run: bool,
        /// Write the results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write a bar chart of the results (default target/tune.svg).
        #[arg(long)]
        svg: Option<PathBuf>,
        /// MQTT protocol level: 4 (3.1.1) or 5.
        #[arg(long, default_value_t = 4)]
        mqtt_version: u8,
        /// shardmq binary (default: target/release/shardmq, then target/debug/shardmq).
        #[arg(long)]
        shardmq_bin: Option<PathBuf>,
        /// Extra argument for shardmq (repeatable).
        #[arg(long, allow_hyphen_values = true)]
        shardmq_arg: Vec<String>,
    },
    /// Prints README's headline table (Markdown) from a saved results file, with the
    /// commit and the command that produced it.
    Table {
        /// The JSON file (e.g. perf/results/<date>-<commit>.json).
        json: PathBuf,
    },
    /// Prints the tables of a saved `--json` file (and optionally plots it).
    Show {
        /// The JSON file.
        json: PathBuf,
        /// Write the fan-out SVG plot.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Internal: a load part in a child process (JSON lines on stdin/stdout).
    #[command(hide = true)]
    Worker,
}

/// Options of every scenario that sends messages.
#[derive(Debug, Clone, Args)]
struct LoadOpts {
    /// QoS of PUBLISH and SUBSCRIBE.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Payload size in bytes (at least 20: sequence, publisher id, timestamp).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Pace: `max` (or 0: closed loop, a window of messages in flight), `flood` (open loop,
    /// unthrottled: write as fast as TCP accepts, no window) or messages per second per
    /// publisher (open loop).
    #[arg(long, default_value = "max", value_parser = Pace::parse)]
    rate: Pace,
    /// At most this many messages per publisher.
    #[arg(long, default_value_t = 10_000_000)]
    messages: u64,
    /// Warm-up before the measured window (seconds).
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// The measured window (seconds); publishing stops at its end.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// Longest wait for late messages after the window (seconds).
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,
    /// Max rate: messages per publisher in flight end to end (0: about 20,000 deliveries
    /// over all publishers).
    #[arg(long, default_value_t = 0)]
    window: u64,
    /// QoS 1/2: unacknowledged PUBLISHes per publisher (lowered to a 5.0 broker's Receive
    /// Maximum). 64: what every broker compared here accepts from a 3.1.1 client.
    #[arg(long, default_value_t = 64)]
    inflight: u32,
}

impl LoadOpts {
    fn apply(&self, p: &mut Params) {
        p.qos = self.qos;
        p.payload_bytes = self.payload_bytes;
        self.rate.apply(p);
        p.messages = self.messages;
        p.warmup_secs = self.warmup_secs;
        p.duration_secs = self.duration_secs;
        p.drain_secs = self.drain_secs;
        p.window = self.window;
        p.inflight = self.inflight;
    }
}

/// Entry point of the binary.
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    sys::raise_open_files_limit();
    let (params, common) = match cli.cmd {
        Cmd::Worker => return crate::worker::run_worker(),
        Cmd::Show { json, svg } => return show(&json, svg.as_deref()),
        Cmd::Tune {
            subscribers,
            rate,
            repeat,
            warmup_secs,
            duration_secs,
            max_layouts,
            dry_run,
            json,
            svg,
            mqtt_version,
            shardmq_bin,
            shardmq_arg,
        } => {
            let p = tune::TuneParams {
                subscribers: subscribers.max(1),
                rate,
                repeat: repeat.clamp(1, 100),
                warmup_secs,
                duration_secs,
                mqtt_version,
            };
            crate::wire::protocol_version(mqtt_version)?;
            let base = BrokerOptions {
                shardmq_bin,
                shardmq_args: shardmq_arg,
                mqtt_version,
                queued_messages_max: 1_000_000,
                ..BrokerOptions::default()
            };
            let svg = svg.unwrap_or_else(|| PathBuf::from("target/tune.svg"));
            let outputs = tune::Outputs { svg, json, dry_run };
            if let Some(table) = tune::command(&p, max_layouts, &base, &outputs)? {
                out(&table);
            }
            return Ok(());
        }
        Cmd::Bridge { qos, rate, payload_bytes, warmup_secs, duration_secs, common } => {
            let p = crate::bridge::BridgeParams {
                qos,
                rate,
                payload_bytes,
                warmup_secs,
                duration_secs,
                repeat: common.repeat.unwrap_or(3).clamp(1, 100),
            };
            crate::wire::qos(qos)?;
            common.tcp_only("bridge")?;
            let (broker_cpus, harness_cpus, settings) = common.placement()?;
            let edges = parse_brokers(&common.brokers)?;
            let base = common.broker_options(&broker_cpus);
            let sr = crate::bridge::run(&p, &edges, &base, &harness_cpus, &settings)?;
            out(&table::table(&sr));
            if let Some(path) = &common.json {
                let mut report = Report::new(&broker_cpus, &harness_cpus, common.mqtt_version);
                report.repeat = p.repeat;
                report.scenarios.push(sr);
                report.write_json(path)?;
                eprintln!("wrote {}", path.display());
            }
            return Ok(());
        }
        Cmd::Cluster { args, common } => {
            common.tcp_only("cluster")?;
            let (broker_cpus, harness_cpus, settings) = common.placement()?;
            let base = common.broker_options(&broker_cpus);
            let repeat = common.repeat.unwrap_or(3).clamp(1, 100);
            let cpus = (broker_cpus.as_str(), harness_cpus.as_str());
            let json = common.json.as_deref();
            return crate::cluster::command(&args, &base, cpus, &settings, repeat, json);
        }
        Cmd::Table { json } => {
            out(&headline::markdown(&load_report(&json)?));
            return Ok(());
        }
        Cmd::Restart {
            messages,
            payload_bytes,
            publishers,
            inflight,
            stop,
            timeout_secs,
            common,
        } => {
            let kill = match stop.as_str() {
                "kill" => true,
                "term" => false,
                other => bail!("--stop {other:?}: kill or term"),
            };
            if payload_bytes < crate::payload::HEADER_BYTES {
                bail!("--payload-bytes must be at least {}", crate::payload::HEADER_BYTES);
            }
            let p = RestartParams {
                messages: messages.max(1),
                payload_bytes,
                publishers: publishers.max(1),
                inflight,
                kill,
                timeout_secs,
                mqtt_version: common.mqtt_version,
            };
            if common.broker_addr.is_some() {
                bail!("restart starts and stops its brokers itself: no --broker-addr");
            }
            common.tcp_only("restart")?;
            let broker_cpus = usable_cpus(&common.broker_cpus, common.no_pin, "broker")?;
            let harness_cpus = usable_cpus(&common.harness_cpus, common.no_pin, "harness")?;
            let harness_cpus = sys::parse_cpu_list(&harness_cpus).map_err(|e| anyhow!(e))?;
            let base = common.broker_options(&broker_cpus);
            let specs = parse_brokers(&common.brokers)?;
            return restart::main(
                &p,
                &specs,
                &base,
                &harness_cpus,
                common.json.as_deref(),
                common.quiet,
            );
        }
        Cmd::Fanout { subscribers, placement, load, common } => {
            let mut ps = one(Kind::Fanout, subscribers, &load);
            if let Some(mode) = placement {
                let shards = if common.no_pin {
                    sys::available_cpus()
                } else {
                    sys::parse_cpu_list(&common.broker_cpus).map_err(|e| anyhow!(e))?.len()
                };
                for p in &mut ps {
                    p.placement = Some(Placement { mode, shards: shards.max(1) as u16 });
                }
            }
            (ps, common)
        }
        Cmd::Fanin { publishers, load, common } => (one(Kind::Fanin, publishers, &load), common),
        Cmd::P2p { pairs, load, common } => (one(Kind::P2p, pairs, &load), common),
        Cmd::Shared { subscribers, load, common } => {
            (one(Kind::Shared, subscribers, &load), common)
        }
        Cmd::Conn {
            connections,
            workers,
            source_ips,
            connect_concurrency,
            duration_secs,
            settle_secs,
            common,
        } => {
            let mut p = Params::new(Kind::Conn, connections);
            p.workers = workers;
            p.source_ips = source_ips;
            p.connect_concurrency = connect_concurrency;
            p.duration_secs = duration_secs;
            p.settle_secs = settle_secs;
            (vec![p], common)
        }
        Cmd::Retained { topics, qos, payload_bytes, inflight, common } => {
            let mut p = Params::new(Kind::Retained, topics);
            p.qos = qos;
            p.payload_bytes = payload_bytes;
            p.inflight = inflight;
            (vec![p], common)
        }
        Cmd::Compare { matrix, only, warmup_secs, duration_secs, rate, mut common } => {
            let mut ps = named_matrix(&matrix)?;
            if let Some(only) = only {
                select(&mut ps, &only)?;
            }
            common.repeat = Some(common.repeat.unwrap_or(3));
            for p in &mut ps {
                if let Some(w) = warmup_secs {
                    p.warmup_secs = w;
                }
                if let (Some(d), false) = (duration_secs, p.kind == Kind::Conn) {
                    p.duration_secs = d;
                }
                // Connections and retained replay have no publishing pace.
                if let (Some(r), false) = (rate, matches!(p.kind, Kind::Conn | Kind::Retained)) {
                    r.apply(p);
                }
            }
            (ps, common)
        }
    };
    let report = run_matrix(&params, &common)?;
    // A transport a peer does not serve is a row that says so, not a failure.
    let failed = report
        .scenarios
        .iter()
        .flat_map(|s| &s.results)
        .filter(|r| r.error.as_deref().is_some_and(|e| !table::is_unsupported(e)))
        .count();
    // Loss, duplicates and reordering fail a run for comparison, not the command: the
    // tables say so.
    if failed > 0 {
        bail!("{failed} run(s) failed (see above)");
    }
    Ok(())
}

/// Writes to stdout, ignoring a closed pipe (`| head`).
fn out(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes()).and_then(|_| o.flush());
}

fn load_report(json: &std::path::Path) -> Result<Report> {
    let text = std::fs::read_to_string(json).map_err(|e| anyhow!("{}: {e}", json.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", json.display()))
}

fn show(json: &std::path::Path, svg: Option<&std::path::Path>) -> Result<()> {
    let report = load_report(json)?;
    out(&format!(
        "{} (commit {}{}, {})\n",
        report.command,
        report.git_commit,
        if report.git_dirty { ", dirty" } else { "" },
        report.host.kernel
    ));
    for s in &report.scenarios {
        out(&table::table(s));
    }
    if let Some(path) = svg {
        report::fanout_svg(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn one(kind: Kind, count: u32, load: &LoadOpts) -> Vec<Params> {
    let mut p = Params::new(kind, count);
    load.apply(&mut p);
    vec![p]
}
