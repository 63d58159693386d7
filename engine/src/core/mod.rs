//! The sans-IO core: plain state machines that take `now` as a parameter and return what to
//! send. Nothing in this module imports glommio, touches a socket or reads a clock (enforced
//! by the tidy test in `engine/tests/tidy.rs`).
//!
//! Folders by concept: `routing/` (who gets a message), `sessions/` (connections and sessions),
//! `delivery/` (a message's way in and out), `persist/` (the core's side of the log), `auth/` (who
//! may connect). At the top: `shard.rs` (`ShardCore`, the state every concept adds `impl ShardCore`
//! blocks to), `dispatch.rs` (its inputs), `mesh.rs` (messages between shards), `hash.rs`,
//! `ids.rs`, `limits.rs`, and the simulator (`sim.rs`).

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod delivery;
mod dispatch;
pub mod hash;
pub mod ids;
pub mod limits;
pub mod mesh;
pub mod persist;
pub mod policy;
pub mod routing;
pub(crate) mod sessions;
pub mod shard;

pub use sessions::conn_info::{ConnInfo, Transport};
#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_tests;
