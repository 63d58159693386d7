//! The persistence flags and keys of the configuration (a child module of `config`): the data
//! directory, `--in-memory`, the durability mode, the disk cap and the segment size.

use std::path::PathBuf;

use clap::Args;

use super::{invalid, Cli, ConfigError, FileConfig};
use crate::log::settings::{PersistConfig, DATA_DIR_DEFAULT};
use crate::log::Durability;

/// Persistence flags (flattened into the command line).
#[derive(Debug, Default, Args)]
pub(super) struct PersistArgs {
    /// Data directory of the per-shard logs (one `shard-N/` subdirectory per shard).
    /// Default: `shardmq-data` in the working directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep everything in memory: nothing survives a restart, acknowledgements never wait.
    #[arg(long)]
    in_memory: bool,
    /// When PUBACK/PUBREC leave: `sync` (after fdatasync, the default), `batch:<ms>` (an
    /// fdatasync at most every <ms> milliseconds; acknowledgements wait for it) or `none`
    /// (at once; the OS writes the log in the background).
    #[arg(long, value_name = "MODE")]
    durability: Option<String>,
    /// Disk cap of the log, in MiB, for the whole broker (split evenly between the shards).
    /// Past three quarters of it QoS 1/2 PUBLISHes are refused (5.0: reason 0x97; 3.1.1:
    /// disconnect); the rest is room for the records that shrink the log.
    #[arg(long, value_name = "MIB")]
    data_max_mib: Option<u64>,
    /// Log segment size in MiB (compaction rewrites sealed segments; lowered to a quarter
    /// of a shard's share of --data-max-mib when that is smaller).
    #[arg(long, value_name = "MIB")]
    data_segment_mib: Option<u64>,
    /// Skip damaged log records during recovery (with a warning) instead of refusing to
    /// start.
    #[arg(long)]
    log_skip_damaged: bool,
}

/// Merges the persistence flags over the file's keys over the defaults.
pub(super) fn resolve_persist(cli: &Cli, file: &FileConfig) -> Result<PersistConfig, ConfigError> {
    let a = &cli.persist;
    let mut p = PersistConfig::default();
    let in_memory = a.in_memory || file.in_memory.unwrap_or(false);
    let dir = a.data_dir.clone().or_else(|| file.data_dir.clone());
    if in_memory && dir.is_some() {
        return Err(invalid("--in-memory and --data-dir exclude each other"));
    }
    p.data_dir = if in_memory { None } else { dir.or(Some(PathBuf::from(DATA_DIR_DEFAULT))) };
    if let Some(d) = a.durability.as_deref().or(file.durability.as_deref()) {
        let key = if a.durability.is_some() { "--durability" } else { "durability" };
        p.durability = d.parse::<Durability>().map_err(|e| invalid(format!("{key}: {e}")))?;
    }
    if let Some(mib) = a.data_max_mib.or(file.data_max_mib) {
        if !(1..=1 << 30).contains(&mib) {
            return Err(invalid(format!("--data-max-mib {mib}: must be between 1 and 2^30")));
        }
        p.data_max_bytes = mib << 20;
    }
    if let Some(mib) = a.data_segment_mib.or(file.data_segment_mib) {
        if !(1..=4096).contains(&mib) {
            return Err(invalid(format!("--data-segment-mib {mib}: must be between 1 and 4096")));
        }
        p.segment_size_bytes = mib << 20;
    }
    p.skip_damaged = a.log_skip_damaged || file.log_skip_damaged.unwrap_or(false);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{resolve, Cli, Config, FileConfig};
    use crate::log::Durability;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from([&["shardmq"], args].concat()).map_err(|e| e.to_string())?;
        let file = FileConfig::parse("")?;
        resolve(cli, file, &[0, 1]).map_err(|e| e.to_string())
    }

    #[test]
    fn persistence_flags() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.persist.data_dir.as_deref(), Some(std::path::Path::new("shardmq-data")));
        assert_eq!(c.persist.durability, Durability::Sync);
        let c = parse(&["--data-dir", "/x", "--durability", "batch:5", "--data-max-mib", "64"])
            .unwrap();
        assert_eq!(c.persist.data_dir.as_deref(), Some(std::path::Path::new("/x")));
        assert_eq!(c.persist.durability, Durability::Batch { interval_ms: 5 });
        assert_eq!(c.persist.data_max_bytes, 64 << 20);
        assert!(parse(&["--in-memory"]).unwrap().persist.data_dir.is_none());
        let e = parse(&["--in-memory", "--data-dir", "/x"]).unwrap_err();
        assert!(e.contains("--in-memory"), "{e}");
        let e = parse(&["--durability", "fsync"]).unwrap_err();
        assert!(e.contains("--durability"), "{e}");
    }
}
