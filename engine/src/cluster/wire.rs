//! The node link's frames: what one node writes to another on its outgoing TCP link.
//!
//! A frame is a big-endian `u32` length (of what follows it), a kind byte and the kind's
//! body. Integers are big-endian; a string is a `u16` length and UTF-8 bytes (no U+0000, as
//! an MQTT string). The first frame on a connection is [`Frame::Hello`]. A message travels as
//! an MQTT 5.0 PUBLISH packet (encoded with `shardmq-codec`, so its properties, QoS and
//! retain flag need no second format) behind the origin shard and the message's age.
//!
//! Sans-IO: [`split_frame`] cuts frames from a read buffer (checking the declared length
//! against [`FRAME_SIZE_MAX_BYTES`] before buffering the body) and [`decode`] turns one into
//! a [`Frame`]. A malformed frame is a [`WireError`], never a panic: the runtime closes the
//! link that sent it.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use shardmq_codec::{
    ByteStr, DecodeError, Limits, Packet, PacketId, ProtocolVersion, Publish, QoS,
};

use crate::core::cluster::NodeId;
use crate::core::ids::ShardId;
use crate::core::mesh::{Message, Origin};

pub use super::wire_move::{MoveFrame, ReplyStatus};
use super::wire_move::{KIND_CLAIM_REQ, KIND_OFFER};

/// The node link protocol's version, sent in [`Frame::Hello`]; a peer with another version
/// is refused.
pub const PROTOCOL_VERSION: u16 = 2;

/// The largest frame (kind byte and body, without the length prefix) accepted or sent: a
/// 16 MiB message plus room for its topic, properties and framing. A message whose frame
/// would be larger is not sent to other nodes (counted as dropped).
pub const FRAME_SIZE_MAX_BYTES: usize = 16 * 1024 * 1024 + 256 * 1024;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Why a frame could not be read. Each ends the link that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The declared length is past [`FRAME_SIZE_MAX_BYTES`].
    #[error("frame of {size_bytes} bytes exceeds the limit of {FRAME_SIZE_MAX_BYTES} bytes")]
    TooLarge {
        /// The declared size.
        size_bytes: u64,
    },
    /// A frame without a kind byte.
    #[error("empty frame")]
    Empty,
    /// A kind byte this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The body ended before a field.
    #[error("frame truncated: {0}")]
    Truncated(&'static str),
    /// Bytes after the last field.
    #[error("{0} frame has trailing bytes")]
    Trailing(&'static str),
    /// A field holds a value it may not hold.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    /// The first frame of a connection was not a Hello, or a Hello came later.
    #[error("expected a Hello frame first, and only first")]
    NotHello,
    /// The peer speaks another protocol version.
    #[error("protocol version {theirs} is not ours ({PROTOCOL_VERSION})")]
    Version {
        /// The peer's version.
        theirs: u16,
    },
    /// The PUBLISH packet inside a Publish frame did not decode.
    #[error("Publish frame: {0}")]
    Publish(DecodeError),
}

/// A hybrid logical clock reading that orders client-id registrations cluster-wide: later
/// `ms`, then later `counter`, then higher `node` wins. See `registry.rs` for the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Stamp {
    /// The clock's milliseconds.
    pub ms: u64,
    /// Orders stamps taken in the same millisecond on one node.
    pub counter: u32,
    /// The node that took it (the tie-break).
    pub node: u16,
}

