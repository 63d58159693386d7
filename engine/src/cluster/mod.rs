//! The node's cluster runtime: membership, node links and the messages between the shards
//! and the other nodes. `node` is the sans-IO state machine (foca for membership, the route
//! exchange, the client-id registry), `wire` the node link's frames.

pub mod node;
pub mod wire;
pub mod wire_move;

pub mod claims;
mod exchange;
pub mod gossip_auth;
mod members;
mod moving;
mod registry;
mod routes;

#[cfg(test)]
mod sim;

// The threads and sockets that drive the machine (helper "runtime").
mod link;
mod net;
pub mod runtime;
mod stream;
pub(crate) mod tls;
pub use tls::TlsReloader;
