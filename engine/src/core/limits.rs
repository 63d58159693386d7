//! Every limit of the broker in one struct, with the relations between limits checked at
//! start-up ([`Limits::validate`]). No "0 means unlimited".

/// The broker's limits. Shared read-only by every shard (cloned into each at start-up).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest packet accepted from a client (and advertised as Maximum Packet Size in 5.0).
    pub packet_size_max_bytes: u32,
    /// Connections per shard; further connections are refused (CONNACK 0x89 server busy / 3).
    pub connections_per_shard_max: u32,
    /// Topic levels in a topic name or filter.
    pub topic_levels_max: u16,
    /// Topic name / filter length.
    pub topic_length_max_bytes: u16,
    /// Subscriptions per session.
    pub subscriptions_per_session_max: u32,
    /// Unacknowledged outgoing QoS 1/2 messages per session (the broker's send window; also
    /// capped by the client's Receive Maximum in 5.0).
    pub inflight_out_max: u16,
    /// Unacknowledged incoming QoS 2 messages per session (advertised as Receive Maximum in 5.0).
    pub inflight_in_max: u16,
    /// Messages queued per session (online backlog or offline queue).
    pub session_queue_messages_max: u32,
    /// Bytes queued per session.
    pub session_queue_bytes_max: u64,
    /// What a session whose queue is full does with one more QoS 1/2 message: drop its
    /// oldest queued message (the default, like EMQX), drop the new one (like Mosquitto), or
    /// refuse the PUBLISH (0x97 / disconnect) when the copy is for a persistent session.
    pub session_queue_full: QueueFullPolicy,
    /// Bytes of encoded frames waiting to be written on one connection before QoS 0 messages
    /// to it are dropped (counted): the hard bound (`core/delivery/tx_budget.rs`).
    pub connection_tx_bytes_max: u64,
    /// Bytes waiting on one connection past which the shard stops reading PUBLISH packets
    /// from its clients until the queue is back under a quarter of this (back-pressure; a
    /// connection that stays past it for a scan interval is marked slow instead, and QoS 0
    /// messages to it are dropped while past it).
    pub connection_tx_bytes_pause: u64,
    /// Bytes waiting on all of a shard's connections past which the shard stops reading
    /// PUBLISH packets until they are back under half of this (`core/delivery/tx_budget.rs`).
    pub shard_tx_bytes_max: u64,
    /// Largest first packet (CONNECT) accepted from a connection that has not connected yet:
    /// an unauthenticated client cannot make the broker buffer more than this.
    pub connect_packet_size_max_bytes: u32,
    /// Retained messages in the whole broker (each shard holds a replica).
    pub retained_messages_max: u32,
    /// Bytes of retained messages (topic + payload) in the whole broker (each shard holds a
    /// replica, so this is also what one shard's memory holds).
    pub retained_bytes_max: u64,
    /// Largest keep alive a client may ask for; larger values are answered with Server Keep
    /// Alive (5.0) or capped (3.1.1).
    pub keep_alive_max_secs: u16,
    /// Seconds a new connection may take to send CONNECT before it is closed (a TLS
    /// handshake and a WebSocket upgrade count against it).
    pub connect_timeout_secs: u16,
    /// TLS handshakes and WebSocket upgrades in progress per shard; connections past it are
    /// closed at once (counted), so a handshake flood cannot starve established clients.
    pub handshakes_per_shard_max: u32,
    /// Largest session expiry interval granted (seconds).
    pub session_expiry_max_secs: u32,
    /// Persistent sessions per shard (online or offline).
    pub sessions_per_shard_max: u32,
    /// Cross-shard ring capacity (messages per ordered pair of shards).
    pub mesh_ring_capacity: u32,
    /// Messages held locally when a cross-shard ring is full; past this, the shard stops
    /// reading from publishing sockets until the rings drain.
    pub mesh_outbox_messages_max: u32,
    /// Bytes of messages (payload + topic + a fixed 64 per message) a shard may have routed to
    /// one other shard that the other shard has not yet handled (`MeshMsg::Credit`); past
    /// this the shard takes no PUBLISH from its clients. This bounds what crosses before the
    /// other shard's own pause (`MeshMsg::Pressure`) arrives.
    pub mesh_inflight_bytes_max: u64,
    /// Client identifier length.
    pub client_id_length_max_bytes: u16,
    /// Topic aliases a 5.0 client may define on one connection (advertised as Topic Alias
    /// Maximum in CONNACK).
    pub topic_alias_max: u16,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            packet_size_max_bytes: 16 * 1024 * 1024,
            connections_per_shard_max: 100_000,
            topic_levels_max: 32,
            topic_length_max_bytes: 1024,
            subscriptions_per_session_max: 1024,
            inflight_out_max: 64,
            inflight_in_max: 64,
            session_queue_messages_max: 10_000,
            session_queue_bytes_max: 16 * 1024 * 1024,
            session_queue_full: QueueFullPolicy::DropOldest,
            connection_tx_bytes_max: 4 * 1024 * 1024,
            connection_tx_bytes_pause: 64 * 1024,
            shard_tx_bytes_max: 256 * 1024 * 1024,
            connect_packet_size_max_bytes: 64 * 1024,
            retained_messages_max: 1_000_000,
            retained_bytes_max: 512 * 1024 * 1024,
            keep_alive_max_secs: 3600,
            connect_timeout_secs: 10,
            handshakes_per_shard_max: 256,
            session_expiry_max_secs: 7 * 24 * 3600,
            sessions_per_shard_max: 1_000_000,
            mesh_ring_capacity: 4096,
            mesh_outbox_messages_max: 65_536,
            mesh_inflight_bytes_max: 1024 * 1024,
            client_id_length_max_bytes: 256,
            topic_alias_max: 64,
        }
    }
}

