//! `shardmq-bench tune`: proposes core layouts for this machine (shard count, which CPUs
//! the shards and the load generator get, pinned or not, SMT siblings used or idle, cores
//! taking NIC interrupts left free), runs one scenario against each (fan-out 1 → 1000 by
//! default) at max rate and at a fixed rate, `--repeat` times with the layouts taking turns,
//! and ranks them by median delivered messages per second. Prints the winner's command line
//! and config snippet, and writes a bar chart (SVG).
//!
//! What it cannot do: the load generator runs on the same machine, so a layout that gives
//! the broker every CPU measures the broker *and* the harness competing for them. On a small
//! machine (this project's CI has 2 CPUs) the choice is limited and the table says so.

use std::fmt::Write as _;

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::broker::{Broker, BrokerKind, BrokerOptions};
use crate::report::{self, RunResult};
use crate::scenario::{self, Kind, Pace, Params, Settings};
use crate::sys::format_cpu_list;
use crate::table::Stat;
use crate::topology::Topology;

/// One way to run the broker on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Short description, e.g. `1 shard per core, SMT siblings idle`.
    pub name: String,
    /// Shards.
    pub shards: u16,
    /// CPUs the shards are pinned to (one each); empty when not pinned.
    pub broker_cpus: Vec<usize>,
    /// CPUs the load generator is pinned to; empty: not pinned.
    pub harness_cpus: Vec<usize>,
}

impl Layout {
    /// Whether the shards are pinned.
    pub fn pinned(&self) -> bool {
        !self.broker_cpus.is_empty()
    }

    /// The shardmq flags for this layout.
    pub fn flags(&self) -> String {
        if self.pinned() {
            format!("--shards {} --cpus {}", self.shards, format_cpu_list(&self.broker_cpus))
        } else {
            format!("--no-pin --shards {}", self.shards)
        }
    }

    /// The same in shardmq's TOML configuration file.
    pub fn config_snippet(&self) -> String {
        if self.pinned() {
            format!("shards = {}\ncpus = \"{}\"\n", self.shards, format_cpu_list(&self.broker_cpus))
        } else {
            format!("shards = {}\nno_pin = true\n", self.shards)
        }
    }

    fn key(&self) -> (u16, Vec<usize>, Vec<usize>) {
        (self.shards, self.broker_cpus.clone(), self.harness_cpus.clone())
    }
}

