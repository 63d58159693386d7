//! Decode and encode errors.
//!
//! Every [`DecodeError`] variant is small and `Copy`, names the normative statement of the
//! specification it enforces (`[MQTT-x.y.z-n]`, or the section `[§x.y.z]` when the rule has
//! no numbered statement) and maps to exactly one MQTT 5.0 reason code through
//! [`DecodeError::reason_code`]. Where the 3.1.1 and 5.0 numbering differ, the message names
//! both.

use crate::reason::ReasonCode;
use crate::types::PacketType;

/// Why bytes could not be decoded. Small and `Copy`; each variant names the normative
/// statement it enforces and maps to exactly one reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    // ----- Framing: fixed header, remaining length, field boundaries. -----
    /// The declared packet size exceeds the configured maximum.
    #[error("[MQTT-3.2.2-15] packet of {size_bytes} bytes exceeds the maximum packet size")]
    PacketTooLarge {
        /// The declared size of the whole packet (fixed header + remaining length). When the
        /// remaining length is not fully buffered yet, a lower bound of it.
        size_bytes: u32,
    },
    /// Control packet type 0 (forbidden), or 15 (AUTH) outside MQTT 5.0.
    #[error("[§2.1.2] reserved control packet type {packet_type}")]
    ReservedPacketType {
        /// The high nibble of the first byte.
        packet_type: u8,
    },
    /// The low nibble of the first byte is not the value the packet type requires.
    #[error("[MQTT-2.1.3-1] (3.1.1: [MQTT-2.2.2-2]) flags {flags:#06b} invalid for packet type {packet_type}")]
    InvalidFixedHeaderFlags {
        /// The high nibble of the first byte.
        packet_type: u8,
        /// The low nibble of the first byte.
        flags: u8,
    },
    /// A variable byte integer (remaining length, property length, subscription identifier)
    /// is longer than four bytes.
    #[error("[§1.5.5] variable byte integer longer than four bytes")]
    VarIntTooLong,
    /// A variable byte integer is not encoded in the minimum number of bytes (e.g. `80 00`).
    #[error("[MQTT-1.5.5-1] variable byte integer not encoded in the minimum number of bytes")]
    VarIntNotMinimal,
    /// A field extends past the end of the packet: the remaining length is inconsistent with
    /// the contents.
    #[error("[§2.1.4] remaining length too short for the packet's fields")]
    Truncated,
    /// Bytes are left over after the last field: the remaining length is inconsistent with
    /// the contents.
    #[error("[§2.1.4] remaining length longer than the packet's fields")]
    TrailingBytes,

    // ----- Strings. -----
    /// A UTF-8 string is ill-formed (including encoded surrogates U+D800..U+DFFF).
    #[error("[MQTT-1.5.4-1] (3.1.1: [MQTT-1.5.3-1]) ill-formed UTF-8 string")]
    InvalidUtf8,
    /// A UTF-8 string contains U+0000.
    #[error("[MQTT-1.5.4-2] (3.1.1: [MQTT-1.5.3-2]) UTF-8 string contains U+0000")]
    Utf8Null,

    // ----- Topic names and filters. -----
    /// A topic name contains `+` or `#`.
    #[error("[MQTT-3.3.2-2] [MQTT-4.7.1-1] (5.0: [MQTT-4.7.0-1]) topic name contains a wildcard")]
    TopicNameWildcard,
    /// A topic name is empty (in 5.0 PUBLISH: empty without a Topic Alias, [§3.3.2.3.4]).
    #[error("[MQTT-4.7.3-1] topic name is empty (and no Topic Alias is present)")]
    TopicNameEmpty,
    /// A topic filter is empty.
    #[error("[MQTT-4.7.3-1] topic filter is empty")]
    TopicFilterEmpty,
    /// `#` is not alone in the last level of a topic filter.
    #[error("[MQTT-4.7.1-2] (5.0: [MQTT-4.7.1-1]) '#' is not the whole last level of the filter")]
    TopicFilterMultiLevelWildcard,
    /// `+` does not occupy a whole level of a topic filter.
    #[error(
        "[MQTT-4.7.1-3] (5.0: [MQTT-4.7.1-2]) '+' does not occupy a whole level of the filter"
    )]
    TopicFilterSingleLevelWildcard,
    /// `$share/` is followed by an empty share name.
    #[error("[MQTT-4.8.2-1] shared subscription has an empty share name")]
    SharedNameEmpty,
    /// A share name contains `+` or `#`.
    #[error("[MQTT-4.8.2-2] share name contains '+' or '#'")]
    SharedNameInvalid,
    /// A share name is not followed by `/` and a topic filter.
    #[error("[MQTT-4.8.2-2] share name not followed by '/' and a topic filter")]
    SharedFilterMissing,

    // ----- Packet identifiers, QoS, PUBLISH flags. -----
    /// A packet identifier is 0.
    #[error("[MQTT-2.2.1-3] (3.1.1: [MQTT-2.3.1-1]) packet identifier is 0")]
    PacketIdZero,
    /// PUBLISH has both QoS bits set.
    #[error("[MQTT-3.3.1-4] PUBLISH QoS is 3")]
    InvalidQoS,
    /// PUBLISH with QoS 0 has the DUP flag set.
    #[error("[MQTT-3.3.1-2] PUBLISH with QoS 0 has the DUP flag set")]
    DupWithQoS0,
    /// The Payload Format Indicator says UTF-8 but the payload is not valid UTF-8.
    #[error("[§3.3.2.3.2] payload is not UTF-8 although the Payload Format Indicator is 1")]
    PayloadFormatInvalid,

    // ----- Properties. -----
    /// A property identifier that MQTT 5.0 does not define.
    #[error("[§2.2.2.2] unknown property identifier {id:#04x}")]
    UnknownProperty {
        /// The identifier received.
        id: u8,
    },
    /// A property that this packet (or a will) may not carry.
    #[error("[§2.2.2.2] property {id:#04x} is not allowed in this packet")]
    PropertyNotAllowed {
        /// The identifier received.
        id: u8,
    },
    /// A property that may appear at most once appears again.
    #[error("[§2.2.2.2] property {id:#04x} included more than once")]
    DuplicateProperty {
        /// The identifier received.
        id: u8,
    },
    /// A property value outside its allowed range (receive maximum 0, maximum packet size
    /// 0, a byte property other than 0 or 1, …).
    #[error("[§3] property {id:#04x} has a value that is not allowed")]
    InvalidPropertyValue {
        /// The identifier received.
        id: u8,
    },
    /// Topic Alias property of 0.
    #[error("[MQTT-3.3.2-8] topic alias is 0")]
    TopicAliasZero,
    /// Subscription Identifier property of 0.
    #[error("[§3.8.2.1.2] subscription identifier is 0")]
    SubscriptionIdentifierZero,
    /// Response Topic is empty or contains a wildcard.
    #[error("[MQTT-3.3.2-14] response topic is not a valid topic name")]
    ResponseTopicInvalid,
    /// Authentication Data without an Authentication Method.
    #[error("[§3.1.2.11.10] authentication data without an authentication method")]
    AuthDataWithoutMethod,

    // ----- Reason codes. -----
    /// A reason code (or 3.1/3.1.1 return code) that this packet cannot carry.
    #[error("[§2.4] reason code {code:#04x} is not valid in {packet:?}")]
    InvalidReasonCode {
        /// The packet carrying it.
        packet: PacketType,
        /// The byte received.
        code: u8,
    },
    /// SUBACK (or 5.0 UNSUBACK) without reason codes.
    #[error("[§3.9.3] {packet:?} has no reason codes")]
    NoReasonCodes {
        /// The packet.
        packet: PacketType,
    },

    // ----- CONNECT / CONNACK. -----
    /// The protocol name is not `MQTT` (levels 4, 5) or `MQIsdp` (level 3).
    #[error("[MQTT-3.1.2-1] protocol name does not match the protocol level")]
    ProtocolNameInvalid,
    /// CONNECT carries a protocol level this codec does not support.
    #[error("[MQTT-3.1.2-2] unsupported protocol level {level}")]
    UnsupportedProtocolLevel {
        /// The level byte received.
        level: u8,
    },
    /// The reserved bit 0 of the CONNECT flags is set.
    #[error("[MQTT-3.1.2-3] CONNECT reserved flag is set")]
    ConnectReservedFlag,
    /// Will QoS is not 0 although the Will Flag is 0.
    #[error("[MQTT-3.1.2-13] (5.0: [MQTT-3.1.2-11]) will QoS set without the will flag")]
    WillQoSWithoutWill,
    /// Will Retain is set although the Will Flag is 0.
    #[error("[MQTT-3.1.2-15] (5.0: [MQTT-3.1.2-13]) will retain set without the will flag")]
    WillRetainWithoutWill,
    /// Will QoS is 3.
    #[error("[MQTT-3.1.2-14] (5.0: [MQTT-3.1.2-12]) will QoS is 3")]
    WillQoSInvalid,
    /// Password flag without the user name flag (3.1/3.1.1 only; allowed in 5.0).
    #[error("[MQTT-3.1.2-22] password flag set without the user name flag")]
    PasswordWithoutUsername,
    /// CONNACK acknowledge flags bits 7-1 are not 0.
    #[error("[MQTT-3.2.2-1] CONNACK reserved flags are set")]
    ConnAckReservedFlags,
    /// CONNACK with a failure code has Session Present set.
    #[error("[MQTT-3.2.2-4] (5.0: [MQTT-3.2.2-6]) session present with a non-zero reason code")]
    SessionPresentWithError,

    // ----- SUBSCRIBE / UNSUBSCRIBE. -----
    /// SUBSCRIBE without a topic filter.
    #[error("[MQTT-3.8.3-3] (5.0: [MQTT-3.8.3-2]) SUBSCRIBE has no topic filter")]
    SubscribeNoFilters,
    /// UNSUBSCRIBE without a topic filter.
    #[error("[MQTT-3.10.3-2] UNSUBSCRIBE has no topic filter")]
    UnsubscribeNoFilters,
    /// Reserved bits of the subscription options are set (bits 6-7 in 5.0, 2-7 before).
    #[error("[MQTT-3.8.3-5] (3.1.1: [MQTT-3-8.3-4]) reserved subscription option bits are set")]
    SubscriptionOptionsReserved,
    /// Subscription options request QoS 3.
    #[error("[MQTT-3-8.3-4] (5.0: [§3.8.3.1]) subscription maximum QoS is 3")]
    SubscriptionQoSInvalid,
    /// Retain Handling is 3.
    #[error("[§3.8.3.1] retain handling is 3")]
    RetainHandlingInvalid,
    /// No Local set on a shared subscription.
    #[error("[MQTT-3.8.3-4] no local set on a shared subscription")]
    NoLocalOnSharedSubscription,
}

