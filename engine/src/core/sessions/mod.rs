//! Sessions and connections: per-connection protocol state (`conn.rs`) and network identity
//! (`conn_info.rs`), CONNECT/CONNACK,
//! takeover and wills (`connect.rs`), a session's state (`session.rs`), the table of sessions (`table.rs`) and its
//! client id -> session lookup (`index.rs`) and what runs on the clock (`timers.rs`: keep alive,
//! expiry, will delay, `$SYS`).

pub(crate) mod conn;
pub mod conn_info;
mod connect;
mod index;
pub(crate) mod session;
mod table;
mod timers;
