//! The reasons a client is refused something by policy, each with a counter (shard-local in
//! `LocalStats`, exported to `ShardCounters` and published as `$SYS/broker/denied/<name>`).

/// Why something was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Denial {
    /// A PUBLISH to a topic without write right.
    Publish,
    /// A SUBSCRIBE filter without any read right (SUBACK 0x87 / 0x80).
    Subscribe,
    /// A message not delivered: its topic is not readable through a partly granted filter.
    Deliver,
    /// A retained message not sent after SUBSCRIBE (same reason).
    Retained,
    /// A will not published: no write right on its topic.
    Will,
    /// A CONNECT refused: the session belongs to another user.
    SessionOwner,
    /// A connection closed: past its PUBLISH rate (messages or bytes a second).
    PublishRate,
    /// A CONNECT refused: the broker has `connections_max` clients.
    ConnectionsMax,
    /// A connection closed before CONNECT: its address opened too many this second.
    ConnectRate,
    /// A CONNECT refused: its listener has its `max_connections` clients.
    ListenerConnectionsMax,
}

impl Denial {
    /// Every reason, in counter order.
    pub const ALL: [Denial; 10] = [
        Denial::Publish,
        Denial::Subscribe,
        Denial::Deliver,
        Denial::Retained,
        Denial::Will,
        Denial::SessionOwner,
        Denial::PublishRate,
        Denial::ConnectionsMax,
        Denial::ConnectRate,
        Denial::ListenerConnectionsMax,
    ];
    /// Number of reasons.
    pub const COUNT: usize = Denial::ALL.len();

    /// The name in `$SYS/broker/denied/<name>` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Denial::Publish => "publish",
            Denial::Subscribe => "subscribe",
            Denial::Deliver => "deliver",
            Denial::Retained => "retained",
            Denial::Will => "will",
            Denial::SessionOwner => "session_owner",
            Denial::PublishRate => "publish_rate",
            Denial::ConnectionsMax => "connections_max",
            Denial::ConnectRate => "connect_rate",
            Denial::ListenerConnectionsMax => "listener_connections_max",
        }
    }
}
