//! The restart run over several brokers: the JSON report and the side-by-side table.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use super::{options, run, RestartParams, RestartResult};
use crate::broker::{BrokerOptions, BrokerSpec};

/// Everything one `restart` invocation measured (its `--json` file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestartReport {
    /// The command line.
    pub command: String,
    /// `git rev-parse HEAD` and whether the tree was dirty.
    pub git_commit: String,
    /// Uncommitted changes in the work tree.
    pub git_dirty: bool,
    /// CPUs the brokers were pinned to.
    pub broker_cpus: String,
    /// The parameters.
    pub params: RestartParams,
    /// One result per broker.
    pub results: Vec<RestartResult>,
}

/// The side-by-side table of a restart run, with ratios between brokers.
pub fn table(report: &RestartReport) -> String {
    use crate::report::{render, sig, thousands};
    use std::fmt::Write as _;
    let p = &report.params;
    let mut out = format!(
        "\n== restart with {} stored QoS 1 messages of {} B in one offline persistent session \
         (MQTT {}) ==\n",
        thousands(p.messages as f64),
        p.payload_bytes,
        p.mqtt_version
    );
    let o = |v: Option<f64>| v.map(sig).unwrap_or_else(|| "-".into());
    let headers = [
        "broker",
        "stored",
        "fill msg/s",
        "fill µs/msg",
        "data MiB",
        "stop",
        "exit s",
        "listen s",
        "CONNACK s",
        "1st msg s",
        "all msgs s",
        "replay msg/s",
        "lost",
        "dup",
        "RSS MiB",
    ];
    let rows: Vec<Vec<String>> = report
        .results
        .iter()
        .filter(|r| r.error.is_none() || r.stored > 0)
        .map(|r| {
            vec![
                r.broker.clone(),
                thousands(r.stored as f64),
                thousands(r.fill_per_sec),
                o(r.fill_broker_cpu_us_per_msg),
                format!("{:.1}", r.data_bytes as f64 / (1 << 20) as f64),
                r.stop.clone(),
                sig(r.exit_secs),
                sig(r.listen_secs),
                sig(r.connack_secs),
                o(r.first_message_secs),
                o(r.all_messages_secs),
                thousands(r.replay_per_sec),
                r.lost.to_string(),
                r.duplicates.to_string(),
                o(r.rss_kib_recovered.map(|k| k as f64 / 1024.0)),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&render(&headers, &rows));
    }
    for r in &report.results {
        if let Some(e) = &r.error {
            let _ = writeln!(out, "{}: FAILED: {}", r.broker, e.lines().next().unwrap_or_default());
        }
        if r.stored > 0 && !r.session_present {
            let _ = writeln!(
                out,
                "{}: the CONNACK after the restart had Session Present = 0",
                r.broker
            );
        }
    }
    let _ = writeln!(
        out,
        "durability: {}",
        report
            .results
            .iter()
            .map(|r| format!("{}={}", r.broker, r.durability))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out.push_str(
        "times from the spawn of the restarted process; data MiB: allocated on disk after the \
         stop. Mosquitto is stopped with SIGTERM: it writes its database only at exit and \
         every autosave_interval, so a SIGKILL would lose what came since the last snapshot.\n",
    );
    let ok: Vec<&RestartResult> = report.results.iter().filter(|r| r.error.is_none()).collect();
    if ok.len() >= 2 {
        type Metric = fn(&RestartResult) -> Option<f64>;
        let metrics: [(&str, Metric); 3] = [
            ("restart to CONNACK", |r| Some(r.connack_secs)),
            ("restart to last message", |r| r.all_messages_secs),
            ("data bytes", |r| Some(r.data_bytes as f64)),
        ];
        for (name, f) in metrics {
            let mut h = vec![format!("ratio: {name}")];
            h.extend(ok.iter().map(|r| format!("÷ {}", r.broker)));
            let rows: Vec<Vec<String>> = ok
                .iter()
                .map(|a| {
                    let mut row = vec![a.broker.clone()];
                    row.extend(ok.iter().map(|b| match (f(a), f(b)) {
                        _ if a.broker == b.broker => "-".into(),
                        (Some(x), Some(y)) if y > 0.0 => format!("{:.3}", x / y),
                        _ => "n/a".into(),
                    }));
                    row
                })
                .collect();
            let h: Vec<&str> = h.iter().map(String::as_str).collect();
            out.push_str(&render(&h, &rows));
        }
    }
    out
}

/// Runs the restart scenario against every broker of `specs`, prints the table, writes the
/// JSON (after each broker, so partial results survive).
pub fn main(
    p: &RestartParams,
    specs: &[BrokerSpec],
    base: &BrokerOptions,
    harness_cpus: &[usize],
    json: Option<&Path>,
    quiet: bool,
) -> Result<()> {
    wire_check(p.mqtt_version)?;
    let (git_commit, git_dirty) = crate::report::git_state();
    let mut rep = RestartReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        git_commit,
        git_dirty,
        broker_cpus: base.cpus.clone(),
        params: p.clone(),
        results: Vec::new(),
    };
    for spec in specs {
        let r = options(spec, base, p)
            .and_then(|opts| run(spec, &opts, p, harness_cpus, quiet))
            .unwrap_or_else(|e| RestartResult {
                broker: spec.name(),
                error: Some(format!("{e:#}")),
                ..RestartResult::default()
            });
        if let Some(e) = &r.error {
            eprintln!("{}: restart: {e}", r.broker);
        }
        rep.results.push(r);
        if let Some(path) = json {
            let text = serde_json::to_string_pretty(&rep)?;
            std::fs::write(path, text + "\n").map_err(|e| anyhow!("{}: {e}", path.display()))?;
        }
    }
    let text = table(&rep);
    {
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(text.as_bytes()).and_then(|_| o.flush());
    }
    if let Some(path) = json {
        eprintln!("wrote {}", path.display());
    }
    let failed = rep.results.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        bail!("{failed} restart run(s) failed (see above)");
    }
    Ok(())
}

fn wire_check(level: u8) -> Result<()> {
    crate::wire::protocol_version(level).map(|_| ())
}
