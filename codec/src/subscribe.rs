//! SUBSCRIBE (3.1.1 §3.8, 5.0 §3.8).
//!
//! Each topic filter is validated once here (§4.7; `$share/{group}/{filter}` in 5.0, §4.8.2)
//! together with its subscription options byte (§3.8.3.1).

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{field_len, put_str, Reader};
use crate::properties::{encode_opt, opt_block_len, Properties};
use crate::topic;
use crate::types::{
    PacketId, PacketType, ProtocolVersion, QoS, RetainHandling, Subscribe, SubscriptionOptions,
};

const NO_LOCAL: u8 = 0x04;
const RETAIN_AS_PUBLISHED: u8 = 0x08;

/// Decodes a subscription options byte: 5.0 (bits 6-7 reserved [MQTT-3.8.3-5]) or 3.1/3.1.1
/// (a requested QoS, bits 2-7 reserved [MQTT-3-8.3-4]).
pub(crate) fn decode_options(
    b: u8,
    version: ProtocolVersion,
) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if version.is_v5() { 0xC0 } else { 0xFC };
    if b & reserved != 0 {
        return Err(DecodeError::SubscriptionOptionsReserved);
    }
    let qos = QoS::from_u8(b & 0x03).ok_or(DecodeError::SubscriptionQoSInvalid)?;
    let retain_handling = match (b >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::RetainHandlingInvalid),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: b & NO_LOCAL != 0,
        retain_as_published: b & RETAIN_AS_PUBLISHED != 0,
        retain_handling,
    })
}

/// Encodes subscription options; before 5.0 only the QoS.
pub(crate) fn encode_options(o: &SubscriptionOptions, version: ProtocolVersion) -> u8 {
    let mut b = o.qos as u8;
    if version.is_v5() {
        if o.no_local {
            b |= NO_LOCAL;
        }
        if o.retain_as_published {
            b |= RETAIN_AS_PUBLISHED;
        }
        b |= (o.retain_handling as u8) << 4;
    }
    b
}

/// Decodes the body of a SUBSCRIBE.
pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let v5 = version.is_v5();
    let packet_id = PacketId::new(r.u16()?).ok_or(DecodeError::PacketIdZero)?;
    let properties =
        if v5 { Properties::decode_boxed(&mut r, PacketType::Subscribe.into())? } else { None };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = decode_options(r.u8()?, version)?;
        topic::validate_topic_filter(&filter, v5)?;
        // No Local on a shared subscription is a Protocol Error [MQTT-3.8.3-4].
        if v5 && options.no_local && filter.starts_with(topic::SHARE_PREFIX) {
            return Err(DecodeError::NoLocalOnSharedSubscription);
        }
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::SubscribeNoFilters);
    }
    Ok(Subscribe { packet_id, filters, properties })
}

/// The remaining length of `s`.
pub(crate) fn body_len(s: &Subscribe, version: ProtocolVersion) -> usize {
    let mut n = 2;
    if version.is_v5() {
        n += opt_block_len(&s.properties);
    }
    for (f, _) in &s.filters {
        n += field_len(f.as_bytes()) + 1;
    }
    n
}

/// Appends the body of `s`.
pub(crate) fn encode_body(
    s: &Subscribe,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    out.put_u16(s.packet_id.get());
    if version.is_v5() {
        encode_opt(&s.properties, PacketType::Subscribe.into(), out)?;
    }
    for (f, o) in &s.filters {
        put_str(out, f)?;
        out.put_u8(encode_options(o, version));
    }
    Ok(())
}

#[cfg(test)]
#[path = "subscribe_tests.rs"]
mod tests;
