//! Who is on the other end of a connection, as far as the network can tell: the listener it
//! came in on, the transport, the client's address, and the subject of a verified client
//! certificate. The io layer fills it when it opens a connection in the core
//! ([`crate::core::shard::ShardCore::open_connection`]); authentication, authorisation and
//! metrics read it ([`crate::core::shard::ShardCore::conn_info`]).
//!
//! Shard-local: one per connection, owned by the core's connection state (it travels with a
//! connection handed to another shard inside the handoff message).

use std::fmt;

// The address types of the `core` library (the same types `std` re-exports): values only,
// no sockets.
use ::core::net::SocketAddr;

/// The byte stream under MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// Plain TCP (`mqtt://`).
    #[default]
    Tcp,
    /// TLS over TCP (`mqtts://`).
    Tls,
    /// WebSocket over TCP (`ws://`), MQTT 5.0 §6.
    Ws,
    /// WebSocket over TLS (`wss://`).
    Wss,
}

impl Transport {
    /// The URL scheme of a listener with this transport.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Tcp => "mqtt",
            Transport::Tls => "mqtts",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// The transport a URL scheme names.
    pub fn from_scheme(scheme: &str) -> Option<Transport> {
        Some(match scheme {
            "mqtt" | "tcp" => Transport::Tcp,
            "mqtts" | "ssl" | "tls" => Transport::Tls,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            _ => return None,
        })
    }

    /// TLS is part of the stack.
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    /// WebSocket framing is part of the stack.
    pub fn is_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

/// A connection's identity at the network level. Shard-local (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnInfo {
    /// Index of the listener it was accepted on, in the configuration's listener list
    /// (`Config::listen`).
    pub listener: u16,
    /// The transport of that listener.
    pub transport: Transport,
    /// The client's address (after the PROXY protocol header, when the listener takes one);
    /// `None` when the socket could not tell.
    pub remote: Option<SocketAddr>,
    /// The subject common name of the client certificate, present only when the TLS
    /// handshake verified one.
    pub cert_subject_cn: Option<String>,
    /// The listener maps the certificate's subject CN to the user name, asking no password
    /// (`--tls-identity-as-username`, like Mosquitto's `use_identity_as_username`).
    pub identity_as_username: bool,
    /// The CONNECT carried Mosquitto's bridge bit (3.1.1 level | 0x80, `try_private`): the
    /// client is another broker's bridge. Its subscriptions get No Local and Retain As
    /// Published, so it is not sent back its own messages and retain flags cross intact.
    pub bridge: bool,
}

impl ConnInfo {
    /// A plain TCP connection on listener `listener` from `remote`.
    pub fn tcp(listener: u16, remote: Option<SocketAddr>) -> ConnInfo {
        ConnInfo { listener, transport: Transport::Tcp, remote, ..ConnInfo::default() }
    }
}
