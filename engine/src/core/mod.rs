//! The sans-IO core: plain state machines that take `now` as a parameter and return what to
//! send. Nothing in this module imports glommio, touches a socket or reads a clock (enforced
//! by the tidy test in `engine/tests/tidy.rs`).

pub mod ids;
pub mod limits;
pub mod mesh;
pub mod retained;
pub mod route_index;
pub mod shard;
pub mod topic;
pub mod trie;
pub mod tx;
