//! Results: the side-by-side tables, the JSON file and the fan-out SVG plot.

use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::scenario::{Kind, Params};
use crate::track::{Integrity, Latency};

/// One scenario run against one broker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunResult {
    /// Broker name.
    pub broker: String,
    /// Which repetition of the scenario this was (0-based; brokers take turns each round).
    pub repeat: u32,
    /// The transport the clients used (results saved before transports existed: tcp).
    #[serde(default)]
    pub transport: crate::transport::Transport,
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
    /// PUBLISHes written in the window per second (what the publishers got the broker to
    /// accept; in a flood, the broker's read rate).
    pub sent_per_sec: f64,
    /// fanout, p2p: loss per subscriber over the whole run.
    pub loss_by_subscriber: Option<LossSpread>,
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
    /// Time the broker's threads waited for a CPU in the window (run-queue delay), % of the
    /// window: other processes competing for its CPUs. Above 10 % the figures are unreliable.
    pub broker_wait_percent: Option<f64>,
    /// The same for the harness's threads in this process (not worker processes).
    pub harness_wait_percent: Option<f64>,
    /// End-to-end latency of messages sent in the window.
    pub latency: Latency,
    /// Broker RSS before the run's connections, KiB.
    pub broker_rss_kib_idle: Option<u64>,
    /// Broker RSS right after every connection was ready, KiB.
    pub broker_rss_kib_connected: Option<u64>,
    /// Broker RSS at the end of the window (conn: after the connections idled for
    /// `settle_secs`), KiB.
    pub broker_rss_kib_loaded: Option<u64>,
    /// Highest broker RSS seen during the run (samples every 20 ms and the broker's
    /// `VmHWM`; every broker is started fresh for each run), KiB.
    pub broker_rss_kib_peak: Option<u64>,
    /// conn: (connected − idle RSS) / connections, right after connecting.
    pub broker_rss_bytes_per_conn_connected: Option<f64>,
    /// (loaded − idle RSS) / connections: conn after the idle settle; message scenarios at
    /// the end of the window (subscribed and receiving).
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

/// How loss spread over the subscribers of one run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LossSpread {
    /// Subscribers that should have received messages.
    pub subscribers: u64,
    /// Subscribers that missed at least one.
    pub with_loss: u64,
    /// Median of the messages each missed.
    pub lost_median: u64,
    /// Most messages one subscriber missed.
    pub lost_max: u64,
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
    /// Runs per broker and scenario (brokers took turns).
    #[serde(default = "one")]
    pub repeat: u32,
    /// The scenarios.
    pub scenarios: Vec<ScenarioReport>,
}

impl Report {
    /// A report for this process's command line.
    pub fn new(broker_cpus: &str, harness_cpus: &str, mqtt_version: u8) -> Report {
        let (git_commit, git_dirty) = git_state();
        Report {
            command: std::env::args().map(|a| shell_quote(&a)).collect::<Vec<_>>().join(" "),
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
            repeat: 1,
            scenarios: Vec::new(),
        }
    }

    /// Writes the JSON file.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// Writes the results compactly to `dir/<date>-<short commit>.json` (the file README's
    /// headline table is generated from); returns its path. The load threads' first errors
    /// are left out (they are in `--json`), the broker commands kept.
    pub fn write_results(&self, dir: &Path) -> Result<std::path::PathBuf> {
        let mut slim = self.clone();
        for r in slim.scenarios.iter_mut().flat_map(|s| s.results.iter_mut()) {
            r.errors.clear();
        }
        let short: String = self.git_commit.chars().take(7).collect();
        let dirty = if self.git_dirty { "-dirty" } else { "" };
        let name = format!("{}-{short}{dirty}.json", utc_date(self.unix_time_secs));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(name);
        let text = serde_json::to_string(&slim)?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// `a` as a shell word: as is when it is plain, else in single quotes.
pub fn shell_quote(a: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./=:,@+-%".contains(c);
    if !a.is_empty() && a.chars().all(plain) {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

fn one() -> u32 {
    1
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn utc_date(unix_secs: u64) -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = (unix_secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}")
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
        if i > 0 && (s.len() - i).is_multiple_of(3) {
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

/// Plots delivered msg/s and broker CPU-µs per message against subscriber count for the
/// fan-out scenarios, one line per broker. Returns false when there is nothing to plot.
pub fn fanout_svg(report: &Report, path: &Path) -> Result<bool> {
    use plotters::prelude::*;
    use std::collections::BTreeMap;

    // broker → [(subscribers, msg/s, µs/msg)]: medians of the max-rate runs.
    let mut series: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    let max_rate = |s: &&ScenarioReport| {
        s.params.kind == Kind::Fanout && s.params.pace() == crate::spec::Pace::Max
    };
    for s in report.scenarios.iter().filter(max_rate) {
        for b in crate::table::by_broker(&s.results) {
            let ok: Vec<&RunResult> =
                b.runs.iter().copied().filter(|r| r.error.is_none()).collect();
            let Some(msgs) = crate::table::Stat::of(&ok, |r| Some(r.delivered_per_sec)) else {
                continue;
            };
            let us = crate::table::Stat::of(&ok, |r| r.broker_cpu_us_per_msg);
            series.entry(b.name.clone()).or_default().push((
                f64::from(s.params.count),
                msgs.median,
                us.map_or(0.0, |u| u.median),
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
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(shell_quote("--only"), "--only");
        assert_eq!(shell_quote("1->100 flood"), "'1->100 flood'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(utc_date(1_796_601_600), "2026-12-07");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
    }
}
