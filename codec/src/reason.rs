//! MQTT 5.0 reason codes (§2.4) and their 3.1/3.1.1 projections.

use std::fmt;

use crate::types::{PacketType, ProtocolVersion};

/// CONNACK reason codes (5.0 §3.2.2.2).
const CONNACK: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// PUBACK and PUBREC reason codes (5.0 §3.4.2.1, §3.5.2.1).
const PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// PUBREL and PUBCOMP reason codes (5.0 §3.6.2.1, §3.7.2.1).
const PUBREL: &[u8] = &[0x00, 0x92];
/// SUBACK reason codes (5.0 §3.9.3).
const SUBACK: &[u8] = &[0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2];
/// UNSUBACK reason codes (5.0 §3.11.3).
const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
/// DISCONNECT reason codes (5.0 §3.14.2.1).
const DISCONNECT: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
/// AUTH reason codes (5.0 §3.15.2.1).
const AUTH: &[u8] = &[0x00, 0x18, 0x19];
/// SUBACK return codes of 3.1.1 (§3.9.3); 3.1 has no failure code, but brokers send 0x80
/// to 3.1 clients too, so it is accepted there as well.
const SUBACK_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];

/// An MQTT 5.0 reason code. A newtype over the wire byte: the same byte means different
/// things in different packets (0x00 is "Success", "Normal disconnection" and "Granted QoS 0").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReasonCode(pub u8);

