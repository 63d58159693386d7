//! `shardmq-bench`: a load generator for MQTT brokers and a side-by-side comparison of shardmq
//! with its peers (Mosquitto, rumqttd), talking to every broker on loopback.
//!
//! What it does: opens thousands of MQTT connections per thread on non-blocking sockets
//! ([`load`]), publishes payloads that carry a sequence number, a publisher id and a send
//! timestamp ([`payload`]), and checks on the receiving side every (publisher, subscriber)
//! stream for loss, duplicates and order violations while recording end-to-end latency
//! ([`track`]). It starts, pins, measures and stops the brokers itself ([`broker`]), runs the
//! scenarios ([`scenario`]) and reports tables, JSON and an SVG plot ([`report`]). It measures
//! its own CPU use so that a run shows whether the harness was the bottleneck.
//!
//! [`restart`] measures how long a broker takes to come back with N messages stored in an
//! offline persistent session.
//!
//! Every message scenario runs over TCP, TLS, WebSocket or WebSocket over TLS
//! ([`transport`]; `--transport`), with each broker started with the matching listener.
//!
//! What it deliberately does not do: reconnect (outside [`restart`]), or any timing
//! assertion in tests (the smoke tests check correctness only).

mod bins;
pub mod bridge;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod cluster_join;
pub mod durability;
pub mod headline;
pub mod load;
pub mod matrix;
mod parts;
pub mod payload;
pub mod report;
pub mod restart;
pub mod scenario;
pub mod spec;
pub mod sys;
pub mod table;
pub mod topology;
pub mod track;
pub mod transport;
pub mod tune;
pub mod tune_svg;
pub mod wire;
pub mod worker;