/// What a full session queue does with one more message (`session_queue_full`). Drops are
/// the session's own: other subscribers and the publisher never notice them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// The oldest queued message leaves to make room (its log record is acknowledged, so a
    /// restart does not bring it back).
    DropOldest,
    /// The new message is not queued.
    DropNewest,
    /// A QoS 1/2 copy for a persistent session fails its PUBLISH: 5.0 publishers get 0x97,
    /// 3.1.1 publishers are disconnected. Copies for other sessions are dropped (newest).
    Refuse,
}

impl Limits {
    /// Checks every limit is non-zero and that related limits agree. Returns a message
    /// naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let nonzero: [(&str, u64); 25] = [
            ("packet_size_max_bytes", self.packet_size_max_bytes.into()),
            ("connections_per_shard_max", self.connections_per_shard_max.into()),
            ("topic_levels_max", self.topic_levels_max.into()),
            ("topic_length_max_bytes", self.topic_length_max_bytes.into()),
            ("subscriptions_per_session_max", self.subscriptions_per_session_max.into()),
            ("inflight_out_max", self.inflight_out_max.into()),
            ("inflight_in_max", self.inflight_in_max.into()),
            ("session_queue_messages_max", self.session_queue_messages_max.into()),
            ("session_queue_bytes_max", self.session_queue_bytes_max),
            ("connection_tx_bytes_max", self.connection_tx_bytes_max),
            ("connection_tx_bytes_pause", self.connection_tx_bytes_pause),
            ("shard_tx_bytes_max", self.shard_tx_bytes_max),
            ("connect_packet_size_max_bytes", self.connect_packet_size_max_bytes.into()),
            ("retained_messages_max", self.retained_messages_max.into()),
            ("retained_bytes_max", self.retained_bytes_max),
            ("keep_alive_max_secs", self.keep_alive_max_secs.into()),
            ("connect_timeout_secs", self.connect_timeout_secs.into()),
            ("handshakes_per_shard_max", self.handshakes_per_shard_max.into()),
            ("session_expiry_max_secs", self.session_expiry_max_secs.into()),
            ("sessions_per_shard_max", self.sessions_per_shard_max.into()),
            ("mesh_ring_capacity", self.mesh_ring_capacity.into()),
            ("mesh_outbox_messages_max", self.mesh_outbox_messages_max.into()),
            ("mesh_inflight_bytes_max", self.mesh_inflight_bytes_max),
            ("client_id_length_max_bytes", self.client_id_length_max_bytes.into()),
            ("topic_alias_max", self.topic_alias_max.into()),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                return Err(format!("limit {name} must be greater than 0"));
            }
        }
        // The MQTT maximum packet size is 268,435,455 remaining bytes plus a 5-byte header.
        if self.packet_size_max_bytes > 268_435_460 {
            return Err("limit packet_size_max_bytes exceeds the MQTT maximum (268435460)".into());
        }
        if u64::from(self.packet_size_max_bytes) > self.session_queue_bytes_max {
            return Err("limit session_queue_bytes_max must be >= packet_size_max_bytes".into());
        }
        // (No relation between packet_size_max_bytes and connection_tx_bytes_max: the bound
        // is checked before a frame is queued, so a frame larger than it still goes to a
        // connection with little queued.)
        if self.connection_tx_bytes_pause > self.connection_tx_bytes_max {
            return Err("limit connection_tx_bytes_pause must be <= connection_tx_bytes_max".into());
        }
        if self.connection_tx_bytes_max > self.shard_tx_bytes_max {
            return Err("limit shard_tx_bytes_max must be >= connection_tx_bytes_max".into());
        }
        if u64::from(self.packet_size_max_bytes) > self.retained_bytes_max {
            return Err("limit retained_bytes_max must be >= packet_size_max_bytes".into());
        }
        if u32::from(self.topic_length_max_bytes) >= self.packet_size_max_bytes {
            return Err("limit topic_length_max_bytes must be < packet_size_max_bytes".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Limits::default().validate().unwrap();
    }

    #[test]
    fn zero_is_rejected_with_the_key_name() {
        let l = Limits { inflight_out_max: 0, ..Limits::default() };
        assert_eq!(l.validate().unwrap_err(), "limit inflight_out_max must be greater than 0");
    }

    #[test]
    fn queue_smaller_than_a_packet_is_rejected() {
        let l = Limits { session_queue_bytes_max: 10, ..Limits::default() };
        assert!(l.validate().unwrap_err().contains("session_queue_bytes_max"));
    }
}
