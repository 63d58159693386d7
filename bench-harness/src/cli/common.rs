//! The options every subcommand shares (brokers, transports, pinning, outputs) and the
//! interleaved run of a matrix of scenarios over brokers and transports.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::Args;

use crate::broker::{Broker, BrokerOptions, BrokerSpec};
use crate::report::{self, Report, RunResult, ScenarioReport};
use crate::scenario::{self, Params, Settings};
use crate::transport::{self as tp, Transport, WsFault};
use crate::{sys, table};

use super::out;

/// Broker selection, pinning and output.
#[derive(Debug, Clone, Args)]
pub(super) struct Common {
    /// Brokers to start and compare, comma separated: shardmq, mosquitto, rumqttd, each
    /// optionally with a persistence variant: shardmq@sync, shardmq@batch:<ms> (`batch`:
    /// 10 ms), shardmq@none, shardmq@in-memory, mosquitto@persist.
    #[arg(long, default_value = "shardmq")]
    pub(super) brokers: String,
    /// Transports, comma separated: tcp, tls, ws, wss (alias --transports). Every broker is
    /// started with a listener of each in turn (TLS ones with a CA and server certificate
    /// made at run time), rows × transports × brokers taking turns; a broker's name in the
    /// tables is `NAME/TRANSPORT` (just `NAME` for tcp), so the ratio tables compare every
    /// pair: shardmq/tls ÷ shardmq (tcp), shardmq/tls ÷ mosquitto/tls, ...
    #[arg(long, alias = "transports", default_value = "tcp", value_parser = parse_transports)]
    pub(super) transport: std::vec::Vec<Transport>,
    /// Internal (the smoke tests' negative cases): a deliberate WebSocket protocol error.
    #[arg(long, hide = true, value_parser = WsFault::parse)]
    pub(super) ws_fault: Option<WsFault>,
    /// Use an already-running broker instead of starting any.
    #[arg(long)]
    pub(super) broker_addr: Option<SocketAddr>,
    /// Pid of the --broker-addr broker, to measure its CPU and memory.
    #[arg(long)]
    pub(super) broker_pid: Option<u32>,
    /// CPUs every started broker is pinned to (taskset; shardmq gets one shard per CPU).
    #[arg(long, default_value = "1")]
    pub(super) broker_cpus: String,
    /// CPUs the harness threads are pinned to.
    #[arg(long, default_value = "0")]
    pub(super) harness_cpus: String,
    /// Pin nothing.
    #[arg(long)]
    pub(super) no_pin: bool,
    /// Harness reactor threads.
    #[arg(long, default_value_t = 1)]
    pub(super) threads: usize,
    /// Runs per broker and scenario, brokers taking turns (default: 3 for `compare`, 1 for
    /// one scenario).
    #[arg(long)]
    pub(super) repeat: Option<u32>,
    /// Also write the results, compact, to DIR/<date>-<commit>.json (e.g. perf/results).
    #[arg(long)]
    pub(super) save_results: Option<PathBuf>,
    /// MQTT protocol level: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4)]
    pub(super) mqtt_version: u8,
    /// Write the results as JSON.
    #[arg(long)]
    pub(super) json: Option<PathBuf>,
    /// Write an SVG plot of the fan-out runs (throughput and CPU per message).
    #[arg(long)]
    pub(super) svg: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub(super) quiet: bool,
    /// shardmq binary (default: target/release/shardmq, then target/debug/shardmq).
    #[arg(long)]
    pub(super) shardmq_bin: Option<PathBuf>,
    /// mosquitto binary (default: /usr/sbin/mosquitto).
    #[arg(long)]
    pub(super) mosquitto_bin: Option<PathBuf>,
    /// rumqttd binary (default: bench-harness/.peers/bin/rumqttd).
    #[arg(long)]
    pub(super) rumqttd_bin: Option<PathBuf>,
    /// shardmq durability mode (sync, batch:<ms>, none, in-memory), passed as
    /// `--durability MODE` with a fresh `--data-dir`, and recorded in the results. Default:
    /// the broker's default, sync.
    #[arg(long)]
    pub(super) shardmq_durability: Option<String>,
    /// Extra argument for shardmq (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub(super) shardmq_arg: Vec<String>,
}

