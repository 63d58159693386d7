//! The io layer: the only code that imports glommio.
//!
//! - [`Broker::start`] checks the machine ([`checks`]), reserves the listening ports, and
//!   starts one thread per shard, each running a glommio executor (`runtime`).
//! - Each shard listens on every address (SO_REUSEPORT), drives its connections (`conn`),
//!   talks to the other shards over the mesh (`mesh`), and turns its core's outputs into io
//!   (`shard::ShardIo::drain`).
//! - A connection is accepted on any shard and handed to its session's home shard once its
//!   CONNECT has been read: the socket is `dup`ed and sent with the bytes read so far
//!   ([`crate::core::mesh::MeshMsg::Adopt`]).

pub mod alloc;
pub mod checks;
mod cluster;
mod conn;
pub mod control;
pub mod failfast;
mod flush;
mod greet;
mod idle;
mod listen;
mod mesh;
mod persist;
pub(crate) mod poll;
mod runtime;
mod shard;
mod signal;
pub(crate) mod transport;

pub use listen::{reload_tls, TlsReload};

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use glommio::channels::channel_mesh::{Full, MeshBuilder};

use crate::config::Config;
use crate::core::hash::HashKeys;
use crate::core::mesh::MeshMsg;
use crate::core::shard::{CoreConfig, GlobalStats, ShardCounters};

/// Why the broker could not start: one line naming the cause and, when known, the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// The broker: start it with [`Broker::start`].
#[derive(Debug)]
pub struct Broker;

impl Broker {
    /// Checks the machine, starts every shard and returns once each of them accepts
    /// connections on every listener.
    pub fn start(config: &Config) -> Result<BrokerHandle, StartError> {
        config.limits.validate().map_err(StartError)?;
        checks::preflight(config).map_err(StartError)?;
        let mut log_configs = persist::prepare_data_dir(config).map_err(StartError)?;
        let listeners = listen::unique(&config.listen);
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.addr).collect();
        // Bridges connect to this broker through its first plain listener.
        let plain_listener =
            listeners.iter().position(|l| l.transport == crate::core::Transport::Tcp);
        let (listen, reservations) = listen::reserve_ports(&addrs).map_err(StartError)?;
        let listeners: Vec<listen::Listener> = listeners
            .into_iter()
            .zip(&listen)
            .enumerate()
            .map(|(i, (config, addr))| listen::Listener::new(i as u16, *addr, config))
            .collect::<Result<_, _>>()
            .map_err(StartError)?;

        let n = config.shards;
        let bridge_counters: Vec<Arc<crate::core::shard::BridgeCounters>> = config
            .bridges
            .iter()
            .map(|b| {
                Arc::new(crate::core::shard::BridgeCounters {
                    name: b.name.clone(),
                    local_client_id: b.local_client_id.clone(),
                    ..Default::default()
                })
            })
            .collect();
        let stats = Arc::new(GlobalStats {
            shards: (0..n).map(|_| ShardCounters::default()).collect(),
            bridges: bridge_counters.clone(),
        });
        let cluster_counters = config
            .cluster
            .as_ref()
            .map(|_| Arc::new(crate::core::cluster::ClusterCounters::default()));
        let core_config = CoreConfig {
            limits: config.limits.clone(),
            shard_count: n,
            sys_interval_secs: config.sys_interval_secs,
            stats,
            started_at: Instant::now(),
            auth: config.auth.clone(),
            fault_panic_topic: fault_panic_topic(),
            hash_keys: random_hash_keys(),
            cluster: config.cluster.as_ref().zip(cluster_counters.clone()).map(|(s, counters)| {
                crate::core::cluster::ClusterCore { node: s.node_id, counters }
            }),
        };
        let mesh = (n > 1).then(|| {
            MeshBuilder::<MeshMsg, Full>::full(
                usize::from(n),
                config.limits.mesh_ring_capacity as usize,
            )
        });
        // Every clone is made here, before any shard thread exists: glommio's builder keeps
        // an `Rc` inside, so it must never be cloned while another thread drops one.
        let mut mesh_clones: Vec<_> =
            (0..n).map(|_| mesh.clone()).collect::<Vec<Option<MeshBuilder<MeshMsg, Full>>>>();

        let (control, control_ends) = control::control_plane(n)
            .map_err(|e| StartError(format!("cannot create the control plane: {e}")))?;
        let mut control_ends: Vec<_> = control_ends.into_iter().map(Some).collect();