/// Candidate layouts for `t`, at most `max`, and notes on what limits the choice.
pub fn candidates(t: &Topology, max: usize) -> (Vec<Layout>, Vec<String>) {
    let mut notes = Vec::new();
    let mut out: Vec<Layout> = Vec::new();
    let mut add = |l: Layout| {
        if l.shards > 0 && !out.iter().any(|o| o.key() == l.key()) {
            out.push(l);
        }
    };
    let cores = &t.cores;
    if t.allowed.len() <= 1 {
        notes.push("one CPU: the broker and the load generator share it; nothing to choose".into());
        add(Layout {
            name: "1 shard, shared with the load generator".into(),
            shards: 1,
            broker_cpus: t.allowed.clone(),
            harness_cpus: t.allowed.clone(),
        });
        return (out, notes);
    }
    // The load generator's cores: a quarter of them (at least one), preferring the cores that
    // take the NIC's interrupts (a loopback benchmark takes none, but a shard there would
    // compete with them in production), else the first.
    let irq = t.irq_heavy();
    if cores.len() == 1 {
        // One core with SMT threads (a common small VM): the load generator takes one thread,
        // the broker the others, and then everything shared.
        let core = &cores[0];
        notes.push("one core: its SMT threads are split between broker and load generator".into());
        add(Layout {
            name: "1 shard per spare SMT thread".into(),
            shards: (core.len() - 1) as u16,
            broker_cpus: core[1..].to_vec(),
            harness_cpus: vec![core[0]],
        });
        add(Layout {
            name: "every thread, shared with the load generator".into(),
            shards: core.len() as u16,
            broker_cpus: core.clone(),
            harness_cpus: Vec::new(),
        });
        out.truncate(max.max(1));
        return (out, notes);
    }
    let harness_count = (cores.len() / 4).max(1);
    let mut order: Vec<&Vec<usize>> = cores.iter().collect();
    order.sort_by_key(|c| (!c.iter().any(|cpu| irq.contains(cpu)), c[0]));
    let harness: Vec<usize> =
        order[..harness_count].iter().flat_map(|c| c.iter().copied()).collect();
    let broker_cores: Vec<&Vec<usize>> =
        cores.iter().filter(|c| !c.iter().any(|cpu| harness.contains(cpu))).collect();
    let per_core: Vec<usize> = broker_cores.iter().map(|c| c[0]).collect();
    let n = per_core.len() as u16;
    add(Layout {
        name: if t.has_smt() {
            "1 shard per core, SMT siblings idle".into()
        } else {
            "1 shard per core".into()
        },
        shards: n,
        broker_cpus: per_core.clone(),
        harness_cpus: harness.clone(),
    });
    if t.has_smt() {
        let threads: Vec<usize> = broker_cores.iter().flat_map(|c| c.iter().copied()).collect();
        add(Layout {
            name: "1 shard per hardware thread (SMT siblings used)".into(),
            shards: threads.len() as u16,
            broker_cpus: threads,
            harness_cpus: harness.clone(),
        });
    }
    let quiet_cpus: Vec<usize> = per_core.iter().copied().filter(|c| !irq.contains(c)).collect();
    if !irq.is_empty() && !quiet_cpus.is_empty() && quiet_cpus.len() < per_core.len() {
        add(Layout {
            name: "cores taking NIC interrupts left free".into(),
            shards: quiet_cpus.len() as u16,
            broker_cpus: quiet_cpus,
            harness_cpus: harness.clone(),
        });
    }
    if let (true, Some(first)) = (t.numa_nodes.len() > 1, per_core.first()) {
        if let Some(node) = t.numa_nodes.iter().find(|node| node.contains(first)) {
            let local: Vec<usize> = per_core.iter().copied().filter(|c| node.contains(c)).collect();
            add(Layout {
                name: "one NUMA node only".into(),
                shards: local.len() as u16,
                broker_cpus: local,
                harness_cpus: harness.clone(),
            });
        }
    }
    if per_core.len() >= 2 {
        let half = per_core[..per_core.len() / 2].to_vec();
        add(Layout {
            name: "half the cores".into(),
            shards: half.len() as u16,
            broker_cpus: half,
            harness_cpus: harness.clone(),
        });
    }
    add(Layout {
        name: "not pinned (the kernel places the shards)".into(),
        shards: n,
        broker_cpus: Vec::new(),
        harness_cpus: harness.clone(),
    });
    let every: Vec<usize> = cores.iter().map(|c| c[0]).collect();
    add(Layout {
        name: "every core, shared with the load generator".into(),
        shards: every.len() as u16,
        broker_cpus: every,
        harness_cpus: Vec::new(),
    });
    if cores.len() <= 4 {
        notes.push(format!(
            "only {} cores: the load generator needs one, so layouts are few, and a layout \
             with shards on every core measures the broker and the load generator competing \
             for the same cores, not the broker alone",
            cores.len()
        ));
    }
    if !t.has_smt() {
        notes.push("no SMT siblings: no sibling layouts to try".into());
    }
    if t.nic_irqs.is_empty() {
        notes.push(
            "no NIC interrupts found: the interrupt-avoiding layout is not tried (loopback \
             traffic takes none anyway; on a real host, see README's tuning guide)"
                .into(),
        );
    }
    out.truncate(max.max(1));
    (out, notes)
}

/// What `tune` runs.
#[derive(Debug, Clone)]
pub struct TuneParams {
    /// Subscribers of the fan-out.
    pub subscribers: u32,
    /// Fixed rate (messages per second) of the latency measurement.
    pub rate: f64,
    /// Runs per layout and measurement.
    pub repeat: u32,
    /// Warm-up and measured window (seconds).
    pub warmup_secs: f64,
    /// Measured window (seconds).
    pub duration_secs: f64,
    /// MQTT protocol level.
    pub mqtt_version: u8,
}

