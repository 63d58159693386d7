//! The side-by-side table of one scenario over repeated runs: per broker the median and the
//! spread (min–max) of every figure, a status that names any loss, duplicate or reordering,
//! and ratio tables between the medians of the brokers whose every run was clean.
//!
//! A run that lost, duplicated or reordered messages, or that failed outright, never takes
//! part in a ratio: its broker's row says `failed: lost N (k/n runs)` instead. Latency is
//! shown only for fixed-rate runs: at max rate or in a flood it is mostly queueing.

use std::fmt::Write as _;

use crate::report::{render, sig, thousands, RunResult, ScenarioReport};
use crate::spec::{Kind, Pace};

/// The runs of one broker in one scenario, in run order.
#[derive(Debug)]
pub struct BrokerRuns<'a> {
    /// The broker's name in reports.
    pub name: String,
    /// Its runs.
    pub runs: Vec<&'a RunResult>,
}

/// Groups `results` by broker, in order of first appearance.
pub fn by_broker(results: &[RunResult]) -> Vec<BrokerRuns<'_>> {
    let mut out: Vec<BrokerRuns<'_>> = Vec::new();
    for r in results {
        match out.iter_mut().find(|b| b.name == r.broker) {
            Some(b) => b.runs.push(r),
            None => out.push(BrokerRuns { name: r.broker.clone(), runs: vec![r] }),
        }
    }
    out
}

/// Median and spread of one figure over runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// Median (the mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Runs that had the figure.
    pub n: usize,
}

impl Stat {
    /// The figure `f` over `runs` (runs without it are left out); `None` when no run has it.
    pub fn of(runs: &[&RunResult], f: impl Fn(&RunResult) -> Option<f64>) -> Option<Stat> {
        let mut v: Vec<f64> = runs.iter().filter_map(|r| f(r)).filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Stat { median, min: v[0], max: v[n - 1], n })
    }
}

/// Why one run cannot be compared: an error, or lost / duplicated / reordered messages, or
/// (conn) refused connections. `None` for a clean run.
pub fn run_failure(r: &RunResult, kind: Kind) -> Option<String> {
    if let Some(e) = &r.error {
        return Some(format!("error: {}", e.lines().next().unwrap_or_default()));
    }
    let ig = &r.integrity;
    let mut parts = Vec::new();
    for (what, n) in [("lost", ig.lost), ("dup", ig.duplicates), ("reorder", ig.reordered)] {
        if n > 0 {
            parts.push(format!("{what} {}", thousands(n as f64)));
        }
    }
    if kind == Kind::Conn && r.connect_failed > 0 {
        parts.push(format!("refused {}", thousands(r.connect_failed as f64)));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// `None` when every run of `b` was clean, else `failed: <worst run's reason> (k/n runs)`.
pub fn broker_failure(b: &BrokerRuns<'_>, kind: Kind) -> Option<String> {
    if !b.runs.is_empty() && b.runs.iter().all(|r| r.error.as_deref().is_some_and(is_unsupported)) {
        return Some("unsupported".into());
    }
    let failures: Vec<(u64, String)> = b
        .runs
        .iter()
        .filter_map(|r| {
            run_failure(r, kind).map(|why| {
                let weight = if r.error.is_some() {
                    u64::MAX
                } else {
                    r.integrity.lost + r.integrity.duplicates + r.integrity.reordered
                };
                (weight, why)
            })
        })
        .collect();
    let worst = failures.iter().max_by_key(|(w, _)| *w)?;
    Some(format!("failed: {} ({}/{} runs)", worst.1, failures.len(), b.runs.len()))
}

/// A run's error that says the broker does not serve the transport (no number, no failure).
pub fn is_unsupported(error: &str) -> bool {
    error.starts_with("unsupported:")
}

/// `2.42M`, `545k`, `54.5k`, `7.89`: three significant figures; whole numbers under 10,000
/// as they are.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", sig(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", sig(v / 1e3))
    } else if a >= 1000.0 || v.fract() == 0.0 {
        thousands(v)
    } else {
        sig(v)
    }
}