        // The cluster runtime (`cluster/`) reaches the shards through the control plane; the
        // shards reach it through its channel. Started first: it only queues for the shards
        // until they run.
        let cluster_runtime = match (&config.cluster, cluster_counters) {
            (Some(settings), Some(counters)) => {
                let sink: Arc<dyn crate::core::cluster::ShardSink> = Arc::new(control.clone());
                let started = crate::cluster::runtime::start(
                    settings.clone(),
                    sink,
                    counters,
                    core_config.started_at,
                    n,
                );
                Some(started.map_err(|e| {
                    StartError(format!("cannot start the cluster on {}: {e}", settings.listen))
                })?)
            }
            _ => None,
        };
        let cluster_line = cluster_runtime.as_ref().map(|r| cluster::ClusterLine(r.tx()));

        let (ready_tx, ready_rx) = mpsc::channel();
        let urls = listeners.iter().map(listen::Listener::url).collect();
        let mut handle = BrokerHandle {
            addrs: listen.clone(),
            urls,
            stop: Vec::new(),
            threads: Vec::new(),
            mesh,
            control,
            bridges: Arc::new(std::sync::Mutex::new(crate::bridge::Bridges::start(&[], None, &[]))),
            cluster: cluster_runtime,
        };

        for index in 0..n {
            let (made_tx, made_rx) = mpsc::channel();
            // Closing our end of this pair tells the shard to stop (no polling, no signals).
            let (ours, theirs) = match UnixStream::pair() {
                Ok(pair) => pair,
                Err(e) => {
                    let errors = handle.stop_and_join();
                    return Err(first_error(format!("cannot start shard {index}: {e}"), errors));
                }
            };
            handle.stop.push(ours);
            let start = runtime::ShardStart {
                index,
                placement_cpu: config.cpus.as_ref().map(|c| c[usize::from(index)]),
                io_memory_bytes: config.io_memory_bytes,
                ring_depth: config.ring_depth,
                listen: listeners.clone(),
                core_config: core_config.clone(),
                mesh: mesh_clones[usize::from(index)].take(),
                log_config: log_configs[usize::from(index)].take(),
                stop: theirs.into(),
                control: control_ends[usize::from(index)].take().expect("one per shard"),
                cluster: cluster_line.clone(),
                made: made_tx,
                ready: ready_tx.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("shardmq-shard-{index}"))
                .spawn(move || runtime::shard_thread(start));
            let thread = match spawned {
                Ok(t) => t,
                Err(e) => {
                    let errors = handle.stop_and_join();
                    return Err(first_error(format!("cannot start shard {index}: {e}"), errors));
                }
            };
            handle.threads.push(thread);
            // Executors must be created in shard order: the mesh orders its peers by
            // executor id, and shard i must be peer i.
            match made_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => {
                    let errors = handle.stop_and_join();
                    return Err(first_error(msg, errors));
                }
                Err(_) => {
                    let errors = handle.stop_and_join();
                    let msg = format!("shard {index} failed while creating its executor");
                    return Err(first_error(msg, errors));
                }
            }
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(msg)) => {
                    let errors = handle.stop_and_join();
                    return Err(first_error(msg, errors));
                }
                Err(_) => {
                    let errors = handle.stop_and_join();
                    return Err(first_error("a shard stopped during start-up".into(), errors));
                }
            }
        }
        // Every shard listens now: the reservations can go.
        drop(reservations);
        // Bridges connect to this broker through its first plain listener (and, without
        // one, cannot run: the admin API then refuses to add any).
        let local = plain_listener.map(|i| {
            let mut local = listen[i];
            if local.ip().is_unspecified() {
                local.set_ip(if local.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            local
        });
        *handle.bridges.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            crate::bridge::Bridges::start(&config.bridges, local, &bridge_counters);
        Ok(handle)
    }
}

/// Fresh keys for the core's hash tables (`core::hash`), from the operating system: clients
/// cannot predict them, so they cannot choose colliding client ids or topics.
fn random_hash_keys() -> HashKeys {
    let mut seed = [0u8; 16];
    getrandom::getrandom(&mut seed).expect("the operating system's random number generator");
    let (k0, k1) = seed.split_at(8);
    HashKeys(
        u64::from_le_bytes(k0.try_into().expect("8 bytes")),
        u64::from_le_bytes(k1.try_into().expect("8 bytes")),
    )
}

