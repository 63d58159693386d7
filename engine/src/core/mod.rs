//! The sans-IO core: plain state machines that take `now` as a parameter and return what to
//! send. Nothing in this module imports glommio, touches a socket or reads a clock (enforced
//! by the tidy test in `engine/tests/tidy.rs`).

pub mod auth;
pub(crate) mod conn;
mod connect;
pub(crate) mod deliver;
mod dispatch;
pub mod hash;
pub mod ids;
pub mod limits;
pub mod mesh;
pub(crate) mod outgoing;
pub mod persist;
mod persist_ack;
mod persist_diff;
mod persist_gate;
mod persist_restore;
mod persist_will;
mod publish;
mod refusal;
pub(crate) mod replay;
pub mod retained;
pub mod route_index;
pub(crate) mod session;
mod session_index;
pub mod shard;
pub(crate) mod shared;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_tests;
pub(crate) mod subscribe;
mod timers;
pub mod topic;
pub mod trie;
pub mod tx;
pub mod tx_budget;
