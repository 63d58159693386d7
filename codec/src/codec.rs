//! Entry points: the fixed header (§2.1) and dispatch to one module per packet type.

use bytes::{Buf, BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{put_varint, varint_len, Reader, VARINT_MAX};
use crate::types::{Limits, Packet, PacketType, ProtocolVersion, Publish, QoS};
use crate::{auth, connack, connect, disconnect, publish, pubresp, suback, subscribe};
use crate::{unsuback, unsubscribe};

/// The fixed header of a packet whose remaining length is fully buffered.
struct FixedHeader {
    packet_type: PacketType,
    flags: u8,
    /// Bytes of the fixed header (1 + remaining-length bytes).
    header_len: usize,
    /// The remaining length.
    remaining_len: usize,
}

/// Validates the first byte: a known packet type for `version` [§2.1.2] with the flags it
/// requires [MQTT-2.1.3-1].
fn packet_type(first: u8, version: ProtocolVersion) -> Result<PacketType, DecodeError> {
    let raw = first >> 4;
    let flags = first & 0x0F;
    let t = match PacketType::from_u8(raw) {
        Some(PacketType::Auth) if !version.is_v5() => None,
        t => t,
    }
    .ok_or(DecodeError::ReservedPacketType { packet_type: raw })?;
    match t.required_flags() {
        Some(f) if f != flags => {
            Err(DecodeError::InvalidFixedHeaderFlags { packet_type: raw, flags })
        }
        _ => Ok(t),
    }
}

/// Parses the fixed header at the front of `buf` without consuming anything. `Ok(None)`:
/// the remaining length is not fully buffered yet. The declared size is checked against the
/// limit as soon as it is known, and a lower bound of it while its bytes are still arriving.
fn fixed_header(
    buf: &[u8],
    limits: &Limits,
    version: ProtocolVersion,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = packet_type(first, version)?;
    let limit = u64::from(limits.packet_size_max_bytes);
    let mut value: u64 = 0;
    let mut multiplier: u64 = 1;
    for i in 0..4usize {
        let Some(&b) = buf.get(1 + i) else {
            // Not all length bytes are here. A minimally encoded continuation adds at least
            // `multiplier`, so the packet is at least this big: reject it early.
            let lower_bound = if i == 0 { 0 } else { (2 + i as u64) + value + multiplier };
            if lower_bound > limit {
                return Err(DecodeError::PacketTooLarge {
                    size_bytes: u32::try_from(lower_bound).unwrap_or(u32::MAX),
                });
            }
            return Ok(None);
        };
        value += u64::from(b & 0x7F) * multiplier;
        if b & 0x80 == 0 {
            // [MQTT-1.5.5-1]: e.g. `80 00` encodes 0 in two bytes.
            if b == 0 && i > 0 {
                return Err(DecodeError::VarIntNotMinimal);
            }
            let header_len = 2 + i;
            let size = header_len as u64 + value;
            if size > limit {
                return Err(DecodeError::PacketTooLarge {
                    size_bytes: u32::try_from(size).unwrap_or(u32::MAX),
                });
            }
            return Ok(Some(FixedHeader {
                packet_type,
                flags: first & 0x0F,
                header_len,
                // At most 268,435,455: fits any usize of 32 bits or more.
                remaining_len: usize::try_from(value).map_err(|_| DecodeError::VarIntTooLong)?,
            }));
        }
        multiplier *= 128;
    }
    Err(DecodeError::VarIntTooLong)
}

/// Decodes one packet from the front of `buf`, removing its bytes.
///
/// `Ok(None)`: `buf` does not hold a whole packet yet (nothing is consumed). `version` is the
/// connection's negotiated version; CONNECT is decoded by its own protocol level regardless.
/// A declared size above `limits.packet_size_max_bytes` is rejected from the fixed header,
/// before the body is buffered. On error the buffer's contents are unspecified: the
/// connection is to be closed.
pub fn decode(
    buf: &mut BytesMut,
    limits: &Limits,
    version: ProtocolVersion,
) -> Result<Option<Packet>, DecodeError> {
    let Some(h) = fixed_header(buf, limits, version)? else {
        return Ok(None);
    };
    let total = h.header_len + h.remaining_len;
    if buf.len() < total {
        // Nothing is reserved here: a peer declaring a large packet and sending it slowly
        // must not make every connection hold a buffer of the maximum size. Growing the
        // read buffer is the IO layer's decision.
        return Ok(None);
    }
    let mut bytes = buf.split_to(total).freeze();
    bytes.advance(h.header_len);
    let r = Reader::new(bytes);
    Ok(Some(match h.packet_type {
        PacketType::Connect => Packet::Connect(Box::new(connect::decode(r)?)),
        PacketType::ConnAck => Packet::ConnAck(connack::decode(r, version)?),
        PacketType::Publish => Packet::Publish(publish::decode(r, h.flags, version)?),
        t @ PacketType::PubAck => Packet::PubAck(pubresp::decode(r, t, version)?),
        t @ PacketType::PubRec => Packet::PubRec(pubresp::decode(r, t, version)?),
        t @ PacketType::PubRel => Packet::PubRel(pubresp::decode(r, t, version)?),
        t @ PacketType::PubComp => Packet::PubComp(pubresp::decode(r, t, version)?),
        PacketType::Subscribe => Packet::Subscribe(subscribe::decode(r, version)?),
        PacketType::SubAck => Packet::SubAck(suback::decode(r, version)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(unsubscribe::decode(r, version)?),
        PacketType::UnsubAck => Packet::UnsubAck(unsuback::decode(r, version)?),
        PacketType::PingReq => {
            r.finish()?;
            Packet::PingReq
        }
        PacketType::PingResp => {
            r.finish()?;
            Packet::PingResp
        }
        PacketType::Disconnect => Packet::Disconnect(disconnect::decode(r, version)?),
        PacketType::Auth => Packet::Auth(auth::decode(r)?),
    }))
}

/// The protocol version a CONNECT at the front of `buf` asks for, once its protocol name and
/// level are buffered and match (`MQIsdp`/3, `MQTT`/4, `MQTT`/5); `None` otherwise. Reads
/// nothing else and consumes nothing: it lets the engine answer a CONNECT that fails to
/// decode with a CONNACK of the client's version (5.0 reason codes only to 5.0 clients).
pub fn peek_connect_version(buf: &[u8]) -> Option<ProtocolVersion> {
    if *buf.first()? != (PacketType::Connect as u8) << 4 {
        return None;
    }
    // Skip the remaining length (at most four bytes).
    let len_bytes = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let rest = buf.get(1 + len_bytes..)?;
    let name_len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let name = rest.get(2..2 + name_len)?;
    let level = *rest.get(2 + name_len)?;
    match (name, level) {
        (b"MQIsdp", 3 | 0x83) => Some(ProtocolVersion::V3_1),
        (b"MQTT", 4 | 0x84) => Some(ProtocolVersion::V3_1_1),
        (b"MQTT", 5) => Some(ProtocolVersion::V5),
        _ => None,
    }
}

/// Whether `buf` starts with a CONNECT whose protocol level carries the bridge bit (0x80 on
/// level 3 or 4: Mosquitto's `try_private`, a broker bridging in). Not in the specification;
/// the broker then treats the client as a bridge (no echo of its own messages, retain flags
/// kept as published).
pub fn peek_connect_bridge(buf: &[u8]) -> bool {
    if buf.first() != Some(&((PacketType::Connect as u8) << 4)) {
        return false;
    }
    let Some(len_bytes) = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0) else {
        return false;
    };
    let rest = &buf[(2 + len_bytes).min(buf.len())..];
    let name_len = match rest {
        [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => return false,
    };
    matches!(rest.get(2 + name_len), Some(0x83 | 0x84))
}

/// The remaining length of `packet` encoded for `version`.
fn remaining_len(packet: &Packet, version: ProtocolVersion) -> usize {
    match packet {
        Packet::Connect(c) => connect::body_len(c),
        Packet::ConnAck(c) => connack::body_len(c, version),
        Packet::Publish(p) => publish::header_body_len(p, version) + p.payload.len(),
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            pubresp::body_len(p, version)
        }
        Packet::Subscribe(s) => subscribe::body_len(s, version),
        Packet::SubAck(s) => suback::body_len(s, version),
        Packet::Unsubscribe(u) => unsubscribe::body_len(u, version),
        Packet::UnsubAck(u) => unsuback::body_len(u, version),
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => disconnect::body_len(d, version),
        Packet::Auth(a) => auth::body_len(a),
    }
}

/// The number of bytes [`encode`] appends for `packet` and `version` (when it succeeds).
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let n = remaining_len(packet, version);
    1 + varint_len(u32::try_from(n).unwrap_or(u32::MAX)) + n
}

