//! The packet model: one v5-shaped set of types for MQTT 3.1, 3.1.1 and 5.0.
//!
//! MQTT 3.1 and 3.1.1 are projections of this model handled at the edges (decode and
//! encode): fields that do not exist in the older versions (properties, most reason codes)
//! are left at their defaults when decoding and ignored or mapped when encoding.

use std::fmt;
use std::num::NonZeroU16;
use std::ops::Deref;

use bytes::Bytes;

use crate::properties::Properties;
use crate::reason::ReasonCode;

/// The protocol level carried in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// Whether packets carry properties and reason codes (MQTT 5.0 only).
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Quality of service of a PUBLISH or the maximum granted for a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// QoS 0.
    #[default]
    AtMostOnce = 0,
    /// QoS 1.
    AtLeastOnce = 1,
    /// QoS 2.
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two-bit QoS value; 3 is not a QoS [MQTT-3.3.1-4].
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A non-zero packet identifier [MQTT-2.2.1-3].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(pub NonZeroU16);

impl PacketId {
    /// Returns `None` for 0, which is not a valid packet identifier.
    pub fn new(v: u16) -> Option<PacketId> {
        NonZeroU16::new(v).map(PacketId)
    }

    /// The raw value.
    pub fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A UTF-8 string validated once at decode (well-formed, no U+0000) that shares the
/// buffer it was decoded from.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// Wraps bytes already known to be a valid MQTT UTF-8 string.
    ///
    /// Returns `None` if the bytes are not UTF-8 or contain U+0000 [MQTT-1.5.4-1],
    /// [MQTT-1.5.4-2].
    pub fn from_bytes(b: Bytes) -> Option<ByteStr> {
        let s = std::str::from_utf8(&b).ok()?;
        if s.contains('\0') {
            return None;
        }
        Some(ByteStr(b))
    }

    /// Wraps bytes the decoder has already validated (UTF-8, no U+0000).
    pub(crate) fn from_validated(b: Bytes) -> ByteStr {
        ByteStr(b)
    }

    /// A static string (for tests and constants). Panics on U+0000: a programmer error.
    pub fn from_static(s: &'static str) -> ByteStr {
        assert!(!s.contains('\0'), "MQTT strings must not contain U+0000");
        ByteStr(Bytes::from_static(s.as_bytes()))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // The constructor checked UTF-8; `from_utf8` here is a cheap re-check that keeps the
        // crate free of `unsafe`. The engine's hot path works on `Bytes` where it matters.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The underlying shared bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Consumes into the shared bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl From<&str> for ByteStr {
    fn from(s: &str) -> ByteStr {
        ByteStr::from(s.to_owned())
    }
}

impl From<String> for ByteStr {
    /// Panics on U+0000: building a string with NUL is a programmer error.
    fn from(s: String) -> ByteStr {
        assert!(!s.contains('\0'), "MQTT strings must not contain U+0000");
        ByteStr(Bytes::from(s))
    }
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Will topic: a valid topic name (no wildcards) [MQTT-3.1.3-11].
    pub topic: ByteStr,
    /// Will payload (binary).
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain flag.
    pub retain: bool,
    /// Will properties (5.0 only; empty otherwise).
    pub properties: Properties,
}

/// CONNECT. Boxed inside [`Packet`]: it is rare and large.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol version the client asked for.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.1/3.1.1) or Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive_secs: u16,
    /// Client identifier; may be empty.
    pub client_id: ByteStr,
    /// Will message.
    pub will: Option<Will>,
    /// User name.
    pub username: Option<ByteStr>,
    /// Password (binary).
    pub password: Option<Bytes>,
    /// CONNECT properties (5.0 only; empty otherwise).
    pub properties: Properties,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present flag.
    pub session_present: bool,
    /// The 5.0 reason code; 3.1/3.1.1 return codes are a projection of it (see
    /// [`ReasonCode::to_v3_connack`]).
    pub reason: ReasonCode,
    /// CONNACK properties (5.0 only).
    pub properties: Option<Box<Properties>>,
}

/// PUBLISH. `topic` may be empty in 5.0 when a topic alias is carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag; must be false for QoS 0 [MQTT-3.3.1-2].
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (validated: no wildcards [MQTT-3.3.2-2]).
    pub topic: ByteStr,
    /// Present iff `qos > 0` [MQTT-2.2.1-2].
    pub packet_id: Option<PacketId>,
    /// Payload: a zero-copy slice of the decode buffer.
    pub payload: Bytes,
    /// PUBLISH properties (5.0 only).
    pub properties: Option<Box<Properties>>,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share this shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResp {
    /// Packet identifier being acknowledged.
    pub packet_id: PacketId,
    /// Reason code (5.0); `Success` in 3.1/3.1.1.
    pub reason: ReasonCode,
    /// Properties (5.0 only).
    pub properties: Option<Box<Properties>>,
}

