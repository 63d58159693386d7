//! The typed messages shards send each other over the cross-shard rings.
//!
//! One ring per ordered pair of shards (glommio `channel_mesh`), so messages from one shard
//! to another arrive in the order they were sent: that is what keeps per-publisher ordering
//! when a publisher and a subscriber live on different shards.

use std::any::Any;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::Bytes;
use shardmq_codec::{ByteStr, Properties, QoS, SubscriptionOptions};

use crate::core::ids::ShardId;
use crate::core::ConnInfo;

/// An application message as routed between shards: built once on the publisher's shard,
/// shared by reference count with every destination shard (payload never copied).
///
/// Immutable once built; lives as long as any shard or queue holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name (never empty: a topic alias is resolved before routing).
    pub topic: ByteStr,
    /// Payload, a slice of the publisher's read buffer.
    pub payload: Bytes,
    /// QoS the message was published with (downgraded per subscription on delivery).
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// 5.0 properties forwarded to subscribers (user properties, content type, response
    /// topic, correlation data, payload format, message expiry); `None` when there are none.
    pub properties: Option<Box<Properties>>,
    /// Where it came from, for No Local [MQTT-3.8.3-3] and diagnostics.
    pub origin: Origin,
    /// Broker-wide receive time in milliseconds since the broker started (for message expiry).
    pub received_at_ms: u64,
}

/// True once `msg`'s Message Expiry Interval has passed at `now_ms` (broker uptime). A
/// message without the property never expires.
pub(crate) fn is_expired(msg: &Message, now_ms: u64) -> bool {
    let Some(secs) = msg.properties.as_ref().and_then(|p| p.message_expiry_interval_secs) else {
        return false;
    };
    now_ms.saturating_sub(msg.received_at_ms) >= u64::from(secs) * 1000
}

/// The publishing session, identified globally by its home shard and a shard-local slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Home shard of the publishing session.
    pub shard: ShardId,
    /// Shard-local session number on that shard (`u32::MAX` for broker-generated messages).
    pub session: u32,
}

impl Origin {
    /// A message published on another node of the cluster: no session of this node
    /// published it (so No Local never suppresses it), and it is never sent on to other
    /// nodes.
    pub const REMOTE: Origin = Origin { shard: ShardId(u16::MAX), session: u32::MAX };
}