/// `median (min–max)`, or just the value for one run; `-` when no run has the figure.
pub fn cell(s: Option<Stat>, f: fn(f64) -> String) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.n == 1 || s.min == s.max => f(s.median),
        Some(s) => format!("{} ({}–{})", f(s.median), f(s.min), f(s.max)),
    }
}

type Metric = fn(&RunResult) -> Option<f64>;

/// A column: header, figure, format.
struct Col {
    header: &'static str,
    metric: Metric,
    fmt: fn(f64) -> String,
}

fn col(header: &'static str, metric: Metric, fmt: fn(f64) -> String) -> Col {
    Col { header, metric, fmt }
}

fn whole(v: f64) -> String {
    format!("{v:.0}")
}

fn kib_to_mib(k: Option<u64>) -> Option<f64> {
    k.map(|k| k as f64 / 1024.0)
}

fn one_decimal(v: f64) -> String {
    format!("{v:.1}")
}

/// A latency percentile, or nothing when no message sent in the window arrived.
fn latency(r: &RunResult, us: f64) -> Option<f64> {
    (r.latency.count > 0).then_some(us)
}

/// The columns of a scenario's table.
fn columns(s: &ScenarioReport) -> Vec<Col> {
    let p = &s.params;
    match p.kind {
        Kind::Conn => vec![
            col("connected", |r| Some(r.connections as f64), whole),
            col("conn/s", |r| Some(r.connect_rate_per_sec), short),
            col("brk µs/conn", |r| r.broker_cpu_us_per_conn, sig),
            col("RSS idle MiB", |r| kib_to_mib(r.broker_rss_kib_idle), one_decimal),
            col("RSS connected MiB", |r| kib_to_mib(r.broker_rss_kib_connected), one_decimal),
            col("RSS settled MiB", |r| kib_to_mib(r.broker_rss_kib_loaded), one_decimal),
            col("B/conn connected", |r| r.broker_rss_bytes_per_conn_connected, thousands),
            col("B/conn settled", |r| r.broker_rss_bytes_per_conn, thousands),
        ],
        Kind::Retained => vec![
            col("stored", |r| Some(r.sent as f64), whole),
            col("received", |r| Some(r.integrity.distinct as f64), whole),
            col("replay ms", |r| r.retained_secs.map(|s| s * 1000.0), sig),
            col("msg/s", |r| Some(r.delivered_per_sec), short),
            col("brk µs/msg", |r| r.broker_cpu_us_per_msg, sig),
            col("RSS MiB", |r| kib_to_mib(r.broker_rss_kib_loaded), one_decimal),
        ],
        _ => {
            let pace = p.pace();
            let mut c = vec![col("deliv msg/s", |r| Some(r.delivered_per_sec), short)];
            if pace == Pace::Flood {
                c.push(col("sent msg/s", |r| Some(r.sent_per_sec), short));
            }
            c.push(col("brk µs/msg", |r| r.broker_cpu_us_per_msg, sig));
            c.push(col("brk cpu%", |r| r.broker_cpu_percent, whole));
            c.push(col("hns cpu%", |r| Some(r.harness_cpu_percent), whole));
            if matches!(pace, Pace::Fixed(_)) {
                // No samples (nothing sent in the window arrived): no figure, not 0.
                c.push(col("p50 µs", |r| latency(r, r.latency.p50_us), short));
                c.push(col("p99 µs", |r| latency(r, r.latency.p99_us), short));
                c.push(col("p99.9 µs", |r| latency(r, r.latency.p999_us), short));
            }
            c.push(col("lost", |r| Some(r.integrity.lost as f64), short));
            if matches!(p.kind, Kind::Fanout | Kind::P2p) {
                c.push(col(
                    "subs lossy",
                    |r| r.loss_by_subscriber.map(|l| l.with_loss as f64),
                    whole,
                ));
                c.push(col(
                    "max lost/sub",
                    |r| r.loss_by_subscriber.map(|l| l.lost_max as f64),
                    short,
                ));
            }
            c.push(col("RSS end MiB", |r| kib_to_mib(r.broker_rss_kib_loaded), one_decimal));
            c.push(col("RSS peak MiB", |r| kib_to_mib(r.broker_rss_kib_peak), one_decimal));
            if p.count >= 10_000 {
                c.push(col("B/conn receiving", |r| r.broker_rss_bytes_per_conn, thousands));
            }
            c
        }
    }
}

