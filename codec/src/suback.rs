//! SUBACK (3.1.1 §3.9, 5.0 §3.9): one reason code per filter of the SUBSCRIBE.
//!
//! Before 5.0 the codes are 0x00, 0x01, 0x02 and 0x80 (failure); encoding a 5.0 failure code
//! for 3.1/3.1.1 writes 0x80, the closest 3.1.1 form.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::Reader;
use crate::properties::{encode_opt, opt_block_len, Properties};
use crate::reason::ReasonCode;
use crate::types::{PacketId, PacketType, ProtocolVersion, SubAck};

/// Decodes a list of one-byte reason codes for `t` (SUBACK, 5.0 UNSUBACK) up to the end.
pub(crate) fn decode_codes(
    r: &mut Reader,
    t: PacketType,
    version: ProtocolVersion,
) -> Result<Vec<ReasonCode>, DecodeError> {
    let codes = r.rest();
    if codes.is_empty() {
        return Err(DecodeError::NoReasonCodes { packet: t });
    }
    codes
        .iter()
        .map(|&code| {
            let reason = ReasonCode(code);
            if reason.is_valid_for(t, version) {
                Ok(reason)
            } else {
                Err(DecodeError::InvalidReasonCode { packet: t, code })
            }
        })
        .collect()
}

/// Decodes the body of a SUBACK.
pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = PacketId::new(r.u16()?).ok_or(DecodeError::PacketIdZero)?;
    let properties = if version.is_v5() {
        Properties::decode_boxed(&mut r, PacketType::SubAck.into())?
    } else {
        None
    };
    let reasons = decode_codes(&mut r, PacketType::SubAck, version)?;
    Ok(SubAck { packet_id, reasons, properties })
}

/// The remaining length of `s`.
pub(crate) fn body_len(s: &SubAck, version: ProtocolVersion) -> usize {
    let props = if version.is_v5() { opt_block_len(&s.properties) } else { 0 };
    2 + props + s.reasons.len()
}

/// Appends the body of `s`.
pub(crate) fn encode_body(
    s: &SubAck,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    out.put_u16(s.packet_id.get());
    if version.is_v5() {
        encode_opt(&s.properties, PacketType::SubAck.into(), out)?;
        for r in &s.reasons {
            out.put_u8(r.0);
        }
    } else {
        for r in &s.reasons {
            out.put_u8(if r.is_error() { 0x80 } else { r.0 });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::{assert_decode_err, assert_roundtrip, pid};
    use crate::types::{ByteStr, Packet};
    use crate::ProtocolVersion::{V3_1, V3_1_1, V5};

    fn suback(reasons: &[u8], properties: Option<Box<Properties>>) -> Packet {
        Packet::SubAck(SubAck {
            packet_id: pid(10),
            reasons: reasons.iter().map(|&c| ReasonCode(c)).collect(),
            properties,
        })
    }

    #[test]
    fn v311() {
        assert_roundtrip(
            V3_1_1,
            &[0x90, 0x06, 0x00, 0x0A, 0x00, 0x01, 0x02, 0x80],
            suback(&[0, 1, 2, 0x80], None),
        );
        assert_roundtrip(V3_1, &[0x90, 0x03, 0x00, 0x0A, 0x01], suback(&[1], None));
    }

    #[test]
    fn v5() {
        let props = Properties { reason_string: Some(ByteStr::from("x")), ..Properties::default() };
        #[rustfmt::skip]
        let wire = [0x90, 0x09, 0x00, 0x0A, 0x04, 0x1F, 0x00, 0x01, b'x', 0x01, 0xA2];
        assert_roundtrip(V5, &wire, suback(&[0x01, 0xA2], Some(Box::new(props))));
    }

    #[test]
    fn v3_projection_of_v5_failures() {
        let mut out = BytesMut::new();
        crate::encode(&suback(&[0x02, 0x87], None), V3_1_1, &mut out).unwrap();
        assert_eq!(&out[..], &[0x90, 0x04, 0x00, 0x0A, 0x02, 0x80]);
    }

    #[test]
    fn invalid() {
        let bad = |code| DecodeError::InvalidReasonCode { packet: PacketType::SubAck, code };
        assert_decode_err(V3_1_1, &[0x90, 0x03, 0x00, 0x0A, 0x03], bad(0x03));
        assert_decode_err(V3_1_1, &[0x90, 0x03, 0x00, 0x0A, 0x87], bad(0x87));
        assert_decode_err(V5, &[0x90, 0x04, 0x00, 0x0A, 0x00, 0x11], bad(0x11));
        assert_decode_err(
            V3_1_1,
            &[0x90, 0x02, 0x00, 0x0A],
            DecodeError::NoReasonCodes { packet: PacketType::SubAck },
        );
        assert_decode_err(V5, &[0x90, 0x03, 0x00, 0x00, 0x00], DecodeError::PacketIdZero);
    }
}