/// One message between shards.
#[derive(Debug)]
pub enum MeshMsg {
    /// A PUBLISH for the destination shard's local subscribers: one per destination shard,
    /// not one per subscriber.
    Publish(Arc<Message>),
    /// The sender's set of local filters changed: `filter` gained (`added`) or lost its last
    /// local subscriber on the sender's shard. Receivers update their routing index replica
    /// and answer with [`MeshMsg::SubDeltaAck`] carrying the same `seq`.
    SubDelta {
        /// The topic filter. For a shared subscription it is the inner filter, and the sender
        /// is the group's owner (see `routing/shared.rs`).
        filter: ByteStr,
        /// Added or removed.
        added: bool,
        /// Sender-local sequence number, echoed in the ack.
        seq: u64,
    },
    /// Acknowledges a [`MeshMsg::SubDelta`]: after every peer has acked, the sender knows
    /// every shard routes matching messages to it, and only then sends SUBACK (so a publish
    /// made after SUBACK, from any shard, reaches the new subscription).
    SubDeltaAck {
        /// The acknowledged delta's sequence number.
        seq: u64,
    },
    /// Set (`Some`) or clear (`None`) the retained message of `topic`. Sent by a publisher's
    /// shard to the topic's owner shard, which applies it and replicates it to every other
    /// shard with [`MeshMsg::RetainReplica`] (the owner orders concurrent updates).
    RetainSet {
        /// Topic name.
        topic: ByteStr,
        /// The new retained message, or `None` to clear.
        msg: Option<Arc<Message>>,
    },
    /// The owner shard's decision for `topic`, applied to the receiver's replica.
    RetainReplica {
        /// Topic name.
        topic: ByteStr,
        /// The retained message, or `None` if cleared.
        msg: Option<Arc<Message>>,
    },
    /// A session on the sender's shard joins (or, if already a member, updates its options
    /// in) the shared subscription `group` (`$share/{name}/{filter}`), whose owner is the
    /// receiver. The owner answers [`MeshMsg::SharedJoinAck`] with `token` once every shard
    /// routes the filter to it (see `routing/shared.rs`).
    SharedJoin {
        /// The whole `$share/{name}/{filter}` string.
        group: ByteStr,
        /// The member's session slot on the sender's shard.
        session: u32,
        /// The member's subscription options.
        opts: SubscriptionOptions,
        /// The member's Subscription Identifier (5.0), if any.
        sub_id: Option<u32>,
        /// Echoed in the ack: names the SUBACK waiting for it on the sender.
        token: u64,
    },
    /// The sender handled this many bytes (`mesh_cost`) of [`MeshMsg::Publish`] messages
    /// from the receiver: the receiver may route that much more (`mesh_inflight_bytes_max`).
    Credit {
        /// Bytes handled, as counted by [`mesh_cost`].
        bytes: u64,
    },
    /// The sender's own back-pressure state changed (`delivery/tx_budget.rs`): while any shard is
    /// paused, every shard takes no PUBLISH from its clients, since routed messages would
    /// fill the paused shard's queues.
    Pressure {
        /// The sender's publishers are paused.
        paused: bool,
    },
    /// The owner of a shared subscription acknowledges a [`MeshMsg::SharedJoin`]: the SUBACK
    /// waiting for `token` may go.
    SharedJoinAck {
        /// The join's token.
        token: u64,
    },
    /// A session on the sender's shard left the shared subscription `group` (unsubscribed
    /// or ended). Sent to the group's owner.
    SharedLeave {
        /// The whole `$share/{name}/{filter}` string.
        group: ByteStr,
        /// The member's session slot on the sender's shard.
        session: u32,
    },
    /// The owner of `group` chose the receiver's session `session` for `msg`.
    SharedDeliver {
        /// The whole `$share/{name}/{filter}` string.
        group: ByteStr,
        /// The chosen member's session slot on the receiver.
        session: u32,
        /// The message.
        msg: Arc<Message>,
        /// QoS after downgrading to the member's maximum.
        qos: QoS,
        /// RETAIN flag to send (Retain As Published).
        retain: bool,
        /// The member's Subscription Identifier (5.0), if any.
        sub_id: Option<u32>,
    },
    /// A message of `group` that its member could not take (the member left before it was
    /// sent): the owner gives it to another member.
    SharedRequeue {
        /// The whole `$share/{name}/{filter}` string.
        group: ByteStr,
        /// The message.
        msg: Arc<Message>,
    },
    /// An accepted connection whose CONNECT names a client id homed on the receiving shard.
    /// The receiver adopts the socket (`fd`, an owned duplicate) and decodes `read_buf`,
    /// which starts with the CONNECT packet. Only the io layer creates and consumes this; a
    /// message dropped anywhere on the way (a peer gone, a shard stopping) closes the socket.
    Adopt {
        /// The TCP socket (a duplicate the sending shard made for this message).
        fd: OwnedFd,
        /// Bytes already read from the connection (after TLS and WebSocket framing),
        /// starting with CONNECT.
        read_buf: Bytes,
        /// The connection's network identity.
        info: ConnInfo,
        /// The io layer's transport state (TLS session, WebSocket framing) for a connection
        /// that is not plain TCP: opaque to the core, it moves with the socket.
        transport: Option<Box<dyn Any + Send>>,
    },
    /// Ask the receiver to stop (graceful shutdown).
    Shutdown,
    /// With persistence: the sender routed a QoS 1/2 message (or a retained update) to the
    /// receiver just before this, on the same ring. The receiver answers
    /// [`MeshMsg::DurableAck`] with `token` once everything it logged so far is durable, so
    /// the sender acknowledges the PUBLISH only when every shard's copy is (`persist/mod.rs`).
    DurableReq {
        /// Sender-local, increasing per receiver; echoed in the ack.
        token: u64,
        /// Also wait for the shards the receiver forwarded shared-subscription messages to
        /// (the receiver is a group's owner: the second hop). Set by the publisher's shard;
        /// the owner's own requests to members do not chain further.
        chain: bool,
    },
    /// Answers a [`MeshMsg::DurableReq`]. A chained answer may overtake plain ones: the
    /// sender tracks each token.
    DurableAck {
        /// The request's token.
        token: u64,
        /// False if the receiver could not log its records (disk full).
        ok: bool,
    },
}

/// What a routed message counts against the window of messages in flight to one shard
/// (`Limits::mesh_inflight_bytes_max`): its payload, topic and a fixed 64 bytes.
pub fn mesh_cost(m: &Message) -> u64 {
    (m.payload.len() + m.topic.len() + 64) as u64
}