/// One frame, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// The first frame of every connection: who dials.
    Hello {
        /// [`PROTOCOL_VERSION`].
        version: u16,
        /// The dialling node.
        node: NodeId,
        /// Its boot id (new on every start).
        boot_id: u64,
        /// Its shard count (informative).
        shard_count: u16,
        /// Its registration clock, in ms (peers move theirs forward to it).
        clock_ms: u64,
    },
    /// A message published on the sending node.
    Publish {
        /// The publishing session's shard on the sending node.
        origin_shard: u16,
        /// Milliseconds the message had spent on the sending node (for message expiry).
        age_ms: u32,
        /// The message as a 5.0 PUBLISH (packet id 1 for QoS > 0: it names nothing).
        publish: Publish,
    },
    /// A message published on the sending node for one member of the shared group `group`
    /// on the receiver (the sender's group owner picked the receiver).
    PublishShared {
        /// As in `Publish`.
        origin_shard: u16,
        /// As in `Publish`.
        age_ms: u32,
        /// The whole `$share/{name}/{filter}`.
        group: ByteStr,
        /// As in `Publish`.
        publish: Publish,
    },
    /// A session move's frames (`wire_move.rs`).
    Move(MoveFrame),
    /// The sender's node-level set of filters gained or lost `filter`.
    Route {
        /// The sender's route sequence number (increasing per link).
        seq: u64,
        /// Gained or lost.
        added: bool,
        /// The filter (validated by the receiver's route index).
        filter: ByteStr,
    },
    /// The receiver of `Route`/`RoutesDone` frames holds every change up to `seq`.
    RouteAck {
        /// The acknowledged sequence number.
        seq: u64,
    },
    /// Forget the sender's routes: its full set follows as `Route` frames, then `RoutesDone`.
    RoutesReset {
        /// The sender's route sequence number at the reset.
        seq: u64,
    },
    /// The end of a snapshot started by `RoutesReset`; answered with `RouteAck { seq }`.
    RoutesDone {
        /// The sender's route sequence number at the end of the snapshot.
        seq: u64,
    },
    /// The receiver lost the sender's routes and registrations (it saw the sender go down
    /// or restart while the sender's link stayed up): send them again.
    Resync,
    /// To the client id's owner: `client_id` connected on the sender (shard, token).
    Register {
        /// When it connected.
        stamp: Stamp,
        /// The client id.
        client_id: ByteStr,
        /// The connection's shard on the sender.
        shard: u16,
        /// The connection's token on that shard.
        token: u64,
    },
    /// To the client id's owner: the connection (shard, token) on the sender ended.
    Unregister {
        /// The stamp it was registered with.
        stamp: Stamp,
        /// The client id.
        client_id: ByteStr,
        /// As in `Register`.
        shard: u16,
        /// As in `Register`.
        token: u64,
    },
    /// From the client id's owner: end the receiver's connection (shard, token), a later
    /// connection with the same client id was registered on node `by`.
    Kick {
        /// The stamp of the connection to end.
        stamp: Stamp,
        /// The client id.
        client_id: ByteStr,
        /// The connection's shard on the receiver.
        shard: u16,
        /// The connection's token.
        token: u64,
        /// The node of the connection that won (its session is offered there).
        by: NodeId,
    },
}

const KIND_HELLO: u8 = 1;
const KIND_PUBLISH: u8 = 2;
const KIND_ROUTE: u8 = 3;
const KIND_ROUTE_ACK: u8 = 4;
const KIND_ROUTES_RESET: u8 = 5;
const KIND_ROUTES_DONE: u8 = 6;
const KIND_REGISTER: u8 = 7;
const KIND_UNREGISTER: u8 = 8;
const KIND_KICK: u8 = 9;
const KIND_RESYNC: u8 = 10;
const KIND_PUBLISH_SHARED: u8 = 11;

/// Cuts the next whole frame (kind byte and body, without the length prefix) from the front
/// of `buf`. `Ok(None)`: not all of it is buffered yet (nothing consumed). The declared
/// length is checked before the body is buffered.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
    if buf.len() < LENGTH_PREFIX_BYTES {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > FRAME_SIZE_MAX_BYTES {
        return Err(WireError::TooLarge { size_bytes: len as u64 });
    }
    if len == 0 {
        return Err(WireError::Empty);
    }
    if buf.len() < LENGTH_PREFIX_BYTES + len {
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX_BYTES);
    Ok(Some(buf.split_to(len).freeze()))
}

