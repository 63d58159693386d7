//! Deterministic multi-shard simulator (being written).
