//! Command line and TOML configuration.
//!
//! Every key exists both as a flag (`--sys-interval-secs 5`) and in the TOML file given with
//! `--config FILE` (`sys_interval_secs = 5`); a flag overrides the file. Limits live in a
//! `[limits]` table that maps one to one onto [`Limits`] (unknown keys are errors); the most
//! common ones also have flags. Every error is one line naming the offending key, and the
//! binary exits with status 2 on it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

use crate::core::auth::AuthConfig;
use crate::core::limits::Limits;
use crate::log::settings::PersistConfig;

#[path = "config_auth.rs"]
mod auth;
#[path = "config_cluster.rs"]
mod cluster;
#[path = "config_listen.rs"]
mod listen;
#[path = "config_ops.rs"]
mod ops;
#[path = "config_persist.rs"]
mod persist;
#[path = "config_policy.rs"]
mod policy;

pub use cluster::{ClusterSettings, ClusterTls, LINK_QUEUE_BYTES_DEFAULT};
pub use listen::{ClientAuth, ListenerConfig, TlsConfig, LISTENERS_MAX, WS_PATH_DEFAULT};
pub use ops::{check_log_level, HttpTlsFiles, LogFormat, OpsConfig, LOG_LEVEL_DEFAULT};

/// Default `io_memory` per shard: small, so that a non-root user under an 8 MiB
/// RLIMIT_MEMLOCK can run several shards (glommio registers this memory with io_uring).
pub const IO_MEMORY_DEFAULT_KIB: u32 = 256;
/// Default io_uring submission queue depth per ring (glommio creates three rings per shard).
pub const RING_DEPTH_DEFAULT: u32 = 128;
/// The most shards a broker may run.
pub const SHARDS_MAX: u16 = 1024;

/// The resolved configuration of one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Listeners (every shard listens on every one, SO_REUSEPORT), in configuration order:
    /// a connection's [`crate::core::ConnInfo::listener`] indexes this list. Port 0 picks a
    /// free port, shared by all shards.
    pub listen: Vec<ListenerConfig>,
    /// Number of shards (executor threads).
    pub shards: u16,
    /// CPU of each shard (`cpus[i]` for shard `i`) when pinning; `None` with `--no-pin`.
    pub cpus: Option<Vec<usize>>,
    /// Interval between `$SYS` publications.
    pub sys_interval_secs: u32,
    /// glommio `io_memory` per shard.
    pub io_memory_bytes: usize,
    /// glommio `ring_depth` per shard.
    pub ring_depth: usize,
    /// Every limit.
    pub limits: Limits,
    /// Persistence: data directory, durability mode, disk cap (`--in-memory`: none).
    pub persist: PersistConfig,
    /// Users, enhanced authentication methods, anonymous access, redirection.
    pub auth: AuthConfig,
    /// Logging, the admin HTTP listener, and the command line a reload parses again.
    pub ops: OpsConfig,
    /// Bridges to other brokers (`[[bridge]]` tables; `crate::bridge`).
    pub bridges: Vec<crate::bridge::BridgeConfig>,
    /// This node's cluster settings (`--node-id`, `[cluster]`); `None`: no cluster.
    pub cluster: Option<ClusterSettings>,
}

impl Config {
    /// A configuration for tests: `shards` unpinned shards on 127.0.0.1 with a free port,
    /// default limits.
    pub fn local(shards: u16) -> Config {
        Config {
            listen: vec![ListenerConfig::mqtt(SocketAddr::from(([127, 0, 0, 1], 0)))],
            shards,
            cpus: None,
            sys_interval_secs: 10,
            io_memory_bytes: IO_MEMORY_DEFAULT_KIB as usize * 1024,
            ring_depth: RING_DEPTH_DEFAULT as usize,
            limits: Limits::default(),
            persist: PersistConfig::in_memory(),
            auth: AuthConfig { rng_seed: auth::random_seed(), ..AuthConfig::default() },
            ops: OpsConfig { log_level: LOG_LEVEL_DEFAULT.to_owned(), ..OpsConfig::default() },
            bridges: Vec::new(),
            cluster: None,
        }
    }

