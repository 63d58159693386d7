//! Results: the side-by-side tables, the JSON file and the fan-out SVG plot.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::scenario::{Kind, Params};
use crate::track::{Integrity, Latency};

/// One scenario run against one broker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    /// Broker name.
    pub broker: String,
    /// Durability mode: `n/a`, the broker's flag, or what the peer does.
    pub durability: String,
    /// How the broker was started.
    pub broker_command: String,
    /// Why the run failed, if it did (the other numbers are then partial or zero).
    pub error: Option<String>,
    /// Connections through the handshake.
    pub connections: u64,
    /// Connections that failed.
    pub connect_failed: u64,
    /// First connect to last connection ready.
    pub setup_secs: f64,
    /// Connections per second during setup.
    pub connect_rate_per_sec: f64,
    /// Length of the measured window.
    pub window_secs: f64,
    /// PUBLISHes sent over the whole run (warm-up included).
    pub sent: u64,
    /// Loss, duplicates and order over the whole run; receipts in the window.
    pub integrity: Integrity,
    /// Receipts in the window per second (retained: distinct messages / replay time).
    pub delivered_per_sec: f64,
    /// Broker CPU (user + system) in the window, µs.
    pub broker_cpu_us: Option<u64>,
    /// Broker CPU per message delivered in the window, µs.
    pub broker_cpu_us_per_msg: Option<f64>,
    /// Broker CPU in the window as % of one core.
    pub broker_cpu_percent: Option<f64>,
    /// Harness CPU (every thread and worker) in the window, µs.
    pub harness_cpu_us: u64,
    /// Harness CPU per delivered message, µs.
    pub harness_cpu_us_per_msg: Option<f64>,
    /// Harness CPU in the window as % of one core.
    pub harness_cpu_percent: f64,
    /// Harness reactor threads.
    pub harness_threads: usize,
    /// The harness's threads were ≥ 90 % busy: the numbers may be the harness's limit.
    pub harness_bound: bool,
    /// CPU used in the window by processes other than the broker and the harness, % of one
    /// core: other load on the machine that makes the numbers noisy.
    pub other_cpu_percent: Option<f64>,
    /// End-to-end latency of messages sent in the window.
    pub latency: Latency,
    /// Broker RSS before the run's connections, KiB.
    pub broker_rss_kib_idle: Option<u64>,
    /// Broker RSS at the end of the window (conn: with every connection open), KiB.
    pub broker_rss_kib_loaded: Option<u64>,
    /// conn: (loaded − idle RSS) / connections.
    pub broker_rss_bytes_per_conn: Option<f64>,
    /// conn: broker CPU during setup / connections, µs.
    pub broker_cpu_us_per_conn: Option<f64>,
    /// retained: SUBSCRIBE to the last retained message received.
    pub retained_secs: Option<f64>,
    /// Max rate: stalled windows written off.
    pub window_write_offs: u64,
    /// Fixed rate: worst send delay behind schedule in the window.
    pub publish_lag_ms_max: f64,
    /// Connections the broker closed during the run.
    pub closed_by_broker: u64,
    /// The first errors the load threads saw.
    pub errors: Vec<String>,
}

impl RunResult {
    /// A run that could not happen.
    pub fn failed(broker: &str, error: String) -> RunResult {
        RunResult { broker: broker.into(), error: Some(error), ..RunResult::default() }
    }
}

/// One scenario over several brokers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub scenario: String,
    /// One-line description.
    pub label: String,
    /// Parameters.
    pub params: Params,
    /// One result per broker.
    pub results: Vec<RunResult>,
}