/// One layout's runs.
#[derive(Debug, Clone, Serialize)]
pub struct LayoutRuns {
    /// The layout.
    pub layout: Layout,
    /// Max-rate runs.
    pub max_rate: Vec<RunResult>,
    /// Fixed-rate runs.
    pub fixed_rate: Vec<RunResult>,
}

impl LayoutRuns {
    /// Every run finished with nothing lost, duplicated or reordered.
    pub fn clean(&self) -> bool {
        self.max_rate
            .iter()
            .chain(&self.fixed_rate)
            .all(|r| crate::table::run_failure(r, Kind::Fanout).is_none())
    }

    fn stat(runs: &[RunResult], f: impl Fn(&RunResult) -> Option<f64>) -> Option<Stat> {
        let refs: Vec<&RunResult> = runs.iter().collect();
        Stat::of(&refs, f)
    }

    /// Median (and spread) of delivered messages per second at max rate.
    pub fn delivered(&self) -> Option<Stat> {
        Self::stat(&self.max_rate, |r| Some(r.delivered_per_sec))
    }

    /// Broker CPU per delivered message at max rate.
    pub fn cpu_per_msg(&self) -> Option<Stat> {
        Self::stat(&self.max_rate, |r| r.broker_cpu_us_per_msg)
    }

    /// p99 latency at the fixed rate (ms).
    pub fn p99_ms(&self) -> Option<Stat> {
        Self::stat(&self.fixed_rate, |r| Some(r.latency.p99_us / 1000.0))
    }
}

/// The whole result, as written with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct TuneReport {
    /// The machine, described.
    pub topology: String,
    /// What limits the choice.
    pub notes: Vec<String>,
    /// Every layout's runs, ranked (best first; layouts with a failed run last).
    pub layouts: Vec<LayoutRuns>,
}

fn scenario(p: &TuneParams, pace: Pace) -> Params {
    let mut s = Params::new(Kind::Fanout, p.subscribers);
    pace.apply(&mut s);
    s.warmup_secs = p.warmup_secs;
    s.duration_secs = p.duration_secs;
    s
}

/// Runs every layout and ranks them.
pub fn run(
    p: &TuneParams,
    layouts: Vec<Layout>,
    base: &BrokerOptions,
    topology: &Topology,
    notes: Vec<String>,
) -> Result<TuneReport> {
    let measures = [scenario(p, Pace::Max), scenario(p, Pace::Fixed(p.rate))];
    let mut runs: Vec<LayoutRuns> = layouts
        .into_iter()
        .map(|layout| LayoutRuns { layout, max_rate: Vec::new(), fixed_rate: Vec::new() })
        .collect();
    let total = runs.len() * measures.len() * p.repeat as usize;
    let mut done = 0usize;
    // Layouts take turns (A B C A B C ...) so that a drift of the machine touches each alike.
    for round in 0..p.repeat {
        for lr in &mut runs {
            for (m, params) in measures.iter().enumerate() {
                progress(done, total, &format!("{} — {}", lr.layout.name, params.label()));
                let r = run_one(params, &lr.layout, base, p.mqtt_version);
                let mut r = r.unwrap_or_else(|e| RunResult::failed("shardmq", format!("{e:#}")));
                r.repeat = round;
                if let Some(e) = &r.error {
                    eprintln!("\n{} run {}: {e}", lr.layout.name, round + 1);
                }
                if m == 0 {
                    lr.max_rate.push(r);
                } else {
                    lr.fixed_rate.push(r);
                }
                done += 1;
            }
        }
    }
    progress(done, total, "done");
    eprintln!();
    runs.sort_by(|a, b| {
        let key = |l: &LayoutRuns| (l.clean(), l.delivered().map(|s| s.median).unwrap_or(0.0));
        let (ka, kb) = (key(a), key(b));
        kb.0.cmp(&ka.0).then(kb.1.total_cmp(&ka.1))
    });
    Ok(TuneReport { topology: topology.describe(), notes, layouts: runs })
}