impl Frame {
    /// The frame with its length prefix, ready to write. `None` only for a Publish frame
    /// past [`FRAME_SIZE_MAX_BYTES`] or a PUBLISH the codec refuses to encode.
    pub fn encode(&self) -> Option<Bytes> {
        let mut out = BytesMut::with_capacity(64);
        out.put_u32(0);
        match self {
            Frame::Hello { version, node, boot_id, shard_count, clock_ms } => {
                out.put_u8(KIND_HELLO);
                out.put_u16(*version);
                out.put_u16(node.0);
                out.put_u64(*boot_id);
                out.put_u16(*shard_count);
                out.put_u64(*clock_ms);
            }
            Frame::Publish { origin_shard, age_ms, publish } => {
                out.put_u8(KIND_PUBLISH);
                out.put_u16(*origin_shard);
                out.put_u32(*age_ms);
                let packet = Packet::Publish(publish.clone());
                shardmq_codec::encode(&packet, ProtocolVersion::V5, &mut out).ok()?;
            }
            Frame::PublishShared { origin_shard, age_ms, group, publish } => {
                out.put_u8(KIND_PUBLISH_SHARED);
                out.put_u16(*origin_shard);
                out.put_u32(*age_ms);
                put_str(&mut out, group)?;
                let packet = Packet::Publish(publish.clone());
                shardmq_codec::encode(&packet, ProtocolVersion::V5, &mut out).ok()?;
            }
            Frame::Move(m) => m.encode_into(&mut out)?,
            Frame::Route { seq, added, filter } => {
                out.put_u8(KIND_ROUTE);
                out.put_u64(*seq);
                out.put_u8(u8::from(*added));
                put_str(&mut out, filter)?;
            }
            Frame::RouteAck { seq } => {
                out.put_u8(KIND_ROUTE_ACK);
                out.put_u64(*seq);
            }
            Frame::RoutesReset { seq } => {
                out.put_u8(KIND_ROUTES_RESET);
                out.put_u64(*seq);
            }
            Frame::RoutesDone { seq } => {
                out.put_u8(KIND_ROUTES_DONE);
                out.put_u64(*seq);
            }
            Frame::Resync => out.put_u8(KIND_RESYNC),
            Frame::Register { stamp, client_id, shard, token } => {
                put_client(&mut out, KIND_REGISTER, stamp, client_id, *shard, *token)?;
            }
            Frame::Unregister { stamp, client_id, shard, token } => {
                put_client(&mut out, KIND_UNREGISTER, stamp, client_id, *shard, *token)?;
            }
            Frame::Kick { stamp, client_id, shard, token, by } => {
                put_client(&mut out, KIND_KICK, stamp, client_id, *shard, *token)?;
                out.put_u16(by.0);
            }
        }
        let len = out.len() - LENGTH_PREFIX_BYTES;
        if len > FRAME_SIZE_MAX_BYTES {
            return None;
        }
        out[..LENGTH_PREFIX_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
        Some(out.freeze())
    }
}

/// A Publish frame for `msg` published on `origin_shard`, `age_ms` after it was received
/// (length prefix included; `None` if it would be past the frame limit).
pub fn encode_publish(msg: &Message, origin_shard: ShardId, age_ms: u64) -> Option<Bytes> {
    let age_ms = u32::try_from(age_ms).unwrap_or(u32::MAX);
    Frame::Publish { origin_shard: origin_shard.0, age_ms, publish: as_publish(msg) }.encode()
}

/// A PublishShared frame for `msg` and the group `group` (as [`encode_publish`]).
pub fn encode_publish_shared(
    msg: &Message,
    group: &ByteStr,
    origin_shard: ShardId,
    age_ms: u64,
) -> Option<Bytes> {
    let age_ms = u32::try_from(age_ms).unwrap_or(u32::MAX);
    let group = group.clone();
    let publish = as_publish(msg);
    Frame::PublishShared { origin_shard: origin_shard.0, age_ms, group, publish }.encode()
}

/// `msg` as the 5.0 PUBLISH a Publish frame carries.
fn as_publish(msg: &Message) -> Publish {
    Publish {
        dup: false,
        qos: msg.qos,
        retain: msg.retain,
        topic: msg.topic.clone(),
        // The packet id names nothing between nodes; a QoS > 0 PUBLISH must carry one.
        packet_id: (msg.qos != QoS::AtMostOnce).then(|| PacketId::new(1).expect("1 is non-zero")),
        payload: msg.payload.clone(),
        properties: msg.properties.clone(),
    }
}

/// The message a decoded Publish frame carries, as this node's shards route it: origin
/// [`Origin::REMOTE`], received `age_ms` before `now_ms` (this node's uptime).
pub fn publish_message(publish: Publish, age_ms: u32, now_ms: u64) -> Arc<Message> {
    Arc::new(Message {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: publish.retain,
        properties: publish.properties,
        origin: Origin::REMOTE,
        received_at_ms: now_ms.saturating_sub(u64::from(age_ms)),
    })
}

pub(super) fn put_str(out: &mut BytesMut, s: &ByteStr) -> Option<()> {
    let len = u16::try_from(s.as_bytes().len()).ok()?;
    out.put_u16(len);
    out.put_slice(s.as_bytes());
    Some(())
}

fn put_client(
    out: &mut BytesMut,
    kind: u8,
    stamp: &Stamp,
    client_id: &ByteStr,
    shard: u16,
    token: u64,
) -> Option<()> {
    out.put_u8(kind);
    out.put_u64(stamp.ms);
    out.put_u32(stamp.counter);
    out.put_u16(stamp.node);
    out.put_u16(shard);
    out.put_u64(token);
    put_str(out, client_id)
}

/// Reads fields from a frame body; every read checks the length first.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }
    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }
    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    pub(super) fn bool(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Invalid(what)),
        }
    }
    pub(super) fn str(&mut self, what: &'static str) -> Result<ByteStr, WireError> {
        let len = self.u16(what)? as usize;
        let b = self.take(len, what)?;
        ByteStr::from_bytes(Bytes::copy_from_slice(b)).ok_or(WireError::Invalid(what))
    }
    fn stamp(&mut self) -> Result<Stamp, WireError> {
        Ok(Stamp { ms: self.u64("stamp")?, counter: self.u32("stamp")?, node: self.u16("stamp")? })
    }
    /// The bytes not read yet (all of them: nothing is left to read after).
    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    pub(super) fn finish(self, kind: &'static str) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(kind))
        }
    }
}

