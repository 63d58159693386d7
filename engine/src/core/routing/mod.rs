//! Routing: who gets a message. Topic names and filters (`topic.rs`), this shard's
//! subscription trie (`trie.rs`), the replicated filter -> shard-set index
//! (`route_index.rs`), the replicated retained store (`retained.rs`), shared subscriptions
//! (`shared.rs`) and SUBSCRIBE/UNSUBSCRIBE with their routing deltas (`subscribe.rs`).
//!
//! `trie`, `route_index`, `retained` and `topic` are plain data structures: they know
//! nothing of `ShardCore`. `shared` and `subscribe` add `impl ShardCore` blocks.
//!
//! Also here:
//! - `replay.rs`: retained messages sent after a SUBACK [MQTT-3.3.1-9], paced by what the
//!   connection drains rather than cut off at its bounds.

pub(crate) mod replay;
pub mod retained;
pub mod route_index;
pub(crate) mod shared;
pub(crate) mod subscribe;
pub mod topic;
pub mod trie;