#[allow(missing_docs)]
impl ReasonCode {
    pub const SUCCESS: ReasonCode = ReasonCode(0x00);
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_1: ReasonCode = ReasonCode(0x01);
    pub const GRANTED_QOS_2: ReasonCode = ReasonCode(0x02);
    pub const DISCONNECT_WITH_WILL_MESSAGE: ReasonCode = ReasonCode(0x04);
    pub const NO_MATCHING_SUBSCRIBERS: ReasonCode = ReasonCode(0x10);
    pub const NO_SUBSCRIPTION_EXISTED: ReasonCode = ReasonCode(0x11);
    pub const CONTINUE_AUTHENTICATION: ReasonCode = ReasonCode(0x18);
    pub const RE_AUTHENTICATE: ReasonCode = ReasonCode(0x19);
    pub const UNSPECIFIED_ERROR: ReasonCode = ReasonCode(0x80);
    pub const MALFORMED_PACKET: ReasonCode = ReasonCode(0x81);
    pub const PROTOCOL_ERROR: ReasonCode = ReasonCode(0x82);
    pub const IMPLEMENTATION_SPECIFIC_ERROR: ReasonCode = ReasonCode(0x83);
    pub const UNSUPPORTED_PROTOCOL_VERSION: ReasonCode = ReasonCode(0x84);
    pub const CLIENT_IDENTIFIER_NOT_VALID: ReasonCode = ReasonCode(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: ReasonCode = ReasonCode(0x86);
    pub const NOT_AUTHORIZED: ReasonCode = ReasonCode(0x87);
    pub const SERVER_UNAVAILABLE: ReasonCode = ReasonCode(0x88);
    pub const SERVER_BUSY: ReasonCode = ReasonCode(0x89);
    pub const BANNED: ReasonCode = ReasonCode(0x8A);
    pub const SERVER_SHUTTING_DOWN: ReasonCode = ReasonCode(0x8B);
    pub const BAD_AUTHENTICATION_METHOD: ReasonCode = ReasonCode(0x8C);
    pub const KEEP_ALIVE_TIMEOUT: ReasonCode = ReasonCode(0x8D);
    pub const SESSION_TAKEN_OVER: ReasonCode = ReasonCode(0x8E);
    pub const TOPIC_FILTER_INVALID: ReasonCode = ReasonCode(0x8F);
    pub const TOPIC_NAME_INVALID: ReasonCode = ReasonCode(0x90);
    pub const PACKET_IDENTIFIER_IN_USE: ReasonCode = ReasonCode(0x91);
    pub const PACKET_IDENTIFIER_NOT_FOUND: ReasonCode = ReasonCode(0x92);
    pub const RECEIVE_MAXIMUM_EXCEEDED: ReasonCode = ReasonCode(0x93);
    pub const TOPIC_ALIAS_INVALID: ReasonCode = ReasonCode(0x94);
    pub const PACKET_TOO_LARGE: ReasonCode = ReasonCode(0x95);
    pub const MESSAGE_RATE_TOO_HIGH: ReasonCode = ReasonCode(0x96);
    pub const QUOTA_EXCEEDED: ReasonCode = ReasonCode(0x97);
    pub const ADMINISTRATIVE_ACTION: ReasonCode = ReasonCode(0x98);
    pub const PAYLOAD_FORMAT_INVALID: ReasonCode = ReasonCode(0x99);
    pub const RETAIN_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9A);
    pub const QOS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9B);
    pub const USE_ANOTHER_SERVER: ReasonCode = ReasonCode(0x9C);
    pub const SERVER_MOVED: ReasonCode = ReasonCode(0x9D);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9E);
    pub const CONNECTION_RATE_EXCEEDED: ReasonCode = ReasonCode(0x9F);
    pub const MAXIMUM_CONNECT_TIME: ReasonCode = ReasonCode(0xA0);
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA1);
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA2);

    /// The reason codes a packet of type `packet` may carry in MQTT 5.0 (§2.4), in
    /// ascending order; empty for packets without a reason code.
    pub fn valid_codes(packet: PacketType) -> &'static [u8] {
        match packet {
            PacketType::ConnAck => CONNACK,
            PacketType::PubAck | PacketType::PubRec => PUBACK,
            PacketType::PubRel | PacketType::PubComp => PUBREL,
            PacketType::SubAck => SUBACK,
            PacketType::UnsubAck => UNSUBACK,
            PacketType::Disconnect => DISCONNECT,
            PacketType::Auth => AUTH,
            _ => &[],
        }
    }

    /// Whether this code is valid in a packet of type `packet` for `version`. Before 5.0
    /// only SUBACK carries codes here (0x00, 0x01, 0x02, 0x80); CONNACK return codes go
    /// through [`ReasonCode::from_v3_connack`].
    pub fn is_valid_for(self, packet: PacketType, version: ProtocolVersion) -> bool {
        let list = match (version.is_v5(), packet) {
            (true, _) => ReasonCode::valid_codes(packet),
            (false, PacketType::SubAck) => SUBACK_V3,
            (false, _) => &[0x00],
        };
        list.contains(&self.0)
    }

    /// True for codes >= 0x80 (failures).
    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }

    /// Projects a CONNACK reason code onto the 3.1/3.1.1 return codes (§3.2.2.3 of 3.1.1):
    /// 0 accepted, 1 unacceptable protocol version, 2 identifier rejected, 3 server
    /// unavailable, 4 bad user name or password, 5 not authorized.
    pub fn to_v3_connack(self) -> u8 {
        match self {
            ReasonCode::SUCCESS => 0,
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => 1,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => 2,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD | ReasonCode::BAD_AUTHENTICATION_METHOD => 4,
            ReasonCode::NOT_AUTHORIZED | ReasonCode::BANNED => 5,
            _ => 3,
        }
    }

    /// The inverse of [`ReasonCode::to_v3_connack`] for decoding 3.1/3.1.1 CONNACK.
    pub fn from_v3_connack(code: u8) -> Option<ReasonCode> {
        Some(match code {
            0 => ReasonCode::SUCCESS,
            1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            3 => ReasonCode::SERVER_UNAVAILABLE,
            4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            5 => ReasonCode::NOT_AUTHORIZED,
            _ => return None,
        })
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReasonCode(0x{:02X})", self.0)
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02X}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_connack_projection_roundtrips() {
        for code in 0..=5u8 {
            let r = ReasonCode::from_v3_connack(code).unwrap();
            assert_eq!(r.to_v3_connack(), code);
        }
        assert_eq!(ReasonCode::from_v3_connack(6), None);
        // Every 5.0 CONNACK code projects onto a 3.1.1 return code.
        for &c in ReasonCode::valid_codes(PacketType::ConnAck) {
            assert!(ReasonCode(c).to_v3_connack() <= 5);
        }
        assert_eq!(ReasonCode::BANNED.to_v3_connack(), 5);
        assert_eq!(ReasonCode::SERVER_BUSY.to_v3_connack(), 3);
    }

    #[test]
    fn valid_codes_per_packet() {
        let v5 = ProtocolVersion::V5;
        assert!(ReasonCode::PAYLOAD_FORMAT_INVALID.is_valid_for(PacketType::PubAck, v5));
        assert!(!ReasonCode::PACKET_IDENTIFIER_NOT_FOUND.is_valid_for(PacketType::PubAck, v5));
        assert!(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND.is_valid_for(PacketType::PubComp, v5));
        assert!(ReasonCode::RE_AUTHENTICATE.is_valid_for(PacketType::Auth, v5));
        assert!(!ReasonCode::RE_AUTHENTICATE.is_valid_for(PacketType::Disconnect, v5));
        assert!(ReasonCode::DISCONNECT_WITH_WILL_MESSAGE.is_valid_for(PacketType::Disconnect, v5));
        assert!(!ReasonCode::SUCCESS.is_valid_for(PacketType::PingReq, v5));
        let v311 = ProtocolVersion::V3_1_1;
        assert!(ReasonCode::UNSPECIFIED_ERROR.is_valid_for(PacketType::SubAck, v311));
        assert!(!ReasonCode::NOT_AUTHORIZED.is_valid_for(PacketType::SubAck, v311));
        // Lists are sorted and every code in them is a defined constant's value.
        for t in [
            PacketType::ConnAck,
            PacketType::PubAck,
            PacketType::PubRel,
            PacketType::SubAck,
            PacketType::UnsubAck,
            PacketType::Disconnect,
            PacketType::Auth,
        ] {
            let list = ReasonCode::valid_codes(t);
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{t:?}");
            assert_eq!(list[0], 0x00, "{t:?}");
        }
    }

    #[test]
    fn display() {
        assert_eq!(ReasonCode::PACKET_TOO_LARGE.to_string(), "0x95");
        assert_eq!(format!("{:?}", ReasonCode(1)), "ReasonCode(0x01)");
        assert!(ReasonCode(0x80).is_error() && !ReasonCode(0x19).is_error());
    }
}