/// Appends the fixed header for a packet of `remaining` bytes.
fn put_fixed_header(out: &mut BytesMut, first: u8, remaining: usize) -> Result<(), EncodeError> {
    let remaining =
        u32::try_from(remaining).ok().filter(|n| *n <= VARINT_MAX).ok_or(EncodeError::TooLarge)?;
    out.put_u8(first);
    put_varint(out, remaining)
}

/// Runs `f`, restoring `out` to its length before the call if `f` fails: encoding never
/// leaves a partial packet behind.
fn atomically<T>(
    out: &mut BytesMut,
    f: impl FnOnce(&mut BytesMut) -> Result<T, EncodeError>,
) -> Result<T, EncodeError> {
    let start = out.len();
    let r = f(out);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// Appends the encoding of `packet` for `version` to `out`.
///
/// CONNECT is encoded with its own `protocol`. Properties are written in a canonical order
/// (by identifier; user properties and subscription identifiers in their order), so
/// `decode(encode(p)) == p` for every valid packet (with `None`, not `Some(empty)`, for "no
/// properties"). Acknowledgements use their shortest 5.0 form. For 3.1/3.1.1, things the
/// older packets cannot carry are projected onto the closest form: properties are never
/// written; CONNACK codes go through [`crate::ReasonCode::to_v3_connack`]; SUBACK failure
/// codes become 0x80; PUBACK..PUBCOMP, UNSUBACK and DISCONNECT drop their reason codes; a
/// password without a user name is dropped. AUTH, and a PUBLISH with an empty topic, have no
/// 3.1.1 form and return an error. A packet that breaks a rule its receiver enforces (a
/// wildcard in a topic name, an empty SUBACK, a reason code the packet type does not have, …)
/// returns [`EncodeError::Invalid`] with the error our decoder would give (`encode_check.rs`).
/// On error `out` is unchanged.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let version = match packet {
        Packet::Connect(c) => c.protocol,
        _ => version,
    };
    let t = packet.packet_type();
    crate::encode_check::check(packet, version)?;
    let first = match packet {
        Packet::Publish(p) => {
            if p.qos != QoS::AtMostOnce && p.packet_id.is_none() {
                return Err(EncodeError::MissingPacketId);
            }
            (t as u8) << 4 | publish::flags(p)
        }
        Packet::Auth(_) if !version.is_v5() => {
            return Err(EncodeError::NotInVersion { packet: t });
        }
        _ => (t as u8) << 4 | t.required_flags().unwrap_or(0),
    };
    let remaining = remaining_len(packet, version);
    atomically(out, |out| {
        out.reserve(5 + remaining);
        put_fixed_header(out, first, remaining)?;
        let body_start = out.len();
        match packet {
            Packet::Connect(c) => connect::encode_body(c, out)?,
            Packet::ConnAck(c) => connack::encode_body(c, version, out)?,
            Packet::Publish(p) => {
                publish::encode_variable_header(p, version, out)?;
                out.put_slice(&p.payload);
            }
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                pubresp::encode_body(p, t, version, out)?
            }
            Packet::Subscribe(s) => subscribe::encode_body(s, version, out)?,
            Packet::SubAck(s) => suback::encode_body(s, version, out)?,
            Packet::Unsubscribe(u) => unsubscribe::encode_body(u, version, out)?,
            Packet::UnsubAck(u) => unsuback::encode_body(u, version, out)?,
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(d) => disconnect::encode_body(d, version, out)?,
            Packet::Auth(a) => auth::encode_body(a, out)?,
        }
        debug_assert_eq!(out.len() - body_start, remaining, "{t:?} length mismatch");
        Ok(())
    })
}

