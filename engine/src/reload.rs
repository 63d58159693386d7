//! Reload: re-read the configuration and the files it names, and apply what can change
//! while the broker runs. SIGHUP (`main.rs`) and `POST /api/v1/reload` both call
//! [`Reloader::reload`], which calls [`build_reload`] once, applies the process-wide parts
//! (the log filter) and broadcasts the result to every shard as
//! [`ControlMsg::Reload`](crate::io::control::ControlMsg::Reload); each shard applies its
//! own parts (`io/control.rs`).
//!
//! A part that fails to load keeps the old state; the error (file, line, reason) is
//! reported. Keys that changed but need a restart are listed, not applied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::config::Config;
use crate::io::control::{Control, ControlMsg};

/// What a reload changes, built once and shared by every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// Counts reloads since start (1 for the first); set by [`Reloader::reload`].
    pub generation: u64,
    /// The log filter (`--log-level`), applied process-wide.
    pub log_level: String,
    /// Password file, users file, anonymous access and ACL file, read again; each shard
    /// swaps them in at once (`core/policy/reload.rs`). When one of the files cannot be
    /// read, the configuration's re-reading fails and the running ones are sent back.
    pub auth: crate::core::auth::AuthConfig,
    /// TLS listeners' certificate, key, client CA and CRL, read again (`io/listen.rs`,
    /// [`crate::io::reload_tls`]); each shard builds its own server configuration from them.
    pub(crate) tls: crate::io::TlsReload,
}

/// Re-reads the configuration `config` came from (its command line and `--config` file)
/// and the files it names. Returns the new state and the errors met (each one line: a part
/// with an error keeps its old value), and lists in the errors nothing that merely needs a
/// restart: see [`restart_needed`].
pub fn build_reload(config: &Config) -> (Reload, Vec<String>) {
    let mut errors = Vec::new();
    let fresh = match reread(config) {
        Ok(fresh) => fresh,
        Err(e) => {
            errors.push(e);
            config.clone()
        }
    };
    // The running listeners' files (changing the listeners themselves needs a restart).
    let (tls, tls_errors) = crate::io::reload_tls(config);
    errors.extend(tls_errors);
    let reload = Reload {
        generation: 0,
        log_level: fresh.ops.log_level.clone(),
        auth: fresh.auth.clone(),
        tls,
    };
    (reload, errors)
}

/// The configuration parsed again from its command line, or a copy when it was built in
/// code.
fn reread(config: &Config) -> Result<Config, String> {
    match &config.ops.argv {
        Some(argv) => Config::try_parse_from(argv.iter().cloned()).map_err(|e| e.to_string()),
        None => Ok(config.clone()),
    }
}

/// The keys of `fresh` that differ from the running `config` and only take effect after a
/// restart.
pub fn restart_needed(config: &Config, fresh: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            keys.push(key);
        }
    };
    check(without_policy(&config.listen) != without_policy(&fresh.listen), "listen");
    check(config.shards != fresh.shards, "shards");
    check(config.cpus != fresh.cpus, "cpus");
    check(config.sys_interval_secs != fresh.sys_interval_secs, "sys_interval_secs");
    check(config.io_memory_bytes != fresh.io_memory_bytes, "io_memory_kib");
    check(config.ring_depth != fresh.ring_depth, "ring_depth");
    check(config.limits != fresh.limits, "limits");
    check(config.persist != fresh.persist, "persistence (data_dir, durability, data_*)");
    check(config.ops.log_format != fresh.ops.log_format, "log_format");
    check(config.ops.http != fresh.ops.http, "http");
    check(config.ops.http_token_file != fresh.ops.http_token_file, "http_token_file");
    check(config.ops.http_tls != fresh.ops.http_tls, "http_tls_cert, http_tls_key");
    check(config.cluster != fresh.cluster, "cluster (node_id, listen, seeds, advertise, tls_*)");
    keys
}

/// The listeners without what a reload applies (their credentials, ACL, anonymous access
/// and connection quota).
fn without_policy(listen: &[crate::config::ListenerConfig]) -> Vec<crate::config::ListenerConfig> {
    let mut out = listen.to_vec();
    for l in &mut out {
        l.allow_anonymous = None;
        l.password_file = None;
        l.users_file = None;
        l.acl_file = None;
        l.connections_max = None;
    }
    out
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// The reload's generation.
    pub generation: u64,
    /// Errors met (the parts concerned keep their old state).
    pub errors: Vec<String>,
    /// Changed keys that need a restart to take effect.
    pub restart_needed: Vec<&'static str>,
    /// The HTTP listener's files read again (`http_token_file`, `http_tls`); one that
    /// failed is in `errors` instead.
    pub reloaded: Vec<&'static str>,
}

/// Builds, applies and broadcasts reloads. One per broker, shared by the threads that may
/// ask for a reload (outside the shards: it takes a mutex).
#[derive(Debug)]
pub struct Reloader {
    /// The configuration the broker started with.
    config: Config,
    control: Control,
    generation: AtomicU64,
    /// The last reload sent, if any (for `GET /api/v1/config`).
    last: Mutex<Option<Arc<Reload>>>,
    /// The cluster's link TLS files, reloaded with the rest (a node with `--cluster-tls-*`).
    cluster_tls: Option<crate::cluster::TlsReloader>,
    /// The HTTP listener's token and certificate, once it runs (`http/files.rs`).
    http: OnceLock<Arc<crate::http::HttpFiles>>,
}