/// The figures compared as ratios (between medians, clean brokers only).
fn ratio_metrics(s: &ScenarioReport) -> Vec<(&'static str, Metric)> {
    match s.params.kind {
        Kind::Conn => vec![
            ("bytes/conn connected", |r| r.broker_rss_bytes_per_conn_connected),
            ("bytes/conn settled", |r| r.broker_rss_bytes_per_conn),
            ("conn/s", |r| Some(r.connect_rate_per_sec)),
        ],
        Kind::Retained => vec![
            ("replay time", |r| r.retained_secs),
            ("broker µs/msg", |r| r.broker_cpu_us_per_msg),
        ],
        _ => {
            let mut m: Vec<(&'static str, Metric)> = vec![
                ("broker µs/msg", |r| r.broker_cpu_us_per_msg),
                ("delivered msg/s", |r| Some(r.delivered_per_sec)),
            ];
            match s.params.pace() {
                Pace::Fixed(_) => {
                    m.push(("p99 latency", |r| (r.latency.count > 0).then_some(r.latency.p99_us)))
                }
                Pace::Flood => m.push(("peak RSS", |r| r.broker_rss_kib_peak.map(|k| k as f64))),
                Pace::Max => {}
            }
            if s.params.count >= 10_000 {
                m.push(("bytes/conn receiving", |r| r.broker_rss_bytes_per_conn));
            }
            m
        }
    }
}

/// Runs of `b` that produced figures (no error).
fn measured<'a>(b: &BrokerRuns<'a>) -> Vec<&'a RunResult> {
    b.runs.iter().copied().filter(|r| r.error.is_none()).collect()
}