/// Appends everything of a PUBLISH except its payload (fixed header with the full remaining
/// length, topic, packet id, properties) and returns the offset of the packet id's first byte
/// relative to where writing started (`None` for QoS 0). The engine encodes this header once
/// per layout and patches the packet id per subscriber; the payload `Bytes` is shared.
///
/// A QoS > 0 `publish` without a packet id gets a placeholder 0 to be patched. For
/// 3.1/3.1.1 properties are not written and an empty topic is an error. On error `out` is
/// unchanged.
pub fn encode_publish_header(
    publish: &Publish,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<Option<usize>, EncodeError> {
    let header_body = publish::header_body_len(publish, version);
    let remaining = header_body + publish.payload.len();
    let first = (PacketType::Publish as u8) << 4 | publish::flags(publish);
    atomically(out, |out| {
        let start = out.len();
        out.reserve(5 + header_body);
        put_fixed_header(out, first, remaining)?;
        let fixed = out.len() - start;
        let offset = publish::encode_variable_header(publish, version, out)?;
        debug_assert_eq!(out.len() - start - fixed, header_body, "PUBLISH length mismatch");
        Ok(offset.map(|o| fixed + o))
    })
}

#[cfg(test)]
#[path = "codec_tests.rs"]
pub(crate) mod tests;