impl DecodeError {
    /// The MQTT 5.0 reason code a server answers this error with (in CONNACK before the
    /// connection is accepted, in DISCONNECT after; the engine projects it for 3.1/3.1.1,
    /// where most errors simply close the connection).
    pub fn reason_code(self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            UnsupportedProtocolLevel { .. } | ProtocolNameInvalid => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            TopicNameWildcard => ReasonCode::TOPIC_NAME_INVALID,
            TopicFilterEmpty
            | TopicFilterMultiLevelWildcard
            | TopicFilterSingleLevelWildcard
            | SharedNameEmpty
            | SharedNameInvalid
            | SharedFilterMissing => ReasonCode::TOPIC_FILTER_INVALID,
            TopicAliasZero => ReasonCode::TOPIC_ALIAS_INVALID,
            PayloadFormatInvalid => ReasonCode::PAYLOAD_FORMAT_INVALID,
            ReservedPacketType { .. }
            | InvalidFixedHeaderFlags { .. }
            | VarIntTooLong
            | VarIntNotMinimal
            | Truncated
            | TrailingBytes
            | InvalidUtf8
            | Utf8Null
            | InvalidQoS
            | UnknownProperty { .. }
            | PropertyNotAllowed { .. }
            | InvalidReasonCode { .. }
            | ConnectReservedFlag
            | WillQoSWithoutWill
            | WillRetainWithoutWill
            | WillQoSInvalid
            | PasswordWithoutUsername
            | ConnAckReservedFlags
            | SubscriptionOptionsReserved => ReasonCode::MALFORMED_PACKET,
            TopicNameEmpty
            | PacketIdZero
            | DupWithQoS0
            | DuplicateProperty { .. }
            | InvalidPropertyValue { .. }
            | SubscriptionIdentifierZero
            | ResponseTopicInvalid
            | AuthDataWithoutMethod
            | NoReasonCodes { .. }
            | SessionPresentWithError
            | SubscribeNoFilters
            | UnsubscribeNoFilters
            | SubscriptionQoSInvalid
            | RetainHandlingInvalid
            | NoLocalOnSharedSubscription => ReasonCode::PROTOCOL_ERROR,
        }
    }
}