impl Reloader {
    /// A reloader for the broker started with `config`.
    pub fn new(config: Config, control: Control) -> Reloader {
        Reloader {
            config,
            control,
            generation: AtomicU64::new(0),
            last: Mutex::new(None),
            cluster_tls: None,
            http: OnceLock::new(),
        }
    }

    /// Also reloads the cluster's link TLS files (`BrokerHandle::cluster_tls_reloader`).
    pub fn with_cluster_tls(mut self, tls: Option<crate::cluster::TlsReloader>) -> Reloader {
        self.cluster_tls = tls;
        self
    }

    /// Registers the HTTP listener's files: every later reload reads them again.
    pub fn attach_http(&self, files: Arc<crate::http::HttpFiles>) {
        let _ = self.http.set(files);
    }

    /// The configuration the broker started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The start-up configuration, as a reload builds it without re-reading the command line.
    fn config_without_argv(&self) -> Config {
        let mut c = self.config.clone();
        c.ops.argv = None;
        c
    }

    /// Reloads so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The log level the last reload set, if any reload happened.
    pub fn current_log_level(&self) -> Option<String> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref().map(|r| r.log_level.clone())
    }

    /// Reloads: builds the new state, applies the process-wide parts, and queues the rest
    /// for every shard (each applies it between two events; this does not wait for them).
    pub fn reload(&self) -> ReloadOutcome {
        // One reload at a time, so shards see generations in order.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (mut reload, mut errors, restart) = match reread(&self.config) {
            Ok(fresh) => {
                let (mut reload, mut errors) = build_reload(&self.config);
                if without_policy(&self.config.listen) != without_policy(&fresh.listen) {
                    // Per-listener files and limits apply to the running listeners by
                    // position; with the listeners changed (which takes a restart) they would
                    // land on the wrong ones: credentials, ACLs and quotas stay as they are.
                    reload.auth = match last.as_deref() {
                        Some(now) => now.auth.clone(),
                        None => build_reload(&self.config_without_argv()).0.auth,
                    };
                    errors.push(
                        "listen changed (needs a restart): passwords, users, ACLs and listener \
                         limits were not reloaded"
                            .into(),
                    );
                }
                (reload, errors, restart_needed(&self.config, &fresh))
            }
            // The configuration itself does not parse: everything stays as it is now (the
            // last reload's state, or the start-up one).
            Err(e) => match last.as_deref() {
                Some(now) => (now.clone(), vec![e], Vec::new()),
                None => {
                    let (start, mut errors) = build_reload(&self.config_without_argv());
                    errors.insert(0, e);
                    (start, errors, Vec::new())
                }
            },
        };
        if let Some(t) = &self.cluster_tls {
            // New link handshakes use the new files; links already up keep theirs.
            if let Err(e) = t.reload() {
                errors.push(format!("cluster TLS (old files kept): {e}"));
            }
        }
        reload.generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        if let Err(e) = crate::logging::set_level(&reload.log_level) {
            tracing::debug!("reload: log level not changed: {e}");
        }
        let reload = Arc::new(reload);
        for (shard, sent) in
            self.control.send_all(|_| ControlMsg::Reload(reload.clone())).iter().enumerate()
        {
            if let Err(e) = sent {
                errors.push(format!("shard {shard}: {e}"));
            }
        }
        let mut reloaded = Vec::new();
        if let Some(http) = self.http.get() {
            let (done, failed) = http.reload();
            reloaded = done;
            errors.extend(failed);
        }
        for e in &errors {
            tracing::warn!("reload {}: {e}", reload.generation);
        }
        if !restart.is_empty() {
            tracing::warn!(
                "reload {}: changed but needs a restart: {}",
                reload.generation,
                restart.join(", ")
            );
        }
        *last = Some(reload.clone());
        ReloadOutcome { generation: reload.generation, errors, restart_needed: restart, reloaded }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_built_in_code_reloads_as_itself() {
        let c = Config::local(2);
        let (r, errors) = build_reload(&c);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(r.log_level, c.ops.log_level);
        assert!(restart_needed(&c, &c).is_empty());
    }

    #[test]
    fn the_cluster_keys_need_a_restart() {
        use crate::config::ClusterSettings;
        use crate::core::cluster::NodeId;
        let c = Config::local(1);
        let mut fresh = c.clone();
        let listen = "127.0.0.1:7000".parse().unwrap();
        fresh.cluster = Some(ClusterSettings::new(NodeId(1), listen, Vec::new()));
        let keys = restart_needed(&c, &fresh);
        assert!(keys.len() == 1 && keys[0].starts_with("cluster"), "{keys:?}");
    }

    #[test]
    fn a_bad_file_keeps_the_old_state_and_says_why() {
        let dir = std::env::temp_dir().join(format!("shardmq-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.toml");
        std::fs::write(&file, "log_level = \"info\"\nshards = 1\nno_pin = true\n").unwrap();
        let argv = ["shardmq", "--config", file.to_str().unwrap()];
        let c = Config::try_parse_from(argv).unwrap();
        assert_eq!(c.ops.log_level, "info");
        std::fs::write(&file, "log_level = \"debug\"\nshards = 2\nno_pin = true\n").unwrap();
        let (r, errors) = build_reload(&c);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(r.log_level, "debug");
        assert_eq!(restart_needed(&c, &reread(&c).unwrap()), vec!["shards"]);
        std::fs::write(&file, "log_level = \"loud\"\nshards = 1\nno_pin = true\n").unwrap();
        let (r, errors) = build_reload(&c);
        assert_eq!(r.log_level, "info", "old state kept");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("log_level") && errors[0].contains("loud"), "{errors:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
