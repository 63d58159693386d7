//! Persistence variants of the brokers under test: which durability mode shardmq runs with
//! (a fresh data directory per run), and whether Mosquitto persists. Every result states its
//! mode.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::broker::{BrokerKind, BrokerOptions};

/// Mosquitto's `autosave_interval` with persistence (its default: a snapshot every 30 min).
pub const MOSQUITTO_AUTOSAVE_SECS: u32 = 1800;
/// The interval `batch` (without `:<ms>`) stands for.
pub const BATCH_MS_DEFAULT: u32 = 10;

/// A broker and its persistence variant as named on the command line: `shardmq`,
/// `shardmq@sync`, `shardmq@batch:10`, `shardmq@none`, `shardmq@in-memory`, `mosquitto`,
/// `mosquitto@persist`, `rumqttd`. The name is also the broker's name in reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSpec {
    /// Which broker.
    pub kind: BrokerKind,
    /// The persistence variant, normalised (`batch` becomes `batch:10`).
    pub variant: Option<String>,
}

impl BrokerSpec {
    /// Parses `name[@variant]`.
    pub fn parse(s: &str) -> Result<BrokerSpec> {
        let (name, variant) = match s.trim().split_once('@') {
            Some((n, v)) => (n, Some(v.trim().to_ascii_lowercase())),
            None => (s.trim(), None),
        };
        let kind = BrokerKind::parse(name)?;
        let variant = match (kind, variant.as_deref()) {
            (_, None) => None,
            (BrokerKind::Shardmq, Some("batch")) => Some(format!("batch:{BATCH_MS_DEFAULT}")),
            (BrokerKind::Shardmq, Some(v @ ("sync" | "none" | "in-memory"))) => Some(v.into()),
            (BrokerKind::Shardmq, Some(v))
                if v.strip_prefix("batch:")
                    .is_some_and(|ms| ms.parse::<u32>().is_ok_and(|n| n > 0)) =>
            {
                Some(v.into())
            }
            (BrokerKind::Mosquitto, Some("persist" | "persistence")) => Some("persist".into()),
            (k, Some(v)) => bail!(
                "unknown variant {v:?} of {} (shardmq@sync|batch[:<ms>]|none|in-memory, \
                 mosquitto@persist)",
                k.name()
            ),
        };
        Ok(BrokerSpec { kind, variant })
    }

    /// The name in reports: `shardmq@sync`, or just `shardmq`.
    pub fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}@{v}", self.kind.name()),
            None => self.kind.name().into(),
        }
    }

    /// Applies the variant to `opts`.
    pub fn apply(&self, opts: &mut BrokerOptions) {
        match (self.kind, &self.variant) {
            (BrokerKind::Shardmq, Some(v)) => opts.shardmq_durability = Some(v.clone()),
            (BrokerKind::Mosquitto, Some(_)) => opts.mosquitto_persistence = true,
            _ => {}
        }
    }
}

/// Whether this shardmq build has the log (its `--help` lists `--durability`).
fn shardmq_has_log(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--durability"))
}

/// Adds shardmq's persistence flags (a fresh `--data-dir` inside the run directory); returns
/// the durability mode as reported.
pub(crate) fn shardmq_durability_args(
    bin: &Path,
    opts: &BrokerOptions,
    dir: &Path,
    cmd: &mut Command,
) -> Result<String> {
    let has_log = shardmq_has_log(bin);
    let asked = opts.shardmq_durability.as_deref().map(|m| match m {
        "batch" => format!("batch:{BATCH_MS_DEFAULT}"),
        other => other.to_string(),
    });
    match asked.as_deref() {
        None if !has_log => Ok("none (this build has no log)".into()),
        Some(m) if !has_log => {
            bail!(
                "{} has no --durability flag (a build without the log); asked for {m}",
                bin.display()
            )
        }
        Some("in-memory") => {
            cmd.arg("--in-memory");
            Ok("none (--in-memory)".into())
        }
        mode => {
            let m = mode.unwrap_or("sync");
            cmd.arg("--data-dir").arg(dir.join("data")).arg("--durability").arg(m);
            Ok(if mode.is_none() { format!("{m} (default)") } else { m.to_string() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_specs() {
        let p = |s: &str| BrokerSpec::parse(s).map(|b| b.name());
        assert_eq!(p("shardmq").unwrap(), "shardmq");
        assert_eq!(p("shardmq@sync").unwrap(), "shardmq@sync");
        assert_eq!(p(" shardmq@batch ").unwrap(), format!("shardmq@batch:{BATCH_MS_DEFAULT}"));
        assert_eq!(p("shardmq@batch:5").unwrap(), "shardmq@batch:5");
        assert_eq!(p("shardmq@none").unwrap(), "shardmq@none");
        assert_eq!(p("mosquitto@persistence").unwrap(), "mosquitto@persist");
        for bad in ["shardmq@batch:0", "shardmq@fsync", "rumqttd@persist", "mosquitto@sync", "x"] {
            assert!(BrokerSpec::parse(bad).is_err(), "{bad}");
        }
        let mut o = BrokerOptions::default();
        BrokerSpec::parse("shardmq@none").unwrap().apply(&mut o);
        assert_eq!(o.shardmq_durability.as_deref(), Some("none"));
        BrokerSpec::parse("mosquitto@persist").unwrap().apply(&mut o);
        assert!(o.mosquitto_persistence);
    }
}
