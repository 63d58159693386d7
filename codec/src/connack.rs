//! CONNACK (3.1.1 §3.2, 5.0 §3.2).
//!
//! 3.1/3.1.1 carry a return code, a projection of the 5.0 reason code through
//! [`ReasonCode::to_v3_connack`] / [`ReasonCode::from_v3_connack`]; a 5.0 code without a
//! 3.1.1 equivalent is encoded as the closest return code (3, server unavailable, by default).

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::Reader;
use crate::properties::{encode_opt, opt_block_len, Properties};
use crate::reason::ReasonCode;
use crate::types::{ConnAck, PacketType, ProtocolVersion};

/// Decodes the body of a CONNACK.
pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    // Bits 7-1 of the acknowledge flags are reserved [MQTT-3.2.2-1].
    if flags & 0xFE != 0 {
        return Err(DecodeError::ConnAckReservedFlags);
    }
    let session_present = flags & 0x01 != 0;
    let code = r.u8()?;
    let invalid = DecodeError::InvalidReasonCode { packet: PacketType::ConnAck, code };
    let (reason, properties) = if version.is_v5() {
        let reason = ReasonCode(code);
        if !reason.is_valid_for(PacketType::ConnAck, version) {
            return Err(invalid);
        }
        let props = Properties::decode_boxed(&mut r, PacketType::ConnAck.into())?;
        (reason, props)
    } else {
        (ReasonCode::from_v3_connack(code).ok_or(invalid)?, None)
    };
    r.finish()?;
    // Session Present is 0 with a failure code [MQTT-3.2.2-4] (5.0: [MQTT-3.2.2-6]).
    if session_present && reason != ReasonCode::SUCCESS {
        return Err(DecodeError::SessionPresentWithError);
    }
    Ok(ConnAck { session_present, reason, properties })
}

/// The remaining length of `c`.
pub(crate) fn body_len(c: &ConnAck, version: ProtocolVersion) -> usize {
    2 + if version.is_v5() { opt_block_len(&c.properties) } else { 0 }
}

/// Appends the body of `c`.
pub(crate) fn encode_body(
    c: &ConnAck,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    out.put_u8(u8::from(c.session_present));
    if version.is_v5() {
        out.put_u8(c.reason.0);
        encode_opt(&c.properties, PacketType::ConnAck.into(), out)
    } else {
        out.put_u8(c.reason.to_v3_connack());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::{assert_decode_err, assert_roundtrip};
    use crate::types::{ByteStr, Packet};
    use crate::ProtocolVersion::{V3_1, V3_1_1, V5};

    fn connack(session_present: bool, reason: ReasonCode) -> Packet {
        Packet::ConnAck(ConnAck { session_present, reason, properties: None })
    }

    #[test]
    fn v311_accepted_session_present() {
        assert_roundtrip(V3_1_1, &[0x20, 0x02, 0x01, 0x00], connack(true, ReasonCode::SUCCESS));
        assert_roundtrip(V3_1, &[0x20, 0x02, 0x00, 0x00], connack(false, ReasonCode::SUCCESS));
    }

    #[test]
    fn v311_return_codes() {
        for code in 1..=5u8 {
            let reason = ReasonCode::from_v3_connack(code).unwrap();
            assert_roundtrip(V3_1_1, &[0x20, 0x02, 0x00, code], connack(false, reason));
        }
        assert_decode_err(
            V3_1_1,
            &[0x20, 0x02, 0x00, 0x06],
            DecodeError::InvalidReasonCode { packet: PacketType::ConnAck, code: 6 },
        );
    }

    #[test]
    fn v311_projection_of_v5_codes() {
        let mut out = BytesMut::new();
        let p = connack(false, ReasonCode::BANNED);
        crate::encode(&p, V3_1_1, &mut out).unwrap();
        assert_eq!(&out[..], &[0x20, 0x02, 0x00, 0x05]);
    }

    #[test]
    fn v5_with_properties() {
        let p = Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::SUCCESS,
            properties: Some(Box::new(Properties {
                receive_maximum: Some(10),
                assigned_client_identifier: Some(ByteStr::from("id")),
                ..Properties::default()
            })),
        });
        #[rustfmt::skip]
        let wire = [
            0x20, 0x0B, 0x00, 0x00, 0x08,
            0x12, 0x00, 0x02, b'i', b'd',
            0x21, 0x00, 0x0A,
        ];
        assert_roundtrip(V5, &wire, p);
        assert_roundtrip(
            V5,
            &[0x20, 0x03, 0x00, 0x87, 0x00],
            connack(false, ReasonCode::NOT_AUTHORIZED),
        );
    }

    #[test]
    fn invalid() {
        assert_decode_err(V3_1_1, &[0x20, 0x02, 0x02, 0x00], DecodeError::ConnAckReservedFlags);
        assert_decode_err(
            V5,
            &[0x20, 0x03, 0x01, 0x80, 0x00],
            DecodeError::SessionPresentWithError,
        );
        assert_decode_err(V3_1_1, &[0x20, 0x02, 0x01, 0x05], DecodeError::SessionPresentWithError);
        assert_decode_err(
            V5,
            &[0x20, 0x03, 0x00, 0x04, 0x00],
            DecodeError::InvalidReasonCode { packet: PacketType::ConnAck, code: 0x04 },
        );
        // 5.0 CONNACK requires the property length.
        assert_decode_err(V5, &[0x20, 0x02, 0x00, 0x00], DecodeError::Truncated);
        assert_decode_err(V3_1_1, &[0x20, 0x03, 0x00, 0x00, 0x00], DecodeError::TrailingBytes);
        // Topic Alias is a PUBLISH property.
        assert_decode_err(
            V5,
            &[0x20, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01],
            DecodeError::PropertyNotAllowed { id: 0x23 },
        );
    }
}
