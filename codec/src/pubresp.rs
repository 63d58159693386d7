//! PUBACK, PUBREC, PUBREL and PUBCOMP (3.1.1 §3.4-§3.7, 5.0 §3.4-§3.7): a packet id and,
//! in 5.0, a reason code and properties.
//!
//! 5.0 short forms: a remaining length of 2 means Success without properties, 3 a reason
//! code without properties (§3.4.2.1). Encoding uses the shortest form. Before 5.0 only the
//! packet id is written: a failure reason cannot be expressed and is dropped (the engine
//! closes the connection instead of sending a negative acknowledgement to a 3.1.1 client).

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::Reader;
use crate::properties::{encode_opt, opt_block_len, opt_is_empty, Properties};
use crate::reason::ReasonCode;
use crate::types::{PacketId, PacketType, ProtocolVersion, PubResp};

/// Decodes the body of a PUBACK, PUBREC, PUBREL or PUBCOMP (`t`).
pub(crate) fn decode(
    mut r: Reader,
    t: PacketType,
    version: ProtocolVersion,
) -> Result<PubResp, DecodeError> {
    let packet_id = PacketId::new(r.u16()?).ok_or(DecodeError::PacketIdZero)?;
    let mut resp = PubResp { packet_id, reason: ReasonCode::SUCCESS, properties: None };
    if version.is_v5() && !r.is_empty() {
        let code = r.u8()?;
        resp.reason = ReasonCode(code);
        if !resp.reason.is_valid_for(t, version) {
            return Err(DecodeError::InvalidReasonCode { packet: t, code });
        }
        if !r.is_empty() {
            resp.properties = Properties::decode_boxed(&mut r, t.into())?;
        }
    }
    r.finish()?;
    Ok(resp)
}

/// The remaining length of `p`.
pub(crate) fn body_len(p: &PubResp, version: ProtocolVersion) -> usize {
    if !version.is_v5() {
        2
    } else if !opt_is_empty(&p.properties) {
        3 + opt_block_len(&p.properties)
    } else if p.reason != ReasonCode::SUCCESS {
        3
    } else {
        2
    }
}

/// Appends the body of `p` (a packet of type `t`) in its shortest form.
pub(crate) fn encode_body(
    p: &PubResp,
    t: PacketType,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    out.put_u16(p.packet_id.get());
    if version.is_v5() {
        let props = !opt_is_empty(&p.properties);
        if props || p.reason != ReasonCode::SUCCESS {
            out.put_u8(p.reason.0);
        }
        if props {
            encode_opt(&p.properties, t.into(), out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::{assert_decode_err, assert_decodes, assert_roundtrip, pid};
    use crate::types::{ByteStr, Packet};
    use crate::ProtocolVersion::{V3_1, V3_1_1, V5};

    fn resp(id: u16, reason: ReasonCode, properties: Option<Box<Properties>>) -> PubResp {
        PubResp { packet_id: pid(id), reason, properties }
    }

    #[test]
    fn v311_all_four() {
        let r = || resp(0x1234, ReasonCode::SUCCESS, None);
        assert_roundtrip(V3_1_1, &[0x40, 0x02, 0x12, 0x34], Packet::PubAck(r()));
        assert_roundtrip(V3_1_1, &[0x50, 0x02, 0x12, 0x34], Packet::PubRec(r()));
        assert_roundtrip(V3_1_1, &[0x62, 0x02, 0x12, 0x34], Packet::PubRel(r()));
        assert_roundtrip(V3_1_1, &[0x70, 0x02, 0x12, 0x34], Packet::PubComp(r()));
        assert_roundtrip(
            V3_1,
            &[0x62, 0x02, 0x00, 0x01],
            Packet::PubRel(resp(1, ReasonCode::SUCCESS, None)),
        );
    }

    #[test]
    fn v5_short_forms() {
        let ok = Packet::PubAck(resp(1, ReasonCode::SUCCESS, None));
        assert_roundtrip(V5, &[0x40, 0x02, 0x00, 0x01], ok.clone());
        // Longer forms of the same packet decode to it too.
        assert_decodes(V5, &[0x40, 0x03, 0x00, 0x01, 0x00], ok.clone());
        assert_decodes(V5, &[0x40, 0x04, 0x00, 0x01, 0x00, 0x00], ok);
        assert_roundtrip(
            V5,
            &[0x50, 0x03, 0x00, 0x07, 0x10],
            Packet::PubRec(resp(7, ReasonCode::NO_MATCHING_SUBSCRIBERS, None)),
        );
        assert_roundtrip(
            V5,
            &[0x70, 0x03, 0x00, 0x07, 0x92],
            Packet::PubComp(resp(7, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND, None)),
        );
    }

    #[test]
    fn v5_with_properties() {
        let props =
            Properties { reason_string: Some(ByteStr::from("no")), ..Properties::default() };
        #[rustfmt::skip]
        let wire = [0x62, 0x09, 0x00, 0x02, 0x00, 0x05, 0x1F, 0x00, 0x02, b'n', b'o'];
        assert_roundtrip(
            V5,
            &wire,
            Packet::PubRel(resp(2, ReasonCode::SUCCESS, Some(Box::new(props)))),
        );
    }

    #[test]
    fn v3_drops_the_reason() {
        let mut out = BytesMut::new();
        let p = Packet::PubAck(resp(1, ReasonCode::QUOTA_EXCEEDED, None));
        crate::encode(&p, V3_1_1, &mut out).unwrap();
        assert_eq!(&out[..], &[0x40, 0x02, 0x00, 0x01]);
    }

    #[test]
    fn invalid() {
        assert_decode_err(V3_1_1, &[0x40, 0x02, 0x00, 0x00], DecodeError::PacketIdZero);
        assert_decode_err(V3_1_1, &[0x40, 0x03, 0x00, 0x01, 0x00], DecodeError::TrailingBytes);
        assert_decode_err(V3_1_1, &[0x40, 0x01, 0x00], DecodeError::Truncated);
        assert_decode_err(
            V3_1_1,
            &[0x60, 0x02, 0x00, 0x01],
            DecodeError::InvalidFixedHeaderFlags { packet_type: 6, flags: 0 },
        );
        assert_decode_err(
            V5,
            &[0x40, 0x03, 0x00, 0x01, 0x92],
            DecodeError::InvalidReasonCode { packet: PacketType::PubAck, code: 0x92 },
        );
        assert_decode_err(
            V5,
            &[0x62, 0x03, 0x00, 0x01, 0x10],
            DecodeError::InvalidReasonCode { packet: PacketType::PubRel, code: 0x10 },
        );
        // Property length 2 but only one byte follows.
        assert_decode_err(V5, &[0x40, 0x05, 0x00, 0x01, 0x00, 0x02, 0x1F], DecodeError::Truncated);
        // Reason String twice.
        #[rustfmt::skip]
        let dup = [0x40, 0x0A, 0x00, 0x01, 0x00, 0x06, 0x1F, 0x00, 0x00, 0x1F, 0x00, 0x00];
        assert_decode_err(V5, &dup, DecodeError::DuplicateProperty { id: 0x1F });
    }
}