/// The test-only fault trigger ([`CoreConfig::fault_panic_topic`]): read from the environment
/// in debug builds only, so a release binary has no way to be made to panic on purpose.
fn fault_panic_topic() -> Option<shardmq_codec::ByteStr> {
    #[cfg(debug_assertions)]
    if let Ok(topic) = std::env::var("SHARDMQ_TEST_PANIC_TOPIC") {
        tracing::warn!("test-only fault injection: a PUBLISH to {topic:?} panics its shard");
        return Some(shardmq_codec::ByteStr::from(topic.as_str()));
    }
    None
}

/// Prefers the error a shard thread returned (or panicked with) over a generic one.
fn first_error(fallback: String, thread_errors: Vec<String>) -> StartError {
    let specific = thread_errors.into_iter().find(|e| !e.contains("stopped during start-up"));
    StartError(specific.unwrap_or(fallback))
}

/// A running broker. Dropping it shuts the broker down (like [`BrokerHandle::shutdown`]).
#[derive(Debug)]
pub struct BrokerHandle {
    addrs: Vec<SocketAddr>,
    urls: Vec<String>,
    /// Our ends of the shards' stop sockets: dropping them stops the shards.
    stop: Vec<UnixStream>,
    threads: Vec<JoinHandle<Result<(), String>>>,
    /// Kept until every shard thread has exited (see the note in [`Broker::start`]).
    mesh: Option<MeshBuilder<MeshMsg, Full>>,
    /// The sending side of the control plane.
    control: control::Control,
    /// Running bridges (stopped before the shards), shared with the admin API.
    bridges: Arc<std::sync::Mutex<crate::bridge::Bridges>>,
    /// The cluster runtime (`None` for a single node); leaves the cluster before the shards
    /// stop.
    cluster: Option<crate::cluster::runtime::ClusterRuntime>,
}

impl BrokerHandle {
    /// The addresses the broker listens on (port 0 resolved), in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The running bridges, for the admin API (`/api/v1/bridges`: list, add, remove).
    pub fn bridges(&self) -> crate::bridge::BridgeAdmin {
        crate::bridge::BridgeAdmin::new(self.bridges.clone(), self.control.clone())
    }

    /// The cluster runtime's view for the admin API (`None` for a single node).
    pub fn cluster_view(&self) -> Option<crate::cluster::runtime::ClusterView> {
        self.cluster.as_ref().map(|c| c.view())
    }

    /// Reloads the cluster's link TLS files, if the node has them (for [`crate::reload::Reloader`]).
    pub fn cluster_tls_reloader(&self) -> Option<crate::cluster::TlsReloader> {
        self.cluster.as_ref().and_then(|c| c.tls_reloader())
    }

    /// The address the cluster runtime is bound to (port 0 resolved), if in a cluster.
    pub fn cluster_addr(&self) -> Option<SocketAddr> {
        self.cluster.as_ref().map(|c| c.local_addr())
    }

    /// The control plane: requests to the shards from other threads.
    pub fn control(&self) -> control::Control {
        self.control.clone()
    }

    /// The listeners as URLs, in configuration order, like [`BrokerHandle::local_addrs`]:
    /// `ADDR:PORT` for plain MQTT, `mqtts://ADDR:PORT`, `ws://ADDR:PORT/PATH`,
    /// `wss://ADDR:PORT/PATH`.
    pub fn listener_urls(&self) -> &[String] {
        &self.urls
    }

    /// Graceful shutdown: stop accepting, send 5.0 clients DISCONNECT 0x8B, flush and close
    /// every connection, and join every shard.
    pub fn shutdown(mut self) {
        for e in self.stop_and_join() {
            tracing::error!("{e}");
        }
    }

    fn stop_and_join(&mut self) -> Vec<String> {
        self.bridges.lock().unwrap_or_else(std::sync::PoisonError::into_inner).stop();
        if let Some(c) = self.cluster.take() {
            c.stop();
        }
        self.stop.clear();
        let mut errors = Vec::new();
        for t in self.threads.drain(..) {
            let name = t.thread().name().unwrap_or("shard").to_owned();
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "unknown panic".into());
                    errors.push(format!("{name} panicked: {msg}"));
                }
            }
        }
        self.mesh = None;
        errors
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            for e in self.stop_and_join() {
                tracing::error!("{e}");
            }
        }
    }
}
