//! `shardmq-engine`: a thread-per-core MQTT broker.
//!
//! What it does: serves MQTT 3.1, 3.1.1 and 5.0 clients with one shard per core. Each shard
//! is a glommio executor pinned to a core that owns a disjoint set of connections and sessions
//! and its own partition of the subscription table; shards talk only through typed messages
//! over bounded single-producer/single-consumer rings.
//!
//! Layers:
//! - [`core`]: sans-IO state machines (sessions, routing, retained store, limits). They take
//!   `now` as a parameter and return what to send; they never touch glommio, sockets or clocks.
//! - [`io`]: with the log's file io, the only code that uses glommio: listeners, connection
//!   drivers, the cross-shard mesh, timers. Thin: read → decode → core → encode → write.
//! - [`config`]: command line and TOML configuration; [`users_cmd`]: `shardmq users …`.
//! - [`logging`] (the process's log and its in-memory ring) and [`reload`] (SIGHUP): process-wide,
//!   outside the shards; they reach the shards through the control plane (`io::control`).
//! - Test support, compiled only for tests and with the `test-support` feature (never in the
//!   broker binary): `splitmix` (a seedable generator) and `log::workload`.
//!
//! What it deliberately does not do (yet): persistence (the per-shard log), TLS, WebSocket.

pub mod bridge;
pub mod check_config;
pub mod cluster;
pub mod config;
pub mod core;
pub mod cpu_list;
pub mod http;
pub mod io;
pub mod log;
pub mod logging;
pub mod reload;
pub mod sd_notify;
#[cfg(any(test, feature = "test-support"))]
pub mod splitmix;
pub mod users_cmd;
