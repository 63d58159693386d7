//! UNSUBACK (3.1.1 §3.11, 5.0 §3.11). Before 5.0 it has no payload: the reason codes are
//! dropped when encoding for 3.1/3.1.1 and empty when decoding.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::Reader;
use crate::properties::{encode_opt, opt_block_len, Properties};
use crate::suback::decode_codes;
use crate::types::{PacketId, PacketType, ProtocolVersion, UnsubAck};

/// Decodes the body of an UNSUBACK.
pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = PacketId::new(r.u16()?).ok_or(DecodeError::PacketIdZero)?;
    if !version.is_v5() {
        r.finish()?;
        return Ok(UnsubAck { packet_id, reasons: Vec::new(), properties: None });
    }
    let properties = Properties::decode_boxed(&mut r, PacketType::UnsubAck.into())?;
    let reasons = decode_codes(&mut r, PacketType::UnsubAck, version)?;
    Ok(UnsubAck { packet_id, reasons, properties })
}

/// The remaining length of `u`.
pub(crate) fn body_len(u: &UnsubAck, version: ProtocolVersion) -> usize {
    if version.is_v5() {
        2 + opt_block_len(&u.properties) + u.reasons.len()
    } else {
        2
    }
}

/// Appends the body of `u`.
pub(crate) fn encode_body(
    u: &UnsubAck,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    out.put_u16(u.packet_id.get());
    if version.is_v5() {
        encode_opt(&u.properties, PacketType::UnsubAck.into(), out)?;
        for r in &u.reasons {
            out.put_u8(r.0);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::{assert_decode_err, assert_roundtrip, pid};
    use crate::reason::ReasonCode;
    use crate::types::Packet;
    use crate::ProtocolVersion::{V3_1_1, V5};

    fn unsuback(reasons: &[u8]) -> Packet {
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(0x0102),
            reasons: reasons.iter().map(|&c| ReasonCode(c)).collect(),
            properties: None,
        })
    }

    #[test]
    fn v311() {
        assert_roundtrip(V3_1_1, &[0xB0, 0x02, 0x01, 0x02], unsuback(&[]));
        let mut out = BytesMut::new();
        crate::encode(&unsuback(&[0x11]), V3_1_1, &mut out).unwrap();
        assert_eq!(&out[..], &[0xB0, 0x02, 0x01, 0x02]);
    }

    #[test]
    fn v5() {
        assert_roundtrip(V5, &[0xB0, 0x05, 0x01, 0x02, 0x00, 0x00, 0x11], unsuback(&[0x00, 0x11]));
    }

    #[test]
    fn invalid() {
        assert_decode_err(V3_1_1, &[0xB0, 0x03, 0x01, 0x02, 0x00], DecodeError::TrailingBytes);
        assert_decode_err(
            V5,
            &[0xB0, 0x03, 0x01, 0x02, 0x00],
            DecodeError::NoReasonCodes { packet: PacketType::UnsubAck },
        );
        assert_decode_err(
            V5,
            &[0xB0, 0x04, 0x01, 0x02, 0x00, 0x02],
            DecodeError::InvalidReasonCode { packet: PacketType::UnsubAck, code: 0x02 },
        );
    }
}
