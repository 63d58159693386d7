//! MQTT 5.0 properties (§2.2.2): one struct with every property, each optional.
//!
//! Which packet may carry which property is checked at decode by
//! [`PropertyId::allowed_in`]; a property outside its packets is a malformed packet
//! (§2.2.2.2). Encoding writes properties in a fixed canonical order: by property identifier,
//! repeatable ones (User Property, Subscription Identifier) in their order, so that
//! `decode(encode(p)) == p`.

use bytes::Bytes;

use crate::types::{ByteStr, PacketType};

mod wire;

pub(crate) use wire::{encode_opt, opt_block_len, opt_is_empty};

/// Every MQTT 5.0 property a packet (or a will) can carry. Absent properties are `None`
/// (or empty for the repeatable ones). In 3.1/3.1.1 every packet has the default (empty) value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// 0x01 Payload Format Indicator (byte): PUBLISH, will.
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Message Expiry Interval (four-byte integer, seconds): PUBLISH, will.
    pub message_expiry_interval_secs: Option<u32>,
    /// 0x03 Content Type (UTF-8 string): PUBLISH, will.
    pub content_type: Option<ByteStr>,
    /// 0x08 Response Topic (UTF-8 string, a topic name): PUBLISH, will.
    pub response_topic: Option<ByteStr>,
    /// 0x09 Correlation Data (binary): PUBLISH, will.
    pub correlation_data: Option<Bytes>,
    /// 0x0B Subscription Identifier (variable byte integer, 1..=268,435,455): PUBLISH
    /// (repeatable, server to client), SUBSCRIBE (at most one).
    pub subscription_identifiers: Vec<u32>,
    /// 0x11 Session Expiry Interval (four-byte integer, seconds): CONNECT, CONNACK, DISCONNECT.
    pub session_expiry_interval_secs: Option<u32>,
    /// 0x12 Assigned Client Identifier (UTF-8 string): CONNACK.
    pub assigned_client_identifier: Option<ByteStr>,
    /// 0x13 Server Keep Alive (two-byte integer, seconds): CONNACK.
    pub server_keep_alive_secs: Option<u16>,
    /// 0x15 Authentication Method (UTF-8 string): CONNECT, CONNACK, AUTH.
    pub authentication_method: Option<ByteStr>,
    /// 0x16 Authentication Data (binary): CONNECT, CONNACK, AUTH.
    pub authentication_data: Option<Bytes>,
    /// 0x17 Request Problem Information (byte, 0 or 1): CONNECT.
    pub request_problem_information: Option<u8>,
    /// 0x18 Will Delay Interval (four-byte integer, seconds): will.
    pub will_delay_interval_secs: Option<u32>,
    /// 0x19 Request Response Information (byte, 0 or 1): CONNECT.
    pub request_response_information: Option<u8>,
    /// 0x1A Response Information (UTF-8 string): CONNACK.
    pub response_information: Option<ByteStr>,
    /// 0x1C Server Reference (UTF-8 string): CONNACK, DISCONNECT.
    pub server_reference: Option<ByteStr>,
    /// 0x1F Reason String (UTF-8 string): CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK,
    /// UNSUBACK, DISCONNECT, AUTH.
    pub reason_string: Option<ByteStr>,
    /// 0x21 Receive Maximum (two-byte integer, non-zero): CONNECT, CONNACK.
    pub receive_maximum: Option<u16>,
    /// 0x22 Topic Alias Maximum (two-byte integer): CONNECT, CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Topic Alias (two-byte integer, non-zero): PUBLISH.
    pub topic_alias: Option<u16>,
    /// 0x24 Maximum QoS (byte, 0 or 1): CONNACK.
    pub maximum_qos: Option<u8>,
    /// 0x25 Retain Available (byte, 0 or 1): CONNACK.
    pub retain_available: Option<u8>,
    /// 0x26 User Property (UTF-8 string pair, repeatable, order preserved): every packet
    /// with properties, and will.
    pub user_properties: Vec<(ByteStr, ByteStr)>,
    /// 0x27 Maximum Packet Size (four-byte integer, non-zero): CONNECT, CONNACK.
    pub maximum_packet_size: Option<u32>,
    /// 0x28 Wildcard Subscription Available (byte, 0 or 1): CONNACK.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29 Subscription Identifier Available (byte, 0 or 1): CONNACK.
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A Shared Subscription Available (byte, 0 or 1): CONNACK.
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }
}

