//! PUBLISH (3.1.1 §3.3, 5.0 §3.3).
//!
//! The topic is validated once here: no wildcards [MQTT-3.3.2-2]; empty only in 5.0 with a
//! Topic Alias (§3.3.2.3.4). The payload is a zero-copy slice of the packet. Whether a
//! client may send Subscription Identifiers, and topic alias resolution, are the engine's.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{field_len, put_str, Reader};
use crate::properties::{encode_opt, opt_block_len, Properties};
use crate::types::{PacketId, PacketType, ProtocolVersion, Publish, QoS};

const DUP: u8 = 0b1000;
const RETAIN: u8 = 0b0001;

/// Decodes a PUBLISH from its fixed-header `flags` and body.
pub(crate) fn decode(
    mut r: Reader,
    flags: u8,
    version: ProtocolVersion,
) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
    let dup = flags & DUP != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::DupWithQoS0);
    }
    let topic = r.binary()?;
    crate::primitives::validate_topic_name(&topic)?;
    let topic = crate::types::ByteStr::from_validated(topic);
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(PacketId::new(r.u16()?).ok_or(DecodeError::PacketIdZero)?)
    };
    let properties = if version.is_v5() {
        Properties::decode_boxed(&mut r, PacketType::Publish.into())?
    } else {
        None
    };
    if topic.as_bytes().is_empty() && properties.as_ref().and_then(|p| p.topic_alias).is_none() {
        return Err(DecodeError::TopicNameEmpty);
    }
    let payload = r.rest();
    if properties.as_ref().is_some_and(|p| p.payload_format_indicator == Some(1))
        && std::str::from_utf8(&payload).is_err()
    {
        return Err(DecodeError::PayloadFormatInvalid);
    }
    Ok(Publish { dup, qos, retain: flags & RETAIN != 0, topic, packet_id, payload, properties })
}

/// The fixed-header flags of `p`.
pub(crate) fn flags(p: &Publish) -> u8 {
    let mut f = (p.qos as u8) << 1;
    // [MQTT-3.3.1-2]: DUP is never set on QoS 0, even when a retransmitted QoS 1/2 message
    // is downgraded to a QoS 0 subscription.
    if p.dup && p.qos != QoS::AtMostOnce {
        f |= DUP;
    }
    if p.retain {
        f |= RETAIN;
    }
    f
}

/// The remaining length of `p` without its payload.
pub(crate) fn header_body_len(p: &Publish, version: ProtocolVersion) -> usize {
    let mut n = field_len(p.topic.as_bytes());
    if p.qos != QoS::AtMostOnce {
        n += 2;
    }
    if version.is_v5() {
        n += opt_block_len(&p.properties);
    }
    n
}

/// Appends the variable header of `p` (topic, packet id, properties) and returns the offset
/// of the packet id relative to where writing started. A QoS > 0 PUBLISH without a packet id
/// gets a placeholder 0 for the caller to patch.
pub(crate) fn encode_variable_header(
    p: &Publish,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<Option<usize>, EncodeError> {
    if p.topic.as_bytes().is_empty() && !version.is_v5() {
        return Err(EncodeError::EmptyTopic);
    }
    let start = out.len();
    put_str(out, &p.topic)?;
    let offset = if p.qos == QoS::AtMostOnce {
        None
    } else {
        let at = out.len() - start;
        out.put_u16(p.packet_id.map_or(0, PacketId::get));
        Some(at)
    };
    if version.is_v5() {
        encode_opt(&p.properties, PacketType::Publish.into(), out)?;
    }
    Ok(offset)
}

#[cfg(test)]
#[path = "publish_tests.rs"]
mod tests;