    /// Parses the process's command line (and the config file it names).
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::try_parse_from(std::env::args_os())
    }

    /// Parses a command line (first item: the program name).
    pub fn try_parse_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let argv: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let cli = Cli::try_parse_from(&argv).map_err(ConfigError::Usage)?;
        let file = match &cli.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let mut config = resolve(cli, file, &usable_cpus())?;
        config.ops.argv = Some(argv);
        Ok(config)
    }
}

/// Why the configuration could not be built.
#[derive(Debug)]
pub enum ConfigError {
    /// Bad command line syntax, or `--help`/`--version` (clap prints and exits).
    Usage(clap::Error),
    /// A key has a bad value: one line naming the key.
    Invalid(String),
}

impl ConfigError {
    /// Prints the error (or the help text) and exits: status 2 for errors, 0 for
    /// `--help`/`--version`.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Usage(e) => e.exit(),
            ConfigError::Invalid(msg) => {
                eprintln!("shardmq: error: {msg}");
                std::process::exit(2)
            }
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Usage(e) => write!(f, "{}", e.to_string().trim_end()),
            ConfigError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// shardmq: a thread-per-core MQTT broker.
#[derive(Debug, Parser)]
#[command(
    name = "shardmq",
    version,
    about,
    after_help = "Users file: `echo PASSWORD | shardmq users add NAME --file FILE` \
                  (and `shardmq users remove NAME --file FILE`). Check a configuration \
                  without starting: `shardmq check-config FILE`."
)]
struct Cli {
    /// TOML configuration file (same keys as the flags, limits in a `[limits]` table).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    listen: listen::ListenArgs,
    /// Number of shards. Default: one per usable CPU (or per CPU in --cpus).
    #[arg(long, value_name = "N")]
    shards: Option<u16>,
    /// CPUs to pin shards to, e.g. `0,2,4-7`. Default: every CPU the process may use.
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// Do not pin shards to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Seconds between `$SYS` publications.
    #[arg(long, value_name = "SECS")]
    sys_interval_secs: Option<u32>,
    /// glommio io_memory per shard, in KiB (registered with io_uring: counts against
    /// RLIMIT_MEMLOCK).
    #[arg(long, value_name = "KIB")]
    io_memory_kib: Option<u32>,
    /// io_uring submission queue depth per ring.
    #[arg(long, value_name = "N")]
    ring_depth: Option<u32>,
    /// Seconds a new connection may take to send CONNECT (limits.connect_timeout_secs).
    #[arg(long, value_name = "SECS")]
    connect_timeout_secs: Option<u16>,
    /// Largest keep alive granted to clients (limits.keep_alive_max_secs).
    #[arg(long, value_name = "SECS")]
    keepalive_max_secs: Option<u16>,
    /// Largest packet accepted (limits.packet_size_max_bytes).
    #[arg(long, value_name = "BYTES")]
    max_packet_size: Option<u32>,
    #[command(flatten)]
    persist: persist::PersistArgs,
    #[command(flatten)]
    auth: auth::AuthArgs,
    #[command(flatten)]
    quotas: policy::QuotaArgs,
    #[command(flatten)]
    ops: ops::OpsArgs,
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

/// The TOML file: the same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<String>>,
    shards: Option<u16>,
    cpus: Option<String>,
    no_pin: Option<bool>,
    sys_interval_secs: Option<u32>,
    io_memory_kib: Option<u32>,
    ring_depth: Option<u32>,
    connect_timeout_secs: Option<u16>,
    keepalive_max_secs: Option<u16>,
    max_packet_size: Option<u32>,
    data_dir: Option<PathBuf>,
    in_memory: Option<bool>,
    durability: Option<String>,
    data_max_mib: Option<u64>,
    data_segment_mib: Option<u64>,
    log_skip_damaged: Option<bool>,
    server_reference: Option<String>,
    redirect: Option<String>,
    limits: Option<Limits>,
    auth: Option<auth::FileAuth>,
    quotas: Option<policy::FileQuotas>,
    bridge: Option<Vec<crate::bridge::config::BridgeTable>>,
    // Listeners (`config_listen.rs`): the `--tls-*` keys for every TLS listener, and tables.
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_client_auth: Option<String>,
    tls_crl: Option<PathBuf>,
    tls_identity_as_username: Option<bool>,
    ws_origins: Option<Vec<String>>,
    proxy_protocol: Option<bool>,
    listener: Option<Vec<listen::ListenerTable>>,
    log_level: Option<String>,
    log_format: Option<String>,
    http: Option<String>,
    http_token_file: Option<PathBuf>,
    http_tls_cert: Option<PathBuf>,
    http_tls_key: Option<PathBuf>,
    cluster: Option<cluster::FileCluster>,
}