/// The wire type of a property's value (§2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PropertyType {
    /// One byte.
    Byte,
    /// Big-endian two-byte integer.
    TwoByteInteger,
    /// Big-endian four-byte integer.
    FourByteInteger,
    /// Variable byte integer.
    VariableByteInteger,
    /// UTF-8 encoded string.
    Utf8String,
    /// Binary data.
    BinaryData,
    /// UTF-8 string pair.
    Utf8StringPair,
}

/// Where a property block appears: a packet's variable header, or a CONNECT's will.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PropertyContext {
    /// The properties of a packet of this type.
    Packet(PacketType),
    /// The will properties of CONNECT.
    Will,
}

impl From<PacketType> for PropertyContext {
    fn from(t: PacketType) -> PropertyContext {
        PropertyContext::Packet(t)
    }
}

impl PropertyContext {
    /// The context's bit in [`PropertyId`]'s allowed-in masks.
    const fn bit(self) -> u16 {
        match self {
            PropertyContext::Packet(t) => 1 << (t as u16),
            PropertyContext::Will => 1,
        }
    }
}

/// Every MQTT 5.0 property identifier (§2.2.2.2).
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum PropertyId {
    PayloadFormatIndicator = 0x01,
    MessageExpiryInterval = 0x02,
    ContentType = 0x03,
    ResponseTopic = 0x08,
    CorrelationData = 0x09,
    SubscriptionIdentifier = 0x0B,
    SessionExpiryInterval = 0x11,
    AssignedClientIdentifier = 0x12,
    ServerKeepAlive = 0x13,
    AuthenticationMethod = 0x15,
    AuthenticationData = 0x16,
    RequestProblemInformation = 0x17,
    WillDelayInterval = 0x18,
    RequestResponseInformation = 0x19,
    ResponseInformation = 0x1A,
    ServerReference = 0x1C,
    ReasonString = 0x1F,
    ReceiveMaximum = 0x21,
    TopicAliasMaximum = 0x22,
    TopicAlias = 0x23,
    MaximumQos = 0x24,
    RetainAvailable = 0x25,
    UserProperty = 0x26,
    MaximumPacketSize = 0x27,
    WildcardSubscriptionAvailable = 0x28,
    SubscriptionIdentifierAvailable = 0x29,
    SharedSubscriptionAvailable = 0x2A,
}

// Masks of contexts, one bit per packet type (bit 0 = will).
const WILL: u16 = PropertyContext::Will.bit();
const CONNECT: u16 = PropertyContext::Packet(PacketType::Connect).bit();
const CONNACK: u16 = PropertyContext::Packet(PacketType::ConnAck).bit();
const PUBLISH: u16 = PropertyContext::Packet(PacketType::Publish).bit();
const PUBACK: u16 = PropertyContext::Packet(PacketType::PubAck).bit();
const PUBREC: u16 = PropertyContext::Packet(PacketType::PubRec).bit();
const PUBREL: u16 = PropertyContext::Packet(PacketType::PubRel).bit();
const PUBCOMP: u16 = PropertyContext::Packet(PacketType::PubComp).bit();
const SUBSCRIBE: u16 = PropertyContext::Packet(PacketType::Subscribe).bit();
const SUBACK: u16 = PropertyContext::Packet(PacketType::SubAck).bit();
const UNSUBSCRIBE: u16 = PropertyContext::Packet(PacketType::Unsubscribe).bit();
const UNSUBACK: u16 = PropertyContext::Packet(PacketType::UnsubAck).bit();
const DISCONNECT: u16 = PropertyContext::Packet(PacketType::Disconnect).bit();
const AUTH: u16 = PropertyContext::Packet(PacketType::Auth).bit();

impl PropertyId {
    /// Every property, in identifier order.
    pub const ALL: [PropertyId; 27] = [
        PropertyId::PayloadFormatIndicator,
        PropertyId::MessageExpiryInterval,
        PropertyId::ContentType,
        PropertyId::ResponseTopic,
        PropertyId::CorrelationData,
        PropertyId::SubscriptionIdentifier,
        PropertyId::SessionExpiryInterval,
        PropertyId::AssignedClientIdentifier,
        PropertyId::ServerKeepAlive,
        PropertyId::AuthenticationMethod,
        PropertyId::AuthenticationData,
        PropertyId::RequestProblemInformation,
        PropertyId::WillDelayInterval,
        PropertyId::RequestResponseInformation,
        PropertyId::ResponseInformation,
        PropertyId::ServerReference,
        PropertyId::ReasonString,
        PropertyId::ReceiveMaximum,
        PropertyId::TopicAliasMaximum,
        PropertyId::TopicAlias,
        PropertyId::MaximumQos,
        PropertyId::RetainAvailable,
        PropertyId::UserProperty,
        PropertyId::MaximumPacketSize,
        PropertyId::WildcardSubscriptionAvailable,
        PropertyId::SubscriptionIdentifierAvailable,
        PropertyId::SharedSubscriptionAvailable,
    ];