/// Why a packet could not be encoded. Encoding never writes a partial packet: on error,
/// `out` is left as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded packet would exceed the protocol maximum (268,435,455 remaining bytes).
    #[error("packet exceeds the MQTT maximum remaining length")]
    TooLarge,
    /// A string or binary field is longer than 65,535 bytes.
    #[error("string or binary field longer than 65,535 bytes")]
    FieldTooLong,
    /// A variable byte integer property (subscription identifier) above 268,435,455.
    #[error("variable byte integer value above 268,435,455")]
    VarIntOutOfRange,
    /// The packet does not exist in this protocol version (AUTH before 5.0).
    #[error("{packet:?} does not exist in this protocol version")]
    NotInVersion {
        /// The packet type.
        packet: PacketType,
    },
    /// A property that this packet (or a will) may not carry.
    #[error("property {id:#04x} is not allowed in this packet")]
    PropertyNotAllowed {
        /// The property identifier.
        id: u8,
    },
    /// PUBLISH with QoS > 0 but no packet identifier.
    #[error("PUBLISH with QoS > 0 needs a packet identifier")]
    MissingPacketId,
    /// PUBLISH with an empty topic for 3.1/3.1.1, which has no topic aliases.
    #[error("PUBLISH with an empty topic cannot be encoded before MQTT 5.0")]
    EmptyTopic,
    /// The packet breaks a rule its receiver enforces (the error our own decoder would
    /// return for it, which names the rule): `encode` never writes such a packet.
    #[error("not encoded, the receiver would reject it: {0}")]
    Invalid(DecodeError),
}
