//! Decode and encode errors. (Stub: the codec engineer fills in every variant.)

use crate::reason::ReasonCode;

/// Why bytes could not be decoded. Small and `Copy`; each variant names the normative
/// statement it enforces and maps to exactly one reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The declared packet size exceeds the configured maximum.
    #[error("[MQTT-3.2.2-15] packet of {size_bytes} bytes exceeds the maximum packet size")]
    PacketTooLarge {
        /// The declared size of the whole packet.
        size_bytes: u32,
    },
    /// CONNECT carries a protocol level this codec does not support.
    #[error("[MQTT-3.1.2-2] unsupported protocol level {level}")]
    UnsupportedProtocolLevel {
        /// The level byte received.
        level: u8,
    },
}

impl DecodeError {
    /// The MQTT 5.0 reason code a server answers this error with.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolLevel { .. } => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded packet would exceed the protocol maximum (268,435,455 remaining bytes).
    #[error("packet exceeds the MQTT maximum remaining length")]
    TooLarge,
}