/// Retain Handling subscription option (5.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription did not exist.
    SendIfNew = 1,
    /// Do not send retained messages.
    DoNotSend = 2,
}

/// Subscription options byte (5.0) / requested QoS (3.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local (5.0).
    pub no_local: bool,
    /// Retain As Published (5.0).
    pub retain_as_published: bool,
    /// Retain Handling (5.0).
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// At least one filter [MQTT-3.8.3-3]. Filters are validated topic filters, possibly of
    /// the form `$share/{group}/{filter}`.
    pub filters: Vec<(ByteStr, SubscriptionOptions)>,
    /// Properties (5.0 only).
    pub properties: Option<Box<Properties>>,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// One reason code per filter, in order [MQTT-3.8.4-6].
    pub reasons: Vec<ReasonCode>,
    /// Properties (5.0 only).
    pub properties: Option<Box<Properties>>,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// At least one filter [MQTT-3.10.3-2].
    pub filters: Vec<ByteStr>,
    /// Properties (5.0 only).
    pub properties: Option<Box<Properties>>,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// One reason code per filter (5.0); empty in 3.1/3.1.1.
    pub reasons: Vec<ReasonCode>,
    /// Properties (5.0 only).
    pub properties: Option<Box<Properties>>,
}

/// DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code (5.0); `Success` (normal disconnection) in 3.1/3.1.1.
    pub reason: ReasonCode,
    /// Properties (5.0 only).
    pub properties: Option<Box<Properties>>,
}

/// AUTH (5.0 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Reason code: 0x00, 0x18 or 0x19.
    pub reason: ReasonCode,
    /// Properties.
    pub properties: Option<Box<Properties>>,
}

/// The control packet type (high nibble of the fixed header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// 1
    Connect = 1,
    /// 2
    ConnAck = 2,
    /// 3
    Publish = 3,
    /// 4
    PubAck = 4,
    /// 5
    PubRec = 5,
    /// 6
    PubRel = 6,
    /// 7
    PubComp = 7,
    /// 8
    Subscribe = 8,
    /// 9
    SubAck = 9,
    /// 10
    Unsubscribe = 10,
    /// 11
    UnsubAck = 11,
    /// 12
    PingReq = 12,
    /// 13
    PingResp = 13,
    /// 14
    Disconnect = 14,
    /// 15 (5.0 only)
    Auth = 15,
}

impl PacketType {
    /// The packet type of the high nibble `v` of a fixed header; `None` for 0 (reserved).
    pub fn from_u8(v: u8) -> Option<PacketType> {
        Some(match v {
            1 => PacketType::Connect,
            2 => PacketType::ConnAck,
            3 => PacketType::Publish,
            4 => PacketType::PubAck,
            5 => PacketType::PubRec,
            6 => PacketType::PubRel,
            7 => PacketType::PubComp,
            8 => PacketType::Subscribe,
            9 => PacketType::SubAck,
            10 => PacketType::Unsubscribe,
            11 => PacketType::UnsubAck,
            12 => PacketType::PingReq,
            13 => PacketType::PingResp,
            14 => PacketType::Disconnect,
            15 => PacketType::Auth,
            _ => return None,
        })
    }

    /// The fixed-header flags this packet type requires [MQTT-2.1.3-1]; PUBLISH's flags
    /// carry DUP, QoS and RETAIN instead (`None`).
    pub fn required_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }
}

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT
    Connect(Box<Connect>),
    /// CONNACK
    ConnAck(ConnAck),
    /// PUBLISH
    Publish(Publish),
    /// PUBACK
    PubAck(PubResp),
    /// PUBREC
    PubRec(PubResp),
    /// PUBREL
    PubRel(PubResp),
    /// PUBCOMP
    PubComp(PubResp),
    /// SUBSCRIBE
    Subscribe(Subscribe),
    /// SUBACK
    SubAck(SubAck),
    /// UNSUBSCRIBE
    Unsubscribe(Unsubscribe),
    /// UNSUBACK
    UnsubAck(UnsubAck),
    /// PINGREQ
    PingReq,
    /// PINGRESP
    PingResp,
    /// DISCONNECT
    Disconnect(Disconnect),
    /// AUTH
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole packet (fixed header + remaining length) accepted; checked from the
    /// fixed header before the body is buffered. At most 268,435,460 (the protocol maximum).
    pub packet_size_max_bytes: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        // 1 MiB, a sane default for a broker; the engine makes it configurable.
        Limits { packet_size_max_bytes: 1024 * 1024 }
    }
}