/// Parses `--brokers`: comma separated `name[@variant]` (see [`BrokerSpec`]).
pub fn parse_brokers(list: &str) -> Result<Vec<BrokerSpec>> {
    let specs: Vec<BrokerSpec> = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(BrokerSpec::parse)
        .collect::<Result<_>>()?;
    if specs.is_empty() {
        bail!("--brokers is empty");
    }
    Ok(specs)
}

impl Common {
    /// Broker options from the common flags (a variant in `--brokers` may override some).
    /// The broker's and the harness's CPU lists (checked) and the run settings.
    pub(super) fn placement(&self) -> Result<(String, String, Settings)> {
        let broker_cpus = usable_cpus(&self.broker_cpus, self.no_pin, "broker")?;
        let harness_cpus = usable_cpus(&self.harness_cpus, self.no_pin, "harness")?;
        let settings = Settings {
            mqtt_version: self.mqtt_version,
            threads: self.threads.max(1),
            harness_cpus: sys::parse_cpu_list(&harness_cpus).map_err(|e| anyhow!(e))?,
            quiet: self.quiet,
        };
        Ok((broker_cpus, harness_cpus, settings))
    }

    pub(super) fn broker_options(&self, broker_cpus: &str) -> BrokerOptions {
        BrokerOptions {
            cpus: broker_cpus.to_string(),
            shardmq_bin: self.shardmq_bin.clone(),
            mosquitto_bin: self.mosquitto_bin.clone(),
            rumqttd_bin: self.rumqttd_bin.clone(),
            shardmq_durability: self.shardmq_durability.clone(),
            shardmq_limits: Vec::new(),
            mosquitto_persistence: false,
            shardmq_args: self.shardmq_arg.clone(),
            mqtt_version: self.mqtt_version,
            queued_messages_max: 1_000_000,
            connections_max: 1000,
            start_timeout_secs: 0,
            bridge_to: None,
            transport: Transport::Tcp,
        }
    }
}

fn parse_transports(s: &str) -> Result<Vec<Transport>, String> {
    Transport::parse_list(s).map_err(|e| format!("{e:#}"))
}

impl Common {
    /// Subcommands that run over TCP only refuse another transport.
    pub(super) fn tcp_only(&self, what: &str) -> Result<()> {
        if self.transport != [Transport::Tcp] {
            bail!("{what} runs over TCP only (no --transport)");
        }
        Ok(())
    }
}

/// Checks a CPU list against the CPUs this process may use; empty when pinning is off or
/// impossible.
pub(super) fn usable_cpus(list: &str, no_pin: bool, what: &str) -> Result<String> {
    if no_pin {
        return Ok(String::new());
    }
    let cpus = sys::parse_cpu_list(list).map_err(|e| anyhow!("--{what}-cpus: {e}"))?;
    let ids: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    if let Some(bad) = cpus.iter().find(|c| !ids.contains(c)) {
        eprintln!("note: CPU {bad} is not available to this process ({ids:?}); {what} not pinned");
        return Ok(String::new());
    }
    Ok(list.to_string())
}

