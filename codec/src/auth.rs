//! AUTH (5.0 §3.15). It does not exist before 5.0: packet type 15 is then reserved and
//! decoding it is an error ([`DecodeError::ReservedPacketType`]); encoding it returns
//! [`EncodeError::NotInVersion`].
//!
//! A remaining length of 0 means Success without properties (§3.15.2.1); otherwise the
//! reason code and the property length are both present. Encoding uses the shortest form.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::Reader;
use crate::properties::{encode_opt, opt_block_len, opt_is_empty, Properties};
use crate::reason::ReasonCode;
use crate::types::{Auth, PacketType, ProtocolVersion};

/// Decodes the body of an AUTH (5.0 only; the caller rejects it before).
pub(crate) fn decode(mut r: Reader) -> Result<Auth, DecodeError> {
    let mut a = Auth { reason: ReasonCode::SUCCESS, properties: None };
    if !r.is_empty() {
        let code = r.u8()?;
        a.reason = ReasonCode(code);
        if !a.reason.is_valid_for(PacketType::Auth, ProtocolVersion::V5) {
            return Err(DecodeError::InvalidReasonCode { packet: PacketType::Auth, code });
        }
        a.properties = Properties::decode_boxed(&mut r, PacketType::Auth.into())?;
    }
    r.finish()?;
    Ok(a)
}

/// The remaining length of `a`.
pub(crate) fn body_len(a: &Auth) -> usize {
    if opt_is_empty(&a.properties) && a.reason == ReasonCode::SUCCESS {
        0
    } else {
        1 + opt_block_len(&a.properties)
    }
}

/// Appends the body of `a` in its shortest form.
pub(crate) fn encode_body(a: &Auth, out: &mut BytesMut) -> Result<(), EncodeError> {
    if body_len(a) > 0 {
        out.put_u8(a.reason.0);
        encode_opt(&a.properties, PacketType::Auth.into(), out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::{assert_decode_err, assert_decodes, assert_roundtrip};
    use crate::types::{ByteStr, Packet};
    use crate::ProtocolVersion::{V3_1_1, V5};
    use bytes::Bytes;

    #[test]
    fn v5() {
        let ok = Packet::Auth(Auth { reason: ReasonCode::SUCCESS, properties: None });
        assert_roundtrip(V5, &[0xF0, 0x00], ok.clone());
        assert_decodes(V5, &[0xF0, 0x02, 0x00, 0x00], ok);
        let props = Properties {
            authentication_method: Some(ByteStr::from("m")),
            authentication_data: Some(Bytes::from_static(&[0xFF])),
            ..Properties::default()
        };
        #[rustfmt::skip]
        let wire = [
            0xF0, 0x0A, 0x18, 0x08,
            0x15, 0x00, 0x01, b'm',
            0x16, 0x00, 0x01, 0xFF,
        ];
        assert_roundtrip(
            V5,
            &wire,
            Packet::Auth(Auth {
                reason: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: Some(Box::new(props)),
            }),
        );
        let mut out = BytesMut::new();
        assert_eq!(
            crate::encode(
                &Packet::Auth(Auth { reason: ReasonCode::RE_AUTHENTICATE, properties: None }),
                V5,
                &mut out
            ),
            Ok(())
        );
        assert_eq!(&out[..], &[0xF0, 0x02, 0x19, 0x00]);
    }

    #[test]
    fn invalid() {
        assert_decode_err(
            V3_1_1,
            &[0xF0, 0x00],
            DecodeError::ReservedPacketType { packet_type: 15 },
        );
        // Reason code without the property length.
        assert_decode_err(V5, &[0xF0, 0x01, 0x18], DecodeError::Truncated);
        assert_decode_err(
            V5,
            &[0xF0, 0x02, 0x04, 0x00],
            DecodeError::InvalidReasonCode { packet: PacketType::Auth, code: 0x04 },
        );
        // Authentication Data without an Authentication Method.
        assert_decode_err(
            V5,
            &[0xF0, 0x06, 0x18, 0x04, 0x16, 0x00, 0x01, 0x00],
            DecodeError::AuthDataWithoutMethod,
        );
        let mut out = BytesMut::new();
        let p = Packet::Auth(Auth { reason: ReasonCode::SUCCESS, properties: None });
        assert_eq!(
            crate::encode(&p, V3_1_1, &mut out),
            Err(EncodeError::NotInVersion { packet: PacketType::Auth })
        );
        assert!(out.is_empty());
    }
}