/// Decodes one frame: its kind byte and body, without the length prefix (as [`split_frame`]
/// returns it).
pub fn decode(frame: &[u8]) -> Result<Frame, WireError> {
    if frame.len() > FRAME_SIZE_MAX_BYTES {
        return Err(WireError::TooLarge { size_bytes: frame.len() as u64 });
    }
    let (&kind, body) = frame.split_first().ok_or(WireError::Empty)?;
    let mut r = Reader { buf: body };
    let f = match kind {
        KIND_HELLO => {
            let f = Frame::Hello {
                version: r.u16("hello version")?,
                node: NodeId(r.u16("hello node")?),
                boot_id: r.u64("hello boot id")?,
                shard_count: r.u16("hello shard count")?,
                clock_ms: r.u64("hello clock")?,
            };
            r.finish("Hello")?;
            f
        }
        KIND_PUBLISH | KIND_PUBLISH_SHARED => {
            let origin_shard = r.u16("origin shard")?;
            let age_ms = r.u32("age")?;
            let group = if kind == KIND_PUBLISH_SHARED { Some(r.str("group")?) } else { None };
            let mut packet = BytesMut::from(r.buf);
            let limits = Limits { packet_size_max_bytes: FRAME_SIZE_MAX_BYTES as u32 };
            let publish = match shardmq_codec::decode(&mut packet, &limits, ProtocolVersion::V5) {
                Ok(Some(Packet::Publish(p))) => p,
                Ok(Some(_)) => return Err(WireError::Invalid("not a PUBLISH packet")),
                Ok(None) => return Err(WireError::Truncated("PUBLISH packet")),
                Err(e) => return Err(WireError::Publish(e)),
            };
            if !packet.is_empty() {
                return Err(WireError::Trailing("Publish"));
            }
            if publish.topic.as_bytes().is_empty() {
                // A topic alias means nothing between nodes [MQTT-3.3.2-8]: one is never sent.
                return Err(WireError::Invalid("empty topic"));
            }
            match group {
                Some(group) => Frame::PublishShared { origin_shard, age_ms, group, publish },
                None => Frame::Publish { origin_shard, age_ms, publish },
            }
        }
        KIND_CLAIM_REQ..=KIND_OFFER => Frame::Move(MoveFrame::decode(kind, body)?),
        KIND_ROUTE => {
            let f = Frame::Route {
                seq: r.u64("route seq")?,
                added: r.bool("route added")?,
                filter: r.str("route filter")?,
            };
            r.finish("Route")?;
            f
        }
        KIND_ROUTE_ACK | KIND_ROUTES_RESET | KIND_ROUTES_DONE => {
            let seq = r.u64("seq")?;
            r.finish("route control")?;
            match kind {
                KIND_ROUTE_ACK => Frame::RouteAck { seq },
                KIND_ROUTES_RESET => Frame::RoutesReset { seq },
                _ => Frame::RoutesDone { seq },
            }
        }
        KIND_REGISTER | KIND_UNREGISTER | KIND_KICK => {
            let stamp = r.stamp()?;
            let shard = r.u16("shard")?;
            let token = r.u64("token")?;
            let client_id = r.str("client id")?;
            let f = match kind {
                KIND_REGISTER => Frame::Register { stamp, client_id, shard, token },
                KIND_UNREGISTER => Frame::Unregister { stamp, client_id, shard, token },
                _ => Frame::Kick { stamp, client_id, shard, token, by: NodeId(r.u16("kick by")?) },
            };
            r.finish("client id")?;
            f
        }
        KIND_RESYNC => {
            r.finish("Resync")?;
            Frame::Resync
        }
        k => return Err(WireError::UnknownKind(k)),
    };
    Ok(f)
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