fn run_one(
    params: &Params,
    l: &Layout,
    base: &BrokerOptions,
    mqtt_version: u8,
) -> Result<RunResult> {
    let mut opts = base.clone();
    opts.cpus = format_cpu_list(&l.broker_cpus);
    if !l.pinned() {
        opts.shardmq_args.extend(["--shards".to_string(), l.shards.to_string()]);
    }
    opts.connections_max = u64::from(params.count) + 100;
    let settings =
        Settings { mqtt_version, threads: 1, harness_cpus: l.harness_cpus.clone(), quiet: true };
    let mut b = Broker::start(BrokerKind::Shardmq, &opts)?;
    b.name = "shardmq".into();
    let r = scenario::run(params, &mut b, &settings);
    b.stop();
    r
}

fn progress(done: usize, total: usize, what: &str) {
    let width = 24;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    let bar: String = (0..width).map(|i| if i < filled { '#' } else { '.' }).collect();
    let mut line = format!("\rtune [{bar}] {done}/{total} {what}");
    line.truncate(150);
    eprint!("{line}\x1b[K");
}

/// Where `tune` writes its results.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// The bar chart.
    pub svg: std::path::PathBuf,
    /// The results as JSON, if asked.
    pub json: Option<std::path::PathBuf>,
    /// Only print the topology and the layouts.
    pub dry_run: bool,
}

/// `shardmq-bench tune`: reads the topology, prints it and the layouts (stderr), runs them
/// unless `dry_run`, writes the SVG (and JSON), and returns the ranked table for stdout.
pub fn command(
    p: &TuneParams,
    max_layouts: usize,
    base: &BrokerOptions,
    o: &Outputs,
) -> Result<Option<String>> {
    let topo = Topology::read();
    let (layouts, notes) = candidates(&topo, max_layouts);
    eprint!("{}", topo.describe());
    for n in &notes {
        eprintln!("note: {n}");
    }
    for (i, l) in layouts.iter().enumerate() {
        let h = if l.harness_cpus.is_empty() {
            "not pinned".to_string()
        } else {
            format_cpu_list(&l.harness_cpus)
        };
        eprintln!("layout {}: {} — shardmq {}; load generator: {h}", i + 1, l.name, l.flags());
    }
    if o.dry_run {
        return Ok(None);
    }
    let report = run(p, layouts, base, &topo, notes)?;
    if let Some(dir) = o.svg.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    crate::tune_svg::svg(&report, &o.svg)?;
    eprintln!("wrote {}", o.svg.display());
    if let Some(path) = &o.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(Some(render(&report, p)))
}