/// Where and how the run happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    /// CPUs available.
    pub cpus: usize,
    /// `uname -r`.
    pub kernel: String,
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The command line.
    pub command: String,
    /// `git rev-parse HEAD` of the workspace.
    pub git_commit: String,
    /// Whether the work tree had uncommitted changes.
    pub git_dirty: bool,
    /// Harness version.
    pub harness_version: String,
    /// Start time, seconds since the epoch.
    pub unix_time_secs: u64,
    /// The machine.
    pub host: Host,
    /// CPUs the brokers were pinned to.
    pub broker_cpus: String,
    /// CPUs the harness threads were pinned to.
    pub harness_cpus: String,
    /// MQTT protocol level.
    pub mqtt_version: u8,
    /// The scenarios.
    pub scenarios: Vec<ScenarioReport>,
}

impl Report {
    /// A report for this process's command line.
    pub fn new(broker_cpus: &str, harness_cpus: &str, mqtt_version: u8) -> Report {
        let (git_commit, git_dirty) = git_state();
        Report {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            git_commit,
            git_dirty,
            harness_version: env!("CARGO_PKG_VERSION").into(),
            unix_time_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            host: Host {
                cpus: crate::sys::available_cpus(),
                kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default(),
            },
            broker_cpus: broker_cpus.into(),
            harness_cpus: harness_cpus.into(),
            mqtt_version,
            scenarios: Vec::new(),
        }
    }

    /// Writes the JSON file.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

pub(crate) fn git_state() -> (String, bool) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    (commit, dirty)
}