    /// The property with identifier `id`, if MQTT 5.0 defines one.
    pub fn from_u8(id: u8) -> Option<PropertyId> {
        PropertyId::ALL.iter().copied().find(|p| *p as u8 == id)
    }

    /// The wire type of the property's value.
    pub fn wire_type(self) -> PropertyType {
        use PropertyId::*;
        match self {
            PayloadFormatIndicator
            | RequestProblemInformation
            | RequestResponseInformation
            | MaximumQos
            | RetainAvailable
            | WildcardSubscriptionAvailable
            | SubscriptionIdentifierAvailable
            | SharedSubscriptionAvailable => PropertyType::Byte,
            ServerKeepAlive | ReceiveMaximum | TopicAliasMaximum | TopicAlias => {
                PropertyType::TwoByteInteger
            }
            MessageExpiryInterval
            | SessionExpiryInterval
            | WillDelayInterval
            | MaximumPacketSize => PropertyType::FourByteInteger,
            SubscriptionIdentifier => PropertyType::VariableByteInteger,
            ContentType
            | ResponseTopic
            | AssignedClientIdentifier
            | AuthenticationMethod
            | ResponseInformation
            | ServerReference
            | ReasonString => PropertyType::Utf8String,
            CorrelationData | AuthenticationData => PropertyType::BinaryData,
            UserProperty => PropertyType::Utf8StringPair,
        }
    }

    /// The contexts (packets, will) that may carry this property, as a bit mask.
    const fn mask(self) -> u16 {
        use PropertyId::*;
        match self {
            PayloadFormatIndicator
            | MessageExpiryInterval
            | ContentType
            | ResponseTopic
            | CorrelationData => PUBLISH | WILL,
            SubscriptionIdentifier => PUBLISH | SUBSCRIBE,
            SessionExpiryInterval => CONNECT | CONNACK | DISCONNECT,
            AssignedClientIdentifier
            | ServerKeepAlive
            | ResponseInformation
            | MaximumQos
            | RetainAvailable
            | WildcardSubscriptionAvailable
            | SubscriptionIdentifierAvailable
            | SharedSubscriptionAvailable => CONNACK,
            AuthenticationMethod | AuthenticationData => CONNECT | CONNACK | AUTH,
            RequestProblemInformation | RequestResponseInformation => CONNECT,
            WillDelayInterval => WILL,
            ServerReference => CONNACK | DISCONNECT,
            ReasonString => {
                CONNACK | PUBACK | PUBREC | PUBREL | PUBCOMP | SUBACK | UNSUBACK | DISCONNECT | AUTH
            }
            ReceiveMaximum | TopicAliasMaximum | MaximumPacketSize => CONNECT | CONNACK,
            TopicAlias => PUBLISH,
            UserProperty => {
                WILL | CONNECT
                    | CONNACK
                    | PUBLISH
                    | PUBACK
                    | PUBREC
                    | PUBREL
                    | PUBCOMP
                    | SUBSCRIBE
                    | SUBACK
                    | UNSUBSCRIBE
                    | UNSUBACK
                    | DISCONNECT
                    | AUTH
            }
        }
    }

    /// Whether a packet of this type (or a will) may carry this property (§2.2.2.2).
    pub fn allowed_in(self, ctx: impl Into<PropertyContext>) -> bool {
        self.mask() & ctx.into().bit() != 0
    }

    /// Whether the property may appear more than once in `ctx`: User Property anywhere,
    /// Subscription Identifier in PUBLISH only.
    pub fn repeatable_in(self, ctx: impl Into<PropertyContext>) -> bool {
        match self {
            PropertyId::UserProperty => true,
            PropertyId::SubscriptionIdentifier => {
                ctx.into() == PropertyContext::Packet(PacketType::Publish)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
