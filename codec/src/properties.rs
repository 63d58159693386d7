//! MQTT 5.0 properties (§2.2.2): one struct with every property, each optional.
//!
//! Which packet may carry which property is checked at decode by
//! [`PropertyId::allowed_in`]; a property outside its packets is a malformed packet
//! (§2.2.2.2). Encoding writes properties in a fixed canonical order: by property identifier,
//! repeatable ones (User Property, Subscription Identifier) in their order, so that
//! `decode(encode(p)) == p`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{field_len, put_binary, put_str, put_varint, varint_len, Reader};
use crate::topic;
use crate::types::{ByteStr, PacketType};

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
            PayloadFormatIndicator | MessageExpiryInterval | ContentType | ResponseTopic
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

/// Sets an at-most-once property [§2.2.2.2].
fn once<T>(slot: &mut Option<T>, id: PropertyId, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty { id: id as u8 });
    }
    *slot = Some(v);
    Ok(())
}

/// A byte property whose only values are 0 and 1.
fn bool_byte(r: &mut Reader, id: PropertyId) -> Result<u8, DecodeError> {
    match r.u8()? {
        v @ (0 | 1) => Ok(v),
        _ => Err(DecodeError::InvalidPropertyValue { id: id as u8 }),
    }
}

impl Properties {
    /// Decodes a property block (property length + properties) for `ctx`.
    pub(crate) fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Properties, DecodeError> {
        use PropertyId::*;
        let len = r.varint()?;
        let mut p = Properties::default();
        if len == 0 {
            return Ok(p);
        }
        let mut r = r.sub(len as usize)?;
        while !r.is_empty() {
            // The identifier is a variable byte integer; every defined one fits one byte.
            let raw = r.varint()?;
            let id = u8::try_from(raw)
                .ok()
                .and_then(PropertyId::from_u8)
                .ok_or(DecodeError::UnknownProperty {
                    id: u8::try_from(raw).unwrap_or(u8::MAX),
                })?;
            if !id.allowed_in(ctx) {
                return Err(DecodeError::PropertyNotAllowed { id: id as u8 });
            }
            match id {
                PayloadFormatIndicator => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.payload_format_indicator, id, v)?
                }
                MessageExpiryInterval => {
                    let v = r.u32()?;
                    once(&mut p.message_expiry_interval_secs, id, v)?
                }
                ContentType => {
                    let v = r.string()?;
                    once(&mut p.content_type, id, v)?
                }
                ResponseTopic => {
                    let v = r.string()?;
                    // A topic name: non-empty, no wildcards [MQTT-3.3.2-14].
                    if topic::validate_topic_name(&v).is_err() {
                        return Err(DecodeError::ResponseTopicInvalid);
                    }
                    once(&mut p.response_topic, id, v)?
                }
                CorrelationData => {
                    let v = r.binary()?;
                    once(&mut p.correlation_data, id, v)?
                }
                SubscriptionIdentifier => {
                    let v = r.varint()?;
                    if v == 0 {
                        return Err(DecodeError::SubscriptionIdentifierZero);
                    }
                    if !p.subscription_identifiers.is_empty() && !id.repeatable_in(ctx) {
                        return Err(DecodeError::DuplicateProperty { id: id as u8 });
                    }
                    p.subscription_identifiers.push(v)
                }
                SessionExpiryInterval => {
                    let v = r.u32()?;
                    once(&mut p.session_expiry_interval_secs, id, v)?
                }
                AssignedClientIdentifier => {
                    let v = r.string()?;
                    once(&mut p.assigned_client_identifier, id, v)?
                }
                ServerKeepAlive => {
                    let v = r.u16()?;
                    once(&mut p.server_keep_alive_secs, id, v)?
                }
                AuthenticationMethod => {
                    let v = r.string()?;
                    once(&mut p.authentication_method, id, v)?
                }
                AuthenticationData => {
                    let v = r.binary()?;
                    once(&mut p.authentication_data, id, v)?
                }
                RequestProblemInformation => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.request_problem_information, id, v)?
                }
                WillDelayInterval => {
                    let v = r.u32()?;
                    once(&mut p.will_delay_interval_secs, id, v)?
                }
                RequestResponseInformation => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.request_response_information, id, v)?
                }
                ResponseInformation => {
                    let v = r.string()?;
                    once(&mut p.response_information, id, v)?
                }
                ServerReference => {
                    let v = r.string()?;
                    once(&mut p.server_reference, id, v)?
                }
                ReasonString => {
                    let v = r.string()?;
                    once(&mut p.reason_string, id, v)?
                }
                ReceiveMaximum => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue { id: id as u8 });
                    }
                    once(&mut p.receive_maximum, id, v)?
                }
                TopicAliasMaximum => {
                    let v = r.u16()?;
                    once(&mut p.topic_alias_maximum, id, v)?
                }
                TopicAlias => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::TopicAliasZero);
                    }
                    once(&mut p.topic_alias, id, v)?
                }
                MaximumQos => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.maximum_qos, id, v)?
                }
                RetainAvailable => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.retain_available, id, v)?
                }
                UserProperty => {
                    let kv = r.string_pair()?;
                    p.user_properties.push(kv)
                }
                MaximumPacketSize => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue { id: id as u8 });
                    }
                    once(&mut p.maximum_packet_size, id, v)?
                }
                WildcardSubscriptionAvailable => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.wildcard_subscription_available, id, v)?
                }
                SubscriptionIdentifierAvailable => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.subscription_identifier_available, id, v)?
                }
                SharedSubscriptionAvailable => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.shared_subscription_available, id, v)?
                }
            }
        }
        // It is a Protocol Error to include Authentication Data without an Authentication
        // Method (§3.1.2.11.10, §3.2.2.3.18, §3.15.2.2.4).
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(DecodeError::AuthDataWithoutMethod);
        }
        Ok(p)
    }

    /// Decodes a property block into the `Option<Box<_>>` form packets use: `None` when the
    /// block is empty (the canonical form of "no properties").
    pub(crate) fn decode_boxed(
        r: &mut Reader,
        ctx: PropertyContext,
    ) -> Result<Option<Box<Properties>>, DecodeError> {
        let p = Properties::decode(r, ctx)?;
        Ok(if p.is_empty() { None } else { Some(Box::new(p)) })
    }

    /// Length of the properties, without the property-length prefix.
    pub(crate) fn body_len(&self) -> usize {
        fn opt<T>(v: &Option<T>, n: impl FnOnce(&T) -> usize) -> usize {
            v.as_ref().map_or(0, |v| 1 + n(v))
        }
        let s = |v: &ByteStr| field_len(v.as_bytes());
        let b = |v: &Bytes| field_len(v);
        let mut n = opt(&self.payload_format_indicator, |_| 1)
            + opt(&self.message_expiry_interval_secs, |_| 4)
            + opt(&self.content_type, s)
            + opt(&self.response_topic, s)
            + opt(&self.correlation_data, b)
            + opt(&self.session_expiry_interval_secs, |_| 4)
            + opt(&self.assigned_client_identifier, s)
            + opt(&self.server_keep_alive_secs, |_| 2)
            + opt(&self.authentication_method, s)
            + opt(&self.authentication_data, b)
            + opt(&self.request_problem_information, |_| 1)
            + opt(&self.will_delay_interval_secs, |_| 4)
            + opt(&self.request_response_information, |_| 1)
            + opt(&self.response_information, s)
            + opt(&self.server_reference, s)
            + opt(&self.reason_string, s)
            + opt(&self.receive_maximum, |_| 2)
            + opt(&self.topic_alias_maximum, |_| 2)
            + opt(&self.topic_alias, |_| 2)
            + opt(&self.maximum_qos, |_| 1)
            + opt(&self.retain_available, |_| 1)
            + opt(&self.maximum_packet_size, |_| 4)
            + opt(&self.wildcard_subscription_available, |_| 1)
            + opt(&self.subscription_identifier_available, |_| 1)
            + opt(&self.shared_subscription_available, |_| 1);
        for id in &self.subscription_identifiers {
            n += 1 + varint_len(*id);
        }
        for (k, v) in &self.user_properties {
            n += 1 + s(k) + s(v);
        }
        n
    }

    /// Length of the property block: property length prefix + properties.
    pub(crate) fn block_len(&self) -> usize {
        let n = self.body_len();
        varint_len(u32::try_from(n).unwrap_or(u32::MAX)) + n
    }

    /// Appends the property block (length + properties in canonical order) for `ctx`.
    /// Fails if a property is not allowed in `ctx` or a value cannot be encoded.
    pub(crate) fn encode(&self, ctx: PropertyContext, out: &mut BytesMut) -> Result<(), EncodeError> {
        use PropertyId::*;
        let len = u32::try_from(self.body_len()).map_err(|_| EncodeError::TooLarge)?;
        put_varint(out, len).map_err(|_| EncodeError::TooLarge)?;
        let check = |id: PropertyId| -> Result<(), EncodeError> {
            if id.allowed_in(ctx) {
                Ok(())
            } else {
                Err(EncodeError::PropertyNotAllowed { id: id as u8 })
            }
        };
        macro_rules! prop {
            ($field:expr, $id:expr, |$v:ident| $write:expr) => {
                if let Some($v) = &$field {
                    check($id)?;
                    out.put_u8($id as u8);
                    $write;
                }
            };
        }
        prop!(self.payload_format_indicator, PayloadFormatIndicator, |v| out.put_u8(*v));
        prop!(self.message_expiry_interval_secs, MessageExpiryInterval, |v| out.put_u32(*v));
        prop!(self.content_type, ContentType, |v| put_str(out, v)?);
        prop!(self.response_topic, ResponseTopic, |v| put_str(out, v)?);
        prop!(self.correlation_data, CorrelationData, |v| put_binary(out, v)?);
        for v in &self.subscription_identifiers {
            check(SubscriptionIdentifier)?;
            out.put_u8(SubscriptionIdentifier as u8);
            put_varint(out, *v)?;
        }
        prop!(self.session_expiry_interval_secs, SessionExpiryInterval, |v| out.put_u32(*v));
        prop!(self.assigned_client_identifier, AssignedClientIdentifier, |v| put_str(out, v)?);
        prop!(self.server_keep_alive_secs, ServerKeepAlive, |v| out.put_u16(*v));
        prop!(self.authentication_method, AuthenticationMethod, |v| put_str(out, v)?);
        prop!(self.authentication_data, AuthenticationData, |v| put_binary(out, v)?);
        prop!(self.request_problem_information, RequestProblemInformation, |v| out.put_u8(*v));
        prop!(self.will_delay_interval_secs, WillDelayInterval, |v| out.put_u32(*v));
        prop!(self.request_response_information, RequestResponseInformation, |v| out.put_u8(*v));
        prop!(self.response_information, ResponseInformation, |v| put_str(out, v)?);
        prop!(self.server_reference, ServerReference, |v| put_str(out, v)?);
        prop!(self.reason_string, ReasonString, |v| put_str(out, v)?);
        prop!(self.receive_maximum, ReceiveMaximum, |v| out.put_u16(*v));
        prop!(self.topic_alias_maximum, TopicAliasMaximum, |v| out.put_u16(*v));
        prop!(self.topic_alias, TopicAlias, |v| out.put_u16(*v));
        prop!(self.maximum_qos, MaximumQos, |v| out.put_u8(*v));
        prop!(self.retain_available, RetainAvailable, |v| out.put_u8(*v));
        for (k, v) in &self.user_properties {
            check(UserProperty)?;
            out.put_u8(UserProperty as u8);
            put_str(out, k)?;
            put_str(out, v)?;
        }
        prop!(self.maximum_packet_size, MaximumPacketSize, |v| out.put_u32(*v));
        prop!(
            self.wildcard_subscription_available,
            WildcardSubscriptionAvailable,
            |v| out.put_u8(*v)
        );
        prop!(
            self.subscription_identifier_available,
            SubscriptionIdentifierAvailable,
            |v| out.put_u8(*v)
        );
        prop!(
            self.shared_subscription_available,
            SharedSubscriptionAvailable,
            |v| out.put_u8(*v)
        );
        Ok(())
    }
}

/// Length of an optional boxed property block (`None` encodes as an empty block).
pub(crate) fn opt_block_len(p: &Option<Box<Properties>>) -> usize {
    p.as_deref().map_or(1, Properties::block_len)
}

/// Appends an optional boxed property block (`None` encodes as an empty block).
pub(crate) fn encode_opt(
    p: &Option<Box<Properties>>,
    ctx: PropertyContext,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    match p {
        Some(p) => p.encode(ctx, out),
        None => {
            out.put_u8(0);
            Ok(())
        }
    }
}

/// True when `p` is `None` or empty.
pub(crate) fn opt_is_empty(p: &Option<Box<Properties>>) -> bool {
    match p {
        Some(p) => p.is_empty(),
        None => true,
    }
}
