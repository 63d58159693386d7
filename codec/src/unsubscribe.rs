//! UNSUBSCRIBE (3.1.1 §3.10, 5.0 §3.10): filters are validated like SUBSCRIBE's.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{field_len, put_str, Reader};
use crate::properties::{encode_opt, opt_block_len, Properties};
use crate::topic;
use crate::types::{PacketId, PacketType, ProtocolVersion, Unsubscribe};

/// Decodes the body of an UNSUBSCRIBE.
pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let v5 = version.is_v5();
    let packet_id = PacketId::new(r.u16()?).ok_or(DecodeError::PacketIdZero)?;
    let properties =
        if v5 { Properties::decode_boxed(&mut r, PacketType::Unsubscribe.into())? } else { None };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        topic::validate_topic_filter(&filter, v5)?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(DecodeError::UnsubscribeNoFilters);
    }
    Ok(Unsubscribe { packet_id, filters, properties })
}

/// The remaining length of `u`.
pub(crate) fn body_len(u: &Unsubscribe, version: ProtocolVersion) -> usize {
    let mut n = 2;
    if version.is_v5() {
        n += opt_block_len(&u.properties);
    }
    n + u.filters.iter().map(|f| field_len(f.as_bytes())).sum::<usize>()
}

/// Appends the body of `u`.
pub(crate) fn encode_body(
    u: &Unsubscribe,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    out.put_u16(u.packet_id.get());
    if version.is_v5() {
        encode_opt(&u.properties, PacketType::Unsubscribe.into(), out)?;
    }
    for f in &u.filters {
        put_str(out, f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::{assert_decode_err, assert_roundtrip, pid};
    use crate::types::{ByteStr, Packet};
    use crate::ProtocolVersion::{V3_1_1, V5};

    fn unsub(filters: &[&str], properties: Option<Box<Properties>>) -> Packet {
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(3),
            filters: filters.iter().map(|&f| ByteStr::from(f)).collect(),
            properties,
        })
    }

    #[test]
    fn v311() {
        #[rustfmt::skip]
        let wire = [0xA2, 0x0A, 0x00, 0x03, 0x00, 0x01, b'a', 0x00, 0x03, b'b', b'/', b'#'];
        assert_roundtrip(V3_1_1, &wire, unsub(&["a", "b/#"], None));
    }

    #[test]
    fn v5() {
        let props = Properties {
            user_properties: vec![(ByteStr::from("k"), ByteStr::from("v"))],
            ..Properties::default()
        };
        #[rustfmt::skip]
        let wire = [
            0xA2, 0x11, 0x00, 0x03,
            0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',
            0x00, 0x05, b'$', b's', b'h', b'a', b'r',
        ];
        // Property block then "$shar": a plain (non-shared) filter.
        assert_roundtrip(V5, &wire, unsub(&["$shar"], Some(Box::new(props))));
        #[rustfmt::skip]
        let shared = [
            0xA2, 0x0E, 0x00, 0x03, 0x00,
            0x00, 0x09, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/',
        ];
        assert_decode_err(V5, &shared, DecodeError::SharedFilterMissing);
    }

    #[test]
    fn invalid() {
        assert_decode_err(V3_1_1, &[0xA2, 0x02, 0x00, 0x03], DecodeError::UnsubscribeNoFilters);
        assert_decode_err(V5, &[0xA2, 0x03, 0x00, 0x03, 0x00], DecodeError::UnsubscribeNoFilters);
        assert_decode_err(
            V3_1_1,
            &[0xA2, 0x05, 0x00, 0x03, 0x00, 0x05, b'a'],
            DecodeError::Truncated,
        );
        assert_decode_err(
            V3_1_1,
            &[0xA2, 0x06, 0x00, 0x03, 0x00, 0x02, b'a', b'#'],
            DecodeError::TopicFilterMultiLevelWildcard,
        );
        assert_decode_err(
            V3_1_1,
            &[0xA2, 0x04, 0x00, 0x03, 0x00, 0x00],
            DecodeError::TopicFilterEmpty,
        );
        assert_decode_err(
            V3_1_1,
            &[0xA0, 0x05, 0x00, 0x03, 0x00, 0x01, b'a'],
            DecodeError::InvalidFixedHeaderFlags { packet_type: 10, flags: 0 },
        );
    }
}
