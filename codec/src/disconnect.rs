//! DISCONNECT (3.1.1 §3.14, 5.0 §3.14).
//!
//! Before 5.0 it has no body (the reason and properties are dropped when encoding). In 5.0 a
//! remaining length of 0 means Normal disconnection without properties, 1 a reason code
//! without properties (§3.14.2.2). Both short forms are accepted when decoding; encoding omits
//! the body only for Normal disconnection without properties, and otherwise always writes the
//! property length (even 0): some clients in the field (rumqttc 0.25) cannot parse the
//! one-byte form and would lose the reason code (e.g. 0x8E session taken over).

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::Reader;
use crate::properties::{encode_opt, opt_block_len, opt_is_empty, Properties};
use crate::reason::ReasonCode;
use crate::types::{Disconnect, PacketType, ProtocolVersion};

/// Decodes the body of a DISCONNECT.
pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Disconnect, DecodeError> {
    let mut d = Disconnect { reason: ReasonCode::NORMAL_DISCONNECTION, properties: None };
    if version.is_v5() && !r.is_empty() {
        let code = r.u8()?;
        d.reason = ReasonCode(code);
        if !d.reason.is_valid_for(PacketType::Disconnect, version) {
            return Err(DecodeError::InvalidReasonCode { packet: PacketType::Disconnect, code });
        }
        if !r.is_empty() {
            d.properties = Properties::decode_boxed(&mut r, PacketType::Disconnect.into())?;
        }
    }
    r.finish()?;
    Ok(d)
}

/// The remaining length of `d`.
pub(crate) fn body_len(d: &Disconnect, version: ProtocolVersion) -> usize {
    if !version.is_v5() {
        0
    } else if !opt_is_empty(&d.properties) {
        1 + opt_block_len(&d.properties)
    } else if d.reason != ReasonCode::NORMAL_DISCONNECTION {
        2
    } else {
        0
    }
}

/// Appends the body of `d`: nothing for Normal disconnection without properties, otherwise the
/// reason code and a property block (possibly empty).
pub(crate) fn encode_body(
    d: &Disconnect,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    if version.is_v5() {
        let props = !opt_is_empty(&d.properties);
        if props || d.reason != ReasonCode::NORMAL_DISCONNECTION {
            out.put_u8(d.reason.0);
        }
        if props {
            encode_opt(&d.properties, PacketType::Disconnect.into(), out)?;
        } else if d.reason != ReasonCode::NORMAL_DISCONNECTION {
            out.put_u8(0);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::{assert_decode_err, assert_decodes, assert_roundtrip};
    use crate::types::{ByteStr, Packet};
    use crate::ProtocolVersion::{V3_1, V3_1_1, V5};

    fn disconnect(reason: ReasonCode, properties: Option<Box<Properties>>) -> Packet {
        Packet::Disconnect(Disconnect { reason, properties })
    }

    #[test]
    fn v311() {
        let p = disconnect(ReasonCode::SUCCESS, None);
        assert_roundtrip(V3_1_1, &[0xE0, 0x00], p.clone());
        assert_roundtrip(V3_1, &[0xE0, 0x00], p);
        assert_decode_err(V3_1_1, &[0xE0, 0x01, 0x00], DecodeError::TrailingBytes);
        assert_decode_err(
            V3_1_1,
            &[0xE1, 0x00],
            DecodeError::InvalidFixedHeaderFlags { packet_type: 14, flags: 1 },
        );
    }

    #[test]
    fn v5_forms() {
        let ok = disconnect(ReasonCode::SUCCESS, None);
        assert_roundtrip(V5, &[0xE0, 0x00], ok.clone());
        assert_decodes(V5, &[0xE0, 0x01, 0x00], ok.clone());
        assert_decodes(V5, &[0xE0, 0x02, 0x00, 0x00], ok);
        // The one-byte form decodes; encoding always writes the (empty) property length.
        let will = disconnect(ReasonCode::DISCONNECT_WITH_WILL_MESSAGE, None);
        assert_decodes(V5, &[0xE0, 0x01, 0x04], will.clone());
        assert_roundtrip(V5, &[0xE0, 0x02, 0x04, 0x00], will);
        let props = Properties {
            session_expiry_interval_secs: Some(0),
            server_reference: Some(ByteStr::from("s")),
            ..Properties::default()
        };
        #[rustfmt::skip]
        let wire = [
            0xE0, 0x0B, 0x9C, 0x09,
            0x11, 0x00, 0x00, 0x00, 0x00,
            0x1C, 0x00, 0x01, b's',
        ];
        assert_roundtrip(
            V5,
            &wire,
            disconnect(ReasonCode::USE_ANOTHER_SERVER, Some(Box::new(props))),
        );
    }

    #[test]
    fn v5_invalid() {
        assert_decode_err(
            V5,
            &[0xE0, 0x01, 0x05],
            DecodeError::InvalidReasonCode { packet: PacketType::Disconnect, code: 0x05 },
        );
        // Session Expiry Interval twice.
        #[rustfmt::skip]
        let wire = [
            0xE0, 0x0C, 0x00, 0x0A,
            0x11, 0x00, 0x00, 0x00, 0x00,
            0x11, 0x00, 0x00, 0x00, 0x01,
        ];
        assert_decode_err(V5, &wire, DecodeError::DuplicateProperty { id: 0x11 });
        // Receive Maximum is not a DISCONNECT property.
        assert_decode_err(
            V5,
            &[0xE0, 0x05, 0x00, 0x03, 0x21, 0x00, 0x01],
            DecodeError::PropertyNotAllowed { id: 0x21 },
        );
        // Unknown property 0x7F.
        assert_decode_err(
            V5,
            &[0xE0, 0x04, 0x00, 0x02, 0x7F, 0x00],
            DecodeError::UnknownProperty { id: 0x7F },
        );
    }
}
