//! MQTT 5.0 properties (§2.2.2): one struct with every property, each optional.
//!
//! Which packet may carry which property is checked at decode by
//! [`PropertyId::allowed_in`]; a property outside its packets is a protocol error.

use bytes::Bytes;

use crate::types::ByteStr;

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