/// The side-by-side table of one scenario, with ratios between the clean brokers' medians.
pub fn table(s: &ScenarioReport) -> String {
    let kind = s.params.kind;
    let brokers = by_broker(&s.results);
    let runs_max = brokers.iter().map(|b| b.runs.len()).max().unwrap_or(0);
    let mut out = format!("\n== {} ==\n", s.label);
    if runs_max > 1 {
        let _ =
            writeln!(out, "{runs_max} runs per broker, interleaved; each figure: median (min–max)");
    }
    let cols = columns(s);
    let mut headers = vec!["broker", "runs"];
    headers.extend(cols.iter().map(|c| c.header));
    headers.push("status");
    let rows: Vec<Vec<String>> = brokers
        .iter()
        .map(|b| {
            let ok = measured(b);
            let mut row = vec![b.name.clone(), format!("{}/{}", ok.len(), b.runs.len())];
            row.extend(cols.iter().map(|c| cell(Stat::of(&ok, c.metric), c.fmt)));
            row.push(broker_failure(b, kind).unwrap_or_else(|| "ok".into()));
            row
        })
        .collect();
    out.push_str(&render(&headers, &rows));
    let all: Vec<&RunResult> = s.results.iter().collect();
    if all.iter().any(|r| r.harness_bound && r.error.is_none()) {
        out.push_str(
            "note: the harness was ≥ 90% busy in some runs: it may have been the bottleneck\n",
        );
    }
    let noisy: Vec<String> = brokers
        .iter()
        .filter_map(|b| {
            Stat::of(&measured(b), |r| r.other_cpu_percent)
                .filter(|o| o.max >= 10.0)
                .map(|o| format!("{} up to {:.0}%", b.name, o.max))
        })
        .collect();
    if !noisy.is_empty() {
        let _ = writeln!(
            out,
            "warning: other processes used CPU during the window (% of one core): {}",
            noisy.join(", ")
        );
    }
    let starved: Vec<String> = brokers
        .iter()
        .filter_map(|b| {
            let ok = measured(b);
            let broker = Stat::of(&ok, |r| r.broker_wait_percent).map_or(0.0, |s| s.max);
            let harness = Stat::of(&ok, |r| r.harness_wait_percent).map_or(0.0, |s| s.max);
            (broker >= 10.0 || harness >= 10.0)
                .then(|| format!("{} (broker up to {broker:.0}%, harness {harness:.0}%)", b.name))
        })
        .collect();
    if !starved.is_empty() {
        let _ = writeln!(
            out,
            "warning: CPU contention, the figures are unreliable: time spent waiting for a CPU, \
             % of the window: {}",
            starved.join(", ")
        );
    }
    let durability: Vec<String> = brokers
        .iter()
        .filter_map(|b| b.runs.iter().find(|r| r.error.is_none()))
        .map(|r| format!("{}={}", r.broker, r.durability))
        .collect();
    if !durability.is_empty() {
        let _ = writeln!(out, "durability: {}", durability.join(", "));
    }
    for b in &brokers {
        for r in &b.runs {
            if let Some(e) = r.error.as_deref().filter(|e| !is_unsupported(e)) {
                let first = e.lines().next().unwrap_or_default();
                let _ = writeln!(out, "{} run {}: FAILED: {first}", b.name, r.repeat + 1);
            }
        }
    }
    let clean: Vec<&BrokerRuns<'_>> =
        brokers.iter().filter(|b| broker_failure(b, kind).is_none()).collect();
    if clean.len() >= 2 {
        out.push_str(&ratios(s, &clean));
    }
    let excluded: Vec<&str> = brokers
        .iter()
        .filter(|b| broker_failure(b, kind).is_some())
        .map(|b| b.name.as_str())
        .collect();
    if !excluded.is_empty() && brokers.len() >= 2 {
        let _ = writeln!(out, "no ratio for {}: a run failed", excluded.join(", "));
    }
    out
}