/// The ranked table, the winner's command line and config snippet.
pub fn render(r: &TuneReport, p: &TuneParams) -> String {
    let mut s = String::new();
    s.push_str(&r.topology);
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    let headers = [
        "rank",
        "layout",
        "shardmq flags",
        "load generator CPUs",
        "delivered msg/s (max rate)",
        "broker CPU µs/msg",
        &format!("p99 ms at {} msg/s", p.rate),
    ];
    let best = r.layouts.first().and_then(LayoutRuns::delivered).map(|s| s.median);
    let rows: Vec<Vec<String>> = r
        .layouts
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let clean = l.clean();
            let delivered = match (clean, l.delivered(), best) {
                (false, _, _) => "failed (see above)".to_string(),
                (true, Some(d), Some(b)) if b > 0.0 => format!(
                    "{} ({}–{}) ×{:.2}",
                    report::thousands(d.median),
                    report::thousands(d.min),
                    report::thousands(d.max),
                    d.median / b
                ),
                _ => "-".into(),
            };
            let cpu = l.cpu_per_msg().map(|c| {
                format!("{} ({}–{})", report::sig(c.median), report::sig(c.min), report::sig(c.max))
            });
            let p99 = l.p99_ms().map(|c| {
                format!("{} ({}–{})", report::sig(c.median), report::sig(c.min), report::sig(c.max))
            });
            vec![
                if clean { (i + 1).to_string() } else { "-".into() },
                l.layout.name.clone(),
                l.layout.flags(),
                if l.layout.harness_cpus.is_empty() {
                    "not pinned".into()
                } else {
                    format_cpu_list(&l.layout.harness_cpus)
                },
                delivered,
                cpu.unwrap_or_else(|| "-".into()),
                p99.unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let _ = writeln!(
        s,
        "\nfan-out 1→{} QoS 0 64 B; medians (min–max) of {} runs per layout, layouts taking turns\n",
        p.subscribers, p.repeat
    );
    s.push_str(&report::render(&headers, &rows));
    match r.layouts.first().filter(|l| l.clean()) {
        Some(w) => {
            let _ = writeln!(
                s,
                "\nbest here: {}\n  shardmq --listen 0.0.0.0:1883 {}\nor in the configuration file:\n{}",
                w.layout.name,
                w.layout.flags(),
                w.layout
                    .config_snippet()
                    .lines()
                    .map(|l| format!("  {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            s.push_str(
                "\n(The load generator ran on this machine too: on a host whose clients are \
                 elsewhere, give the broker the load generator's cores as well.)\n",
            );
        }
        None => s.push_str("\nno layout ran cleanly: no recommendation\n"),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_cpus() -> Topology {
        Topology { allowed: vec![0, 1], cores: vec![vec![0], vec![1]], ..Topology::default() }
    }

    #[test]
    fn two_cpu_machine_gets_few_layouts_and_says_why() {
        let (ls, notes) = candidates(&two_cpus(), 8);
        let flags: Vec<(String, String)> =
            ls.iter().map(|l| (l.flags(), format_cpu_list(&l.harness_cpus))).collect();
        assert_eq!(
            flags,
            vec![
                ("--shards 1 --cpus 1".to_string(), "0".to_string()),
                ("--no-pin --shards 1".to_string(), "0".to_string()),
                ("--shards 2 --cpus 0-1".to_string(), String::new()),
            ]
        );
        assert!(notes.iter().any(|n| n.contains("only 2 cores")), "{notes:?}");
        assert_eq!(ls[0].config_snippet(), "shards = 1\ncpus = \"1\"\n");
        assert_eq!(ls[1].config_snippet(), "shards = 1\nno_pin = true\n");
    }

    #[test]
    fn big_smt_numa_host() {
        // 32 cores x 2 threads (siblings n and n+32), two NUMA nodes of 16 cores, NIC
        // interrupts on CPUs 0 and 1.
        let allowed: Vec<usize> = (0..64).collect();
        let cores = crate::topology::group_cores(&allowed, |c| vec![c % 32, c % 32 + 32]);
        let node0: Vec<usize> = (0..16).chain(32..48).collect();
        let node1: Vec<usize> = (16..32).chain(48..64).collect();
        let t = Topology {
            allowed,
            cores,
            numa_nodes: vec![node0, node1],
            nic_irqs: vec![(0, 5_000_000), (1, 4_000_000), (5, 10)],
        };
        let (ls, notes) = candidates(&t, 10);
        // The load generator gets 8 cores (a quarter), the NIC's first.
        assert_eq!(ls[0].harness_cpus.len(), 16);
        assert!(ls[0].harness_cpus.contains(&0) && ls[0].harness_cpus.contains(&33));
        assert_eq!(ls[0].shards, 24);
        assert!(ls.iter().any(|l| l.name.contains("SMT siblings used") && l.shards == 48));
        assert!(ls
            .iter()
            .any(|l| l.name.contains("NUMA") && l.broker_cpus.iter().all(|c| *c < 16)));
        assert!(ls.iter().any(|l| !l.pinned()));
        assert!(!notes.iter().any(|n| n.contains("only")), "{notes:?}");
        // No layout twice.
        for (i, a) in ls.iter().enumerate() {
            assert!(ls[i + 1..].iter().all(|b| b.key() != a.key()));
        }
        let (few, _) = candidates(&t, 2);
        assert_eq!(few.len(), 2);
    }

    #[test]
    fn one_core_two_threads() {
        let t = Topology { allowed: vec![0, 1], cores: vec![vec![0, 1]], ..Topology::default() };
        let (ls, _) = candidates(&t, 8);
        assert_eq!(ls[0].flags(), "--shards 1 --cpus 1");
        assert_eq!(ls[0].harness_cpus, vec![0]);
        assert_eq!(ls[1].shards, 2);
    }

    #[test]
    fn one_cpu() {
        let t = Topology { allowed: vec![3], cores: vec![vec![3]], ..Topology::default() };
        let (ls, notes) = candidates(&t, 8);
        assert_eq!(ls.len(), 1);
        assert!(notes[0].contains("one CPU"));
    }
}