/// `1234567.8` → `1,234,568`.
pub(crate) fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Three significant figures, at most two decimals.
pub(crate) fn sig(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub(crate) fn opt(v: Option<f64>, f: fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

pub(crate) fn mib(kib: Option<u64>) -> String {
    opt(kib.map(|k| k as f64 / 1024.0), |v| format!("{v:.1}"))
}

/// A plain text table: first column left-aligned, the rest right-aligned.
pub(crate) fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i] - c.chars().count();
            if i == 0 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str("  ");
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    out.push_str(&line(
        width
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(|s| s.as_str())
            .collect(),
    ));
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// The side-by-side table of one scenario, with ratios between brokers.
pub fn table(s: &ScenarioReport) -> String {
    let mut out = format!("\n== {} ==\n", s.label);
    let ok: Vec<&RunResult> = s.results.iter().filter(|r| r.error.is_none()).collect();
    let (headers, rows): (Vec<&str>, Vec<Vec<String>>) = match s.params.kind {
        Kind::Conn => (
            vec![
                "broker",
                "connected",
                "failed",
                "conn/s",
                "brk µs/conn",
                "RSS idle MiB",
                "RSS loaded MiB",
                "bytes/conn",
            ],
            ok.iter()
                .map(|r| {
                    vec![
                        r.broker.clone(),
                        r.connections.to_string(),
                        r.connect_failed.to_string(),
                        thousands(r.connect_rate_per_sec),
                        opt(r.broker_cpu_us_per_conn, sig),
                        mib(r.broker_rss_kib_idle),
                        mib(r.broker_rss_kib_loaded),
                        opt(r.broker_rss_bytes_per_conn, thousands),
                    ]
                })
                .collect(),
        ),
        Kind::Retained => (
            vec![
                "broker",
                "stored",
                "received",
                "replay ms",
                "msg/s",
                "brk µs/msg",
                "hns µs/msg",
                "lost",
                "dup",
                "RSS MiB",
            ],
            ok.iter()
                .map(|r| {
                    vec![
                        r.broker.clone(),
                        r.sent.to_string(),
                        r.integrity.distinct.to_string(),
                        opt(r.retained_secs.map(|s| s * 1000.0), sig),
                        thousands(r.delivered_per_sec),
                        opt(r.broker_cpu_us_per_msg, sig),
                        opt(r.harness_cpu_us_per_msg, sig),
                        r.integrity.lost.to_string(),
                        r.integrity.duplicates.to_string(),
                        mib(r.broker_rss_kib_loaded),
                    ]
                })
                .collect(),
        ),
        _ => (
            vec![
                "broker",
                "deliv msg/s",
                "brk µs/msg",
                "brk cpu%",
                "hns µs/msg",
                "hns cpu%",
                "p50 µs",
                "p99 µs",
                "p99.9 µs",
                "max µs",
                "lost",
                "dup",
                "reord",
                "RSS MiB",
            ],
            ok.iter()
                .map(|r| {
                    let flag = if r.harness_bound { "*" } else { "" };
                    vec![
                        r.broker.clone(),
                        thousands(r.delivered_per_sec),
                        opt(r.broker_cpu_us_per_msg, sig),
                        opt(r.broker_cpu_percent, |v| format!("{v:.0}")),
                        opt(r.harness_cpu_us_per_msg, sig),
                        format!("{:.0}{flag}", r.harness_cpu_percent),
                        sig(r.latency.p50_us),
                        sig(r.latency.p99_us),
                        sig(r.latency.p999_us),
                        sig(r.latency.max_us),
                        r.integrity.lost.to_string(),
                        r.integrity.duplicates.to_string(),
                        r.integrity.reordered.to_string(),
                        mib(r.broker_rss_kib_loaded),
                    ]
                })
                .collect(),
        ),
    };
    if !rows.is_empty() {
        out.push_str(&render(&headers, &rows));
    }
    for r in &s.results {
        if let Some(e) = &r.error {
            let _ = writeln!(out, "{}: FAILED: {}", r.broker, e.lines().next().unwrap_or_default());
        }
    }
    if ok.iter().any(|r| r.harness_bound) {
        out.push_str("* harness ≥ 90% busy: the harness may have been the bottleneck\n");
    }
    let noisy: Vec<String> = ok
        .iter()
        .filter_map(|r| {
            r.other_cpu_percent.filter(|o| *o >= 10.0).map(|o| format!("{} {o:.0}%", r.broker))
        })
        .collect();
    if !noisy.is_empty() {
        let _ = writeln!(
            out,
            "warning: other processes used CPU during the window (% of one core): {}",
            noisy.join(", ")
        );
    }
    if !ok.is_empty() {
        let _ = writeln!(
            out,
            "durability: {}",
            ok.iter()
                .map(|r| format!("{}={}", r.broker, r.durability))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if ok.len() >= 2 {
        out.push_str(&ratios(s.params.kind, &ok));
    }
    out
}

/// Ratio tables: each row's metric divided by each column's.
fn ratios(kind: Kind, ok: &[&RunResult]) -> String {
    type Metric = fn(&RunResult) -> Option<f64>;
    let metrics: Vec<(&str, Metric)> = match kind {
        Kind::Conn => vec![
            ("bytes/conn", |r| r.broker_rss_bytes_per_conn),
            ("conn/s", |r| Some(r.connect_rate_per_sec)),
        ],
        Kind::Retained => vec![
            ("replay time", |r| r.retained_secs),
            ("broker µs/msg", |r| r.broker_cpu_us_per_msg),
        ],
        _ => vec![
            ("broker µs/msg", |r| r.broker_cpu_us_per_msg),
            ("delivered msg/s", |r| Some(r.delivered_per_sec)),
        ],
    };
    let mut out = String::new();
    for (name, f) in metrics {
        let mut headers = vec![format!("ratio: {name}")];
        headers.extend(ok.iter().map(|r| format!("÷ {}", r.broker)));
        let rows: Vec<Vec<String>> = ok
            .iter()
            .map(|a| {
                let mut row = vec![a.broker.clone()];
                for b in ok {
                    row.push(match (f(a), f(b)) {
                        _ if a.broker == b.broker => "-".into(),
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

/// Plots delivered msg/s and broker CPU-µs per message against subscriber count for the
/// fan-out scenarios, one line per broker. Returns false when there is nothing to plot.
pub fn fanout_svg(report: &Report, path: &Path) -> Result<bool> {
    use plotters::prelude::*;
    use std::collections::BTreeMap;

    // broker → [(subscribers, msg/s, µs/msg)]
    let mut series: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for s in report.scenarios.iter().filter(|s| s.params.kind == Kind::Fanout) {
        for r in s.results.iter().filter(|r| r.error.is_none()) {
            series.entry(r.broker.clone()).or_default().push((
                f64::from(s.params.count),
                r.delivered_per_sec,
                r.broker_cpu_us_per_msg.unwrap_or(0.0),
            ));
        }
    }
    if series.is_empty() {
        return Ok(false);
    }
    for pts in series.values_mut() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let mut xs: Vec<f64> = series.values().flatten().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let all = series.values().flatten();
    let x_min = all.clone().map(|p| p.0).fold(f64::MAX, f64::min).max(1.0);
    let x_max = all.clone().map(|p| p.0).fold(0.0, f64::max).max(x_min * 10.0);
    let y1_max = all.clone().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
    let y2_max = all.map(|p| p.2).fold(0.0, f64::max).max(0.01) * 1.1;

    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(600);
    struct Panel<'a, 'b> {
        area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
        title: &'static str,
        y_desc: &'static str,
        y_max: f64,
        pick: fn(&(f64, f64, f64)) -> f64,
        legend_at: SeriesLabelPosition,
    }
    // Throughput tends to fall and CPU per message to rise with subscribers: legends go
    // where the lines are not.
    let panels = [
        Panel {
            area: &left,
            title: "fan-out: delivered messages per second",
            y_desc: "msg/s",
            y_max: y1_max,
            pick: |p| p.1,
            legend_at: SeriesLabelPosition::UpperRight,
        },
        Panel {
            area: &right,
            title: "fan-out: broker CPU per delivered message",
            y_desc: "µs",
            y_max: y2_max,
            pick: |p| p.2,
            legend_at: SeriesLabelPosition::UpperLeft,
        },
    ];
    for Panel { area, title, y_desc, y_max, pick, legend_at } in panels {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (x_min * 0.8..x_max * 1.25).log_scale().with_key_points(xs.clone()),
                0.0..y_max,
            )
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc("subscribers")
            .y_desc(y_desc)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| if *v >= 1000.0 { thousands(*v) } else { format!("{v:.2}") })
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (broker, pts)) in series.iter().enumerate() {
            let color = match broker.as_str() {
                "shardmq" => RGBColor(0x1F, 0x4E, 0xB4).to_rgba(),
                "mosquitto" => RGBColor(0xC0, 0x39, 0x2B).to_rgba(),
                "rumqttd" => RGBColor(0x27, 0x8E, 0x3C).to_rgba(),
                _ => Palette99::pick(i).to_rgba(),
            };
            let line: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, pick(p))).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(broker.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(line.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .position(legend_at)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(sig(7.891), "7.89");
        assert_eq!(sig(78.91), "78.9");
        assert_eq!(sig(789.1), "789");
    }

    #[test]
    fn table_and_svg() {
        let mut report = Report::new("1", "0", 4);
        for (n, a, b) in [(100u32, 8.0, 2.0), (1000, 7.5, 1.9)] {
            let results = [("mosquitto", a), ("rumqttd", b)]
                .into_iter()
                .map(|(name, us)| RunResult {
                    broker: name.into(),
                    durability: "none".into(),
                    delivered_per_sec: 1e5 / us,
                    broker_cpu_us_per_msg: Some(us),
                    ..RunResult::default()
                })
                .collect();
            report.scenarios.push(ScenarioReport {
                scenario: "fanout".into(),
                label: format!("fanout 1→{n}"),
                params: Params::new(Kind::Fanout, n),
                results,
            });
        }
        let t = table(&report.scenarios[0]);
        assert!(t.contains("mosquitto") && t.contains("÷ rumqttd") && t.contains("4.000"), "{t}");
        let dir = std::env::temp_dir().join(format!("shardmq-bench-svg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fanout.svg");
        assert!(fanout_svg(&report, &path).unwrap());
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("rumqttd"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