/// Ratio tables: each row's median divided by each column's median.
fn ratios(s: &ScenarioReport, clean: &[&BrokerRuns<'_>]) -> String {
    let mut out = String::new();
    for (name, f) in ratio_metrics(s) {
        let medians: Vec<Option<f64>> =
            clean.iter().map(|b| Stat::of(&measured(b), f).map(|s| s.median)).collect();
        let mut headers = vec![format!("ratio of medians: {name}")];
        headers.extend(clean.iter().map(|b| format!("÷ {}", b.name)));
        let rows: Vec<Vec<String>> = clean
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut row = vec![a.name.clone()];
                for j in 0..clean.len() {
                    row.push(match (medians[i], medians[j]) {
                        _ if i == j => "-".into(),
                        (Some(x), Some(y)) if y > 0.0 => format!("{:.3}", x / y),
                        _ => "n/a".into(),
                    });
                }
                row
            })
            .collect();
        let h: Vec<&str> = headers.iter().map(String::as_str).collect();
        out.push_str(&render(&h, &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;
    use crate::spec::Params;
    use crate::track::Integrity;

    fn run(broker: &str, repeat: u32, us: f64, lost: u64) -> RunResult {
        RunResult {
            broker: broker.into(),
            repeat,
            durability: "none".into(),
            delivered_per_sec: 1e5 / us,
            broker_cpu_us_per_msg: Some(us),
            integrity: Integrity {
                expected: 10_000,
                distinct: 10_000 - lost,
                lost,
                ..Integrity::default()
            },
            ..RunResult::default()
        }
    }

    fn scenario(results: Vec<RunResult>) -> ScenarioReport {
        ScenarioReport {
            scenario: "fanout".into(),
            label: "fanout 1→100".into(),
            params: Params::new(Kind::Fanout, 100),
            results,
        }
    }

    #[test]
    fn median_and_spread() {
        let rs = [run("a", 0, 3.0, 0), run("a", 1, 1.0, 0), run("a", 2, 2.0, 0)];
        let refs: Vec<&RunResult> = rs.iter().collect();
        let s = Stat::of(&refs, |r| r.broker_cpu_us_per_msg).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let even = Stat::of(&refs[..2], |r| r.broker_cpu_us_per_msg).unwrap();
        assert_eq!(even.median, 2.0);
        assert_eq!(cell(Some(s), sig), "2.00 (1.00–3.00)");
    }

    #[test]
    fn ratios_are_between_medians_of_clean_brokers() {
        // mosquitto 8, 9, 10 µs; rumqttd 2, 2.5, 100 µs (one outlier): median ratio 9 / 2.5.
        let mut results = Vec::new();
        for (i, (m, r)) in [(8.0, 2.0), (9.0, 100.0), (10.0, 2.5)].into_iter().enumerate() {
            results.push(run("mosquitto", i as u32, m, 0));
            results.push(run("rumqttd", i as u32, r, 0));
        }
        let t = table(&scenario(results));
        assert!(t.contains("3 runs per broker") && t.contains("÷ rumqttd"), "{t}");
        assert!(t.contains("3.600"), "ratio of medians 9 / 2.5: {t}");
        assert!(!t.contains("failed"), "{t}");
    }

    #[test]
    fn a_run_that_lost_messages_gets_no_ratio() {
        let mut results = Vec::new();
        for i in 0..3 {
            results.push(run("shardmq", i, 1.0, 0));
            results.push(run("mosquitto", i, 8.0, 0));
            // rumqttd loses in one run of three.
            results.push(run("rumqttd", i, 2.0, if i == 1 { 9_900 } else { 0 }));
        }
        let t = table(&scenario(results));
        assert!(t.contains("failed: lost 9,900 (1/3 runs)"), "{t}");
        assert!(!t.contains("÷ rumqttd"), "no ratio against a failed broker: {t}");
        assert!(t.contains("÷ mosquitto") && t.contains("0.125"), "{t}");
        assert!(t.contains("no ratio for rumqttd"), "{t}");
    }

    #[test]
    fn cpu_contention_is_flagged() {
        let mut r = run("a", 0, 1.0, 0);
        assert!(!table(&scenario(vec![r.clone()])).contains("CPU contention"));
        r.broker_wait_percent = Some(40.0);
        let t = table(&scenario(vec![r]));
        assert!(t.contains("CPU contention") && t.contains("broker up to 40%"), "{t}");
    }

    #[test]
    fn latency_only_at_a_fixed_rate() {
        let mut s = scenario(vec![run("a", 0, 1.0, 0)]);
        assert!(!table(&s).contains("p99 µs"), "max rate shows no latency");
        s.params.flood = true;
        let t = table(&s);
        assert!(!t.contains("p99 µs") && t.contains("RSS peak MiB"), "{t}");
        s.params.flood = false;
        s.params.rate = 20.0;
        assert!(table(&s).contains("p99 µs"));
    }

    #[test]
    fn svg_of_medians() {
        let mut report = Report::new("1", "0", 4);
        for n in [100u32, 1000] {
            let results = (0..3)
                .flat_map(|i| [run("mosquitto", i, 8.0, 0), run("rumqttd", i, 2.0, 0)])
                .collect();
            report
                .scenarios
                .push(ScenarioReport { params: Params::new(Kind::Fanout, n), ..scenario(results) });
        }
        let dir = std::env::temp_dir().join(format!("shardmq-bench-svg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fanout.svg");
        assert!(crate::report::fanout_svg(&report, &path).unwrap());
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("rumqttd"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