impl FileConfig {
    fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("--config {}: {e}", path.display())))?;
        FileConfig::parse(&text).map_err(|e| invalid(format!("--config {}: {e}", path.display())))
    }

    /// Parses TOML text; the error is one line with the line number and the key when known.
    fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let msg = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {msg}")
                }
                None => msg,
            }
        })
    }
}

/// The CPUs this process may run on (its affinity mask), sorted.
pub fn usable_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

pub use crate::cpu_list::parse_cpu_list;

/// Merges flags over the file over the defaults and checks everything. `usable` is the set
/// of CPUs the process may run on.
fn resolve(cli: Cli, mut file: FileConfig, usable: &[usize]) -> Result<Config, ConfigError> {
    let listen = listen::resolve_listeners(&cli, &file)?;

    let pin = !(cli.no_pin || file.no_pin.unwrap_or(false));
    let cpus_key = if cli.cpus.is_some() { "--cpus" } else { "cpus" };
    let cpu_list = match cli.cpus.as_deref().or(file.cpus.as_deref()) {
        Some(s) => {
            let list = parse_cpu_list(s).map_err(|e| invalid(format!("{cpus_key} `{s}`: {e}")))?;
            if let Some(bad) = list.iter().find(|c| !usable.contains(c)) {
                return Err(invalid(format!(
                    "{cpus_key} `{s}`: CPU {bad} is not usable by this process (usable: {})",
                    format_cpu_list(usable)
                )));
            }
            Some(list)
        }
        None => None,
    };

    let shards_key = if cli.shards.is_some() { "--shards" } else { "shards" };
    let shards = match cli.shards.or(file.shards) {
        Some(n) => n,
        None => {
            let n = cpu_list.as_ref().map_or(usable.len(), Vec::len);
            n.clamp(1, usize::from(SHARDS_MAX)) as u16
        }
    };
    if shards == 0 || shards > SHARDS_MAX {
        return Err(invalid(format!("{shards_key} {shards}: must be between 1 and {SHARDS_MAX}")));
    }

    let cpus = if pin {
        let list = cpu_list.unwrap_or_else(|| usable.to_vec());
        if list.is_empty() {
            return Err(invalid("cannot pin shards: no usable CPU found (use --no-pin)"));
        }
        if usize::from(shards) > list.len() {
            return Err(invalid(format!(
                "{shards_key} {shards}: more shards than CPUs to pin them to ({}); \
                 list more CPUs with --cpus or use --no-pin",
                list.len()
            )));
        }
        Some(list[..usize::from(shards)].to_vec())
    } else {
        None
    };

    let sys_interval_secs = cli.sys_interval_secs.or(file.sys_interval_secs).unwrap_or(10);
    if sys_interval_secs == 0 {
        let key = if cli.sys_interval_secs.is_some() {
            "--sys-interval-secs"
        } else {
            "sys_interval_secs"
        };
        return Err(invalid(format!("{key}: must be greater than 0")));
    }

    let io_memory_kib = cli.io_memory_kib.or(file.io_memory_kib).unwrap_or(IO_MEMORY_DEFAULT_KIB);
    if !(64..=1024 * 1024).contains(&io_memory_kib) {
        let key = if cli.io_memory_kib.is_some() { "--io-memory-kib" } else { "io_memory_kib" };
        return Err(invalid(format!("{key} {io_memory_kib}: must be between 64 and 1048576")));
    }
    let ring_depth = cli.ring_depth.or(file.ring_depth).unwrap_or(RING_DEPTH_DEFAULT);
    if !(8..=32768).contains(&ring_depth) {
        let key = if cli.ring_depth.is_some() { "--ring-depth" } else { "ring_depth" };
        return Err(invalid(format!("{key} {ring_depth}: must be between 8 and 32768")));
    }

    let mut auth = auth::resolve_auth(&cli, &file, &listen)?;
    auth.quotas = policy::resolve_quotas(&cli, &file)?
        .with_listeners(listen.iter().map(|l| l.connections_max).collect());
    let persist = persist::resolve_persist(&cli, &file)?;
    let ops = ops::resolve_ops(&cli, &file)?;
    let cluster = cluster::resolve_cluster(&cli, &file)?;
    let bridges = crate::bridge::config::resolve_all(file.bridge.take().unwrap_or_default())
        .map_err(invalid)?;
    if !bridges.is_empty() && !listen.iter().any(|l| l.transport == crate::core::Transport::Tcp) {
        return Err(invalid("[[bridge]]: a bridge connects to this broker through a plain mqtt:// listener; add one (e.g. mqtt://127.0.0.1:0)"));
    }
    let mut limits = file.limits.unwrap_or_default();
    // Top-level shorthands in the file, then flags, override the [limits] table.
    if let Some(v) = cli.connect_timeout_secs.or(file.connect_timeout_secs) {
        limits.connect_timeout_secs = v;
    }
    if let Some(v) = cli.keepalive_max_secs.or(file.keepalive_max_secs) {
        limits.keep_alive_max_secs = v;
    }
    if let Some(v) = cli.max_packet_size.or(file.max_packet_size) {
        limits.packet_size_max_bytes = v;
    }
    limits.validate().map_err(ConfigError::Invalid)?;

    Ok(Config {
        listen,
        shards,
        cpus,
        sys_interval_secs,
        io_memory_bytes: io_memory_kib as usize * 1024,
        ring_depth: ring_depth as usize,
        limits,
        auth,
        persist,
        ops,
        bridges,
        cluster,
    })
}