pub(super) fn run_matrix(params: &[Params], c: &Common) -> Result<Report> {
    if params.is_empty() {
        bail!("no scenario selected");
    }
    let (broker_cpus, harness_cpus, settings) = c.placement()?;
    crate::wire::protocol_version(c.mqtt_version)?;
    let kinds: Vec<Option<BrokerSpec>> = if c.broker_addr.is_some() {
        if c.transport != [Transport::Tcp] {
            bail!(
                "--transport needs brokers started here (the test CA is theirs): no --broker-addr"
            );
        }
        vec![None]
    } else {
        parse_brokers(&c.brokers)?.into_iter().map(Some).collect()
    };
    if kinds.is_empty() {
        bail!("--brokers is empty");
    }
    let repeat = c.repeat.unwrap_or(1).clamp(1, 100);
    // A placement without a shard count (the `scaling` matrix) takes the broker's.
    let shards = match sys::parse_cpu_list(&broker_cpus).map_err(|e| anyhow!(e))?.len() {
        0 => sys::available_cpus(),
        n => n,
    };
    let params: Vec<Params> = params
        .iter()
        .cloned()
        .map(|mut p| {
            if let Some(pl) = p.placement.as_mut().filter(|pl| pl.shards == 0) {
                pl.shards = shards as u16;
            }
            p
        })
        .collect();
    let params = &params[..];
    let mut report = Report::new(&broker_cpus, &harness_cpus, c.mqtt_version);
    report.repeat = repeat;
    let mut reports: Vec<ScenarioReport> = params
        .iter()
        .map(|p| ScenarioReport {
            scenario: p.kind.name().into(),
            label: p.label(),
            params: p.clone(),
            results: Vec::new(),
        })
        .collect();
    // Interleaved: every row and every broker once per round (rows R1 R2, brokers A B C:
    // R1A R1B R1C R2A R2B R2C, then again), so that a slow drift of the machine touches
    // every broker and every row alike (e.g. `local` and `spread` of the scaling matrix).
    for round in 0..repeat {
        for (p, sr) in params.iter().zip(reports.iter_mut()) {
            for (&transport, kind) in
                c.transport.iter().flat_map(|t| kinds.iter().map(move |k| (t, k)))
            {
                let mut opts = c.broker_options(&broker_cpus);
                opts.connections_max = u64::from(p.count) + 100;
                opts.transport = transport;
                let name = kind.as_ref().map(BrokerSpec::name).unwrap_or_else(|| "external".into());
                let name = transport.label(&name);
                let unsupported = kind
                    .as_ref()
                    .and_then(|k| tp::unsupported(k.kind.name(), transport, c.mqtt_version));
                let started = match (kind, c.broker_addr) {
                    _ if unsupported.is_some() => {
                        Err(anyhow!(unsupported.clone().unwrap_or_default()))
                    }
                    (Some(spec), _) => {
                        spec.apply(&mut opts);
                        Broker::start(spec.kind, &opts).map(|mut b| {
                            b.name.clone_from(&name);
                            b
                        })
                    }
                    (None, Some(addr)) => Ok(Broker::external(addr, c.broker_pid)),
                    (None, None) => unreachable!("no broker and no address"),
                };
                let mut result = match started {
                    Err(e) => RunResult::failed(&name, format!("{e:#}")),
                    Ok(mut b) => {
                        b.client.fault = c.ws_fault;
                        let r = scenario::run(p, &mut b, &settings)
                            .unwrap_or_else(|e| RunResult::failed(&name, format!("{e:#}")));
                        b.stop();
                        r
                    }
                };
                result.repeat = round;
                result.transport = transport;
                if let Some(e) = &result.error {
                    eprintln!("{name} run {}: {}: {e}", round + 1, p.label());
                }
                sr.results.push(result);
            }
            if round + 1 == repeat {
                out(&table::table(sr));
            }
        }
        // Written after every round so that partial results survive an interruption.
        if let Some(path) = &c.json {
            report.scenarios.clone_from(&reports);
            report.write_json(path)?;
        }
    }
    report.scenarios = reports;
    if let Some(dir) = &c.save_results {
        let path = report.write_results(dir)?;
        eprintln!(
            "wrote {} (README's headline: shardmq-bench table {})",
            path.display(),
            path.display()
        );
    }
    if let Some(path) = &c.svg {
        if report::fanout_svg(&report, path)? {
            eprintln!("wrote {}", path.display());
        } else {
            eprintln!("no fan-out results: {} not written", path.display());
        }
    }
    if let Some(path) = &c.json {
        eprintln!("wrote {}", path.display());
    }
    Ok(report)
}