/// Formats CPU numbers compactly (`0-3,6`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_list_formatting() {
        assert_eq!(format_cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    pub(super) fn parse_with(
        args: &[&str],
        file: &str,
        usable: &[usize],
    ) -> Result<Config, String> {
        let mut argv = vec!["shardmq"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let file = FileConfig::parse(file)?;
        resolve(cli, file, usable).map_err(|e| e.to_string())
    }

    pub(super) fn parse(args: &[&str]) -> Result<Config, String> {
        parse_with(args, "", &[0, 1, 2, 3])
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, vec![ListenerConfig::mqtt("127.0.0.1:1883".parse().unwrap())]);
        assert_eq!(c.shards, 4);
        assert_eq!(c.cpus, Some(vec![0, 1, 2, 3]));
        assert_eq!(c.sys_interval_secs, 10);
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn flags() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:1884",
            "--shards",
            "2",
            "--no-pin",
            "--connect-timeout-secs",
            "3",
            "--keepalive-max-secs",
            "60",
            "--max-packet-size",
            "4096",
            "--sys-interval-secs",
            "1",
        ])
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.shards, 2);
        assert_eq!(c.cpus, None);
        assert_eq!(c.limits.connect_timeout_secs, 3);
        assert_eq!(c.limits.keep_alive_max_secs, 60);
        assert_eq!(c.limits.packet_size_max_bytes, 4096);
        assert_eq!(c.sys_interval_secs, 1);
    }

    #[test]
    fn cpus_pick_shards_and_must_be_usable() {
        let c = parse(&["--cpus", "1,3"]).unwrap();
        assert_eq!(c.shards, 2);
        assert_eq!(c.cpus, Some(vec![1, 3]));
        let c = parse(&["--cpus", "0-3", "--shards", "2"]).unwrap();
        assert_eq!(c.cpus, Some(vec![0, 1]));
        let e = parse(&["--cpus", "0,9"]).unwrap_err();
        assert!(e.contains("--cpus") && e.contains("CPU 9"), "{e}");
        let e = parse(&["--cpus", "0", "--shards", "2"]).unwrap_err();
        assert!(e.contains("--shards 2") && e.contains("--no-pin"), "{e}");
        // Unpinned, any shard count goes.
        assert_eq!(parse(&["--shards", "8", "--no-pin"]).unwrap().shards, 8);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse(&["--shards", "0"]).unwrap_err();
        assert!(e.contains("--shards 0"), "{e}");
        let e = parse(&["--listen", "nonsense"]).unwrap_err();
        assert!(e.contains("--listen `nonsense`"), "{e}");
        let e = parse(&["--connect-timeout-secs", "0"]).unwrap_err();
        assert!(e.contains("connect_timeout_secs"), "{e}");
        let e = parse(&["--max-packet-size", "10"]).unwrap_err();
        assert!(e.contains("topic_length_max_bytes"), "{e}");
        let e = parse(&["--sys-interval-secs", "0"]).unwrap_err();
        assert!(e.contains("--sys-interval-secs"), "{e}");
        assert!(parse(&["--shards", "-1"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }

    #[test]
    fn file_keys_and_limits_table() {
        let file = r#"
            listen = ["127.0.0.1:0"]
            shards = 2
            no_pin = true
            sys_interval_secs = 5
            [limits]
            inflight_out_max = 7
            connect_timeout_secs = 4
        "#;
        let c = parse_with(&[], file, &[0]).unwrap();
        assert_eq!(c.shards, 2);
        assert_eq!(c.cpus, None);
        assert_eq!(c.sys_interval_secs, 5);
        assert_eq!(c.limits.inflight_out_max, 7);
        assert_eq!(c.limits.connect_timeout_secs, 4);
        // Flags override the file, including its [limits] table.
        let c = parse_with(&["--shards", "3", "--connect-timeout-secs", "9"], file, &[0]).unwrap();
        assert_eq!(c.shards, 3);
        assert_eq!(c.limits.connect_timeout_secs, 9);
        assert_eq!(c.limits.inflight_out_max, 7);
    }

    #[test]
    fn file_errors_name_the_key_and_line() {
        let e = parse_with(&[], "shards = 2\nbogus = 1\n", &[0]).unwrap_err();
        assert!(e.contains("bogus") && e.contains("line 2"), "{e}");
        let e = parse_with(&[], "[limits]\ninflight_max = 1\n", &[0]).unwrap_err();
        assert!(e.contains("inflight_max"), "{e}");
        let e = parse_with(&[], "[limits]\ninflight_out_max = 0\n", &[0]).unwrap_err();
        assert!(e.contains("inflight_out_max"), "{e}");
        let e = parse_with(&[], "shards = \"two\"\n", &[0]).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let e = parse_with(&[], "listen = []\n", &[0]).unwrap_err();
        assert!(e.contains("listen"), "{e}");
    }

    #[test]
    fn queue_full_policy_is_a_limits_key() {
        use crate::core::limits::QueueFullPolicy;
        for (text, policy) in [
            ("drop_oldest", QueueFullPolicy::DropOldest),
            ("drop_newest", QueueFullPolicy::DropNewest),
            ("refuse", QueueFullPolicy::Refuse),
        ] {
            let file = format!("[limits]\nsession_queue_full = \"{text}\"\n");
            assert_eq!(parse_with(&[], &file, &[0]).unwrap().limits.session_queue_full, policy);
        }
        let e = parse_with(&[], "[limits]\nsession_queue_full = \"drop\"\n", &[0]).unwrap_err();
        assert!(e.contains("drop_oldest") && e.contains("line 2"), "{e}");
    }
}
